"""The built-in toy dataset written in the official MS COCO 2014 layout (80 classes).

    python -m coco14.toy --out data/toy_coco14 [--seed 0 --n_train 400 --n_val 100 --size 128]

Writes ``train2014/COCO_train2014_<id>.jpg`` and ``val2014/COCO_val2014_<id>.jpg`` (image ids 1, 2, ...;
train first), ``annotations/instances_{train,val}2014.json`` (one annotation per connected object region,
its segmentation as uncompressed RLE, ``iscrowd`` 0, COCO's 80 categories) and the class-index masks
``coco_seg_anno/<id>.png`` derived from those JSONs by coco14.make_seg_masks, as for real COCO, and
``saliency_map/<id>.png`` (``misc.toy.fake_saliency``, the input of DRS). Scenes come
from misc.toy.render_scene with 80 classes (8 head colours x 10 body families; ``--classes`` n < 80 draws
objects from n classes spread over the 80, for small runs that can still learn every class); every 12th image (index
5 mod 12) is stored grey-scale and every 12th (index 11 mod 12) holds no object, as COCO has both.
Deterministic from the seed; an existing folder with the same parameters is reused.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image
from scipy import ndimage
from tqdm import tqdm

from coco14.annotations import encode_rle
from coco14.dataloader import CAT_IDS, CLASS_NAMES
from coco14.make_seg_masks import make_seg_masks
from misc.toy import fake_saliency, generate_once, render_scene, scene_shape

GREY_EVERY, GREY_AT, EMPTY_AT = 12, 5, 11


def _annotations(mask: np.ndarray, image_id: int, first_ann_id: int) -> list[dict]:
    """One COCO annotation per connected region of each class of a band-free class-index mask (H, W)."""
    out = []
    for v in np.unique(mask):
        if v == 0:
            continue
        regions, n = ndimage.label(mask == v)
        for r in range(1, n + 1):
            m = regions == r
            ys, xs = np.nonzero(m)
            out.append({"id": first_ann_id + len(out), "image_id": image_id, "category_id": CAT_IDS[v - 1],
                        "segmentation": encode_rle(m), "area": int(m.sum()), "iscrowd": 0,
                        "bbox": [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1),
                                 int(ys.max() - ys.min() + 1)]})
    return out


def toy_classes(n: int) -> np.ndarray:
    """The 0-based COCO classes a toy of ``n`` classes draws from: ``n`` spread evenly over 0..79 (all 80 for
    n = 80), so that small toys still cross the gaps of the category ids. int64 (n,)."""
    if not 1 <= n <= len(CLASS_NAMES):
        raise ValueError(f"toy classes {n}: must be in 1..{len(CLASS_NAMES)}")
    return np.round(np.linspace(0, len(CLASS_NAMES) - 1, n)).astype(np.int64)


def write_toy_coco(root: str | Path, seed: int = 0, n_train: int = 400, n_val: int = 100, size: int = 128,
                   classes: int = 80) -> Path:
    """Generate (or reuse) the toy COCO folder at ``root``; objects are of ``classes`` of the 80 classes
    (``toy_classes``; the pipeline stays 80-way). ``size`` is the long side in pixels. Returns root."""
    params = dict(seed=seed, n_train=n_train, n_val=n_val, size=size, classes=classes, layout="coco2014", version=2)
    lut = np.concatenate([[0], toy_classes(classes) + 1]).astype(np.uint8)
    categories = [{"id": c, "name": n, "supercategory": "toy"} for c, n in zip(CAT_IDS, CLASS_NAMES)]

    def fill(tmp: Path) -> None:
        rng = np.random.default_rng(seed)
        sal_rng = np.random.default_rng([seed, 1])  # its own stream: the scenes stay those of version 1
        (tmp / "saliency_map").mkdir()
        js = {s: {"images": [], "annotations": [], "categories": categories} for s in ("train", "val")}
        n_ann = 0
        for i in tqdm(range(n_train + n_val), desc="toy COCO dataset", leave=False):
            split, image_id = ("train" if i < n_train else "val"), i + 1
            hw = scene_shape(rng, size)
            empty = i % GREY_EVERY == EMPTY_AT
            img, mask = render_scene(rng, classes, hw, band=0, min_objects=0 if empty else 1,
                                     max_objects=0 if empty else 3)
            mask = lut[mask]
            Image.fromarray(fake_saliency(mask, sal_rng)).save(tmp / "saliency_map" / f"{image_id:012d}.png")
            name = f"COCO_{split}2014_{image_id:012d}.jpg"
            (tmp / f"{split}2014").mkdir(exist_ok=True)
            im = Image.fromarray(img)
            (im.convert("L") if i % GREY_EVERY == GREY_AT else im).save(tmp / f"{split}2014" / name, quality=92)
            js[split]["images"].append({"id": image_id, "file_name": name, "height": hw[0], "width": hw[1]})
            anns = _annotations(mask, image_id, n_ann + 1)
            js[split]["annotations"] += anns
            n_ann += len(anns)
        (tmp / "annotations").mkdir()
        for split, data in js.items():
            (tmp / "annotations" / f"instances_{split}2014.json").write_text(json.dumps(data))
        make_seg_masks(tmp)

    return generate_once(root, params, fill)


def main(argv: Sequence[str] | None = None) -> None:
    """CLI entry point."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=str, default="data/toy_coco14")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n_train", type=int, default=400)
    p.add_argument("--n_val", type=int, default=100)
    p.add_argument("--size", type=int, default=128, help="long side of every image, pixels")
    p.add_argument("--classes", type=int, default=80, help="how many of the 80 classes the objects are drawn from")
    a = p.parse_args(argv)
    print(write_toy_coco(a.out, a.seed, a.n_train, a.n_val, a.size, a.classes))


if __name__ == "__main__":
    main()
