"""Pictures for judging seeds by eye: heat maps, colour-coded labels, side-by-side panels (NumPy + PIL only)."""
from __future__ import annotations

from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw


def heatmap(score: np.ndarray) -> np.ndarray:
    """Jet-like colour map of a (H, W) score in [0, 1]. Returns uint8 (H, W, 3)."""
    s = np.clip(score, 0, 1)[..., None]
    r = np.clip(1.5 - np.abs(4 * s - 3), 0, 1)
    g = np.clip(1.5 - np.abs(4 * s - 2), 0, 1)
    b = np.clip(1.5 - np.abs(4 * s - 1), 0, 1)
    return (np.concatenate([r, g, b], -1) * 255).astype(np.uint8)


def overlay(img: np.ndarray, score: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend the heat map of ``score`` (H, W) over an RGB uint8 image (H, W, 3). Returns uint8 (H, W, 3)."""
    return (img * (1 - alpha) + heatmap(score) * alpha).astype(np.uint8)


def colorize(label: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """Colour a (H, W) index map with a (256, 3) palette. Returns uint8 (H, W, 3)."""
    return palette[label]


def panel(tiles: Sequence[np.ndarray], titles: Sequence[str], pad: int = 4) -> np.ndarray:
    """Lay same-height RGB tiles in a row with a caption strip above each. Returns uint8 (H+14, W_total, 3)."""
    h = max(t.shape[0] for t in tiles)
    w = sum(t.shape[1] for t in tiles) + pad * (len(tiles) - 1)
    canvas = Image.new("RGB", (w, h + 14), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    x = 0
    for t, title in zip(tiles, titles):
        canvas.paste(Image.fromarray(t), (x, 14))
        draw.text((x + 2, 1), title, fill=(0, 0, 0))
        x += t.shape[1] + pad
    return np.asarray(canvas)
