"""IRNet: a class-boundary branch and a displacement branch on a frozen ResNet-50, its training loss and
its inference wrapper. Key-compatible with IRN's ``res50_irn`` checkpoints.

The module tree mirrors IRN's ``resnet50_irn.Net`` (``resnet50``, ``stage1..5``, ``fc_edge1..6``,
``fc_dp1..7``, ``backbone``, ``edge_layers``, ``dp_layers``, ``mean_shift``). Unlike IRN, no path index
is stored in the module: pair indices come from a ``misc.indexing.PathIndex`` passed to the loss, so a
checkpoint holds only weights and the mean shift and loads strictly.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from misc.indexing import PathIndex, edge_to_affinity
from net.resnet50 import ResNet50

# IRN's checkpoints also carry the loss's index buffers; they are not weights and are dropped on load.
LEGACY_BUFFER_PREFIXES = ("path_indices", "disp_target", "ind_from", "ind_to")


class MeanShift(nn.Module):
    """Identity in training; in eval subtracts ``running_mean`` (2,), the mean displacement (dy, dx)."""

    def __init__(self, num_features: int = 2):
        super().__init__()
        self.register_buffer("running_mean", torch.zeros(num_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.training else x - self.running_mean.view(1, -1, 1, 1)


def _unit(cin: int, cout: int, groups: int, up: int = 1) -> nn.Sequential:
    """1x1 conv (no bias) + GroupNorm [+ bilinear x``up``] + ReLU, IRN's branch unit."""
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, 1, bias=False), nn.GroupNorm(groups, cout)]
    if up > 1:
        layers.append(nn.Upsample(scale_factor=up, mode="bilinear", align_corners=False))
    layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class Net(nn.Module):
    """Frozen ResNet-50 (output stride 16, BatchNorm on running statistics) + the two IRN branches.

    ``width``/``blocks`` follow ``net.resnet50.ResNet50`` (64 / (3, 4, 6, 3) = ResNet-50); the branch widths
    are IRN's whatever the backbone. The backbone never trains: its parameters have requires_grad False and
    ``train()`` keeps it in eval mode.
    """

    def __init__(self, width: int = 64, blocks: tuple[int, int, int, int] = (3, 4, 6, 3)):
        super().__init__()
        self.resnet50 = ResNet50(strides=(2, 2, 2, 1), width=width, frozen_bn=True, blocks=blocks)
        r = self.resnet50
        self.stage1 = nn.Sequential(r.conv1, r.bn1, r.relu, r.maxpool)
        self.stage2 = nn.Sequential(r.layer1)
        self.stage3 = nn.Sequential(r.layer2)
        self.stage4 = nn.Sequential(r.layer3)
        self.stage5 = nn.Sequential(r.layer4)
        c1, c2, c3, c4, c5 = width, 4 * width, 8 * width, 16 * width, 32 * width
        self.fc_edge1 = _unit(c1, 32, 4)
        self.fc_edge2 = _unit(c2, 32, 4)
        self.fc_edge3 = _unit(c3, 32, 4, up=2)
        self.fc_edge4 = _unit(c4, 32, 4, up=4)
        self.fc_edge5 = _unit(c5, 32, 4, up=4)
        self.fc_edge6 = nn.Conv2d(160, 1, 1, bias=True)
        self.fc_dp1 = _unit(c1, 64, 8)
        self.fc_dp2 = _unit(c2, 128, 16)
        self.fc_dp3 = _unit(c3, 256, 16)
        self.fc_dp4 = _unit(c4, 256, 16, up=2)
        self.fc_dp5 = _unit(c5, 256, 16, up=2)
        self.fc_dp6 = _unit(768, 256, 16, up=2)
        self.mean_shift = MeanShift(2)
        self.fc_dp7 = nn.Sequential(nn.Conv2d(448, 256, 1, bias=False), nn.GroupNorm(16, 256), nn.ReLU(inplace=True),
                                    nn.Conv2d(256, 2, 1, bias=False), self.mean_shift)
        self.backbone = nn.ModuleList([self.stage1, self.stage2, self.stage3, self.stage4, self.stage5])
        self.edge_layers = nn.ModuleList([self.fc_edge1, self.fc_edge2, self.fc_edge3, self.fc_edge4, self.fc_edge5,
                                          self.fc_edge6])
        self.dp_layers = nn.ModuleList([self.fc_dp1, self.fc_dp2, self.fc_dp3, self.fc_dp4, self.fc_dp5, self.fc_dp6,
                                        self.fc_dp7])
        self.backbone.requires_grad_(False)

    def train(self, mode: bool = True) -> Net:
        super().train(mode)
        self.backbone.eval()
        return self

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 3, H, W) -> (boundary logits (B, 1, h, w), displacement (B, 2, h, w)) at stride 4,
        h = ceil(H / 4). The displacement is (dy, dx) in stride-4 pixels, minus the mean shift in eval."""
        with torch.no_grad():
            x1 = self.stage1(x)
            x2 = self.stage2(x1)
            x3 = self.stage3(x2)
            x4 = self.stage4(x3)
            x5 = self.stage5(x4)
        h, w = x2.shape[2:]
        edge = [self.fc_edge1(x1), self.fc_edge2(x2), self.fc_edge3(x3)[..., :h, :w],
                self.fc_edge4(x4)[..., :h, :w], self.fc_edge5(x5)[..., :h, :w]]
        edge_out = self.fc_edge6(torch.cat(edge, 1))
        dp3 = self.fc_dp3(x3)
        h3, w3 = dp3.shape[2:]
        dp = torch.cat([dp3, self.fc_dp4(x4)[..., :h3, :w3], self.fc_dp5(x5)[..., :h3, :w3]], 1)
        dp_up = self.fc_dp6(dp)[..., :h, :w]
        dp_out = self.fc_dp7(torch.cat([self.fc_dp1(x1), self.fc_dp2(x2), dp_up], 1))
        return edge_out, dp_out

    def trainable_parameters(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        """(boundary branch parameters, displacement branch parameters): IRN's lr groups (1x and 10x)."""
        return list(self.edge_layers.parameters()), list(self.dp_layers.parameters())


