"""Training views of the single-stage methods (ToCo, PUFS): random rescale/flip/crop with the valid-area box,
and the colour, grey-scale, blur and solarize augmentations of their "global" and "local" views; and the
whole normalised images their inference steps (and RS+EPM's) batch.

Random numbers come from NumPy's and Python's global generators (seeded per item by ``misc.dist.PerItemSeed``);
torchvision's colour jitter draws from torch's, which is forked and seeded from NumPy for each item, so an
item's views depend only on its key and the global torch generator is left untouched.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from PIL import Image, ImageFilter, ImageOps
from torch.utils.data import Dataset
from torchvision import transforms

from misc import imutils
from misc.samples import PathFn


@dataclass(frozen=True)
class ViewAug:
    """One view's photometric augmentation: horizontal flip (p 0.5 when ``flip``), colour jitter (brightness 0.4,
    contrast 0.4, saturation 0.2, hue 0.1) with probability ``jitter``, grey-scale with ``gray``, Gaussian blur
    (radius U[0.1, 2]) with ``blur``, solarize (threshold 128) with ``solarize``."""

    flip: bool = True
    jitter: float = 0.8
    gray: float = 0.2
    blur: float = 0.0
    solarize: float = 0.0

    def __call__(self, img: Image.Image) -> tuple[torch.Tensor, bool]:
        """PIL RGB -> (ImageNet-normalised float32 (3, H, W), whether it was flipped)."""
        flipped = self.flip and random.random() < 0.5
        if flipped:
            img = ImageOps.mirror(img)
        if random.random() < self.jitter:
            img = transforms.ColorJitter(0.4, 0.4, 0.2, 0.1)(img)
        if random.random() < self.gray:
            img = ImageOps.grayscale(img).convert("RGB")
        if random.random() < self.blur:
            img = img.filter(ImageFilter.GaussianBlur(radius=random.uniform(0.1, 2.0)))
        if random.random() < self.solarize:
            img = ImageOps.solarize(img, 128)
        return to_input(np.asarray(img)), flipped


class InferenceImages(Dataset):
    """Whole images for inference: item i = {'name', 'img': ImageNet-normalised float32 (3, H, W), 'rgb': uint8
    (H, W, 3), 'label': (C,) multi-hot}; batch same-size images with ``collate_inference``."""

    def __init__(self, image_path: PathFn, ids: Sequence[str], labels: dict[str, np.ndarray]):
        self.image_path, self.ids, self.labels = image_path, list(ids), labels

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict:
        rgb = imutils.read_image(self.image_path(self.ids[i]))
        return {"name": self.ids[i], "img": to_input(rgb), "rgb": rgb,
                "label": torch.from_numpy(self.labels[self.ids[i]])}


def collate_inference(items: list[dict]) -> dict:
    """Batch of ``InferenceImages`` items of one size: names and rgb as lists, img and label stacked."""
    return {"name": [it["name"] for it in items], "img": torch.stack([it["img"] for it in items]),
            "rgb": [it["rgb"] for it in items], "label": torch.stack([it["label"] for it in items])}


def to_input(img: np.ndarray) -> torch.Tensor:
    """uint8 (H, W, 3) -> ImageNet-normalised float32 (3, H, W) tensor."""
    return torch.from_numpy(np.ascontiguousarray(imutils.normalize(img).transpose(2, 0, 1)))


def scale_flip_crop(img: np.ndarray, crop: int, scale: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    """ToCo's geometric augmentation: rescale by U(scale) (bilinear), horizontal flip (p 0.5), random crop x crop
    window; a shorter side is placed at a random offset on a zero (black) canvas. Returns (uint8 (crop, crop, 3),
    img_box int64 (4,) = (h0, h1, w0, w1), the area the image covers)."""
    img = imutils.pil_rescale(img, np.random.uniform(*scale), 1)
    if np.random.rand() < 0.5:
        img = img[:, ::-1]
    h, w = img.shape[:2]
    ch, cw = min(crop, h), min(crop, w)
    sy, sx = np.random.randint(0, h - ch + 1), np.random.randint(0, w - cw + 1)
    dy, dx = np.random.randint(0, crop - ch + 1), np.random.randint(0, crop - cw + 1)
    out = np.zeros((crop, crop, 3), np.uint8)
    out[dy:dy + ch, dx:dx + cw] = img[sy:sy + ch, sx:sx + cw]
    return out, np.array([dy, dy + ch, dx, dx + cw], np.int64)


def resized_crop(img: np.ndarray, size: int, scale: tuple[float, float]) -> Image.Image:
    """torchvision's RandomResizedCrop (area U(scale), aspect log-U(3/4, 4/3), bicubic) to size x size, drawn
    with NumPy (up to 10 tries, then the central crop of the clamped aspect). Returns a PIL image."""
    h, w = img.shape[:2]
    for _ in range(10):
        area = h * w * np.random.uniform(*scale)
        ratio = np.exp(np.random.uniform(np.log(3 / 4), np.log(4 / 3)))
        cw, ch = int(round(np.sqrt(area * ratio))), int(round(np.sqrt(area / ratio)))
        if 0 < cw <= w and 0 < ch <= h:
            y, x = np.random.randint(0, h - ch + 1), np.random.randint(0, w - cw + 1)
            break
    else:
        ch, cw = (h, min(w, int(round(h * 4 / 3)))) if w / h > 4 / 3 else (min(h, int(round(w * 4 / 3))), w)
        y, x = (h - ch) // 2, (w - cw) // 2
    return Image.fromarray(img[y:y + ch, x:x + cw]).resize((size, size), Image.Resampling.BICUBIC)


class _Views(Dataset):
    """Base: ids, their image paths and image-level labels; ``views(img)`` makes the item's tensors."""

    def __init__(self, image_path: PathFn, ids: Sequence[str], labels: dict[str, np.ndarray]):
        self.image_path, self.ids, self.labels = image_path, list(ids), labels

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict:
        img = imutils.read_image(self.image_path(self.ids[i]))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(np.random.randint(2 ** 31)))
            item = self.views(img)
        return {"name": self.ids[i], "cls_labels": torch.from_numpy(self.labels[self.ids[i]]), **item}

    def views(self, img: np.ndarray) -> dict:
        raise NotImplementedError


