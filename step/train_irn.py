"""Train IRNet's boundary and displacement branches on the IR labels, then calibrate the mean shift.

    python -m step.train_irn [flags of run_sample.py]

IRN's recipe: random rescale (--irn_rescale), flip and --irn_crop_size crops of the images of
--train_list with their IR labels; the label map is reduced x0.25 (nearest, as PIL) and the pair labels of
every offset within --irn_radius are built on the device in one gather per batch (IRN built 152 x 13,090
float masks per sample in CPU workers and shipped them). Poly SGD, --irn_learning_rate for the boundary
branch and 10x for the displacement branch. The backbone is frozen: ImageNet weights (--irn_init
imagenet, IRN) or the trained classifier's backbone (--irn_init cam, the toy default, which has no
ImageNet weights). Afterwards the mean displacement over the top-left crops of every image of
--infer_list becomes the mean shift. Writes --irn_weights_name (default <work_dir>/sess/res50_irn.pth).

Under torchrun: DistributedDataParallel with --irn_batch_size the total batch, the single-process sample
order and augmentation (``misc.dist.RankShuffle``, ``PerItemSeed``), the loss's pair counts summed over
ranks (so the ranks' losses add up to the whole batch's loss and the averaged gradient is its gradient;
the branches use GroupNorm and the backbone is frozen, so DDP is exact), and the mean shift's sums
reduced over the ranks' shares of --infer_list.
"""
from __future__ import annotations

import argparse

import torch
from torch.utils.data import DataLoader

from misc import dist
from misc.errors import UserError
from misc.imutils import downsample_label
from misc.indexing import PathIndex
from misc.samples import ClassificationDataset, SegmentationDataset
from misc.torchutils import autocast, pick_device, poly_optimizer, seed_everything, worker_init_fn
from net.resnet50 import load_imagenet_weights
from net.resnet50_irn import Net, affinity_displacement_loss
from step.common.checkpoints import EpochResume
from step.common.data import get_dataset, load_labels, load_list, out_path
from step.common.entry import step_main
from step.common.models import trained_classifier
from step.common.parallel import place, progress, rank_batch, say, shard, train_loader
from step.common.training import fit

SECTIONS = ("run", "data", "toy", "backbone", "classifier", "ir_label", "irn")  # the flag sections it reads
WEIGHTS = "irn_weights_name"  # the flag of its final weights (run_sample.py --compare reuses them when present)


def build_irn(args: argparse.Namespace, num_classes: int) -> Net:
    """IRNet with this run's backbone shape and its backbone weights per --irn_init (on the CPU); with
    'cam' the backbone of the --cam_weights_name classifier (num_classes outputs), loaded strictly."""
    model = Net(width=args.backbone_width, blocks=tuple(args.backbone_blocks))
    if args.irn_init == "imagenet":
        if not args.pretrained_weights:
            raise UserError("--irn_init imagenet needs --pretrained_weights <torchvision resnet50 IMAGENET1K_V1 .pth> "
                            "(or --irn_init cam to start from the trained classifier)")
        load_imagenet_weights(model.resnet50, args.pretrained_weights)
    else:
        model.resnet50.load_state_dict(trained_classifier(args, num_classes).resnet50.state_dict())
    return model


def calibrate_mean_shift(model: Net, loader: DataLoader, device: torch.device, amp: str = "off") -> torch.Tensor:
    """Mean displacement (dy, dx) over every image of ``loader`` (each image's mean over its whole crop,
    padding included as in IRN, then averaged over images; no image is dropped; under torchrun ``loader``
    holds this rank's share and the sums are reduced over ranks). Stores it in
    ``model.mean_shift.running_mean`` and returns it (2,)."""
    model.eval()
    model.mean_shift.running_mean.zero_()
    sums = torch.zeros(3, dtype=torch.float64, device=device)  # (dy sum, dx sum, images)
    with torch.no_grad():
        for b in progress(loader, desc="train_irn mean shift", leave=False):
            with autocast(device, amp):
                _, dp = model(b["img"].to(device, non_blocking=True))
            sums[:2] += dp.double().mean((2, 3)).sum(0)
            sums[2] += dp.shape[0]
    dist.all_reduce_(sums)
    mean = (sums[:2] / sums[2].clamp_min(1)).float()
    model.mean_shift.running_mean.copy_(mean)
    return mean


