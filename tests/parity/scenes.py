"""Small synthetic scenes for the parity fixtures: uint8 images with a class map (regeneration scripts only)."""
from __future__ import annotations

import numpy as np


def scene(rng: np.random.Generator, h: int, w: int, classes: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """A textured background with one ellipse per entry of ``classes`` (later ones on top). Returns (uint8
    RGB (h, w, 3), int64 (h, w) class map: 0 background, c + 1 inside an ellipse of class c)."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    img = np.stack([60 + 80 * yy / h, 90 + 60 * xx / w, 120 - 50 * (yy + xx) / (h + w)], -1)
    img += rng.normal(0, 12, (h, w, 3))
    label = np.zeros((h, w), np.int64)
    for c in classes:
        cy, cx = rng.uniform(0.25, 0.75) * h, rng.uniform(0.25, 0.75) * w
        ry, rx = rng.uniform(0.15, 0.35) * h, rng.uniform(0.15, 0.35) * w
        inside = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1
        img[inside] = rng.uniform(20, 235, 3) + rng.normal(0, 8, (int(inside.sum()), 3))
        label[inside] = c + 1
    return np.clip(np.round(img), 0, 255).astype(np.uint8), label


def ir_label_band(label: np.ndarray, width: int = 2) -> np.ndarray:
    """An IR-label-like uint8 map from a class map: 255 on a band of ``width`` pixels along every class
    border, the class map elsewhere."""
    out = label.astype(np.uint8)
    border = np.zeros(label.shape, bool)
    for dy in range(-width, width + 1):
        for dx in range(-width, width + 1):
            border |= np.roll(label, (dy, dx), (0, 1)) != label
    out[border] = 255
    return out
