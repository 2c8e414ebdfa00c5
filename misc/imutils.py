"""Image reading, resizing and augmentation on NumPy HWC arrays (PIL does every resize, as IRN does)."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from misc.errors import UserError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_PIL_ORDER = {3: Image.Resampling.BICUBIC, 0: Image.Resampling.NEAREST, 1: Image.Resampling.BILINEAR}


def read_image(path: str | Path, mode: str = "RGB") -> np.ndarray:
    """Read an image file in PIL ``mode``: 'RGB' returns uint8 (H, W, 3) (grey-scale and palette images become 3
    channels), 'L' uint8 (H, W) 8-bit grey (colour converted)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: image not found; check the dataset root and the id list")
    try:
        with Image.open(path) as im:
            return np.array(im.convert(mode))
    except (UnidentifiedImageError, OSError) as e:
        raise UserError(f"{path}: unreadable image ({e}); re-extract or replace it, or drop this id") from None


def read_grey(path: str | Path) -> np.ndarray:
    """Read an image file as 8-bit grey (PIL 'L', an RGB file converted). Returns uint8 (H, W)."""
    return read_image(path, "L")


def read_label_png(path: str | Path) -> np.ndarray:
    """Read a label PNG keeping its stored values (palette indices, not colours). Returns uint8 (H, W)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: label PNG not found; check the dataset root or the output folder of the step that "
                        "writes it")
    try:
        with Image.open(path) as im:
            if im.mode not in ("P", "L"):
                raise UserError(f"{path}: label PNG has mode {im.mode}, expected a palette (P) or grey (L) index image")
            return np.array(im)
    except (UnidentifiedImageError, OSError) as e:
        raise UserError(f"{path}: unreadable label PNG ({e}); regenerate it") from None


def image_size(path: str | Path) -> tuple[int, int]:
    """Return (H, W) of an image file from its header, without decoding the pixels."""
    path = Path(path)
    try:
        with Image.open(path) as im:
            w, h = im.size
    except FileNotFoundError:
        raise UserError(f"{path}: image not found; check the dataset root and the id list") from None
    except (UnidentifiedImageError, OSError) as e:
        raise UserError(f"{path}: unreadable image ({e}); re-extract or remove this id from the list") from None
    return h, w


def color_palette(n: int = 256) -> np.ndarray:
    """The PASCAL VOC colour map (bit-interleaved). Returns uint8 (n, 3); index 255 is (224, 224, 192)."""
    pal = np.zeros((n, 3), np.uint8)
    for i in range(n):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        pal[i] = (r, g, b)
    return pal


def pil_resize(img: np.ndarray, size: tuple[int, int], order: int) -> np.ndarray:
    """Resize an HW or HWC uint8 array to size = (H, W) with PIL (order 3 bicubic, 1 bilinear, 0 nearest)."""
    if img.shape[:2] == tuple(size):
        return img
    return np.asarray(Image.fromarray(img).resize((size[1], size[0]), _PIL_ORDER[order]))


def pil_rescale(img: np.ndarray, scale: float, order: int) -> np.ndarray:
    """Rescale by a factor: the new size is (round(H*scale), round(W*scale))."""
    h, w = img.shape[:2]
    return pil_resize(img, (int(round(h * scale)), int(round(w * scale))), order)


def downsample_label(label, factor: int):
    """Nearest-neighbour label reduction by an integer factor, as PIL NEAREST does for sides divisible by
    it (PIL samples each output pixel's centre, i.e. input index factor * i + factor // 2). Works on numpy
    arrays and torch tensors (..., H, W) with H and W divisible by ``factor``; returns a view
    (..., H / factor, W / factor)."""
    o = factor // 2
    return label[..., o::factor, o::factor]


def color_jitter(img: np.ndarray, brightness: float, contrast: float, saturation: float, hue: float) -> np.ndarray:
    """torchvision's ColorJitter drawn from NumPy's global generator (so ``misc.dist.PerItemSeed`` seeds it):
    brightness, contrast and saturation factors U(1 - b, 1 + b), hue shift U(-h, h), applied in a random
    order with torchvision's functional ops; a 0 parameter skips its op, as torchvision does. uint8 (H, W, 3) ->
    uint8 (H, W, 3)."""
    import torchvision.transforms.functional as TF

    ops = [(TF.adjust_brightness, np.random.uniform(max(0.0, 1 - brightness), 1 + brightness), brightness),
           (TF.adjust_contrast, np.random.uniform(max(0.0, 1 - contrast), 1 + contrast), contrast),
           (TF.adjust_saturation, np.random.uniform(max(0.0, 1 - saturation), 1 + saturation), saturation),
           (TF.adjust_hue, np.random.uniform(-hue, hue), hue)]
    im = Image.fromarray(img)
    for k in np.random.permutation(4):
        fn, factor, amount = ops[k]
        if amount > 0:
            im = fn(im, float(factor))
    return np.asarray(im)


def random_resize_long(img: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """Resize so the long side is an integer drawn uniformly from [lo, hi] (bicubic, aspect kept)."""
    target = np.random.randint(lo, hi + 1)
    h, w = img.shape[:2]
    return pil_rescale(img, target / max(h, w), 3)


def random_scale_pair(img: np.ndarray, label: np.ndarray, lo: float, hi: float) -> tuple[np.ndarray, np.ndarray]:
    """Rescale image (bicubic) and label (nearest) by one factor drawn from U(lo, hi)."""
    s = np.random.uniform(lo, hi)
    return pil_rescale(img, s, 3), pil_rescale(label, s, 0)


def normalize(img: np.ndarray) -> np.ndarray:
    """ImageNet normalisation of a uint8 RGB image, computed in float64 and rounded once to float32, as IRN's
    loader does (so inputs are bit-identical to the published code's). Returns float32 (H, W, 3)."""
    x = img / 255.0
    return ((x - np.asarray(IMAGENET_MEAN)) / np.asarray(IMAGENET_STD)).astype(np.float32)


def random_crop(arrays: Sequence[np.ndarray], crop: int, fills: Sequence[float]) -> list[np.ndarray]:
    """Crop every array with one shared random crop x crop box.

    A side longer than ``crop`` gets a random window; a shorter side is placed at a random offset in a
    container filled with the matching value of ``fills``. Returns arrays of spatial size (crop, crop).
    """
    h, w = arrays[0].shape[:2]
    ch, cw = min(crop, h), min(crop, w)
    src_y = np.random.randint(0, h - ch + 1)
    src_x = np.random.randint(0, w - cw + 1)
    dst_y = np.random.randint(0, crop - ch + 1)
    dst_x = np.random.randint(0, crop - cw + 1)
    out = []
    for a, fill in zip(arrays, fills):
        c = np.full((crop, crop) + a.shape[2:], fill, a.dtype)
        c[dst_y:dst_y + ch, dst_x:dst_x + cw] = a[src_y:src_y + ch, src_x:src_x + cw]
        out.append(c)
    return out


def top_left_crop(img: np.ndarray, crop: int, fill: float) -> np.ndarray:
    """Top-left crop x crop window; a shorter side is padded with ``fill`` at the bottom/right."""
    c = np.full((crop, crop) + img.shape[2:], fill, img.dtype)
    h, w = min(crop, img.shape[0]), min(crop, img.shape[1])
    c[:h, :w] = img[:h, :w]
    return c


def strided_size(size: tuple[int, int], stride: int) -> tuple[int, int]:
    """Feature size of an (H, W) input at a stride: ((H-1)//stride+1, (W-1)//stride+1). 500x375 -> 125x94 at 4."""
    return (size[0] - 1) // stride + 1, (size[1] - 1) // stride + 1


def strided_up_size(size: tuple[int, int], stride: int) -> tuple[int, int]:
    """The stride-aligned size that covers (H, W): strided_size * stride."""
    h, w = strided_size(size, stride)
    return h * stride, w * stride
