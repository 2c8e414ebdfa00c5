"""Image-level labels and the train / val id lists of an MS COCO 2014 folder (either layout).

Lists hold the images on disk: the official layout's ``train2014/`` and ``val2014/`` (82,783 and 40,504
images); the RIB layout's ``JPEGImages/`` split by ``annotations/instances_{train,val}2014.json``, else by
RIB's ``train14.txt`` / ``val14.txt`` in the root. Labels come from the instances JSON of the split when
it is there (every annotation's category, crowd ones included; an image without annotations gets no
class, i.e. all background), else from the class-index mask ``coco_seg_anno/<id>.png`` (values 1..80).
The lists are scanned (``DatasetSpec.scan``: images present, GT masks of class values and of their
image's size). Written to ``<out_dir>/cls_labels.json`` ({id: [0-based classes]}, the VOC format) and
``<out_dir>/{train,val}.txt``; ids are the 12-digit canonical ones (coco14.dataloader.canonical_id).

    python -m coco14.make_cls_labels --coco14_root data/coco2014 --out_dir runs/coco14/meta
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

from tqdm import tqdm

from coco14.annotations import load_instances
from coco14.dataloader import COCO14, SPLITS, canonical_id, instances_json
from misc.dataset_spec import labels_from_mask
from misc.errors import UserError
from misc.io import save_json, write_id_list


def split_ids(ds: COCO14, split: str, json_ids: list[str] | None) -> list[str]:
    """Sorted canonical ids of a split's images on disk. ``json_ids``: the split's image ids from its
    instances JSON, or None when there is none (the RIB layout then reads ``<root>/<split>14.txt``)."""
    if ds.layout == "official":
        return sorted(canonical_id(p.name) for p in (ds.root / f"{split}2014").glob("*.jpg"))
    members = json_ids
    if members is None:
        txt = ds.root / f"{split}14.txt"
        if not txt.is_file():
            raise UserError(f"{ds.root}: cannot tell {split} images apart in JPEGImages/; put "
                            f"annotations/instances_{split}2014.json or RIB's {split}14.txt in this folder")
        members = [canonical_id(ln.split()[0]) for ln in txt.read_text().splitlines() if ln.strip()]
    on_disk = {p.stem for p in (ds.root / "JPEGImages").glob("*.jpg")}
    return sorted(set(members) & on_disk)


def _list_source(ds: COCO14, split: str) -> Path:
    """Where a split's ids come from (named in errors): its images' folder (official layout), else its
    instances JSON or RIB's ``<split>14.txt``."""
    if ds.layout == "official":
        return ds.root / f"{split}2014"
    js = instances_json(ds.root, split)
    return js if js.is_file() else ds.root / f"{split}14.txt"


def make_cls_labels(ds: COCO14, out_dir: str | Path) -> dict[str, list[int]]:
    """Derive the lists and the labels of every listed id and write them to ``out_dir``. Returns the labels."""
    out_dir = Path(out_dir)
    labels: dict[str, list[int]] = {}
    lists: dict[str, list[str]] = {}
    for split in SPLITS:
        js = instances_json(ds.root, split)
        from_json = load_instances(js).labels() if js.is_file() else {}
        lists[split] = ids = split_ids(ds, split, list(from_json) if js.is_file() else None)
        for img_id in tqdm(ids, desc=f"{split} image-level labels", leave=False):
            labels[img_id] = from_json[img_id] if img_id in from_json else labels_from_mask(ds.read_gt(img_id))
    if not labels:
        raise UserError(f"{ds.root}: no images found in either split; check --coco14_root")
    ds.scan({_list_source(ds, s): ids for s, ids in lists.items()})
    save_json(out_dir / "cls_labels.json", labels)
    for split, ids in lists.items():
        write_id_list(out_dir / f"{split}.txt", ids)
    return labels


def main(argv: Sequence[str] | None = None) -> None:
    """CLI entry point."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--coco14_root", required=True, type=str, help="COCO 2014 folder (either layout)")
    p.add_argument("--out_dir", required=True, type=str, help="where cls_labels.json and the lists go")
    a = p.parse_args(argv)
    labels = make_cls_labels(COCO14(a.coco14_root), a.out_dir)
    print(f"{len(labels)} labelled ids -> {a.out_dir}")


if __name__ == "__main__":
    from misc.cli import guarded
    guarded(main)
