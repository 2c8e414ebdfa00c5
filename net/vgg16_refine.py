"""DRS's localization-map refinement network, its regression target and its fused multi-scale output.

A plain VGG-16-D1 (ReLU) + 3 x (3x3 conv 8*width + ReLU) + a 1x1 conv to the classes, no output activation,
upsampled to the input size; trained with MSE to the arg-max-kept DRS localization map. Names are those of
the published ``models/vgg_refine.py`` so a released checkpoint loads strictly.
"""
from __future__ import annotations

from functools import reduce
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from net.vgg16 import STAGE_CONVS, VGG16D1, square_views
from net.vgg16_drs import LOCMAP_SCALES


class RefineNet(VGG16D1):
    """VGG-16-D1 + 3 x (3x3 conv + ReLU) + 1x1 conv to ``num_classes``; the head convs start from N(0, 0.01),
    biases 0, as published. ``width`` and ``convs``: the trunk's (``net.vgg16.d1_features``); ``norm``: BatchNorm
    before every trunk ReLU (not published; the CPU toy's, see ``DRSClassifier``)."""

    def __init__(self, num_classes: int, width: int = 64, convs: Sequence[int] = STAGE_CONVS, norm: bool = False):
        super().__init__(width, activation=(lambda c: nn.Sequential(nn.BatchNorm2d(c), nn.ReLU(inplace=True)))
                         if norm else None, convs=convs)
        c = self.out_channels
        self.extra_conv1 = nn.Conv2d(c, c, 3, padding=1)
        self.extra_conv2 = nn.Conv2d(c, c, 3, padding=1)
        self.extra_conv3 = nn.Conv2d(c, c, 3, padding=1)
        self.extra_conv4 = nn.Conv2d(c, num_classes, 1)
        for j in (1, 2, 3, 4):
            conv = getattr(self, f"extra_conv{j}")
            nn.init.normal_(conv.weight, 0.0, 0.01)
            nn.init.zeros_(conv.bias)

    def raw(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> refined maps at stride 8 (B, num_classes, ~H/8, ~W/8), no activation."""
        x = self.trunk(x)
        for j in (1, 2, 3):
            x = F.relu(getattr(self, f"extra_conv{j}")(x))
        return self.extra_conv4(x)

    def forward(self, x: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
        """(B, 3, H, W) -> refined maps (B, num_classes, *size) (default: the input's H, W), see ``upsample``."""
        return upsample(self.raw(x), size if size is not None else tuple(x.shape[-2:]))


def upsample(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of (B, C, h, w) maps to ``size`` with align_corners=True (the published network's
    output upsampling). Returns (B, C, *size)."""
    return F.interpolate(maps, size=size, mode="bilinear", align_corners=True)


def refinement_target(locmap: torch.Tensor) -> torch.Tensor:
    """The regression target: per pixel, the localization map's values of the arg-max class(es), 0 elsewhere
    (every class that ties with the maximum is kept; where all classes are 0 the target is 0). locmap
    (..., C, H, W) in [0, 1] -> same shape."""
    return locmap * (locmap == locmap.amax(-3, keepdim=True))


def fuse_refined(maps: Sequence[torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
    """Multi-scale fusion of refined maps already at the output size: each (B, C, H, W) map is multiplied by the
    0/1 image labels (B, C), then the element-wise max over scales and 0 is taken (negative outputs become 0;
    no re-normalisation, so values may exceed 1). Returns (B, C, H, W)."""
    return reduce(torch.maximum, [m * labels[:, :, None, None] for m in maps], torch.zeros_like(maps[0]))


def refined_map(model: RefineNet, image: torch.Tensor, labels: torch.Tensor, size: tuple[int, int],
                sides: Sequence[int] = LOCMAP_SCALES) -> torch.Tensor:
    """The refined class scores of a (B, 3, S, S) normalised square image (S = 320 as published): the network
    at each side (no flip), upsampled to ``size`` (the image's own H, W for pseudo labels) and fused by
    ``fuse_refined``. Returns (B, C, *size)."""
    return fuse_raw([model.raw(v) for v in square_views(image, sides)], labels, size)


def fuse_raw(raws: Sequence[torch.Tensor], labels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``fuse_refined`` of the network's stride-8 outputs (``RefineNet.raw``, one (B, C, h, w) per scale) each
    upsampled to ``size`` first. Returns (B, C, *size)."""
    return fuse_refined([upsample(r, size) for r in raws], labels)


def seed_to_square(keys: torch.Tensor, high_res: torch.Tensor, num_classes: int, side: int) -> torch.Tensor:
    """A seed in the common format (``keys`` (K,) class indices, ``high_res`` (K, H, W)) as the dense
    (num_classes, side, side) localization map the refinement network is trained on: the K maps are resized
    bilinearly (align_corners=True, as the published map is upsampled from the CAM) to the square; absent
    classes (and a seed without keys) are 0. The published code instead stores the map computed at 320 x 320
    as uint8."""
    dense = high_res.new_zeros((1, num_classes) + tuple(high_res.shape[-2:]), dtype=torch.float32)
    dense[0, keys.long()] = high_res.float()
    return upsample(dense, (side, side))[0]
