"""The classifiers a run can pick by name (--cam_network), and how each is built.

Interface: ``CLASSIFIERS[name]`` is a ``Builder``: ``build(num_classes, cam, **flags)`` returns the
``nn.Module`` (on the CPU, randomly initialised), where ``flags`` are the resolved values of the flags
named in ``Builder.flags`` (passed as keywords under those names) and ``cam`` picks the inference wrapper
(class maps instead of logits). A training classifier provides ``trainable_parameters() -> (backbone,
head)`` (the 1x and 10x lr groups); ``load_checkpoint`` loads state_dicts into it strictly. A new network
adds its module under net/ and one entry here; its flags live in its own flag section. Segmentation
networks will get a table of the same shape.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

import torch.nn as nn

from net import resnet50_cam


@dataclass(frozen=True)
class Builder:
    """How to build one network: ``build(num_classes, cam, **{f: value of flag f for f in flags})``."""

    build: Callable[..., nn.Module]
    flags: tuple[str, ...]


CLASSIFIERS: dict[str, Builder] = {
    "net.resnet50_cam": Builder(resnet50_cam.build, ("recipe", "backbone_width", "backbone_blocks")),
}


def build_classifier(name: str, num_classes: int, flags: Mapping[str, Any], cam: bool = False) -> nn.Module:
    """The classifier ``name`` (a key of CLASSIFIERS) for ``num_classes`` classes, built from the values in
    ``flags`` (e.g. ``vars(args)``) of the flags its Builder names; ``cam`` gives the CAM wrapper."""
    b = CLASSIFIERS[name]
    return b.build(num_classes, cam, **{f: flags[f] for f in b.flags})
