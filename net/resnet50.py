"""ResNet-50 in the torchvision parameter layout, with per-stage strides and a choice of BatchNorm.

IRN's recipe starts from ImageNet weights and freezes every BatchNorm's statistics (``FixedBatchNorm``).
From random initialisation (the toy default) frozen statistics cannot learn, so ``frozen_bn=False`` gives
ordinary BatchNorm, and ``width`` and ``blocks`` shrink the net (64 and (3, 4, 6, 3) = ResNet-50) into a
CPU-sized one with the same stages, feature strides and key names.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from misc.errors import UserError


class FixedBatchNorm(nn.BatchNorm2d):
    """BatchNorm that always normalises with its running statistics (affine weight and bias still learn)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                            training=False, eps=self.eps)


class Bottleneck(nn.Module):
    """torchvision's v1.5 bottleneck (stride on the 3x3 conv). Output channels = planes * 4."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int, norm: type[nn.BatchNorm2d],
                 downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = norm(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = norm(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = norm(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


class ResNet50(nn.Module):
    """ResNet-50 trunk without the fc layer.

    strides = (conv1, layer2, layer3, layer4); the max-pool always halves and layer1 keeps the size, so
    (2, 2, 2, 1) gives output stride 16. ``out_channels`` = 32 * width (2048 for width 64). ``blocks`` per
    stage: (3, 4, 6, 3) is ResNet-50; fewer blocks keep the key names of the blocks that remain.
    """

    def __init__(self, strides: tuple[int, int, int, int] = (2, 2, 2, 1), width: int = 64, frozen_bn: bool = True,
                 blocks: tuple[int, int, int, int] = (3, 4, 6, 3)):
        super().__init__()
        norm = FixedBatchNorm if frozen_bn else nn.BatchNorm2d
        self.conv1 = nn.Conv2d(3, width, 7, stride=strides[0], padding=3, bias=False)
        self.bn1 = norm(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.inplanes = width
        self.layer1 = self._make_layer(width, blocks[0], 1, norm)
        self.layer2 = self._make_layer(width * 2, blocks[1], strides[1], norm)
        self.layer3 = self._make_layer(width * 4, blocks[2], strides[2], norm)
        self.layer4 = self._make_layer(width * 8, blocks[3], strides[3], norm)
        self.out_channels = width * 32
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def _make_layer(self, planes: int, blocks: int, stride: int, norm: type[nn.BatchNorm2d]) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * 4:
            downsample = nn.Sequential(nn.Conv2d(self.inplanes, planes * 4, 1, stride=stride, bias=False),
                                       norm(planes * 4))
        layers = [Bottleneck(self.inplanes, planes, stride, norm, downsample)]
        self.inplanes = planes * 4
        layers += [Bottleneck(self.inplanes, planes, 1, norm) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, out_channels, H/os, W/os) feature map."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


def load_torchvision_trunk(trunk: nn.Module, path: Path, name: str) -> None:
    """Load a torchvision ImageNet state_dict file of network ``name`` (e.g. 'resnet50') into ``trunk``,
    dropping fc.*, with strict key and shape checking: another network's file (resnet18, a checkpoint of
    this toolkit) is one UserError line naming ``path`` before any tensor is copied. torchvision's files
    carry no BatchNorm num_batches_tracked (load_state_dict fills it in)."""
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for a bad file
        raise UserError(f"{path}: not a loadable torch state_dict ({e})") from None
    if not isinstance(sd, dict):
        raise UserError(f"{path}: holds a {type(sd).__name__}, not a state_dict; pass torchvision's {name} "
                        "IMAGENET1K_V1 .pth")
    sd = {k: v for k, v in sd.items() if not k.startswith("fc.")}
    own = trunk.state_dict()
    bad = sorted(k for k in set(own) ^ set(sd) if not k.endswith("num_batches_tracked"))
    bad += sorted(k for k in own.keys() & sd.keys() if tuple(own[k].shape) != tuple(getattr(sd[k], "shape", ())))
    if bad:
        raise UserError(f"{path}: not a torchvision {name} state_dict ({len(bad)} keys missing, unexpected or of "
                        f"another shape, first {bad[:2]}); pass torchvision's {name} IMAGENET1K_V1 .pth")
    trunk.load_state_dict(sd, strict=False)


def load_imagenet_weights(model: ResNet50, path: str | Path) -> None:
    """Load torchvision's ``resnet50`` IMAGENET1K_V1 state_dict file (e.g. resnet50-0676ba61.pth or the legacy
    resnet50-19c8e357.pth) into a width-64 trunk (``load_torchvision_trunk``)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: ImageNet ResNet-50 weights not found; download torchvision's resnet50 "
                        "IMAGENET1K_V1 file on a machine with internet and pass it with --pretrained_weights")
    if model.out_channels != 2048:
        raise UserError(f"{path}: ImageNet weights need the full-width backbone; set --backbone_width 64")
    load_torchvision_trunk(model, path, "resnet50")
