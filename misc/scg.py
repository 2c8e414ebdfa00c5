"""SCG: self-correlation map generation (from SPA, Pan et al., CVPR 2021) as the first RS+EPM commit
(4fbc05c1, ``core/inferences.py``) implements it, batched and vectorised over images and classes.

For every feature map F (B, c, h, w), all at the grid of the class maps, with N = h * w positions:
1. L2-normalise each position's feature; ``S = ReLU(F F^T)`` (N x N), entries below ``first_th`` zeroed.
2. First order: ``S1 = colnorm(S)`` (each column divided by its sum + 1e-10).
3. Second order: ``P = colnorm(S with a zero diagonal)``; ``S2 = colnorm(P P)`` (repeated ``iterations``
   times: S2 <- colnorm(S2 P)); entries below ``second_th / N`` zeroed.
4. ``HSC_F = colnorm(max(S1, second_weight * S2))``; ``HSC = sum over F``.
Column j of HSC says where position j's feature recurs. For each class, the columns of the anchors with a
class score >= ``fg_th`` are each min-max normalised and summed into a foreground map, likewise the columns
with a score <= ``bg_th`` into a background map; both are min-max normalised over the image and the class map
is ``minmax(ReLU(fg - bg))``. A class without anchors of a kind gets a zero map for that kind.
"""
from __future__ import annotations

from typing import Sequence

import torch

EPS = 1e-10


def _colnorm(x: torch.Tensor) -> torch.Tensor:
    """(B, N, N): divide each column by its sum (+1e-10)."""
    return x / (x.sum(dim=1, keepdim=True) + EPS)


def _minmax(x: torch.Tensor, dim: int) -> torch.Tensor:
    """Min-max normalise along ``dim`` (+1e-10 in the denominator)."""
    lo, hi = x.amin(dim, keepdim=True), x.amax(dim, keepdim=True)
    return (x - lo) / (hi - lo + EPS)


def self_correlation(features: Sequence[torch.Tensor], first_th: float = 0.50, second_th: float = 0.10,
                     iterations: int = 1, second_weight: float = 1.0) -> torch.Tensor:
    """features: maps (B, c_k, h, w) on one grid -> HSC (B, N, N), N = h * w, the sum over the maps of the
    column-normalised high-order self-correlation (each column sums to 1 per map)."""
    hsc = None
    for f in features:
        b, c, h, w = f.shape
        x = f.reshape(b, c, h * w).transpose(1, 2)
        x = x / (x.norm(dim=2, keepdim=True) + EPS)
        sc = torch.relu(x @ x.transpose(1, 2))
        sc = sc.masked_fill(sc < first_th, 0)
        first = _colnorm(sc)
        p = _colnorm(sc.diagonal_scatter(torch.zeros_like(sc.diagonal(dim1=1, dim2=2)), dim1=1, dim2=2))
        second = p
        for _ in range(iterations):
            second = _colnorm(second @ p)
        second = second.masked_fill(second < second_th / (h * w), 0)
        one = _colnorm(torch.maximum(first, second_weight * second))
        hsc = one if hsc is None else hsc + one
    return hsc


def scg(cams: torch.Tensor, features: Sequence[torch.Tensor], first_th: float = 0.50, second_th: float = 0.10,
        fg_th: float = 0.30, bg_th: float = 0.05, iterations: int = 1, second_weight: float = 1.0) -> torch.Tensor:
    """cams: (B, C, h, w) class maps in [0, 1] (e.g. ``max_norm`` of the ReLU'd CAM); features: maps
    (B, c_k, h, w) on the same grid (RS+EPM: C2..C5 resized to it). Returns the self-correlation class maps
    (B, C, h, w), each in [0, 1] (zero where a class has no foreground anchor)."""
    b, c, h, w = cams.shape
    hsc = self_correlation(features, first_th, second_th, iterations, second_weight)
    cols = _minmax(hsc, dim=1)  # every anchor's column to [0, 1]
    flat = cams.reshape(b, c, h * w)
    fg = _minmax((cols @ (flat >= fg_th).to(cols.dtype).transpose(1, 2)).transpose(1, 2), dim=2)
    bg = _minmax((cols @ (flat <= bg_th).to(cols.dtype).transpose(1, 2)).transpose(1, 2), dim=2)
    return _minmax(torch.relu(fg - bg), dim=2).reshape(b, c, h, w)


def max_norm(cams: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """(B, C, h, w) raw CAMs -> ReLU(cams) / (per-map max + eps), the first commit's CAM normalisation."""
    cams = torch.relu(cams)
    return cams / (cams.amax((2, 3), keepdim=True) + eps)
