"""Renderer of the built-in toy scenes: objects told apart by a small part, with a shared body.

Every object is a large textured body plus a small coloured "head" attached to its rim. The body's
texture comes from a family shared by several classes (4 of VOC's 20); only the head (its colour) says
which class of the family the object is. A classifier can therefore score the image from the head
alone, and its CAM peaks there and under-covers the body, as CAMs do on real photos. Backgrounds are
cluttered with muted shapes, lines and noise. GT masks carry a 255 band on every region border.
``fake_saliency`` turns a scene's mask into what a salient-object detector would give (DRS's input).
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from misc.io import default_mode
from misc.seeds import IGNORE

# (short side / long side) choices: a few distinct image shapes, as real datasets have a few dominant sizes
_ASPECTS = (1.0, 0.875, 0.75)


_HEAD_COLORS = np.array([(230, 30, 30), (30, 200, 40), (40, 70, 240), (240, 220, 30),
                         (240, 40, 220), (30, 220, 230), (250, 130, 20), (150, 60, 250)], np.uint8)


def class_design(num_classes: int) -> tuple[int, int]:
    """(head colours, body families) for a class count: class c has head colour c % n_colors and body family
    c // n_colors. 20 classes -> 4 colours x 5 families; 80 -> 8 x 10."""
    n_colors = 4 if num_classes <= 20 else 8
    return n_colors, -(-num_classes // n_colors)


def _family_texture(family: int, h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """Grey body texture of one family (5 patterns x 2 periods). Returns float32 (h, w) in [0, 1]."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    period = rng.uniform(4.5, 5.5) * (1.0 if family // 5 % 2 == 0 else 1.8)
    phase = rng.uniform(0, 2 * np.pi)
    kind = family % 5
    if kind == 0:  # horizontal stripes
        t = np.sin(2 * np.pi * yy / period + phase)
    elif kind == 1:  # vertical stripes
        t = np.sin(2 * np.pi * xx / period + phase)
    elif kind == 2:  # checker
        t = np.sign(np.sin(2 * np.pi * yy / period + phase) * np.sin(2 * np.pi * xx / period + phase))
    elif kind == 3:  # diagonal stripes
        t = np.sin(2 * np.pi * (xx + yy) / (1.4 * period) + phase)
    else:  # dots
        t = np.cos(2 * np.pi * yy / period + phase) * np.cos(2 * np.pi * xx / period + phase)
        t = np.where(t > 0.4, 1.0, -1.0)
    return 0.5 + 0.5 * t.astype(np.float32)


def _background(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """Cluttered muted background. Returns float32 (h, w, 3) in [0, 1]."""
    base = rng.uniform(0.3, 0.6) + rng.normal(0, 0.06, 3)
    img = Image.new("RGB", (w, h), tuple(int(255 * c) for c in base))
    d = ImageDraw.Draw(img)
    for _ in range(rng.integers(6, 14)):
        col = np.clip(base + rng.normal(0, 0.1) + rng.normal(0, 0.05, 3), 0, 1)
        col = tuple(int(255 * c) for c in col)
        x0, y0 = rng.integers(-w // 4, w), rng.integers(-h // 4, h)
        x1, y1 = x0 + rng.integers(w // 8, w // 2), y0 + rng.integers(h // 8, h // 2)
        shape = rng.integers(3)
        if shape == 0:
            d.rectangle([x0, y0, x1, y1], fill=col)
        elif shape == 1:
            d.ellipse([x0, y0, x1, y1], fill=col)
        else:
            d.line([x0, y0, x1, y1], fill=col, width=int(rng.integers(1, 4)))
    out = np.asarray(img, np.float32) / 255.0
    return out + rng.normal(0, 0.04, (h, w, 3)).astype(np.float32)


def scene_shape(rng: np.random.Generator, size: int) -> tuple[int, int]:
    """(H, W) of the next toy image: long side ``size``, short side one of three aspect ratios, landscape
    with probability 0.6."""
    short = int(round(size * _ASPECTS[rng.integers(len(_ASPECTS))]))
    return (short, size) if rng.random() < 0.6 else (size, short)


def generate_once(root: str | Path, params: dict, fill: Callable[[Path], None]) -> Path:
    """Build a generated dataset folder once: ``fill(tmp)`` writes it into a temporary sibling folder,
    which then replaces ``root`` with ``params`` stamped in ``toy.json``. A folder already stamped with
    the same ``params`` is reused as is. Returns ``root``."""
    root = Path(root)
    stamp = root / "toy.json"
    if stamp.is_file() and json.loads(stamp.read_text()) == params:
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=root.parent, prefix=f".{root.name}."))
    os.chmod(tmp, default_mode(folder=True))  # mkdtemp makes it 0700
    fill(tmp)
    (tmp / "toy.json").write_text(json.dumps(params) + "\n")
    if root.exists():
        shutil.rmtree(root)
    tmp.rename(root)
    return root


def render_scene(rng: np.random.Generator, num_classes: int, size: tuple[int, int], max_objects: int = 3,
                 band: int = 1, min_objects: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Draw one toy scene of (H, W) = size with min_objects..max_objects non-overlapping objects (0 gives
    a background-only scene).

    Returns (image uint8 (H, W, 3), mask uint8 (H, W)) where the mask holds 0 for background, c+1 for
    class c, and 255 on a band of ``band`` pixels each side of every region border (``band`` 0: none).
    """
    h, w = size
    img = _background(h, w, rng)
    mask = np.zeros((h, w), np.uint8)
    n_colors, _ = class_design(num_classes)
    colors = _HEAD_COLORS[:n_colors].astype(np.float32) / 255.0
    n_obj = int(rng.integers(min_objects, max_objects + 1))
    placed: list[tuple[float, float, float]] = []
    first_cls = None
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    s = min(h, w)
    for _ in range(n_obj):
        cls = first_cls if (first_cls is not None and rng.random() < 0.3) else int(rng.integers(num_classes))
        for _try in range(30):
            a = rng.uniform(0.17, 0.30) * s  # semi-axes of the body ellipse
            b = a * rng.uniform(0.55, 0.9)
            cy, cx = rng.uniform(a * 0.8, h - a * 0.8), rng.uniform(a * 0.8, w - a * 0.8)
            r_out = a * 1.35
            if all((cy - py) ** 2 + (cx - px) ** 2 > (r_out + pr) ** 2 for py, px, pr in placed):
                break
        else:
            continue
        placed.append((cy, cx, r_out))
        first_cls = cls if first_cls is None else first_cls
        theta = rng.uniform(0, np.pi)
        ct, st = np.cos(theta), np.sin(theta)
        u = (xx - cx) * ct + (yy - cy) * st
        v = -(xx - cx) * st + (yy - cy) * ct
        body = (u / a) ** 2 + (v / b) ** 2 <= 1.0
        # the head: a small disc centred on the rim at one end of the long axis
        side = 1.0 if rng.random() < 0.5 else -1.0
        hr = a * rng.uniform(0.28, 0.36)
        hx, hy = cx + side * a * ct, cy + side * a * st
        head = (xx - hx) ** 2 + (yy - hy) ** 2 <= hr ** 2
        family = cls // n_colors
        tint = rng.uniform(0.35, 0.75) + rng.normal(0, 0.03, 3)
        tex = _family_texture(family, h, w, rng)[..., None]
        body_rgb = np.clip(tint * (0.55 + 0.6 * tex), 0, 1)
        head_rgb = np.clip(colors[cls % n_colors] * rng.uniform(0.85, 1.0) + rng.normal(0, 0.03, 3), 0, 1)
        img[body] = body_rgb[body]
        img[head] = head_rgb
        mask[body | head] = cls + 1
    img = np.clip(img + rng.normal(0, 0.02, img.shape), 0, 1)
    return (img * 255).round().astype(np.uint8), _border_band(mask, band)


def _border_band(mask: np.ndarray, band: int) -> np.ndarray:
    """Set to 255 every pixel within ``band`` pixels of a pixel of another label."""
    if band <= 0:
        return mask
    p = np.pad(mask, band, mode="edge")
    h, w = mask.shape
    edge = np.zeros_like(mask, bool)
    for dy in range(-band, band + 1):
        for dx in range(-band, band + 1):
            edge |= p[band + dy:band + dy + h, band + dx:band + dx + w] != mask
    out = mask.copy()
    out[edge] = IGNORE
    return out


def fake_saliency(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A salient-object detector's output for a scene of class-index ``mask`` (H, W) (0 background, 255 border
    band counted as object): each class's objects at a strength U(0.55, 1), sometimes (p 0.3) one spurious
    background blob at U(0.2, 0.6), Gaussian blur (sigma 2 px), noise (std 0.08). Returns uint8 (H, W), 0..255
    (DRS calls a pixel salient above 50)."""
    h, w = mask.shape
    sal = np.zeros((h, w), np.float32)
    for v in np.unique(mask):
        if v != 0:
            sal[mask == v] = rng.uniform(0.55, 1.0)
    if rng.random() < 0.3:
        yy, xx = np.mgrid[0:h, 0:w]
        cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(0.05, 0.15) * min(h, w)
        blob = ((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r) & (mask == 0)
        sal[blob] = rng.uniform(0.2, 0.6)
    sal = ndimage.gaussian_filter(sal, 2.0) + rng.normal(0, 0.08, (h, w))
    return (np.clip(sal, 0, 1) * 255).round().astype(np.uint8)
