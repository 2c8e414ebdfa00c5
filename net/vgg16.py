"""VGG-16 "D1", the trunk of DRS's classifier and refinement network.

torchvision's vgg16 convolutions (13 convs, 3x3) with two changes that give output stride 8: pool4 is a
3x3 stride-1 pad-1 max-pool, and conv5_1..conv5_3 are dilated 2 (pad 2); there is no pool5 and no fc.

Key layout: the modules live in ``features`` at torchvision's indices (conv i, ReLU i+1, pools at 4, 9, 16,
23), so an ImageNet vgg16 file loads into it unchanged, and the same modules are also registered under the
names of the published DRS models (``layer<s>_conv<j>``, ``layer<s>_relu<j>``, ``layer<s>_maxpool``), so a
released DRS checkpoint, which holds both spellings of every conv, loads with strict key checking. A
subclass may put another activation (a DRS module) under ``layer<s>_relu<j>``; ``features`` keeps its
parameter-free ReLUs, which the forward pass then does not use.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from misc.errors import UserError

STAGE_CONVS = (2, 2, 3, 3, 3)


def d1_features(width: int = 64, convs: Sequence[int] = STAGE_CONVS) -> nn.Sequential:
    """The D1 layer sequence in torchvision's index layout. Stage s (0-based) has convs[s] convs of
    width * (1, 2, 4, 8, 8)[s] channels; width 64 and STAGE_CONVS are VGG-16 (64, 128, 256, 512, 512). Fewer
    convs per stage (a shallower trunk, the CPU toy's) keep the strides."""
    layers: list[nn.Module] = []
    c_in = 3
    for s, n in enumerate(convs):
        c = width * min(2 ** s, 8)
        d = 2 if s == 4 else 1
        for _ in range(n):
            layers += [nn.Conv2d(c_in, c, 3, padding=d, dilation=d), nn.ReLU(inplace=True)]
            c_in = c
        if s < 3:
            layers.append(nn.MaxPool2d(2, 2))
        elif s == 3:
            layers.append(nn.MaxPool2d(3, 1, 1))
    return nn.Sequential(*layers)


class VGG16D1(nn.Module):
    """The D1 trunk. ``activation(channels)`` builds the module that follows each of the 13 convs (None: the
    plain ReLU of ``features``); ``convs``: convs per stage (see ``d1_features``). ``out_channels`` = 8 * width
    (512). Convs start from torchvision's VGG initialisation (Kaiming normal, fan_out; bias 0) until ImageNet
    weights are loaded."""

    def __init__(self, width: int = 64, activation: Callable[[int], nn.Module] | None = None,
                 convs: Sequence[int] = STAGE_CONVS):
        super().__init__()
        self.features = d1_features(width, convs)
        self.convs = tuple(convs)
        self.out_channels = 8 * width
        self.trunk_names: list[str] = []
        i = 0
        for s, n in enumerate(convs, 1):
            for j in range(1, n + 1):
                conv = self.features[i]
                self._register(f"layer{s}_conv{j}", conv)
                self._register(f"layer{s}_relu{j}",
                               self.features[i + 1] if activation is None else activation(conv.out_channels))
                i += 2
            if s < len(convs):
                self._register(f"layer{s}_maxpool", self.features[i])
                i += 1
        for m in self.features:
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)

    def _register(self, name: str, module: nn.Module) -> None:
        self.add_module(name, module)
        self.trunk_names.append(name)

    def trunk(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, out_channels, ~H/8, ~W/8) (three 2x2 pools, each flooring)."""
        for name in self.trunk_names:
            x = getattr(self, name)(x)
        return x


def square_views(image: torch.Tensor, sides: Sequence[int]) -> list[torch.Tensor]:
    """The multi-scale inputs of DRS inference: the (B, 3, S, S) normalised square image resized bilinearly
    (align_corners=False, no antialiasing) to each side. Returns [(B, 3, side, side)] in the order of ``sides``."""
    return [F.interpolate(image, size=(s, s), mode="bilinear", align_corners=False) for s in sides]


def load_imagenet_weights(model: VGG16D1, path: str | Path) -> None:
    """Load torchvision's ``vgg16`` IMAGENET1K_V1 state_dict file (vgg16-397923af.pth) into the 13 convs of a
    width-64 trunk, dropping the fc layers (``classifier.*``), with strict key and shape checking."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: ImageNet VGG-16 weights not found; download torchvision's vgg16 IMAGENET1K_V1 "
                        "file (vgg16-397923af.pth) on a machine with internet and pass its path")
    if model.out_channels != 512 or model.convs != STAGE_CONVS:
        raise UserError(f"{path}: ImageNet weights need the full VGG-16 (width 64, convs per stage "
                        f"{STAGE_CONVS}), not width {model.out_channels // 8} with {model.convs}")
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for a bad file
        raise UserError(f"{path}: not a loadable torch state_dict ({e})") from None
    if not isinstance(sd, dict):
        raise UserError(f"{path}: not a torchvision vgg16 state_dict (holds a {type(sd).__name__})")
    feats = {k[len("features."):]: v for k, v in sd.items() if k.startswith("features.")}
    extra = [k for k in sd if not k.startswith(("features.", "classifier."))]
    try:
        missing, unexpected = model.features.load_state_dict(feats, strict=False)
    except RuntimeError as e:  # shape mismatch
        raise UserError(f"{path}: not a torchvision vgg16 state_dict ({str(e).splitlines()[-1].strip()})") from None
    missing = [f"features.{k}" for k in missing]
    unexpected = [f"features.{k}" for k in unexpected] + extra
    if missing or unexpected:
        raise UserError(f"{path}: not a torchvision vgg16 state_dict (missing {missing[:3]}, unexpected "
                        f"{unexpected[:3]}); use the vgg16 IMAGENET1K_V1 file")