class ToCoViews(_Views):
    """ToCo's three views of one ``scale_flip_crop`` crop (published ``datasets/voc.py``): 'image' the main view
    (jitter, grey, blur p 1.0), 'local_src' the image the local crops are cut from (blur p 0.5), both of the
    crop, and 'global2' a ``resized_crop`` (scale (0.4, 1)) of the original image (blur p 0.1, solarize p 0.2),
    each (3, crop, crop); 'img_box' (4,) the valid area of the crop. ``jitter``/``gray`` are the colour jitter and
    grey-scale probabilities of all three; ``blur`` False turns blur and solarize off. The main view and the local
    source are flipped independently (published; their region maps are then mirrored for about half the images)
    unless ``same_flip``: one flip for both, and the box mirrored with them."""

    def __init__(self, image_path: PathFn, ids: Sequence[str], labels: dict[str, np.ndarray], crop: int,
                 scale: tuple[float, float] = (0.5, 2.0), jitter: float = 0.8, gray: float = 0.2,
                 same_flip: bool = False, blur: bool = True):
        super().__init__(image_path, ids, labels)
        self.crop, self.scale, self.same_flip = crop, scale, same_flip
        self.main = ViewAug(not same_flip, jitter, gray, blur=1.0 * blur)
        self.local = ViewAug(not same_flip, jitter, gray, blur=0.5 * blur)
        self.glob = ViewAug(True, jitter, gray, blur=0.1 * blur, solarize=0.2 * blur)

    def views(self, img: np.ndarray) -> dict:
        cropped, box = scale_flip_crop(img, self.crop, self.scale)
        if self.same_flip and np.random.rand() < 0.5:
            cropped = np.ascontiguousarray(cropped[:, ::-1])
            box = np.array([box[0], box[1], self.crop - box[3], self.crop - box[2]], np.int64)
        pil = Image.fromarray(cropped)
        return {"image": self.main(pil)[0], "global2": self.glob(resized_crop(img, self.crop, (0.4, 1.0)))[0],
                "local_src": self.local(pil)[0], "img_box": torch.from_numpy(box)}


class PUFSViews(_Views):
    """PUFS's two global views (published ``train_voc.py``): 'view1', 'view2' each a ``resized_crop`` (scale
    (0.32, 1)) of the image, flipped (p 0.5) and colour-jittered with probability ``jitter``, (3, crop, crop)."""

    def __init__(self, image_path: PathFn, ids: Sequence[str], labels: dict[str, np.ndarray], crop: int,
                 jitter: float = 0.5):
        super().__init__(image_path, ids, labels)
        self.crop = crop
        self.aug = ViewAug(True, jitter, gray=0.0)

    def views(self, img: np.ndarray) -> dict:
        return {f"view{v}": self.aug(resized_crop(img, self.crop, (0.32, 1.0)))[0] for v in (1, 2)}
