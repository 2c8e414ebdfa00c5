"""The VOC 2012 dataset spec and its folder layout (JPEGImages, SegmentationClass[Aug], Annotations, ImageSets)."""
from __future__ import annotations

from pathlib import Path

from misc.dataset_spec import DatasetSpec
from misc.errors import UserError

CLASS_NAMES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
               "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
               "train", "tvmonitor")


class VOC12(DatasetSpec):
    """Where VOC-format files live under ``root``, plus the class spec (misc.dataset_spec.DatasetSpec: class c
    is mask value c+1, 0 background, 255 ignore)."""

    name = "voc12"
    class_names = CLASS_NAMES
    num_classes = len(CLASS_NAMES)
    gt_hint = "check --voc12_root (SegmentationClass/ or SegmentationClassAug/ must hold it)"
    sources = ("JPEGImages", "Annotations", "SegmentationClass", "SegmentationClassAug", "ImageSets/Segmentation")

    def __init__(self, root: str | Path):
        self.root = Path(root)
        if not self.root.is_dir():
            raise UserError(f"{self.root}: VOC root not found; pass --voc12_root pointing at VOCdevkit/VOC2012")
        if not (self.root / "JPEGImages").is_dir():
            raise UserError(f"{self.root / 'JPEGImages'}: folder missing; --voc12_root must be the VOC2012 folder "
                            "that holds JPEGImages/")

    def image_path(self, img_id: str) -> Path:
        """Path of the JPEG of an id."""
        return self.root / "JPEGImages" / f"{img_id}.jpg"

    def gt_path(self, img_id: str) -> Path:
        """Path of the segmentation GT of an id: SegmentationClass, else SegmentationClassAug."""
        p = self.root / "SegmentationClass" / f"{img_id}.png"
        if p.is_file():
            return p
        aug = self.root / "SegmentationClassAug" / f"{img_id}.png"
        return aug if aug.is_file() else p
