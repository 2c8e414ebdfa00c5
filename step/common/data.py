"""The dataset of a run, its id lists and labels, and where artifacts go."""
from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path
from typing import Callable

import numpy as np

from coco14.dataloader import COCO14
from coco14.make_cls_labels import make_cls_labels as coco14_cls_labels
from coco14.toy import write_toy_coco
from misc import dist
from misc.dataset_spec import DatasetSpec
from misc.errors import UserError
from misc.io import load_cls_labels, read_id_list, save_json
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
    ``<work_dir>/meta`` when missing (under torchrun rank 0 does that while the other ranks wait, then they
    find everything in place).

    The meta is keyed by what it was derived from (``DatasetSpec.fingerprint``: the list files' content,
    the names, sizes and modification times of the image, annotation and mask folders), stored in
    ``<meta>/source.json``. When the dataset changed since (regenerated in place, SegmentationClassAug
    added, ...), the labels, lists and every artifact of the work folder may be stale: UserError naming
    what changed, unless --overwrite, which derives the meta again (and makes every step recompute)."""
    with dist.main_first():
        root = dataset_root(args)
        spec, derive = DATASETS[args.dataset]
        ds = spec(root)
        labels = meta_dir(args) / "cls_labels.json"
        stamp = meta_dir(args) / "source.json"
        now = ds.fingerprint()
        try:
            then = json.loads(stamp.read_text()) if labels.is_file() else None
        except (OSError, ValueError):
            then = None  # no record (a fresh work folder, a torn or older stamp): derive
        if then != now:
            if then is not None and not args.overwrite:
                raise UserError(f"{root}: changed since {meta_dir(args)} was derived from it ({_changes(then, now)}); "
                                f"its labels, lists and the artifacts in {args.work_dir} may be stale: rerun with "
                                "--overwrite True to derive and compute them again, or pass a new --work_dir")
            derive(ds, meta_dir(args))
            save_json(stamp, now)
    return ds


def _changes(then: dict[str, str], now: dict[str, str]) -> str:
    """'SegmentationClassAug added, JPEGImages changed': the sources whose digest differs."""
    def what(old: str, new: str) -> str:
        return "added" if old == "absent" else "removed" if new == "absent" else "changed"
    return ", ".join(f"{k} {what(then.get(k, 'absent'), v)}" for k, v in now.items() if then.get(k, "absent") != v)


def load_list(args: argparse.Namespace, name: str) -> list[str]:
    """Ids of a list flag: a split name (file ``<meta>/<name>.txt``) or a path to a .txt file."""
    p = Path(name) if ("/" in name or name.endswith(".txt")) else meta_dir(args) / f"{name}.txt"
    return read_id_list(p)


def data_digest(args: argparse.Namespace) -> str:
    """SHA-256 (hex) of what a training step's data is beyond its flags: the dataset's fingerprint recorded
    in ``<meta>/source.json`` (by ``get_dataset``) and the ids of --train_list."""
    h = hashlib.sha256()
    stamp = meta_dir(args) / "source.json"
    h.update(stamp.read_bytes() if stamp.is_file() else b"-")
    try:
        h.update("\n".join(load_list(args, args.train_list)).encode())
    except UserError:  # no list yet: the step that needs it reports that
        h.update(b"-")
    return h.hexdigest()


def load_labels(args: argparse.Namespace, ds: DatasetSpec, ids: list[str]) -> dict[str, np.ndarray]:
    """Image-level labels {id: float32 (C,)} of the run, checked to cover ``ids``."""
    path = meta_dir(args) / "cls_labels.json"
    labels = load_cls_labels(path, ds.num_classes)
    missing = [i for i in ids if i not in labels]
    if missing:
        raise UserError(f"{path}: no image-level label for id {missing[0]} ({len(missing)} ids); "
                        "the id list and the dataset do not match")
    return labels
