"""Heads of the single-stage methods: CAM classifiers with global max pooling, the LargeFOV segmentation
decoder and the DINO-style projection head (module names as in ToCo's and PUFS's checkpoints)."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def gmp_logits(fmap: torch.Tensor, classifier: nn.Conv2d) -> torch.Tensor:
    """Image logits: global max pooling of the (B, D, h, w) map, then the bias-free 1x1 classifier. (B, C-1)."""
    return classifier(F.adaptive_max_pool2d(fmap, (1, 1))).flatten(1)


def cam(fmap: torch.Tensor, classifier: nn.Conv2d) -> torch.Tensor:
    """Raw class activation maps: the classifier weight as a 1x1 conv on the map, no ReLU. (B, C-1, h, w)."""
    return F.conv2d(fmap, classifier.weight)


def tokens_to_map(tokens: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """(B, h*w, D) row-major tokens -> (B, D, h, w)."""
    return tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], h, w)


class LargeFOV(nn.Module):
    """DeepLab-v1 LargeFOV decoder: conv3x3 d5 -> 512, ReLU, conv3x3 d5 -> 512, ReLU, conv1x1 -> classes; no biases.

    init: 'default' (PyTorch's conv init; ToCo never calls its own) or 'kaiming' (normal, fan_out; PUFS).
    """

    def __init__(self, in_channels: int, num_classes: int, dilation: int = 5, width: int = 512, init: str = "default"):
        super().__init__()
        self.conv6 = nn.Conv2d(in_channels, width, 3, padding=dilation, dilation=dilation, bias=False)
        self.relu6 = nn.ReLU(inplace=True)
        self.conv7 = nn.Conv2d(width, width, 3, padding=dilation, dilation=dilation, bias=False)
        self.relu7 = nn.ReLU(inplace=True)
        self.conv8 = nn.Conv2d(width, num_classes, 1, bias=False)
        if init == "kaiming":
            for m in (self.conv6, self.conv7, self.conv8):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif init != "default":
            raise ValueError(f"unknown init {init!r} (default or kaiming)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_channels, h, w) -> segmentation logits (B, num_classes, h, w)."""
        return self.conv8(self.relu7(self.conv7(self.relu6(self.conv6(x)))))


class WeightNormLinear(nn.Module):
    """Bias-free linear layer with weight = g * v / ||v|| (row norms), parameters ``weight_g`` (out, 1), fixed at
    1 and not trained, and ``weight_v`` (out, in): the state_dict layout of ``nn.utils.weight_norm``."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        v = torch.empty(out_features, in_features)
        nn.init.kaiming_uniform_(v, a=5 ** 0.5)
        self.weight_v = nn.Parameter(v)
        self.weight_g = nn.Parameter(torch.ones(out_features, 1), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., in) -> (..., out)."""
        return F.linear(x, torch._weight_norm(self.weight_v, self.weight_g, 0))


class DINOHead(nn.Module):
    """Projection head: MLP in -> hidden -> hidden -> bottleneck (GELU between), L2 normalisation, then a
    weight-normalised bias-free linear layer to ``out_dim``. Linear layers: trunc-normal(0.02) weights, zero biases."""

    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int = 2048, bottleneck_dim: int = 256):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, hidden_dim), nn.GELU(),
                                 nn.Linear(hidden_dim, bottleneck_dim))
        for m in self.mlp:
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        self.last_layer = WeightNormLinear(bottleneck_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., in_dim) -> (..., out_dim)."""
        return self.last_layer(F.normalize(self.mlp(x), dim=-1, p=2))
