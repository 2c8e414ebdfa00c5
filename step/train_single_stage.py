"""Train a single-stage ViT (--method toco or pufs): classification, CAMs, online pseudo labels refined by PAR
and a segmentation decoder in one network.

    python -m step.train_single_stage --method toco [flags of run_sample.py]

Writes --ss_weights_name (default <work_dir>/sess/single_stage_<method>.pth): the ToCoNet state_dict (the
published key layout), or for PUFS the student, its EMA teacher and the FSR centres (``student.*``,
``teacher.*``, ``fsr.*``; each network part in the published layout).

The schedule counts iterations: --ss_max_iters at the total batch --ss_batch_size (each of W torchrun ranks
takes 1/W of every batch, in the single-process order and augmentation), with the warm-up AdamW schedule
stepped per iteration, cut into epochs of --ss_epoch_iters iterations (``step.common.parallel.iteration_loader``)
so that an interrupted run resumes after the last finished epoch. ToCo's local-crop positions and PUFS's mask
noise are drawn per image from a generator seeded by (--seed, iteration, the image's place in the total batch),
and torch's global generators (drop path) are reseeded by (--seed, iteration, rank) every iteration, so a resumed
run repeats them, and under torchrun only drop path differs from the single-process run. The count-normalised
losses (split seg loss, patch-token contrast) divide by the total batch's counts under torchrun. --amp bf16
autocasts the training forward (the no-grad multi-scale CAM passes, the losses and the CRF loss stay fp32).
"""
from __future__ import annotations

import argparse
from typing import Callable

import numpy as np
import torch

from misc import dist
from misc.errors import UserError
from misc.optim import cosine_momentum, warmup_adamw
from misc.torchutils import pick_device, seed_everything
from misc.views import PUFSViews, ToCoViews
from net.par import PAR
from net.pufs import PUFSConfig, StudentTeacher, ema_update, pufs_losses
from net.toco import ToCoConfig, toco_losses
from net.vit import load_imagenet_vit
from step.common.checkpoints import EpochResume
from step.common.data import get_dataset, load_labels, load_list, out_path
from step.common.entry import step_main
from step.common.parallel import iteration_loader, place, say
from step.common.single_stage import build_network
from step.common.training import fit

SECTIONS = ("run", "data", "toy", "single_stage", "toco", "pufs")  # the flag sections it reads

LOGGED = {"toco": ("loss", "cls", "cls_aux", "ptc", "ctc", "seg", "reg"),
          "pufs": ("loss", "cls", "cls_aux", "aff", "fsr_cls", "fsr_pat", "seg", "reg")}


class _Net:
    """What toco_losses / pufs_losses call as their model: ``fn`` (fit's autocast DDP forward, adapted to the
    network's keyword arguments) with ``module`` the network whose no-grad methods (``cams``) they use."""

    def __init__(self, module: torch.nn.Module, fn: Callable[..., dict]):
        self.module, self.fn = module, fn

    def __call__(self, *args, **kw) -> dict:
        return self.fn(*args, **kw)


def _seed_iteration(seed: int, n_iter: int, share: int) -> list[torch.Generator]:
    """Seed torch's global generators (drop path draws from them) for one iteration on this rank from (seed,
    iteration, rank), so that a resumed run repeats them. Returns the CPU generators of the iteration's explicit
    random choices (crop positions, mask noise) of this rank's ``share`` images, each seeded by (seed,
    iteration, the image's place in the total batch): the same choices whatever the number of processes."""
    dist.reseed_globals(seed, n_iter)
    first = dist.rank() * share
    return [torch.Generator().manual_seed(int(np.random.SeedSequence([seed, n_iter, first + n]).generate_state(1)[0]))
            for n in range(share)]


