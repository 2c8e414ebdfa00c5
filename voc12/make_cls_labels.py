"""Image-level labels and id lists for a VOC-format folder.

Labels come from ``Annotations/<id>.xml`` (VOC class tags only; part names such as 'head' are not
classes) or, for an id without XML, from its segmentation PNG (SegmentationClassAug, else
SegmentationClass). Lists: ``train`` and ``val`` from ImageSets/Segmentation, ``train_aug`` =
SegmentationClassAug ids minus val (10,582 on VOC + SBD); without SegmentationClassAug, train_aug =
every labelled id minus val. The lists are then scanned (``DatasetSpec.scan``: images present, GT masks of
class values and of their image's size). Written to ``<out_dir>/cls_labels.json`` ({id: [0-based classes]}) and
``<out_dir>/<split>.txt``.

    python -m voc12.make_cls_labels --voc12_root VOCdevkit/VOC2012 --out_dir runs/voc12/meta
"""
from __future__ import annotations

import argparse
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Sequence

from tqdm import tqdm

from misc.dataset_spec import labels_from_mask
from misc.errors import UserError
from misc.io import read_id_list, save_json, write_id_list
from voc12.dataloader import VOC12


def labels_from_xml(path: Path, class_names: Sequence[str]) -> list[int]:
    """Sorted 0-based classes of the ``<object><name>`` tags of a VOC XML that are class names."""
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as e:
        raise UserError(f"{path}: malformed annotation XML ({e}); re-extract Annotations/") from None
    index = {n: i for i, n in enumerate(class_names)}
    names = {(o.findtext("name") or "").strip() for o in root.iter("object")}
    return sorted(index[n] for n in names if n in index)


def make_cls_labels(ds: VOC12, out_dir: str | Path) -> dict[str, list[int]]:
    """Derive labels and lists for every id of ``ds`` and write them to ``out_dir``. Returns the labels."""
    out_dir = Path(out_dir)
    ann, seg, aug = ds.root / "Annotations", ds.root / "SegmentationClass", ds.root / "SegmentationClassAug"
    xml_ids = {p.stem for p in ann.glob("*.xml")} if ann.is_dir() else set()
    png_ids = set()
    for d in (seg, aug):
        if d.is_dir():
            png_ids |= {p.stem for p in d.glob("*.png")}
    if not xml_ids and not png_ids:
        raise UserError(f"{ds.root}: neither Annotations/*.xml nor SegmentationClass[Aug]/*.png found; "
                        "image-level labels cannot be derived")
    labels: dict[str, list[int]] = {}
    for img_id in tqdm(sorted(xml_ids | png_ids), desc="image-level labels", leave=False):
        if img_id in xml_ids:
            labels[img_id] = labels_from_xml(ann / f"{img_id}.xml", ds.class_names)
        else:
            labels[img_id] = labels_from_mask(ds.read_gt(img_id))

    sets = ds.root / "ImageSets" / "Segmentation"
    lists: dict[str, list[str]] = {}
    for split in ("train", "val"):
        if (sets / f"{split}.txt").is_file():
            lists[split] = read_id_list(sets / f"{split}.txt")
    val = set(lists.get("val", []))
    pool = sorted(p.stem for p in aug.glob("*.png")) if aug.is_dir() else sorted(labels)
    lists["train_aug"] = [i for i in pool if i not in val]
    where = {"train": sets / "train.txt", "val": sets / "val.txt", "train_aug": aug if aug.is_dir() else ds.root}
    for split, ids in lists.items():
        missing = [i for i in ids if i not in labels]
        if missing:
            raise UserError(f"{where[split]}: id {missing[0]} has neither XML nor mask "
                            f"({len(missing)} such ids); the dataset folder is incomplete")
    ds.scan({where[s]: ids for s, ids in lists.items()})
    save_json(out_dir / "cls_labels.json", labels)
    for split, ids in lists.items():
        write_id_list(out_dir / f"{split}.txt", ids)
    return labels


def main(argv: Sequence[str] | None = None) -> None:
    """CLI entry point."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--voc12_root", required=True, type=str, help="VOC2012 folder (holds JPEGImages/)")
    p.add_argument("--out_dir", required=True, type=str, help="where cls_labels.json and the lists go")
    a = p.parse_args(argv)
    labels = make_cls_labels(VOC12(a.voc12_root), a.out_dir)
    print(f"{len(labels)} labelled ids -> {a.out_dir}")


if __name__ == "__main__":
    from misc.cli import guarded
    guarded(main)
