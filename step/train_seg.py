"""Train the segmentation network (DeepLab-v2 or v3+) on a method's pseudo labels: the last stage.

    python -m step.train_seg [flags of run_sample.py]      # or run_sample.py --seg True

Reads the images of --seg_train_list and their pseudo labels ``<sem_seg_out_dir>/<id>.png`` (any method's:
its --sem_seg_out_dir has its _<method> suffix). The published recipes are --seg_recipe tables
(run_sample.SEG_RECIPES, docs/methods/deeplab.md): random rescale (one of --seg_scales, or U(first, last)
with --seg_scale_uniform), flip, --seg_crop_size crops (image padded with the mean colour, label with 255),
input normalised in the style of the initialisation file (caffe BGR for kazuto1011's files, ImageNet for
torchvision's), SGD with the published groups (v2: backbone 1x, ASPP weights 10x, ASPP biases 20x without
weight decay; v3+: backbone --seg_backbone_lr_mult, head 1x), poly 0.9 per iteration (updated every
--seg_poly_every, floored at --seg_min_lr), --seg_iters iterations of the total batch --seg_batch_size, the
loss on every output of the network (v2 MSC: full, each scale, max-fused). The iterations are cut into
"epochs" of --seg_epoch_iters (resume points): an interrupted run restarts after the last one.

The checkpoint is the last iteration's (no val labels used). --seg_select val keeps the one of best val mIoU
(single scale, no CRF) among the epoch ends, as DRS and VainF did; scores on that val set are then
optimistic. Writes --seg_weights_name (default <work_dir>/sess/deeplab.pth) and its description
(``sess/deeplab.json``: network, input style) for make_seg. Under torchrun: DDP, the total batch and the
sample order of a single process (``step.common.parallel.iteration_loader``); trained BN (v3+) becomes SyncBatchNorm on
CUDA.
"""
from __future__ import annotations

import argparse
from functools import partial

import torch

from misc import dist
from misc.errors import UserError
from misc.io import atomic_path
from misc.samples import SegmentationDataset
from misc.segmentation import normalize_hwc, poly_lr
from misc.torchutils import pick_device, seed_everything
from net.deeplab import deeplab_v2_param_groups, deeplab_v3plus_param_groups
from net.seg_loss import seg_loss
from step.common.checkpoints import EpochResume
from step.common.data import get_dataset, load_labels, load_list, out_path
from step.common.entry import step_main
from step.common.parallel import iteration_loader, place, say
from step.common.seg import save_description, segmentation_network, val_miou
from step.common.training import fit

SECTIONS = ("run", "data", "toy", "backbone", "classifier", "sem_seg", "seg")  # the flag sections it reads


