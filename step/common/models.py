"""The run's classifier: ``--cam_network`` looked up in net.registry, built from the resolved flags, and
the trained one (--cam_weights_name) loaded strictly."""
from __future__ import annotations

import argparse

import torch

from net.registry import build_classifier
from step.common.checkpoints import load_checkpoint
from step.common.data import out_path


def classifier(args: argparse.Namespace, num_classes: int, cam: bool = False) -> torch.nn.Module:
    """A fresh --cam_network classifier (``cam``: its CAM wrapper) for this run's flags, on the CPU."""
    return build_classifier(args.cam_network, num_classes, vars(args), cam=cam)


def trained_classifier(args: argparse.Namespace, num_classes: int, cam: bool = False) -> torch.nn.Module:
    """The classifier with the weights train_cam wrote to --cam_weights_name, on the CPU."""
    model = classifier(args, num_classes, cam)
    load_checkpoint(model, out_path(args, args.cam_weights_name))
    return model