def run(args: argparse.Namespace) -> None:
    """Train (resuming after the last finished epoch of an interrupted run with the same flags), calibrate,
    save atomically."""
    seed_everything(args.seed, args.deterministic)
    device = pick_device(args.device)
    ds = get_dataset(args)
    ids, infer_ids = load_list(args, args.train_list), load_list(args, args.infer_list)
    labels = load_labels(args, ds, infer_ids)
    label_dir = out_path(args, args.ir_label_out_dir)
    missing = [i for i in ids if not (label_dir / f"{i}.png").is_file()]
    if missing:
        raise UserError(f"{label_dir}: no IR label for {len(missing)} ids of --train_list (first {missing[0]}); "
                        "run step.cam_to_ir_label first")
    train = SegmentationDataset(ds.image_path, lambda i: label_dir / f"{i}.png", ids, crop=args.irn_crop_size,
                                rescale=tuple(args.irn_rescale))
    loader = train_loader(train, args.irn_batch_size, "--irn_batch_size", args.train_list, args.seed,
                          args.num_workers, device)
    side = args.irn_crop_size // 4
    index = PathIndex(args.irn_radius, (side, side)).to(device)

    model = place(build_irn(args, ds.num_classes), device, args.channels_last).train()
    max_step = len(ids) // args.irn_batch_size * args.irn_num_epoches
    edge_params, dp_params = model.trainable_parameters()
    opt, sched = poly_optimizer(
        "sgd", [{"params": edge_params, "lr": args.irn_learning_rate, "weight_decay": args.irn_weight_decay},
                {"params": dp_params, "lr": 10 * args.irn_learning_rate, "weight_decay": args.irn_weight_decay}],
        max_step, momentum=args.irn_momentum)
    world = dist.world_size()
    names = ("pos_aff", "neg_aff", "dp_fg", "dp_bg", "total")

    def loss(forward, b: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        edge, dp = forward(b["img"].to(device, non_blocking=True))
        small = downsample_label(b["label"].to(device, non_blocking=True), 4)
        losses = affinity_displacement_loss(edge, dp, small, index, ds.num_classes, global_counts=dist.all_reduce_)
        # the ranks' losses add up to the total batch's (pair counts summed over ranks); DDP averages the
        # gradients over the ranks, so each rank backpropagates world x its share: the gradient of the sum
        return world * losses["total"], {k: losses[k] for k in names}

    def on_epoch(epoch: int, mean: dict, last: dict) -> None:
        say(f"train_irn epoch {epoch}: mean " + ", ".join(f"{k} {v:.4f}" for k, v in mean.items()))

    def finalize(model: Net) -> None:
        infer = ClassificationDataset(ds.image_path, shard(infer_ids), labels, crop=args.irn_crop_size,
                                      resize_long=None, flip=False)
        batch = rank_batch(args.irn_batch_size, "--irn_batch_size")
        kw = dict(num_workers=args.num_workers, pin_memory=device.type == "cuda", worker_init_fn=worker_init_fn)
        mean = calibrate_mean_shift(model, DataLoader(infer, batch, shuffle=False, **kw), device, args.amp)
        say(f"train_irn: mean shift (dy, dx) = ({mean[0]:.4f}, {mean[1]:.4f}) over {len(infer_ids)} images of "
            "--infer_list")

    weights = out_path(args, args.irn_weights_name)
    resume = EpochResume(args, weights, ("backbone", "irn"), ("ir_label_out_dir", "cam_weights_name"))
    fit("train_irn", model, loader, opt, sched, args.irn_num_epoches, loss, device, args.amp, resume, weights, "IRN",
        on_epoch=on_epoch, finalize=finalize)


if __name__ == "__main__":
    step_main("train_irn")
