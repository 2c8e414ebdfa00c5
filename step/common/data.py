"""The dataset of a run, its id lists and labels, and where artifacts go."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Callable

import numpy as np

from coco14.dataloader import COCO14
from coco14.make_cls_labels import make_cls_labels as coco14_cls_labels
from coco14.toy import write_toy_coco
from misc import dist
from misc.dataset_spec import DatasetSpec
from misc.errors import UserError
from misc.io import atomic_path, load_cls_labels, read_id_list
from voc12.dataloader import VOC12
from voc12.make_cls_labels import make_cls_labels as voc12_cls_labels
from voc12.toy import write_toy_voc

# --dataset -> (spec class, label and list derivation)
DATASETS: dict[str, tuple[Callable[[Path], DatasetSpec], Callable[[DatasetSpec, Path], dict]]] = {
    "voc12": (VOC12, voc12_cls_labels), "coco14": (COCO14, coco14_cls_labels)}


def out_path(args: argparse.Namespace, name: str) -> Path:
    """An artifact path: ``name`` itself when absolute, else inside ``args.work_dir``."""
    p = Path(name)
    return p if p.is_absolute() else Path(args.work_dir) / p


def meta_dir(args: argparse.Namespace) -> Path:
    """Folder of the run's image-level labels and id lists (written by make_cls_labels)."""
    return Path(args.work_dir) / "meta"


def dataset_root(args: argparse.Namespace) -> Path:
    """The run's dataset folder: --voc12_root / --coco14_root, or the toy folder of --dataset (generated
    when missing: VOC layout with train_aug/train/val, COCO's official layout with train/val)."""
    if not args.toy:
        return Path(args.voc12_root if args.dataset == "voc12" else args.coco14_root)
    if args.dataset == "coco14":
        return write_toy_coco(args.toy_root, args.toy_seed, args.toy_n_train, args.toy_n_val, args.toy_size,
                              args.toy_classes)
    return write_toy_voc(args.toy_root, args.toy_seed, args.toy_n_train_aug, args.toy_n_train, args.toy_n_val,
                         args.toy_size)


def get_dataset(args: argparse.Namespace) -> DatasetSpec:
    """The dataset of this run (--dataset); generates the toy folder and derives labels and lists into
    ``<work_dir>/meta`` when missing or derived from another folder (under torchrun rank 0 does that while
    the other ranks wait, then they find everything in place)."""
    with dist.main_first():
        root = dataset_root(args)
        spec, derive = DATASETS[args.dataset]
        ds = spec(root)
        labels = meta_dir(args) / "cls_labels.json"
        stamp = meta_dir(args) / "source.txt"
        toy = Path(root) / "toy.json"  # a regenerated toy folder (other parameters) needs new labels too
        source = str(Path(root).resolve()) + ("\n" + toy.read_text().strip() if toy.is_file() else "")
        if not labels.is_file() or not stamp.is_file() or stamp.read_text().strip() != source:
            derive(ds, meta_dir(args))
            with atomic_path(stamp) as tmp:
                tmp.write_text(source + "\n")
    return ds


def load_list(args: argparse.Namespace, name: str) -> list[str]:
    """Ids of a list flag: a split name (file ``<meta>/<name>.txt``) or a path to a .txt file."""
    p = Path(name) if ("/" in name or name.endswith(".txt")) else meta_dir(args) / f"{name}.txt"
    return read_id_list(p)


def load_labels(args: argparse.Namespace, ds: DatasetSpec, ids: list[str]) -> dict[str, np.ndarray]:
    """Image-level labels {id: float32 (C,)} of the run, checked to cover ``ids``."""
    path = meta_dir(args) / "cls_labels.json"
    labels = load_cls_labels(path, ds.num_classes)
    missing = [i for i in ids if i not in labels]
    if missing:
        raise UserError(f"{path}: no image-level label for id {missing[0]} ({len(missing)} ids); "
                        "the id list and the dataset do not match")
    return labels
