"""The built-in toy dataset written in the VOC 2012 folder layout.

    python -m voc12.toy --out data/toy_voc [--seed 0 --n_train_aug 400 --n_train 100 --n_val 100 --size 128]

Writes JPEGImages/, SegmentationClass/ and SegmentationClassAug/ (palette PNGs, 255 border band),
Annotations/ (VOC XML, one <object> per class present), ImageSets/Segmentation/{train,val}.txt and
saliency_map/ (grey PNGs as a salient-object detector would give, ``misc.toy.fake_saliency``; DRS's layout).
train is the first n_train ids of train_aug (as VOC train is inside train_aug); val is disjoint.
Deterministic from the seed; an existing folder with the same parameters is reused.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image
from tqdm import tqdm

from misc.io import save_png, write_id_list
from misc.toy import fake_saliency, generate_once, render_scene, scene_shape
from voc12.dataloader import CLASS_NAMES, VOC12


def _xml(img_id: str, size: tuple[int, int], mask: np.ndarray) -> str:
    objs = []
    for v in np.unique(mask):
        if 0 < v < 255:
            ys, xs = np.nonzero(mask == v)
            objs.append(f"<object><name>{CLASS_NAMES[v - 1]}</name><bndbox><xmin>{xs.min() + 1}</xmin>"
                        f"<ymin>{ys.min() + 1}</ymin><xmax>{xs.max() + 1}</xmax><ymax>{ys.max() + 1}</ymax>"
                        f"</bndbox></object>")
    return (f"<annotation><filename>{img_id}.jpg</filename><size><width>{size[1]}</width>"
            f"<height>{size[0]}</height><depth>3</depth></size>{''.join(objs)}</annotation>\n")


def write_toy_voc(root: str | Path, seed: int = 0, n_train_aug: int = 400, n_train: int = 100,
                  n_val: int = 100, size: int = 128) -> Path:
    """Generate (or reuse) the toy VOC folder at ``root``. ``size`` is the long side in pixels. Returns root."""
    params = dict(seed=seed, n_train_aug=n_train_aug, n_train=n_train, n_val=n_val, size=size, version=2)
    if n_train > n_train_aug:
        raise ValueError("n_train must not exceed n_train_aug")

    def fill(tmp: Path) -> None:
        rng = np.random.default_rng(seed)
        sal_rng = np.random.default_rng([seed, 1])  # its own stream: the scenes stay those of version 1
        ids = [f"toy_{i:06d}" for i in range(n_train_aug + n_val)]
        (tmp / "saliency_map").mkdir()
        for img_id in tqdm(ids, desc="toy dataset", leave=False):
            hw = scene_shape(rng, size)
            img, mask = render_scene(rng, len(CLASS_NAMES), hw)
            (tmp / "JPEGImages").mkdir(exist_ok=True)
            Image.fromarray(img).save(tmp / "JPEGImages" / f"{img_id}.jpg", quality=92)
            for d in ("SegmentationClass", "SegmentationClassAug"):
                save_png(tmp / d / f"{img_id}.png", mask, VOC12.palette)
            Image.fromarray(fake_saliency(mask, sal_rng)).save(tmp / "saliency_map" / f"{img_id}.png")
            (tmp / "Annotations").mkdir(exist_ok=True)
            (tmp / "Annotations" / f"{img_id}.xml").write_text(_xml(img_id, hw, mask))
        sets = tmp / "ImageSets" / "Segmentation"
        write_id_list(sets / "train.txt", ids[:n_train])
        write_id_list(sets / "val.txt", ids[n_train_aug:])

    return generate_once(root, params, fill)


def main(argv: Sequence[str] | None = None) -> None:
    """CLI entry point."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=str, default="data/toy_voc")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n_train_aug", type=int, default=400)
    p.add_argument("--n_train", type=int, default=100)
    p.add_argument("--n_val", type=int, default=100)
    p.add_argument("--size", type=int, default=128, help="long side of every image, pixels")
    a = p.parse_args(argv)
    print(write_toy_voc(a.out, a.seed, a.n_train_aug, a.n_train, a.n_val, a.size))


if __name__ == "__main__":
    main()