def poly_schedule(opt: torch.optim.Optimizer, max_step: int, every: int, min_lr: float
                  ) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-iteration poly 0.9 of every group of ``opt`` (``misc.segmentation.poly_lr``: updated every ``every``
    iterations, floored at ``min_lr``); call ``step()`` after each ``opt.step()``."""
    lambdas = [partial(lambda i, base: poly_lr(base, i, max_step, 0.9, every, min_lr) / base, base=g["lr"])
               for g in opt.param_groups]
    return torch.optim.lr_scheduler.LambdaLR(opt, lambdas)


def run(args: argparse.Namespace) -> None:
    """Train (resuming after the last finished epoch of an interrupted run with the same flags), save atomically."""
    seed_everything(args.seed, args.deterministic)
    device = pick_device(args.device)
    ds = get_dataset(args)
    ids = load_list(args, args.seg_train_list)
    label_dir = out_path(args, args.sem_seg_out_dir)
    missing = [i for i in ids if not (label_dir / f"{i}.png").is_file()]
    if missing:
        raise UserError(f"{label_dir}: no pseudo label for {len(missing)} ids of --seg_train_list "
                        f"{args.seg_train_list} (first {missing[0]}); run make_sem_seg_labels with --infer_list "
                        f"{args.seg_train_list}")
    if len(ids) < args.seg_batch_size:
        raise UserError(f"--seg_train_list {args.seg_train_list}: {len(ids)} ids, fewer than --seg_batch_size "
                        f"{args.seg_batch_size}")
    labels = load_labels(args, ds, ids)
    model, desc = segmentation_network(args, ds.num_classes)
    model = place(model, device, False).train()
    scales = tuple(args.seg_scales)
    train = SegmentationDataset(ds.image_path, lambda i: label_dir / f"{i}.png", ids, crop=args.seg_crop_size,
                                rescale=(scales[0], scales[-1]), scales=None if args.seg_scale_uniform else scales,
                                normalize=partial(normalize_hwc, style=desc["style"]))
    if len(train) < args.seg_batch_size:
        raise UserError(f"--seg_train_list {args.seg_train_list}: {len(train)} ids, fewer than --seg_batch_size "
                        f"{args.seg_batch_size}")
    loader = iteration_loader(train, args.seg_batch_size, "--seg_batch_size", args.seg_epoch_iters, args.seed,
                              args.num_workers, device)
    if args.seg_network == "deeplab_v2":
        groups = deeplab_v2_param_groups(model, args.seg_learning_rate, args.seg_weight_decay)
    else:
        groups = deeplab_v3plus_param_groups(model, args.seg_learning_rate, args.seg_weight_decay,
                                             args.seg_backbone_lr_mult)
    opt = torch.optim.SGD(groups, lr=args.seg_learning_rate, momentum=args.seg_momentum)
    sched = poly_schedule(opt, args.seg_iters, args.seg_poly_every, args.seg_min_lr)
    world = dist.world_size()

    def loss(forward, b: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        classes = None
        if args.seg_self_training != "off":  # the image's classes and the background
            classes = torch.stack([torch.cat([torch.ones(1), torch.from_numpy(labels[i])]) for i in b["name"]])
            classes = classes.to(device)
        total = seg_loss(forward(b["img"].to(device, non_blocking=True)), b["label"].to(device, non_blocking=True),
                         args.seg_loss, classes, args.seg_self_training)
        return total, {"loss": total.detach() / world}

    weights = out_path(args, args.seg_weights_name)
    best_path = weights.with_name(weights.name + ".best")
    resume = EpochResume(args, weights, ("seg",), ("sem_seg_out_dir",))
    val_ids = load_list(args, args.seg_eval_list) if args.seg_select == "val" else []

    def on_epoch(epoch: int, mean: dict, last: dict) -> None:
        note = ""
        if val_ids:
            miou = val_miou(model, ds, val_ids, desc["style"], args.seg_batch_images, args.num_workers, device)
            best = torch.load(best_path, weights_only=True) if best_path.is_file() else None
            if best is not None and (best["flags"] != resume.flags or best["epoch"] >= epoch):
                best = None  # left by another run, or by epochs redone after a restart
            if dist.is_main() and (best is None or miou > best["miou"]):
                with atomic_path(best_path) as tmp:
                    torch.save({"model": model.state_dict(), "miou": miou, "epoch": epoch, "flags": resume.flags}, tmp)
            note = f", val mIoU {100 * miou:.2f}"
        say(f"train_seg iterations {epoch * args.seg_epoch_iters}/{args.seg_iters}: mean loss {mean['loss']:.4f}"
            + note)

    def finalize(model: torch.nn.Module) -> None:
        if val_ids:
            dist.barrier()
            best = torch.load(best_path, weights_only=True)
            model.load_state_dict(best["model"])
            say(f"train_seg: --seg_select val keeps iteration {best['epoch'] * args.seg_epoch_iters} "
                f"(val mIoU {100 * best['miou']:.2f})")

    fit("train_seg", model, loader, opt, sched, args.seg_iters // args.seg_epoch_iters, loss, device, args.amp,
        resume, weights, "segmentation network", sync_bn=not args.seg_frozen_bn, on_epoch=on_epoch,
        finalize=finalize)
    save_description(weights, desc)


if __name__ == "__main__":
    step_main("train_seg")
