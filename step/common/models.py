"""The run's classifier: ``--cam_network`` looked up in net.registry, built from the resolved flags, and
the trained one (--cam_weights_name) loaded strictly; RS+EPM's network of the ``rsepm`` flags."""
from __future__ import annotations

import argparse

import torch

from net.registry import build_classifier
from net.rsepm import RSEPM
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


def rsepm_network(args: argparse.Namespace, num_classes: int) -> RSEPM:
    """A fresh RS+EPM network (``net.rsepm.RSEPM``) of the --rsepm_* shape flags, on the CPU."""
    blocks = tuple(args.rsepm_blocks) if args.rsepm_blocks else None
    return RSEPM(num_classes, args.rsepm_depth, args.rsepm_width, blocks, args.rsepm_feature_size)


def trained_rsepm(args: argparse.Namespace, num_classes: int) -> RSEPM:
    """The RS+EPM network with --rsepm_weights_name loaded strictly: train_rsepm's file or a released
    checkpoint (a DDP ``module.`` prefix is stripped), on the CPU."""
    model = rsepm_network(args, num_classes)
    load_checkpoint(model, out_path(args, args.rsepm_weights_name),
                    select=lambda sd: {k.removeprefix("module."): v for k, v in sd.items()})
    return model