class EdgeDisplacement(Net):
    """Inference wrapper: images are zero-padded on the bottom/right to a canvas, run with their flips,
    and the outputs cropped back.

    ``canvas`` is the minimum padded side (IRN pads every image to its 512 training crop; keeping that for
    images that fit reproduces its outputs, since GroupNorm statistics see the padding). Larger images
    get the next multiple of 16 instead of IRN's silent crop.
    """

    def __init__(self, width: int = 64, blocks: tuple[int, int, int, int] = (3, 4, 6, 3), canvas: int = 512):
        super().__init__(width, blocks)
        self.canvas = canvas

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: (N, 2, 3, H, W) [image, flipped image]. Returns (boundary probability (N, 1, h, w) from the
        mean of the two views' logits, displacement of the unflipped view (N, 2, h, w)), h = (H-1)//4+1."""
        n, _, _, hh, ww = x.shape
        ph = max(self.canvas, -(-hh // 16) * 16)
        pw = max(self.canvas, -(-ww // 16) * 16)
        x = F.pad(x.flatten(0, 1), (0, pw - ww, 0, ph - hh))
        edge, dp = super().forward(x)
        h, w = (hh - 1) // 4 + 1, (ww - 1) // 4 + 1
        edge = edge[..., :h, :w].unflatten(0, (n, 2))
        dp = dp[..., :h, :w].unflatten(0, (n, 2))
        return torch.sigmoid((edge[:, 0] + edge[:, 1].flip(-1)) / 2), dp[:, 0]


def pair_labels(label: torch.Tensor, index: PathIndex, num_classes: int
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Affinity targets of every search pair, computed on the label's device.

    label: (B, h, w) integer map at the boundary map's resolution (0 background, 1..num_classes, others
    unsure), with (h, w) = index.size. Returns bool (B, n_offsets, n_src) masks (bg_pos, fg_pos, neg):
    both ends valid (< num_classes + 1) and equal background / equal class / different.
    """
    flat = label.reshape(label.shape[0], -1).long()
    src = flat[:, index.src_indices].unsqueeze(1)
    dst = flat[:, index.dst_indices.reshape(-1)].view(flat.shape[0], *index.dst_indices.shape)
    valid = (src <= num_classes) & (dst <= num_classes)
    same = valid & (src == dst)
    return same & (src == 0), same & (src > 0), valid & (src != dst)


def pair_displacement(disp: torch.Tensor, index: PathIndex) -> torch.Tensor:
    """D(i) - D(i + δ) for every source i and offset δ. disp (B, 2, h, w) -> (B, 2, n_offsets, n_src)."""
    flat = disp.flatten(2)
    src = flat[:, :, index.src_indices].unsqueeze(2)
    dst = flat.index_select(2, index.dst_indices.reshape(-1)).view(*flat.shape[:2], *index.dst_indices.shape)
    return src - dst


def affinity_displacement_loss(edge_logits: torch.Tensor, disp: torch.Tensor, label: torch.Tensor,
                               index: PathIndex, num_classes: int,
                               global_counts: Callable[[torch.Tensor], torch.Tensor] | None = None
                               ) -> dict[str, torch.Tensor]:
    """IRN's loss over a batch (sums run over the whole batch, as IRN): the pair labels of ``label`` and the
    path affinities of ``edge_logits``, scored by ``pair_loss``.

    edge_logits (B, 1, h, w), disp (B, 2, h, w), label (B, h, w) with (h, w) = index.size. Affinity
    a = 1 - max sigmoid(edge) on the pair's path. ``global_counts``: see ``pair_loss``.
    """
    if tuple(edge_logits.shape[2:]) != index.size:
        raise ValueError(f"boundary map size {tuple(edge_logits.shape[2:])} differs from the path index's {index.size}")
    aff = edge_to_affinity(torch.sigmoid(edge_logits), index)
    return pair_loss(aff, disp, pair_labels(label, index, num_classes), index, global_counts)


def pair_loss(aff: torch.Tensor, disp: torch.Tensor, pairs: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
              index: PathIndex, global_counts: Callable[[torch.Tensor], torch.Tensor] | None = None
              ) -> dict[str, torch.Tensor]:
    """IRN's loss from pair affinities aff (B, n_offsets, n_src) and pair labels ``pairs`` (bg_pos, fg_pos,
    neg) of that shape (``pair_labels``), with disp (B, 2, h, w).

    Positive pairs cost -log(a + 1e-5), negatives -log(1 + 1e-5 - a); displacement pairs cost
    |D(i) - D(j) - δ|₁ (foreground, one instance per class) or |D(i) - D(j)|₁ (background); each sum is
    divided by its pair count. ``global_counts`` maps this batch's (3,) counts (bg, fg, neg) to the
    counts to divide by: under DDP the sum over ranks, so that the ranks' losses add up to the loss of the
    whole batch (default: this batch's own). Returns scalars {'pos_aff', 'neg_aff', 'dp_fg', 'dp_bg',
    'total'} with total = (pos_aff + neg_aff) / 2 + (dp_fg + dp_bg) / 2 and pos_aff the mean of the bg and
    fg terms.
    """
    bg, fg, neg = (m.to(aff.dtype) for m in pairs)
    counts = torch.stack([bg.sum(), fg.sum(), neg.sum()])
    n_bg, n_fg, n_neg = global_counts(counts) if global_counts is not None else counts
    pos_loss = -torch.log(aff + 1e-5)
    neg_loss = -torch.log(1 + 1e-5 - aff)
    pos_aff = ((bg * pos_loss).sum() / (n_bg + 1e-5) + (fg * pos_loss).sum() / (n_fg + 1e-5)) / 2
    neg_aff = (neg * neg_loss).sum() / (n_neg + 1e-5)
    pd = pair_displacement(disp, index)
    target = index.offsets.t().to(pd.dtype)[None, :, :, None]
    dp_fg = ((pd - target).abs() * fg.unsqueeze(1)).sum() / (2 * n_fg + 1e-5)
    dp_bg = (pd.abs() * bg.unsqueeze(1)).sum() / (2 * n_bg + 1e-5)
    total = (pos_aff + neg_aff) / 2 + (dp_fg + dp_bg) / 2
    return {"pos_aff": pos_aff, "neg_aff": neg_aff, "dp_fg": dp_fg, "dp_bg": dp_bg, "total": total}

