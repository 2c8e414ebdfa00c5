"""Pictures for judging seeds by eye: heat maps, colour-coded labels, side-by-side panels (NumPy + PIL only)."""
from __future__ import annotations

from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont


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


def fit_height(tile: np.ndarray, height: int, label: bool = False) -> np.ndarray:
    """Resize an RGB uint8 (H, W, 3) tile to ``height`` rows keeping its aspect (nearest for colour-coded
    labels, bicubic for images and heat maps). Returns uint8 (height, W', 3)."""
    h, w = tile.shape[:2]
    if h == height:
        return tile
    size = (max(1, round(w * height / h)), height)
    resample = Image.Resampling.NEAREST if label else Image.Resampling.BICUBIC
    return np.asarray(Image.fromarray(tile).resize(size, resample))


def _font(px: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """PIL's scalable default font at ``px`` pixels."""
    return ImageFont.load_default(size=px)


ALERT = (200, 0, 0)  # caption colour of a warning (e.g. an empty seed)


def panel(tiles: Sequence[np.ndarray], titles: Sequence[str], height: int | None = None,
          alerts: Sequence[bool] = (), legend: Sequence[tuple[str, Sequence[int]]] = (), pad: int = 4) -> np.ndarray:
    """Lay RGB tiles in a row, each scaled to one ``height`` (default: the tallest tile's), with a caption
    above each (red where ``alerts`` says so) and, with ``legend`` [(name, (r, g, b))], a row of colour
    swatches and names below. The caption font scales with the height (16 px at 256 rows), so captions stay
    readable on large images. Returns uint8 (caption + height [+ legend], W_total, 3)."""
    h = height or max(t.shape[0] for t in tiles)
    tiles = [fit_height(t, h) for t in tiles]
    px = max(11, h // 16)
    font, cap = _font(px), px + px // 2
    w = sum(t.shape[1] for t in tiles) + pad * (len(tiles) - 1)
    rows = _legend_rows(legend, w, font, px) if legend else []
    canvas = Image.new("RGB", (w, cap + h + cap * len(rows)), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    x = 0
    for j, (t, title) in enumerate(zip(tiles, titles)):
        canvas.paste(Image.fromarray(t), (x, cap))
        alert = j < len(alerts) and alerts[j]
        draw.text((x + 2, px // 4), title, fill=ALERT if alert else (0, 0, 0), font=font)
        if alert:
            draw.rectangle([x, cap, x + t.shape[1] - 1, cap + h - 1], outline=ALERT, width=max(2, px // 5))
        x += t.shape[1] + pad
    for r, row in enumerate(rows):
        y = cap + h + cap * r + px // 4
        for x, name, rgb in row:
            draw.rectangle([x, y, x + px, y + px], fill=tuple(int(c) for c in rgb), outline=(0, 0, 0))
            draw.text((x + px + px // 3, y), name, fill=(0, 0, 0), font=font)
    return np.asarray(canvas)


def _legend_rows(legend: Sequence[tuple[str, Sequence[int]]], width: int, font: ImageFont.ImageFont, px: int
                 ) -> list[list[tuple[int, str, Sequence[int]]]]:
    """The legend entries laid out in rows of at most ``width`` pixels: [[(x, name, rgb)]]."""
    rows: list[list[tuple[int, str, Sequence[int]]]] = [[]]
    x = 2
    for name, rgb in legend:
        step = px + px // 3 + int(font.getlength(name)) + px
        if rows[-1] and x + step > width:
            rows.append([])
            x = 2
        rows[-1].append((x, name, rgb))
        x += step
    return rows
