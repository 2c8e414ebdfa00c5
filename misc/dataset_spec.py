"""What a dataset is, for every layout (VOC 2012, MS COCO 2014): its classes, where an id's image and GT mask
live, the class-index mask convention and checked GT reading (the torch Datasets that load samples are in
``misc.samples``)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from misc.errors import UserError
from misc.imutils import color_palette, read_label_png
from misc.seeds import IGNORE


def labels_from_mask(mask: np.ndarray) -> list[int]:
    """Sorted 0-based classes present in a class-index mask (values 1..C; 0 and 255 are not classes)."""
    vals = np.unique(mask)
    return [int(v) - 1 for v in vals if 0 < v < IGNORE]


class DatasetSpec:
    """Base of the dataset classes: class spec plus where an id's image and GT mask live.

    Class c (0-based, as in image-level labels and seed ``keys``) is label value c+1 in masks; 0 is
    background and 255 is ignore. ``num_classes`` counts foreground classes only. Subclasses set ``name``,
    ``class_names``, ``num_classes`` and ``gt_hint`` (the fix for a missing GT mask) and define
    ``image_path`` and ``gt_path``.
    """

    name: str = ""
    class_names: tuple[str, ...] = ()
    num_classes: int = 0
    palette: np.ndarray = color_palette(256)
    gt_hint: str = "check the dataset root"

    def image_path(self, img_id: str) -> Path:
        """Path of the image file of an id."""
        raise NotImplementedError

    def gt_path(self, img_id: str) -> Path:
        """Path of the class-index GT mask (PNG) of an id."""
        raise NotImplementedError

    def check_mask(self, mask: np.ndarray, path: Path) -> np.ndarray:
        """Raise a UserError naming ``path`` if the mask holds a value other than 0..C or 255; return it."""
        bad = (mask > self.num_classes) & (mask != IGNORE)
        if bad.any():
            raise UserError(f"{path}: label value {int(mask[bad].max())} outside 0..{self.num_classes} and 255; "
                            f"this is not a {self.name} class-index mask")
        return mask

    def read_gt(self, img_id: str) -> np.ndarray:
        """The checked GT mask of an id, uint8 (H, W); a missing file is a UserError giving ``gt_hint``."""
        p = self.gt_path(img_id)
        if not p.is_file():
            raise UserError(f"{p}: GT mask not found; {self.gt_hint}")
        return self.check_mask(read_label_png(p), p)
