"""The VOC 2012 dataset spec and its folder layout (JPEGImages, SegmentationClass[Aug], Annotations, ImageSets)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from misc.errors import UserError
from misc.imutils import color_palette

CLASS_NAMES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
               "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
               "train", "tvmonitor")
IGNORE = 255


class VOC12:
    """Where VOC-format files live under ``root``, plus the class spec.

    Class c (0-based, as in image-level labels and seed ``keys``) is label value c+1 in masks; 0 is
    background and 255 is ignore. ``num_classes`` counts foreground classes only.
    """

    name = "voc12"
    class_names = CLASS_NAMES
    num_classes = len(CLASS_NAMES)
    palette = color_palette(256)

    def __init__(self, root: str | Path):
        self.root = Path(root)
        if not self.root.is_dir():
            raise UserError(f"{self.root}: VOC root not found; pass --voc12_root pointing at VOCdevkit/VOC2012")
        if not (self.root / "JPEGImages").is_dir():
            raise UserError(f"{self.root / 'JPEGImages'}: folder missing; --voc12_root must be the VOC2012 folder that holds JPEGImages/")

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

    def check_mask(self, mask: np.ndarray, path: Path) -> np.ndarray:
        """Raise a UserError naming ``path`` if the mask holds a value other than 0..C or 255; return it."""
        bad = (mask > self.num_classes) & (mask != IGNORE)
        if bad.any():
            raise UserError(f"{path}: label value {int(mask[bad].max())} outside 0..{self.num_classes} and 255; "
                            f"this is not a {self.name} class-index mask")
        return mask
