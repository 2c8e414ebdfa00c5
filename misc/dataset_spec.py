"""What a dataset is, for every layout (VOC 2012, MS COCO 2014): its classes, where an id's image and GT mask
live, the class-index mask convention, checked GT reading and the saliency maps some methods (DRS) take as
input (the torch Datasets that load samples are in ``misc.samples``)."""
from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from tqdm import tqdm

from misc.errors import UserError
from misc.imutils import color_palette, image_size, read_grey, read_label_png
from misc.seeds import IGNORE

SALIENCY_DIR = "saliency_map"  # DRS's folder of saliency maps inside the dataset root


def labels_from_mask(mask: np.ndarray) -> list[int]:
    """Sorted 0-based classes present in a class-index mask (values 1..C; 0 and 255 are not classes)."""
    vals = np.unique(mask)
    return [int(v) - 1 for v in vals if 0 < v < IGNORE]


class DatasetSpec:
    """Base of the dataset classes: class spec plus where an id's image and GT mask live.

    Class c (0-based, as in image-level labels and seed ``keys``) is label value c+1 in masks; 0 is
    background and 255 is ignore. ``num_classes`` counts foreground classes only. Subclasses set ``name``,
    ``class_names``, ``num_classes`` and ``gt_hint`` (the fix for a missing GT mask) and define
    ``image_path`` and ``gt_path``, and ``sources``: the files and folders under ``root`` that the derived
    labels and lists come from (``fingerprint`` keys them). Saliency maps are 8-bit grey PNGs
    ``<saliency root>/<id>.png`` of the image's size (PoolNet's, as DRS publishes them), the root by default
    ``<root>/saliency_map``.
    """

    root: Path
    name: str = ""
    class_names: tuple[str, ...] = ()
    num_classes: int = 0
    palette: np.ndarray = color_palette(256)
    gt_hint: str = "check the dataset root"
    sources: tuple[str, ...] = ()

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
                            f"this is not a {self.name} class-index mask (a colour PNG?): convert it to class "
                            f"indices (0 background, 1..{self.num_classes}, 255 ignore) or drop its id from the lists")
        return mask

    def read_gt(self, img_id: str) -> np.ndarray:
        """The checked GT mask of an id, uint8 (H, W); a missing file is a UserError giving ``gt_hint``."""
        p = self.gt_path(img_id)
        if not p.is_file():
            raise UserError(f"{p}: GT mask not found; {self.gt_hint}")
        return self.check_mask(read_label_png(p), p)

    def fingerprint(self) -> dict[str, str]:
        """What the derived labels and lists depend on: {source (``sources``, relative to ``root``): digest}.
        A folder's digest covers the name, size and modification time of each entry (and the content of
        its .txt list files), a .txt file's its content, another file's its size and modification time;
        'absent' for a source that is not there. Stats only (no image is read): fast on a full dataset."""
        out = {}
        for rel in self.sources:
            p = self.root / rel
            h = hashlib.sha256()
            if p.is_dir():
                with os.scandir(p) as it:
                    for e in sorted(it, key=lambda e: e.name):
                        _digest_file(h, Path(e.path), e.stat())
            elif p.is_file():
                _digest_file(h, p, p.stat())
            else:
                out[rel] = "absent"
                continue
            out[rel] = h.hexdigest()
        return out

    def scan(self, lists: dict[Path, list[str]], threads: int = 8) -> None:
        """Check a dataset before any step uses it: every id of every list (``{list file: ids}``) has its
        image, and every GT mask of these ids that exists holds only 0..C and 255 and has its image's size.
        Reads mask files and image headers (no image is decoded), in ``threads`` threads. The first problem
        is a UserError naming the file and the fix."""
        for where, ids in lists.items():
            missing = [i for i in ids if not self.image_path(i).is_file()]
            if missing:
                raise UserError(f"{where}: id {missing[0]} has no image {self.image_path(missing[0])} "
                                f"({len(missing)} of its {len(ids)} ids); restore the images or drop those ids")
        ids = sorted({i for v in lists.values() for i in v})
        pool = ThreadPoolExecutor(max(1, min(threads, os.cpu_count() or 1)))
        try:
            for _ in tqdm(pool.map(self._check_gt, ids, chunksize=32), total=len(ids), desc="dataset scan",
                          leave=False):
                pass
        finally:
            pool.shutdown(cancel_futures=True)

    def _check_gt(self, img_id: str) -> None:
        """UserError when the GT mask of ``img_id`` exists and holds a bad value or differs from its image in
        size."""
        p = self.gt_path(img_id)
        if not p.is_file():
            return
        mask = self.check_mask(read_label_png(p), p)
        img = self.image_path(img_id)
        if mask.shape != image_size(img):
            (h, w), (ih, iw) = mask.shape, image_size(img)
            raise UserError(f"{p}: mask is {h}x{w} pixels but its image {img} is {ih}x{iw}; a mask must have its "
                            f"image's size: replace the mask (or the image), or drop id {img_id} from the lists")


    def saliency_dir(self, saliency_root: str | Path | None) -> Path:
        """The folder of the saliency maps: ``saliency_root``, or ``<root>/saliency_map`` when None."""
        return Path(saliency_root) if saliency_root is not None else self.root / SALIENCY_DIR

    def check_saliency(self, saliency_root: str | Path | None, ids: list[str]) -> Path:
        """Check, from the file headers, that every id has a saliency map of its image's size; a UserError
        names the first file that is missing or of another size. Returns the folder."""
        folder = self.saliency_dir(saliency_root)
        if not folder.is_dir():
            raise UserError(f"{folder}: saliency folder not found; pass --saliency_root <folder of <id>.png saliency "
                            "maps (PoolNet's, as DRS publishes them)>")
        for i in ids:
            p = folder / f"{i}.png"
            if not p.is_file():
                raise UserError(f"{p}: saliency map not found; every id of the list needs one in --saliency_root")
            if image_size(p) != image_size(self.image_path(i)):
                raise UserError(f"{p}: saliency map of size {image_size(p)}, its image {self.image_path(i)} is "
                                f"{image_size(self.image_path(i))}; resize the maps to their images")
        return folder

    def read_saliency(self, folder: Path, img_id: str) -> np.ndarray:
        """The saliency map of an id from ``folder`` (see ``check_saliency``) as 8-bit grey (an RGB file is
        converted). Returns uint8 (H, W)."""
        return read_grey(folder / f"{img_id}.png")


def _digest_file(h: hashlib._Hash, path: Path, st: os.stat_result) -> None:
    """Add a file's name, size and modification time (and, for a .txt list, its content) to ``h``."""
    h.update(f"{path.name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    if path.suffix == ".txt" and path.is_file():
        h.update(hashlib.sha256(path.read_bytes()).digest())
