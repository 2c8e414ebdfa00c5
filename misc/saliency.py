"""Saliency-guided pseudo labels (DRS): class scores give the object cue, a binary saliency map the background cue."""
from __future__ import annotations

import torch

from misc.seeds import IGNORE

SALIENCY_THRESHOLD = 50


def binarize_saliency(saliency: torch.Tensor, threshold: int = SALIENCY_THRESHOLD) -> torch.Tensor:
    """Salient pixels of an 8-bit saliency map (values 0..255, e.g. PoolNet's PNG): value > threshold. Returns bool."""
    return saliency > threshold


def saliency_pseudo_label(scores: torch.Tensor, salient: torch.Tensor, alpha: float = 0.2, confident: float = 0.9,
                          max_confident: int = 2, ignore: bool = True) -> torch.Tensor:
    """Pseudo label from class scores (..., C, H, W) (0 for absent classes) and a bool saliency mask (..., H, W).

    Scores below ``alpha`` become 0; the background score is 1 - salient; the label is the arg-max over the
    C + 1 channels (background first, so a tie goes to the lower index: background, then class order).
    With ``ignore`` two rules set 255: more than ``max_confident`` of the C + 1 channels above ``confident``
    (conflict), and salient pixels whose label is background (uncovered). Without ``ignore`` it is the
    arg-max alone (the published per-epoch validation). Returns uint8 (..., H, W): 0 background, c + 1 for
    class index c, 255 ignore.
    """
    fg = torch.where(scores < alpha, torch.zeros_like(scores), scores)
    full = torch.cat([(1.0 - salient.to(fg.dtype)).unsqueeze(-3), fg], dim=-3)
    label = full.argmax(-3).to(torch.uint8)
    if ignore:
        conflict = (full > confident).sum(-3) > max_confident
        label[conflict] = IGNORE
        label[salient & (label == 0)] = IGNORE
    return label