def run(args: argparse.Namespace) -> None:
    """Train (resuming after the last finished epoch of an interrupted run with the same flags) and save."""
    seed_everything(args.seed, args.deterministic)
    device = pick_device(args.device)
    if not args.ss_scratch and not args.ss_pretrained_weights:
        raise UserError("--ss_pretrained_weights: the single-stage methods start from an ImageNet ViT-B/16 file "
                        "(timm vit_base_patch16_224 or deit_base_patch16_224); pass it, or --ss_scratch True")
    ds = get_dataset(args)
    ids = load_list(args, args.train_list)
    labels = load_labels(args, ds, ids)
    if len(ids) < args.ss_batch_size:
        raise UserError(f"--train_list {args.train_list}: {len(ids)} ids, fewer than --ss_batch_size "
                        f"{args.ss_batch_size}")
    net = build_network(args, ds.num_classes, train=True)
    if args.ss_pretrained_weights:
        load_imagenet_vit(net.encoder, args.ss_pretrained_weights)
    common = dict(num_classes=ds.num_classes + 1, high_thre=args.ss_high_thre, low_thre=args.ss_low_thre,
                  bkg_thre=args.ss_bkg_thre, cam_scales=tuple(args.ss_cam_scales), w_seg=args.ss_w_seg,
                  w_reg=args.ss_w_reg, crf_scale=args.ss_crf_loss_scale, schedule=args.ss_loss_schedule,
                  seg_start=args.ss_seg_start)
    if args.method == "toco":
        data = ToCoViews(ds.image_path, ids, labels, args.ss_crop_size, tuple(args.ss_scale_range), args.ss_jitter,
                         args.ss_gray, args.toco_same_flip, args.ss_blur)
        cfg = ToCoConfig(**common, crop_num=args.toco_crop_num, local_crop_size=args.toco_local_crop_size,
                         temp=args.toco_temp, momentum=args.toco_momentum, w_ptc=args.ss_w_ptc, w_ctc=args.toco_w_ctc,
                         ptc_box=args.toco_ptc_box)
        groups = [{**g, "lr_mult": args.ss_lr_mult if g["lr_mult"] != 1 else 1} for g in net.param_groups()]
        model = net
    else:
        data = PUFSViews(ds.image_path, ids, labels, args.ss_crop_size, args.ss_jitter)
        fsr_iters = args.pufs_fsr_iters or args.ss_max_iters
        cfg = PUFSConfig(**common, max_iters=args.ss_max_iters, fsr_iters=fsr_iters, use_mim=args.pufs_use_mim,
                         block_size=args.pufs_block_size, mask_ratio=args.pufs_mask_ratio, w_class=args.pufs_w_class,
                         w_patch=args.pufs_w_patch, w_aff=args.ss_w_ptc)
        groups = net.param_groups(args.ss_lr_mult)
        model = StudentTeacher(net, args.pufs_out_dim, args.pufs_teacher_eval)
    model = place(model, device, args.channels_last).train()
    opt, sched = warmup_adamw(groups, args.ss_lr, args.ss_weight_decay, args.ss_max_iters, args.ss_warmup_iters,
                              args.ss_warmup_ratio, args.ss_schedule)
    loader = iteration_loader(data, args.ss_batch_size, "--ss_batch_size", args.ss_epoch_iters, args.seed,
                              args.num_workers, device)
    par = PAR(num_iter=args.ss_par_iters).to(device)
    logged = LOGGED[args.method]

    def loss(forward, b: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        n_iter = sched.last_epoch  # iterations done: the scheduler's count survives a resume
        batch = {k: v.to(device, non_blocking=True) for k, v in b.items() if isinstance(v, torch.Tensor)}
        gen = _seed_iteration(args.seed, n_iter, len(batch["cls_labels"]))
        if args.method == "toco":
            out = toco_losses(_Net(model, lambda x, crops=None, momentum=0.9: forward(x, crops, momentum)), batch,
                              n_iter, cfg, par, gen)
        else:
            out = pufs_losses(_Net(model.student, lambda views, mask=None: forward(views, mask)), model.teacher,
                              model.fsr, batch, n_iter, cfg, par, gen)
        return out["loss"], {k: out[k].detach() / dist.world_size() for k in logged}

    def after_step(steps: int) -> None:
        if args.method == "pufs":  # the teacher follows the student after every optimiser step
            ema_update(model.teacher, model.student, cosine_momentum(steps - 1, fsr_iters, args.pufs_momentum))

    def on_epoch(epoch: int, mean: dict, last: dict) -> None:
        say(f"train_single_stage ({args.method}) iteration {epoch * args.ss_epoch_iters}: mean "
            + ", ".join(f"{k} {v:.4f}" for k, v in mean.items()))

    weights = out_path(args, args.ss_weights_name)
    resume = EpochResume(args, weights, ("single_stage", "toco", "pufs"))
    fit("train_single_stage", model, loader, opt, sched, args.ss_max_iters // args.ss_epoch_iters, loss, device,
        args.amp, resume, weights, f"{args.method} network", on_epoch=on_epoch, after_step=after_step)


if __name__ == "__main__":
    step_main("train_single_stage")
