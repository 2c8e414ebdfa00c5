"""DRS: VGG-16-D1 with discriminative region suppression, and its localization maps.

Kim, Han, Kim, "Discriminative Region Suppression for Weakly-Supervised Semantic Segmentation", AAAI 2021.
Every one of the 16 convolutions (13 in the trunk, 3 in the head) is followed by a DRS module instead of a
ReLU; a 1x1 conv to the classes gives the class map (CAM) and its spatial mean is the logit. Module and
parameter names are those of the published ``models/vgg.py``, so a released checkpoint loads strictly.
"""
from __future__ import annotations

import math
from functools import reduce
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from net.vgg16 import STAGE_CONVS, VGG16D1, square_views

LOCMAP_SIDE = 320
LOCMAP_SCALES = (256, 320, 384)


class DRS(nn.Module):
    """Discriminative region suppression: Y = min(X+, GMP(X+) * G) with X+ = ReLU(X), per image and channel.

    ``delta`` None: learnable controller G = sigmoid(W GAP(X+)), W (C x C) bias-free, N(0, 0.01) (stored as
    ``fc.0.weight``); a number in (0, inf): the fixed controller G = delta (no parameters).
    """

    def __init__(self, channels: int, delta: float | None = None):
        super().__init__()
        self.delta = delta
        if delta is None:
            self.fc = nn.Sequential(nn.Linear(channels, channels, bias=False), nn.Sigmoid())
            nn.init.normal_(self.fc[0].weight, 0.0, 0.01)
        elif not delta > 0:
            raise ValueError(f"DRS delta must be > 0 (None for the learnable controller), got {delta}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C, H, W), non-negative, each channel clipped at G times its own maximum."""
        x = F.relu(x)
        peak = x.amax((2, 3), keepdim=True)
        gate = self.delta if self.delta is not None else self.fc(x.mean((2, 3)))[:, :, None, None]
        return torch.minimum(x, peak * gate)

    def extra_repr(self) -> str:
        return "learnable" if self.delta is None else f"delta={self.delta}"


class DRSClassifier(VGG16D1):
    """VGG-16-D1 with a DRS module after every conv, a head of 3 x (3x3 conv 8*width + DRS) and a 1x1 conv to
    ``num_classes`` (with bias). ``delta``: None for learnable DRS (the published default), else the fixed G;
    ``width`` and ``convs``: the trunk's (``net.vgg16.d1_features``); ``norm``: a BatchNorm before every DRS
    (not published: the CPU toy trains from scratch, where the plain network does not learn; its BatchNorm
    parameters fall in the head lr groups).

    Initialisation of the head as published: convs N(0, sqrt(2 / (k * k * C_out))) (3x3: 0.021; the 1x1
    class conv: sqrt(2 / num_classes), 0.316 for VOC), biases 0; every DRS controller N(0, 0.01).
    """

    def __init__(self, num_classes: int, delta: float | None = None, width: int = 64,
                 convs: Sequence[int] = STAGE_CONVS, norm: bool = False):
        def act(c: int) -> nn.Module:
            return nn.Sequential(nn.BatchNorm2d(c), DRS(c, delta)) if norm else DRS(c, delta)

        super().__init__(width, activation=act, convs=convs)
        c = self.out_channels
        for j in (1, 2, 3):
            self.add_module(f"extra_conv{j}", nn.Conv2d(c, c, 3, padding=1))
            self.add_module(f"extra_relu{j}", act(c))
        self.extra_conv4 = nn.Conv2d(c, num_classes, 1)
        for j in (1, 2, 3, 4):
            conv = getattr(self, f"extra_conv{j}")
            fan_out = conv.kernel_size[0] * conv.kernel_size[1] * conv.out_channels
            nn.init.normal_(conv.weight, 0.0, math.sqrt(2.0 / fan_out))
            nn.init.zeros_(conv.bias)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 3, H, W) -> (logits (B, num_classes), raw class maps (B, num_classes, ~H/8, ~W/8)); the logits
        are the maps' spatial means."""
        x = self.trunk(x)
        for j in (1, 2, 3):
            x = getattr(self, f"extra_relu{j}")(getattr(self, f"extra_conv{j}")(x))
        cam = self.extra_conv4(x)
        return cam.mean((2, 3)), cam

    def lr_groups(self, lr: float) -> list[dict]:
        """The four SGD parameter groups of the published recipe: trunk conv weights (lr), trunk conv biases
        (2 lr), head weights (10 lr: the extra convs and every DRS controller W, trunk ones included), head
        biases (20 lr). Returns [{'params': [...], 'lr': ...}] in that order (with a fixed delta the head
        weights are the four extra convs alone)."""
        trunk = {id(p) for p in self.features.parameters()}
        groups: list[list[nn.Parameter]] = [[], [], [], []]
        for name, p in self.named_parameters():
            groups[(0 if id(p) in trunk else 2) + name.endswith(".bias")].append(p)
        return [{"params": g, "lr": lr * m} for g, m in zip(groups, (1, 2, 10, 20))]


def multiscale_cams(model: DRSClassifier, image: torch.Tensor, sides: Sequence[int] = LOCMAP_SCALES
                    ) -> list[torch.Tensor]:
    """Raw class maps of the (B, 3, S, S) normalised square image (S = LOCMAP_SIDE as published) resized to each
    side (no flip). Returns [(B, C, ~side/8, ~side/8)] in the order of ``sides``."""
    return [model(v)[1] for v in square_views(image, sides)]


def localization_map(cams: Sequence[torch.Tensor], labels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """DRS localization map: each scale's CAM is ReLU'd, upsampled bilinearly (align_corners=True) to ``size``,
    divided by its per-class spatial max + 1e-5 and multiplied by the 0/1 image labels (B, C); the scales are
    fused by an element-wise max. Returns (B, C, *size) in [0, 1), zero for absent classes.

    size (LOCMAP_SIDE, LOCMAP_SIDE) is the published map (``localization_map_gen.py`` then stores
    uint8(map * 255)); the image's own (H, W) gives the toolkit's seed."""
    def one(cam: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(F.relu(cam), size=size, mode="bilinear", align_corners=True)
        return x / (x.amax((2, 3), keepdim=True) + 1e-5) * labels[:, :, None, None]
    return reduce(torch.maximum, map(one, cams))
