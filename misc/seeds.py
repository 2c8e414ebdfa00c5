"""The arithmetic of the common seed format and of the labels made from it.

Seeds (``misc.io.save_cam``) hold the CAMs of an image's classes (``keys``, 0-based) at stride 4 (``cam``)
and at full size (``high_res``), each class divided by its max + 1e-5. This module computes them from a
network (``multiscale_cams``, ``resize_merged``, ``normalise_keep``), turns class scores into labels with a
background plane and an argmax (``background_argmax``, ``label_lut``, ``label_from_scores``: the rule of
eval_cam, cam_to_ir_label and make_sem_seg_labels), and random-walks seeds over a boundary map
(``walk_scores``). Labels: 0 background, c + 1 for class c, ``IGNORE`` for unsure or ignored pixels.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from misc.imutils import strided_size, strided_up_size
from misc.randomwalk import random_walk

IGNORE = 255  # label value of unsure (IR labels) and ignored (GT border bands) pixels


def resize_merged(cams: torch.Tensor, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """One scale's contribution: cams (B, 2, C, h, w) of [image, flipped image] are merged (the flipped one
    flipped back and added) and resized bilinearly to the stride-4 size and, via the 16-aligned size and a
    crop, to the full size. Returns (strided (B, C, (H-1)//4+1, (W-1)//4+1), high_res (B, C, H, W))."""
    x = cams[:, 0] + cams[:, 1].flip(-1)
    strided = F.interpolate(x, strided_size(size, 4), mode="bilinear", align_corners=False)
    high = F.interpolate(x, strided_up_size(size, 16), mode="bilinear", align_corners=False)[:, :, :size[0], :size[1]]
    return strided, high


def multiscale_cams(model: Callable[[torch.Tensor], torch.Tensor], views: Sequence[torch.Tensor],
                    size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum of the flip-merged CAMs of every scale for a batch of same-size images.

    model: images (N, 3, h, w) -> class maps (N, C, h', w'); views: list over scales of (B, 2, 3, h_s, w_s)
    [image, flipped]; size: the images' (H, W). Returns (strided (B, C, (H-1)//4+1, (W-1)//4+1), high_res
    (B, C, H, W)), unnormalised, all classes, float32 (the model's output is cast up when it ran under
    autocast).
    """
    strided, high = 0.0, 0.0
    for v in views:
        s, h = resize_merged(model(v.flatten(0, 1)).float().unflatten(0, (v.shape[0], 2)), size)
        strided, high = strided + s, high + h
    return strided, high


def normalise_keep(cam: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """Keep the channels ``keys`` of a (C, h, w) map and divide each by its spatial max + 1e-5. (K, h, w)."""
    x = cam[keys]
    return x / (x.flatten(1).amax(1)[:, None, None] + 1e-5)


def label_lut(keys: np.ndarray) -> np.ndarray:
    """Label value of each background_argmax index: uint8 (K + 1,) = [0, keys[0] + 1, ..., keys[K-1] + 1]."""
    return np.concatenate([[0], np.asarray(keys, np.int64) + 1]).astype(np.uint8)


def background_argmax(scores: np.ndarray | torch.Tensor, bg: float) -> np.ndarray:
    """Index of the top score of every pixel with a constant background plane ``bg`` in front: 0 where no
    score beats ``bg`` (ties go to background), else 1 + the index of the top class. scores: (K, H, W)
    NumPy array (compared in its dtype) or tensor (argmax on its device). Returns int64 (H, W)."""
    if isinstance(scores, torch.Tensor):
        return F.pad(scores, (0, 0, 0, 0, 1, 0), value=bg).argmax(0).cpu().numpy()
    return np.concatenate([np.full((1,) + scores.shape[1:], bg, scores.dtype), scores]).argmax(0)


def label_from_scores(scores: np.ndarray | torch.Tensor, keys: np.ndarray, bg_thres: float) -> np.ndarray:
    """uint8 (H, W) label of class scores (K, H, W) of the classes ``keys``: 0 where every score is at most
    ``bg_thres``, else keys[argmax] + 1."""
    return label_lut(keys)[background_argmax(scores, bg_thres)]


def walk_scores(cams: list[torch.Tensor], boundary: torch.Tensor, size: tuple[int, int], power: float,
                radius: int, beta: float, exp_times: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Random-walked class scores of a batch of same-size images, divided by each image's global max.

    cams: per image (K_i, h, w) stride-4 seeds; boundary: (N, 1, h, w) in [0, 1]; size: the images' (H, W).
    Each seed is clamped at 0, raised to ``power`` and walked (``misc.randomwalk.random_walk``). Returns per
    image (stride-4 scores (K_i, h, w), full-size scores (K_i, H, W)), both divided by the max of the
    full-size (bilinear x4) scores, as IRN normalises; K_i = 0 gives empty maps.
    """
    kmax = max(c.shape[0] for c in cams)
    n, _, h, w = boundary.shape
    if kmax == 0:
        return [(boundary.new_zeros(0, h, w), boundary.new_zeros((0,) + tuple(size))) for _ in cams]
    x = boundary.new_zeros(n, kmax, h, w)
    for j, c in enumerate(cams):
        x[j, :c.shape[0]] = c.to(x.device, x.dtype).clamp_min(0) ** power
    rw = random_walk(x, boundary, radius=radius, beta=beta, exp_times=exp_times)
    up = F.interpolate(rw, scale_factor=4, mode="bilinear", align_corners=False)[..., :size[0], :size[1]]
    out = []
    for j, c in enumerate(cams):
        k = c.shape[0]
        peak = up[j, :k].max().clamp_min(1e-12) if k else 1.0
        out.append((rw[j, :k] / peak, up[j, :k] / peak))
    return out
