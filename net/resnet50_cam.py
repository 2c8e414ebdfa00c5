"""The multi-label classifier and its CAM wrapper, key-compatible with IRN/RIB ``res50_cam`` checkpoints.

The module tree mirrors IRN's ``resnet50_cam.Net`` (``resnet50``, ``stage1..4``, ``classifier``,
``backbone``, ``newly_added``) so a released classifier loads with strict key checking.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from net.resnet50 import ResNet50


class Net(nn.Module):
    """ResNet-50 (output stride 16) + global average pooling + a bias-free 1x1 classifier.

    ``recipe='irn'``: frozen BN statistics, stages 1-2 (conv1/bn1, layer1, layer2) frozen (IRN: conv1/bn1
    frozen and the stage-2 output detached, which leaves the same weights untrained; frozen parameters
    also keep them out of DistributedDataParallel's gradient buckets).
    ``recipe='scratch'``: ordinary BatchNorm and every stage trained (random initialisation).
    """

    def __init__(self, num_classes: int, recipe: str = "irn", width: int = 64,
                 blocks: tuple[int, int, int, int] = (3, 4, 6, 3)):
        super().__init__()
        if recipe not in ("irn", "scratch"):
            raise ValueError(f"unknown recipe {recipe!r}")
        self.recipe = recipe
        self.resnet50 = ResNet50(strides=(2, 2, 2, 1), width=width, frozen_bn=recipe == "irn", blocks=blocks)
        r = self.resnet50
        self.stage1 = nn.Sequential(r.conv1, r.bn1, r.relu, r.maxpool, r.layer1)
        self.stage2 = nn.Sequential(r.layer2)
        self.stage3 = nn.Sequential(r.layer3)
        self.stage4 = nn.Sequential(r.layer4)
        self.classifier = nn.Conv2d(r.out_channels, num_classes, 1, bias=False)
        self.backbone = nn.ModuleList([self.stage1, self.stage2, self.stage3, self.stage4])
        self.newly_added = nn.ModuleList([self.classifier])
        if recipe == "irn":
            self.freeze_early_stages()

    def freeze_early_stages(self) -> None:
        """Stop training stages 1-2 (conv1/bn1, layer1, layer2): requires_grad False, so backward stops at
        stage 3 and optimisers built from ``trainable_parameters`` leave them out."""
        self.stage1.requires_grad_(False)
        self.stage2.requires_grad_(False)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> stride-16 features (B, C, ~H/16, ~W/16)."""
        return self.stage4(self.stage3(self.stage2(self.stage1(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> class logits (B, num_classes)."""
        x = self.features(x).mean((2, 3), keepdim=True)
        return self.classifier(x).flatten(1)

    def raw_cam(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> raw class maps (B, num_classes, ~H/16, ~W/16): the classifier on every position,
        no ReLU (their spatial mean is the logit)."""
        return F.conv2d(self.features(x), self.classifier.weight)

    def trainable_parameters(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        """(backbone parameters that train, classifier parameters): the two lr groups (1x and 10x)."""
        bb = [p for p in self.backbone.parameters() if p.requires_grad]
        return bb, list(self.newly_added.parameters())


class CAM(Net):
    """Inference wrapper: class activation maps instead of logits."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> ReLU'd class activation maps (B, num_classes, ~H/16, ~W/16), no pooling."""
        return F.relu(F.conv2d(self.features(x), self.classifier.weight))


def build(num_classes: int, cam: bool, recipe: str, backbone_width: int,
          backbone_blocks: tuple[int, int, int, int]) -> Net:
    """The registry's builder (net.registry): ``Net`` or, with ``cam``, ``CAM`` for a recipe and a shape."""
    return (CAM if cam else Net)(num_classes=num_classes, recipe=recipe, width=backbone_width,
                                 blocks=tuple(backbone_blocks))
