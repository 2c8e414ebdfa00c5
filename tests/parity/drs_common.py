"""Weights and inputs shared by the DRS parity fixtures (``make_fixtures_drs.py``) and their test.

The published DRS models register every trunk conv twice (``features.<i>`` and ``layer<s>_conv<j>``), so a
state_dict holds two entries per conv; ``drs_weights`` gives both the same tensor, as a real checkpoint does,
so the published model and the toolkit's receive identical weights whichever entry their loader applies last.
"""
from __future__ import annotations

import math
from typing import Mapping

import torch

from net.vgg16 import STAGE_CONVS
from tests.parity.util import random_state_dict

PUBLISHED = "qjadud1994/DRS"
NUM_CLASSES = 20
DELTA = 0.6  # the fixed-controller variant (the published self-test's value)
NET_SEED = 17
INPUT_SEED = 5
INPUT_SHAPE = (2, 3, 56, 72)
CAM_SIZE = (28, 36)
NET_LABELS = ((3, 11), (0, 19))


def conv_aliases() -> dict[str, str]:
    """{'layer1_conv1': 'features.0', ...}: the published second name of each trunk conv."""
    out, i = {}, 0
    for s, n in enumerate(STAGE_CONVS, 1):
        for j in range(1, n + 1):
            out[f"layer{s}_conv{j}"] = f"features.{i}"
            i += 2
        i += s < len(STAGE_CONVS)
    return out


def drs_weights(shapes: Mapping[str, tuple[int, ...]], seed: int) -> dict[str, torch.Tensor]:
    """``random_state_dict`` with conv weights scaled by sqrt(2) (He gain, so 16 ReLU layers keep the signal
    above the random biases and the maps have spatial structure) and aliased convs tied."""
    sd = random_state_dict(shapes, seed)
    sd = {k: v * math.sqrt(2.0) if v.ndim == 4 else v for k, v in sd.items()}
    for alias, name in conv_aliases().items():
        for p in ("weight", "bias"):
            if f"{alias}.{p}" in sd:
                sd[f"{alias}.{p}"] = sd[f"{name}.{p}"]
    return sd


def net_inputs() -> tuple[torch.Tensor, torch.Tensor]:
    """The network-parity batch: (images (2, 3, 56, 72) ~ N(0, 1), 0/1 labels (2, 20) with NET_LABELS)."""
    x = torch.randn(INPUT_SHAPE, generator=torch.Generator().manual_seed(INPUT_SEED))
    labels = torch.zeros(INPUT_SHAPE[0], NUM_CLASSES)
    for b, cls in enumerate(NET_LABELS):
        labels[b, list(cls)] = 1.0
    return x, labels
