"""The single-stage methods' pieces that both of their steps need: the network of --method (ToCoNet, or PUFS's
student with its EMA teacher) built from the flags, and its weights loaded strictly (ours, or the published
ToCo / PUFS checkpoints)."""
from __future__ import annotations

import argparse
from pathlib import Path

from net.pufs import PUFSNet
from net.toco import ToCoNet
from step.common.checkpoints import load_checkpoint


def vit_kwargs(args: argparse.Namespace, train: bool) -> dict:
    """The ``net.vit.ViT`` keyword arguments of the flags (drop path only in training)."""
    return {"patch_size": args.ss_patch_size, "embed_dim": args.ss_embed_dim, "depth": args.ss_depth,
            "num_heads": args.ss_num_heads, "img_size": args.ss_img_size,
            "drop_path_rate": args.ss_drop_path if train else 0.0}


def build_network(args: argparse.Namespace, num_classes: int, train: bool) -> ToCoNet | PUFSNet:
    """The --method network (``ToCoNet`` or ``PUFSNet``) for ``num_classes`` foreground classes, randomly
    initialised, on the CPU; drop path only when ``train``."""
    vit = vit_kwargs(args, train)
    if args.method == "toco":
        return ToCoNet(num_classes + 1, vit=vit, ctc_dim=args.toco_ctc_dim, head_hidden=args.ss_head_hidden)
    return PUFSNet(num_classes + 1, vit=vit, out_dim=args.pufs_out_dim, cls_depth=args.pufs_cls_depth,
                   mask_class_attention=args.pufs_mask_class_attention, head_hidden=args.ss_head_hidden)


def load_trained(args: argparse.Namespace, model: ToCoNet | PUFSNet, path: Path) -> None:
    """Load ``path`` into the inference network strictly (one-line UserError on any mismatch): our
    train_single_stage file, or a published checkpoint (ToCo's DDP-saved ``module.`` keys are stripped). From a
    PUFS file holding student and teacher, --pufs_eval_model picks one; a published student.pth / teacher.pth
    is that network itself."""
    def select(sd: dict) -> dict:
        sd = {k.removeprefix("module."): v for k, v in sd.items()}
        prefix = f"{args.pufs_eval_model}." if args.method == "pufs" else None
        if prefix and any(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
        return sd

    load_checkpoint(model, path, select=select)
