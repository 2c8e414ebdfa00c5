"""PAMR (pixel-adaptive mask refinement, Araslanov & Roth, CVPR 2020) as RS+EPM releases it
(``core/refinements/pamr.py``, df538e2): batched, on any device.

Each pixel's 8 neighbours at each dilation d (offsets -d/0/+d, borders replicated) get the affinity
``-|I_i - I_j| / (sigma * std_i + 1e-8)``, averaged over the image channels, where ``std_i`` is the unbiased
standard deviation of the 3x3 neighbourhoods of all dilations together (the centre counted once per dilation);
a softmax over all 8 * len(dilations) neighbours turns them into weights, and every iteration replaces the
mask by the weighted sum of its neighbours (the centre itself is not among them). The released defaults are
one iteration at dilation 1; the original PAMR configuration is 10 iterations at (1, 2, 4, 8, 12, 24).
"""
from __future__ import annotations

from typing import Iterator, Sequence

import torch
import torch.nn.functional as F

_OFFSETS = ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1))


def neighbours(x: torch.Tensor, dilations: Sequence[int]) -> Iterator[torch.Tensor]:
    """Yield, for each dilation d in order and each of the 8 offsets (row-major, centre skipped), ``x`` shifted
    so that position i holds its neighbour i + d * offset, borders replicated. x: (..., H, W); each yield has
    the same shape."""
    h, w = x.shape[-2:]
    for d in dilations:
        pad = F.pad(x.reshape(-1, 1, h, w), [d] * 4, mode="replicate").reshape(
            *x.shape[:-2], h + 2 * d, w + 2 * d)
        for dy, dx in _OFFSETS:
            yield pad[..., d + dy * d:d + dy * d + h, d + dx * d:d + dx * d + w]


def pamr_weights(image: torch.Tensor, dilations: Sequence[int] = (1,), sigma: float = 0.1) -> torch.Tensor:
    """image (B, 3, H, W) -> neighbour weights (B, P, H, W), P = 8 * len(dilations), summing to 1 over P."""
    nb = torch.stack(list(neighbours(image, dilations)), 2)  # B, 3, P, H, W
    centre = image.unsqueeze(2)
    # the released std covers each dilation's 3x3 window, the centre once per dilation (unbiased)
    windows = torch.cat([torch.cat([centre, nb[:, :, 8 * i:8 * i + 8]], 2) for i in range(len(dilations))], 2)
    std = windows.std(dim=2, keepdim=True)
    aff = -(centre - nb).abs() / (sigma * std + 1e-8)
    return torch.softmax(aff.mean(1), dim=1)


def pamr(image: torch.Tensor, masks: torch.Tensor, iterations: int = 1, dilations: Sequence[int] = (1,),
         sigma: float = 0.1) -> torch.Tensor:
    """Refine masks (B, K, H, W) with the image (B, 3, H, W) at the same size. Returns (B, K, H, W): each
    iteration is a convex combination of neighbours, so a constant mask stays constant."""
    weights = pamr_weights(image, dilations, sigma).unsqueeze(1)  # B, 1, P, H, W
    for _ in range(iterations):
        out = torch.zeros_like(masks)
        for p, shifted in enumerate(neighbours(masks, dilations)):
            out += weights[:, :, p] * shifted
        masks = out
    return masks
