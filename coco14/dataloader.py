"""The MS COCO 2014 spec (80 classes) and its two folder layouts.

Class spec: the 80 instance categories, whose ids run 1..90 with ten gaps (12, 26, 29, 30, 45, 66, 68, 69,
71, 83), map to 0..79 in increasing id order (``CAT_TO_INDEX``): id 1 'person' -> 0, id 90 'toothbrush'
-> 79. Masks hold c+1 for class c (0 background, 255 ignore), as VOC's.

Image ids are the 12-digit zero-padded COCO image id (``000000057870``): the file stem of the RIB
layout, the stem without its ``COCO_train2014_`` / ``COCO_val2014_`` prefix in the official one, and
``str(image["id"]).zfill(12)`` in the instances JSON (``canonical_id``).

Layouts under the root (detected in this order):
- ``jpeg`` (the one RIB's README gives): ``JPEGImages/<id>.jpg`` holding train and val images,
  ``coco_seg_anno/<id>.png`` class-index masks. Train and val are told apart by
  ``annotations/instances_{train,val}2014.json`` when present, else by RIB's ``train14.txt`` and
  ``val14.txt`` placed in the root.
- ``official``: ``train2014/COCO_train2014_<id>.jpg``, ``val2014/COCO_val2014_<id>.jpg`` and
  ``annotations/instances_{train,val}2014.json``; the class-index masks the evaluation reads are derived
  into ``coco_seg_anno/`` by ``python -m coco14.make_seg_masks``.
"""
from __future__ import annotations

import re
from pathlib import Path

from misc.dataset_spec import DatasetSpec
from misc.errors import UserError

CAT_IDS = (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 27, 28, 31, 32,
           33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55, 56, 57, 58, 59,
           60, 61, 62, 63, 64, 65, 67, 70, 72, 73, 74, 75, 76, 77, 78, 79, 80, 81, 82, 84, 85, 86, 87, 88, 89, 90)
CLASS_NAMES = ("person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
               "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
               "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella",
               "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
               "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
               "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange",
               "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant",
               "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
               "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors",
               "teddy bear", "hair drier", "toothbrush")
CAT_TO_INDEX = {cat: i for i, cat in enumerate(CAT_IDS)}
SPLITS = ("train", "val")  # lists written by coco14.make_cls_labels
SEG_DIR = "coco_seg_anno"

_PREFIX = re.compile(r"^COCO_(train|val)2014_")


def canonical_id(name: str | int) -> str:
    """The canonical image id of a COCO image id, file name or stem: 12-digit zero-padded digits
    ('COCO_val2014_000000000042.jpg', '42', 42 -> '000000000042'). Non-numeric stems are kept as they are."""
    stem = _PREFIX.sub("", Path(str(name)).stem) if not isinstance(name, int) else str(name)
    return stem.zfill(12) if stem.isdigit() else stem


def instances_json(root: Path, split: str) -> Path:
    """Where the instances JSON of a split lives: ``<root>/annotations/instances_<split>2014.json``."""
    return root / "annotations" / f"instances_{split}2014.json"


class COCO14(DatasetSpec):
    """Where MS COCO 2014 files live under ``root`` (either layout, see the module doc), plus the class spec."""

    name = "coco14"
    class_names = CLASS_NAMES
    num_classes = len(CLASS_NAMES)
    sources = ("JPEGImages", "train2014", "val2014", "annotations", SEG_DIR, "train14.txt", "val14.txt")

    def __init__(self, root: str | Path):
        self.root = Path(root)
        if not self.root.is_dir():
            raise UserError(f"{self.root}: COCO root not found; pass --coco14_root pointing at the folder that "
                            "holds JPEGImages/ (RIB layout) or train2014/ and val2014/ (official layout)")
        if (self.root / "JPEGImages").is_dir():
            self.layout = "jpeg"
        elif (self.root / "train2014").is_dir() or (self.root / "val2014").is_dir():
            self.layout = "official"
        else:
            raise UserError(f"{self.root}: neither JPEGImages/ nor train2014/ or val2014/ found; --coco14_root must "
                            "hold JPEGImages/ + coco_seg_anno/ (RIB layout) or train2014/, val2014/ + annotations/")
        self.gt_hint = (f"derive {self.root / SEG_DIR} from annotations/instances_*2014.json with `python -m "
                        f"coco14.make_seg_masks --coco14_root {self.root}`, or unpack RIB's coco_seg_anno/ there")

    def image_path(self, img_id: str) -> Path:
        """Path of the JPEG of an id (official layout: train2014/ first, then val2014/)."""
        if self.layout == "jpeg":
            return self.root / "JPEGImages" / f"{img_id}.jpg"
        p = self.root / "train2014" / f"COCO_train2014_{img_id}.jpg"
        return p if p.is_file() else self.root / "val2014" / f"COCO_val2014_{img_id}.jpg"

    def gt_path(self, img_id: str) -> Path:
        """Path of the class-index mask of an id: ``<root>/coco_seg_anno/<id>.png``."""
        return self.root / SEG_DIR / f"{img_id}.png"
