"""PAR: pixel-adaptive refinement of class score maps (ToCo, PUFS), and its dilated-neighbour gather."""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

# The 8 neighbours of a pixel (row, column offsets), centre excluded.
OFFSETS = ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1))


def dilated_neighbors(x: torch.Tensor, dilations: tuple[int, ...]) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, 8*len(dilations), H, W): for each dilation d (in order) the values at the 8
    neighbours (OFFSETS scaled by d), borders replicated."""
    h, w = x.shape[-2:]
    m = max(dilations)
    xp = F.pad(x, [m] * 4, mode="replicate")
    out = [xp[..., m + dy * d: m + dy * d + h, m + dx * d: m + dx * d + w] for d in dilations for dy, dx in OFFSETS]
    return torch.stack(out, dim=2)


class PAR(nn.Module):
    """Pixel-adaptive refinement: propagate score maps with an affinity from colour and position.

    For pixel i and each neighbour j of ``dilated_neighbors``: colour term -(|I_i - I_j| / (s_i + 1e-8) / w1)^2
    averaged over RGB (s_i: per-channel std, unbiased, of pixel i's neighbour values), position term
    -(p_j / (s_p + 1e-8) / w1)^2 (p_j: d or d*sqrt(2) for diagonal neighbours, s_p: their std). Affinity
    A(i, .) = softmax_j(colour) + w2 * softmax_j(position); then ``num_iter`` times M_i <- sum_j A(i, j) M_j.
    """

    def __init__(self, dilations: tuple[int, ...] = (1, 2, 4, 8, 12, 24), num_iter: int = 10, w1: float = 0.3,
                 w2: float = 0.01):
        super().__init__()
        self.dilations = tuple(dilations)
        self.num_iter = num_iter
        self.w1 = w1
        self.w2 = w2

    def position_affinity(self, device: torch.device) -> torch.Tensor:
        """w2 * softmax over the neighbours of the position term, (1, 1, 8*len(dilations), 1, 1)."""
        dist = torch.tensor([d * (math.sqrt(2) if dy and dx else 1.0) for d in self.dilations for dy, dx in OFFSETS],
                            dtype=torch.float32, device=device)
        aff = -(dist / (dist.std() + 1e-8) / self.w1) ** 2
        return self.w2 * F.softmax(aff, dim=0).view(1, 1, -1, 1, 1)

    def forward(self, images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """images: (B, 3, H, W) in [0, 1]; masks: (B, K, h, w) scores, resized bilinearly (align_corners True)
        to H x W first. Returns the refined scores (B, K, H, W)."""
        masks = F.interpolate(masks, size=images.shape[-2:], mode="bilinear", align_corners=True)
        nb = dilated_neighbors(images, self.dilations)
        colour = -((nb - images.unsqueeze(2)).abs() / (nb.std(dim=2, keepdim=True) + 1e-8) / self.w1) ** 2
        aff = F.softmax(colour.mean(dim=1, keepdim=True), dim=2) + self.position_affinity(images.device)
        for _ in range(self.num_iter):
            masks = (dilated_neighbors(masks, self.dilations) * aff).sum(2)
        return masks
