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
import importlib

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from misc import dist
from misc.data import ClassificationDataset
from misc.dist import PerItemSeed, RankShuffle
from misc.errors import UserError
from misc.torchutils import autocast, pick_device, poly_optimizer, seed_everything, worker_init_fn
from net.resnet50 import load_imagenet_weights
from step.common import (EpochResume, distribute, get_dataset, load_labels, load_list, out_path, place, progress, rank_batch,
                         save_checkpoint, say, shard, step_main)


def build_classifier(args: argparse.Namespace, num_classes: int, cam: bool = False) -> torch.nn.Module:
    """The --cam_network module's ``Net`` (or ``CAM`` for inference) for this run's recipe and width."""
    mod = importlib.import_module(args.cam_network)
    cls = mod.CAM if cam else mod.Net
    return cls(num_classes=num_classes, recipe=args.recipe, width=args.backbone_width,
               blocks=tuple(args.backbone_blocks))


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
    if len(ids) < args.cam_batch_size:
        raise UserError(f"--train_list {args.train_list}: {len(ids)} ids, fewer than --cam_batch_size {args.cam_batch_size}")
    batch = rank_batch(args.cam_batch_size, "--cam_batch_size")
    train = PerItemSeed(ClassificationDataset(ds.image_path, ids, labels, crop=args.cam_crop_size,
                                              resize_long=tuple(args.cam_resize_long)))
    val = ClassificationDataset(ds.image_path, shard(val_ids), labels, crop=args.cam_crop_size, resize_long=None,
                                flip=False)
    kw = dict(num_workers=args.num_workers, pin_memory=device.type == "cuda", worker_init_fn=worker_init_fn,
              persistent_workers=args.num_workers > 0)
    sampler = RankShuffle(len(ids), args.seed)
    train_loader = DataLoader(train, batch, sampler=sampler, drop_last=True, **kw)
    val_loader = DataLoader(val, batch, shuffle=False, **kw)

    model = build_classifier(args, ds.num_classes)
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
    weights = out_path(args, args.cam_weights_name)
    resume = EpochResume(args, weights)
    start = resume.load(model, opt, sched)
    net = distribute(model, device, sync_bn=args.recipe == "scratch")
    for ep in range(start, args.cam_num_epoches):
        sampler.set_epoch(ep)
        bar = progress(train_loader, desc=f"train_cam epoch {ep + 1}/{args.cam_num_epoches}", leave=False)
        for b in bar:
            with autocast(device, args.amp):
                logits = net(b["img"].to(device, non_blocking=True))
            loss = F.multilabel_soft_margin_loss(logits.float(), b["label"].to(device, non_blocking=True))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            bar.set_postfix(loss=f"{loss.item():.4f}", lr=f"{opt.param_groups[0]['lr']:.4f}")
        last = dist.all_reduce_(loss.detach().clone()).item() / dist.world_size()  # the total batch's mean
        say(f"train_cam epoch {ep + 1}: last loss {last:.4f}, val loss {_val_loss(model, val_loader, device, args.amp):.4f}")
        resume.save(model, opt, sched, ep + 1)
    save_checkpoint(model, weights, "classifier")
    resume.clear()


if __name__ == "__main__":
    step_main("train_cam", run)
