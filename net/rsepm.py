"""RS+EPM's single-stage network: a ResNet trunk at output stride 16 with a CAM branch and a DeepLab-v3+
segmentation branch, key-compatible with ``RSEPM`` in the released ``core/networks.py``
(shjo-april/RecurSeed_and_EdgePredictMix df538e2), so the released checkpoints load with strict checking.

Module names follow the released key layout: ``model.*`` (the torchvision-layout trunk), ``classifier``,
``aspp.aspp1..4``, ``aspp.global_avg_pool.1``, ``aspp.block.0``, ``decoder.low_block`` and
``decoder.classifier.{0,2,4}``. The released model passes ``feature_size`` (256) as the decoder's
low-level width, so the C2 projection has 256 channels, not DeepLab-v3+'s usual 48.
"""
from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from misc.errors import UserError
from net.resnet50 import ResNet50, load_torchvision_trunk

BLOCKS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}


class ConvBNReLU(nn.Module):
    """k x k convolution (no bias, 'same' padding, optional dilation), BatchNorm, ReLU. Keys: conv.*, bn.*."""

    def __init__(self, cin: int, cout: int, k: int, dilation: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, padding=dilation * (k // 2), dilation=dilation, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)), inplace=True)


class ASPP(nn.Module):
    """DeepLab-v3 ASPP at output stride 16: a 1x1 branch, three 3x3 branches at rates 6/12/18 and an
    image-pooling branch, each ``cout`` wide; concatenated, fused by a 1x1 ConvBNReLU, then Dropout 0.5."""

    def __init__(self, cin: int, cout: int, rates: tuple[int, int, int] = (6, 12, 18)):
        super().__init__()
        self.aspp1 = ConvBNReLU(cin, cout, 1)
        self.aspp2 = ConvBNReLU(cin, cout, 3, rates[0])
        self.aspp3 = ConvBNReLU(cin, cout, 3, rates[1])
        self.aspp4 = ConvBNReLU(cin, cout, 3, rates[2])
        self.global_avg_pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), ConvBNReLU(cin, cout, 1))
        self.block = nn.Sequential(ConvBNReLU(5 * cout, cout, 1), nn.Dropout(0.5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, cin, h, w) -> (B, cout, h, w)."""
        pooled = self.global_avg_pool(x).expand(-1, -1, *x.shape[2:])
        return self.block(torch.cat([self.aspp1(x), self.aspp2(x), self.aspp3(x), self.aspp4(x), pooled], 1))


class Decoder(nn.Module):
    """DeepLab-v3+ decoder: project the stride-4 feature to ``low_channels``, upsample the ASPP output to it
    (bilinear), concatenate, two 3x3 ConvBNReLU (Dropout 0.5 and 0.1 after them), a bias-free 3x3 conv to
    ``num_outputs``."""

    def __init__(self, low_in: int, cin: int, num_outputs: int, low_channels: int):
        super().__init__()
        self.low_block = ConvBNReLU(low_in, low_channels, 1)
        self.classifier = nn.Sequential(
            ConvBNReLU(cin + low_channels, cin, 3), nn.Dropout(0.5),
            ConvBNReLU(cin, cin, 3), nn.Dropout(0.1),
            nn.Conv2d(cin, num_outputs, 3, padding=1, bias=False))

    def forward(self, x: torch.Tensor, low: torch.Tensor) -> torch.Tensor:
        """x: (B, cin, h16, w16), low: (B, low_in, h4, w4) -> logits (B, num_outputs, h4, w4)."""
        low = self.low_block(low)
        x = F.interpolate(x, size=low.shape[2:], mode="bilinear", align_corners=False)
        return self.classifier(torch.cat([x, low], 1))


class RSEPMOutput(NamedTuple):
    """cams: (B, C, h16, w16) raw class maps (the 1x1 classifier on C5, no ReLU); logits: (B, C) their spatial
    mean (class probabilities are their sigmoid); seg: (B, C + 1, h4, w4) segmentation logits, channel 0 is
    background (None when not asked for); features: (C1, C2, C3, C4, C5) at strides 4, 4, 8, 16, 16."""

    cams: torch.Tensor
    logits: torch.Tensor
    seg: torch.Tensor | None
    features: tuple[torch.Tensor, ...]


class RSEPM(nn.Module):
    """ResNet-50/101 (strides 2, 2, 2, 1 = output stride 16, no dilation, ordinary trainable BatchNorm), a
    bias-free 1x1 classifier on C5 (CAM branch; GAP of the CAM gives the class logits) and a DeepLab-v3+
    branch (ASPP on C5, decoder with C2) with ``num_classes + 1`` outputs.

    ``width`` and ``blocks`` shrink the trunk for CPU-sized runs (the released model: width 64, blocks of
    ``depth``); ``feature_size`` is the ASPP/decoder width (released: 256), also used as the low-level width.
    """

    def __init__(self, num_classes: int = 20, depth: int = 50, width: int = 64,
                 blocks: tuple[int, int, int, int] | None = None, feature_size: int = 256):
        super().__init__()
        if depth not in BLOCKS:
            raise ValueError(f"depth must be one of {sorted(BLOCKS)}, got {depth}")
        self.depth = depth
        self.model = ResNet50(strides=(2, 2, 2, 1), width=width, frozen_bn=False, blocks=blocks or BLOCKS[depth])
        c2, c5 = width * 4, self.model.out_channels
        self.classifier = nn.Conv2d(c5, num_classes, 1, bias=False)
        self.aspp = ASPP(c5, feature_size)
        self.decoder = Decoder(c2, feature_size, num_classes + 1, low_channels=feature_size)

    def backbone(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(B, 3, H, W) normalised images -> (C1, C2, C3, C4, C5): after the stem max-pool and after layer1..4."""
        m = self.model
        c1 = m.maxpool(m.relu(m.bn1(m.conv1(x))))
        c2 = m.layer1(c1)
        c3 = m.layer2(c2)
        c4 = m.layer3(c3)
        return c1, c2, c3, c4, m.layer4(c4)

    def forward(self, x: torch.Tensor, with_seg: bool = True) -> RSEPMOutput:
        """(B, 3, H, W) normalised images -> RSEPMOutput (the decoder is skipped when ``with_seg`` is False)."""
        feats = self.backbone(x)
        cams = self.classifier(feats[4])
        seg = self.decoder(self.aspp(feats[4]), feats[1]) if with_seg else None
        return RSEPMOutput(cams, cams.mean((2, 3)), seg, feats)

    def parameter_groups(self) -> tuple[list[nn.Parameter], ...]:
        """The released four groups: (trunk weights, trunk biases, head weights, head biases), where 'weight'
        covers conv and BatchNorm weights alike. How the released training set lr and weight decay per group
        is not known."""
        groups: tuple[list[nn.Parameter], ...] = ([], [], [], [])
        for name, p in self.named_parameters():
            groups[(0 if name.startswith("model.") else 2) + (0 if name.endswith("weight") else 1)].append(p)
        return groups


def load_imagenet_trunk(net: RSEPM, path: str | Path) -> None:
    """Load torchvision's ImageNet ResNet-``net.depth`` state_dict file (IMAGENET1K_V1, e.g. the legacy
    resnet50-19c8e357.pth / resnet101-5d3b4d8f.pth the released code downloads) into ``net.model``, dropping
    fc.*; every trunk key must match. A missing or non-matching file raises UserError naming it."""
    path = Path(path)
    name = f"resnet{net.depth}"
    if not path.is_file():
        raise UserError(f"{path}: ImageNet {name} weights not found; download torchvision's {name} IMAGENET1K_V1 "
                        "file on a machine with internet and pass its path")
    if net.model.out_channels != 2048:
        raise UserError(f"{path}: ImageNet weights need the full-width trunk (width 64)")
    load_torchvision_trunk(net.model, path, name)
