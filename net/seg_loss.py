"""Losses of the segmentation stage (training a DeepLab network on pseudo labels).

- plain cross-entropy, 255 ignored (kazuto1011's and VainF's code);
- "balanced" cross-entropy (the recipe RIB's author states, after DSRG): the mean CE over background pixels
  plus the mean CE over foreground pixels;
- DRS's self-training term: CE against the network's own argmax restricted to the image's classes.
``seg_loss`` puts one of them on every output of a multi-scale DeepLab-v2 (labels resized to each output with
PIL-style nearest sampling) and sums, as the published training scripts do.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from misc.seeds import IGNORE


def _pil_nearest_index(n_in: int, n_out: int) -> torch.Tensor:
    """Source indices of PIL's NEAREST resize along one axis: PIL starts at half a step (n_in / n_out / 2) and
    adds the step once per target pixel in double precision, truncating each position; the accumulated
    rounding decides the exact half-way cases (e.g. 100 -> 41), which a closed-form floor((i + 0.5) * step)
    gets wrong."""
    step = n_in / n_out
    steps = np.full(n_out, step)
    steps[0] = step / 2
    return torch.from_numpy(np.minimum(np.cumsum(steps).astype(np.int64), n_in - 1))


def resize_labels(labels: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Nearest resize of (B, H, W) integer labels to ``size`` (h, w), picking the same source pixels as PIL's
    NEAREST resize that kazuto1011's ``resize_labels`` uses. Returns (B, h, w) int64."""
    h, w = (int(v) for v in size)
    labels = labels.long()
    if labels.shape[1:] == (h, w):
        return labels
    iy = _pil_nearest_index(labels.shape[1], h).to(labels.device)
    ix = _pil_nearest_index(labels.shape[2], w).to(labels.device)
    return labels[:, iy][:, :, ix]


def balanced_ce(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = IGNORE) -> torch.Tensor:
    """Cross-entropy averaged separately over background (label 0) and foreground (labels >= 1) pixels of the
    whole batch, the two means summed; ``ignore_index`` pixels count in neither. A part with no pixels
    contributes 0. logits (B, C, h, w), labels (B, h, w). Returns a scalar."""
    ce = F.cross_entropy(logits, labels, ignore_index=ignore_index, reduction="none")
    bg = labels == 0
    fg = (labels > 0) & (labels != ignore_index)
    return (ce * bg).sum() / bg.sum().clamp(min=1) + (ce * fg).sum() / fg.sum().clamp(min=1)


def self_training_ce(logits: torch.Tensor, image_classes: torch.Tensor, absent: str = "zero") -> torch.Tensor:
    """DRS's extra term: cross-entropy of ``logits`` against their own (detached) argmax over the classes of
    the image. logits (B, C, h, w); image_classes (B, C) 0/1 with the background column set. Returns a scalar
    (mean over all pixels, none ignored).

    ``absent='zero'`` is the published rule: the logits are multiplied by the 0/1 class vector before the
    argmax, so an absent class scores 0 and wins wherever every present class's logit is negative (the first
    absent class index then). ``'exclude'`` takes the argmax over the present classes only.
    """
    with torch.no_grad():
        mask = image_classes[:, :, None, None].to(logits.dtype)
        if absent == "zero":
            target = (logits * mask).argmax(1)
        elif absent == "exclude":
            target = logits.masked_fill(mask == 0, float("-inf")).argmax(1)
        else:
            raise ValueError(f"unknown absent-class rule {absent!r} (zero or exclude)")
    return F.cross_entropy(logits, target)


def seg_loss(outputs: torch.Tensor | Sequence[torch.Tensor], labels: torch.Tensor, kind: str = "ce",
             image_classes: torch.Tensor | None = None, absent: str = "zero",
             ignore_index: int = IGNORE) -> torch.Tensor:
    """The training loss of one batch, summed over the network's outputs.

    outputs: a logits tensor (B, C, h, w) or a list of them (DeepLab-v2 in training mode: full scale, each
    scaled input, max-fused); labels: (B, H, W) pseudo labels, resized to each output's size with
    ``resize_labels`` when the sizes differ. kind: 'ce' (plain, ``ignore_index`` ignored) or 'balanced'
    (``balanced_ce``). With ``image_classes`` (B, C) the DRS self-training term (``self_training_ce``, rule
    ``absent``) is added for every output. Returns a scalar.
    """
    if isinstance(outputs, torch.Tensor):
        outputs = [outputs]
    if kind not in ("ce", "balanced"):
        raise ValueError(f"unknown segmentation loss {kind!r} (ce or balanced)")
    total = 0.0
    for logits in outputs:
        target = resize_labels(labels, logits.shape[2:])
        if kind == "ce":
            total = total + F.cross_entropy(logits, target, ignore_index=ignore_index)
        else:
            total = total + balanced_ce(logits, target, ignore_index)
        if image_classes is not None:
            total = total + self_training_ce(logits, image_classes, absent)
    return total
