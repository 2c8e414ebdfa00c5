"""Train the multi-label classifier (IRN recipe: soft-margin loss, poly SGD, classifier at 10x lr).

    python -m step.train_cam [flags of run_sample.py]

Writes the state_dict to --cam_weights_name (default <work_dir>/sess/res50_cam.pth).

Under torchrun: DistributedDataParallel, --cam_batch_size is the total batch (each of the W ranks takes
1/W of it), the order of the samples and each sample's augmentation are those of a single-process run
(``misc.dist.RankShuffle``, ``PerItemSeed``), so the optimiser steps and the poly schedule are too.
BatchNorm (--recipe scratch) becomes SyncBatchNorm on CUDA; on CPU each rank uses its own batch's
statistics (SyncBatchNorm has no CPU kernel). --recipe irn freezes them, which makes DDP exact.
"""
from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from misc import dist
from misc.errors import UserError
from misc.samples import ClassificationDataset
from misc.torchutils import autocast, pick_device, poly_optimizer, seed_everything, worker_init_fn
from net.resnet50 import load_imagenet_weights
from step.common.checkpoints import EpochResume
from step.common.data import get_dataset, load_labels, load_list, out_path
from step.common.entry import step_main
from step.common.models import classifier
from step.common.parallel import place, rank_batch, say, shard, train_loader
from step.common.training import fit

SECTIONS = ("run", "data", "toy", "backbone", "classifier")  # the flag sections it reads
WEIGHTS = "cam_weights_name"  # the flag of its final weights (run_sample.py --compare reuses them when present)


def _val_loss(model: torch.nn.Module, loader: DataLoader, device: torch.device, amp: str) -> float:
    """Mean loss per image over ``loader`` (this rank's share of the validation ids), averaged over ranks."""
    model.eval()
    sums = torch.zeros(2, dtype=torch.float64, device=device)  # (loss sum, images)
    with torch.no_grad():
        for b in loader:
            with autocast(device, amp):
                logits = model(b["img"].to(device))
            sums[0] += F.multilabel_soft_margin_loss(logits.float(), b["label"].to(device), reduction="sum")
            sums[1] += len(b["name"])
    model.train()
    total, n = dist.all_reduce_(sums).tolist()
    return total / max(n, 1)


def run(args: argparse.Namespace) -> None:
    """Train (resuming after the last finished epoch of an interrupted run with the same flags), print the
    validation loss after every epoch, save the weights atomically."""
    seed_everything(args.seed, args.deterministic)
    device = pick_device(args.device)
    ds = get_dataset(args)
    ids, val_ids = load_list(args, args.train_list), load_list(args, args.val_list)
    labels = load_labels(args, ds, ids + val_ids)
    train = ClassificationDataset(ds.image_path, ids, labels, crop=args.cam_crop_size,
                                  resize_long=tuple(args.cam_resize_long))
    loader = train_loader(train, args.cam_batch_size, "--cam_batch_size", args.train_list, args.seed,
                          args.num_workers, device)
    val = ClassificationDataset(ds.image_path, shard(val_ids), labels, crop=args.cam_crop_size, resize_long=None,
                                flip=False)
    val_loader = DataLoader(val, rank_batch(args.cam_batch_size, "--cam_batch_size"), shuffle=False,
                            num_workers=args.num_workers, pin_memory=device.type == "cuda",
                            worker_init_fn=worker_init_fn, persistent_workers=args.num_workers > 0)

    model = classifier(args, ds.num_classes)
    if args.pretrained_weights:
        load_imagenet_weights(model.resnet50, args.pretrained_weights)
    elif args.recipe == "irn":
        raise UserError("--recipe irn starts from ImageNet weights: pass --pretrained_weights "
                        "<torchvision resnet50 IMAGENET1K_V1 .pth> (or --recipe scratch to train from random init)")
    model = place(model, device, args.channels_last).train()
    max_step = len(ids) // args.cam_batch_size * args.cam_num_epoches
    bb, head = model.trainable_parameters()
    opt, sched = poly_optimizer(
        args.cam_optimizer,
        [{"params": bb, "lr": args.cam_learning_rate, "weight_decay": args.cam_weight_decay},
         {"params": head, "lr": 10 * args.cam_learning_rate, "weight_decay": args.cam_weight_decay}],
        max_step, momentum=args.cam_momentum)

    def loss(forward, b: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        logits = forward(b["img"].to(device, non_blocking=True))
        value = F.multilabel_soft_margin_loss(logits, b["label"].to(device, non_blocking=True))
        return value, {"loss": value / dist.world_size()}  # the ranks' shares add up to the total batch's mean

    def on_epoch(epoch: int, mean: dict, last: dict) -> None:
        say(f"train_cam epoch {epoch}: last loss {last['loss']:.4f}, "
            f"val loss {_val_loss(model, val_loader, device, args.amp):.4f}")

    weights = out_path(args, args.cam_weights_name)
    resume = EpochResume(args, weights, ("backbone", "classifier"))
    fit("train_cam", model, loader, opt, sched, args.cam_num_epoches, loss, device, args.amp, resume, weights,
        "classifier", sync_bn=args.recipe == "scratch", on_epoch=on_epoch)


if __name__ == "__main__":
    step_main("train_cam")
