"""Class-index GT masks from the instances JSON: ``<coco14_root>/coco_seg_anno/<id>.png`` (0 background,
1..80 the classes, palette PNG), the files the evaluation reads (RIB ships them ready-made as
coco_seg_anno/). Every image of ``annotations/instances_{train,val}2014.json`` gets one; polygons and RLE
are rasterised by ``coco14.annotations.rasterise`` (the smaller object wins where objects overlap; crowd
regions take their class). Masks that exist are kept unless --overwrite (the step resumes).

    python -m coco14.make_seg_masks --coco14_root data/coco2014 [--out_dir DIR] [--overwrite True]
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

from tqdm import tqdm

from coco14.annotations import load_instances, rasterise
from coco14.dataloader import COCO14, SEG_DIR, SPLITS, instances_json
from misc.cli import guarded, str2bool
from misc.errors import UserError
from misc.io import save_png


def make_seg_masks(root: str | Path, out_dir: str | Path | None = None, overwrite: bool = False) -> int:
    """Write the mask of every image of the root's instances JSONs that has none in ``out_dir`` (default
    ``<root>/coco_seg_anno``). Returns the number of masks written."""
    root = Path(root)
    out_dir = Path(out_dir) if out_dir is not None else root / SEG_DIR
    found = [instances_json(root, s) for s in SPLITS if instances_json(root, s).is_file()]
    if not found:
        raise UserError(f"{root / 'annotations'}: no instances_train2014.json or instances_val2014.json; the masks "
                        "are derived from them (or unpack RIB's coco_seg_anno/ into the root instead)")
    written = 0
    for js in found:
        inst = load_instances(js)
        todo = [i for i in sorted(inst.images) if overwrite or not (out_dir / f"{i}.png").is_file()]
        for img_id in tqdm(todo, desc=f"masks of {js.name}"):
            h, w = inst.images[img_id]
            try:
                mask = rasterise(inst.anns.get(img_id, []), h, w)
            except ValueError as e:
                raise UserError(f"{js}: image {img_id}: bad segmentation ({e}); re-extract the annotations") from None
            save_png(out_dir / f"{img_id}.png", mask, COCO14.palette)
        written += len(todo)
    return written


def main(argv: Sequence[str] | None = None) -> None:
    """CLI entry point."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--coco14_root", required=True, type=str, help="COCO 2014 folder holding annotations/")
    p.add_argument("--out_dir", type=str, default=None, help="mask folder (default <coco14_root>/coco_seg_anno)")
    p.add_argument("--overwrite", type=str2bool, default=False, help="rewrite masks that exist")
    a = p.parse_args(argv)
    n = make_seg_masks(a.coco14_root, a.out_dir, a.overwrite)
    print(f"{n} masks -> {a.out_dir or Path(a.coco14_root) / SEG_DIR}")


if __name__ == "__main__":
    guarded(main)
