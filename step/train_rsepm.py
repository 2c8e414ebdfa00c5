"""Train RS+EPM's single-stage network (--method rsepm / rsepm_irn): classification, RecurSeed and
EdgePredictMix in one loop. The training is **[reconstructed]**: the authors released none
(``net.rsepm_losses`` and docs/methods/rsepm.md say what each piece follows).

    python -m step.train_rsepm --method rsepm [flags of run_sample.py]

Writes --rsepm_weights_name (default <work_dir>/sess/rsepm.pth): the ``net.rsepm.RSEPM`` state_dict in the
released key layout. Per iteration: Lcls on the GAP logits, Lrec (CAM against the RecurSeed map Mrs) and Lseg
(decoder against the certainty-filtered Mrs); after --rsepm_epm_start epochs also EdgePredictMix's Lseg^mix
and Lrec^mix on the mixed batch. --rsepm_epochs epochs of --train_list at the total batch --rsepm_batch_size
(rank-invariant order, ``step.common.parallel.train_loader``), poly schedule per iteration; an interrupted run
resumes after its last finished epoch; the class choice of the mix and torch's global generators (dropout) are
seeded by (--seed, iteration, rank) every iteration, so a resumed run repeats them.
"""
from __future__ import annotations

import argparse

import torch

from misc import dist
from misc.errors import UserError
from misc.samples import ClassificationDataset
from misc.torchutils import pick_device, poly_optimizer, seed_everything
from net.rsepm import load_imagenet_trunk
from net.rsepm_losses import RSEPMConfig, rsepm_losses
from step.common.checkpoints import EpochResume
from step.common.data import get_dataset, load_labels, load_list, out_path
from step.common.entry import step_main
from step.common.models import rsepm_network
from step.common.parallel import place, say, train_loader
from step.common.reports import warn_rare_classes
from step.common.training import fit

SECTIONS = ("run", "data", "toy", "rsepm")  # the flag sections it reads
LOGGED = ("loss", "cls", "rec", "seg", "seg_mix", "rec_mix")
LR_MULTS = (1, 2, 10, 20)  # trunk weights, trunk biases, head weights, head biases [reconstructed]


def config(args: argparse.Namespace) -> RSEPMConfig:
    """The reconstructed constants of the --rsepm_* flags."""
    return RSEPMConfig(refine=args.rsepm_refine, scg_from=0 if args.rsepm_scg_c1 else 1,
                       pamr_iters=args.rsepm_pamr_iters, pamr_dilations=tuple(args.rsepm_pamr_dilations),
                       cf_fg=args.rsepm_cf_fg, cf_bg=args.rsepm_cf_bg, ep_edge=args.rsepm_ep_edge,
                       ep_conf=args.rsepm_ep_conf, mix_band=args.rsepm_mix_band, w_cls=args.rsepm_w_cls,
                       w_rec=args.rsepm_w_rec, w_seg=args.rsepm_w_seg, w_mix=args.rsepm_w_mix)


def run(args: argparse.Namespace) -> None:
    """Train (resuming after the last finished epoch of an interrupted run with the same flags) and save."""
    seed_everything(args.seed, args.deterministic)
    device = pick_device(args.device)
    if not args.rsepm_scratch and not args.rsepm_pretrained_weights:
        raise UserError(f"--rsepm_pretrained_weights: RS+EPM starts from torchvision's ImageNet "
                        f"resnet{args.rsepm_depth} (IMAGENET1K_V1 .pth); pass it, or --rsepm_scratch True")
    ds = get_dataset(args)
    ids = load_list(args, args.train_list)
    labels = load_labels(args, ds, ids)
    warn_rare_classes("train_rsepm", ds.class_names, labels, ids, args.train_list)
    net = rsepm_network(args, ds.num_classes)
    if args.rsepm_pretrained_weights:
        load_imagenet_trunk(net, args.rsepm_pretrained_weights)
    data = ClassificationDataset(ds.image_path, ids, labels, crop=args.rsepm_crop_size,
                                 resize_long=tuple(args.rsepm_resize_long), jitter=tuple(args.rsepm_jitter))
    loader = train_loader(data, args.rsepm_batch_size, "--rsepm_batch_size", args.train_list, args.seed,
                          args.num_workers, device)
    groups = [{"params": p, "lr": args.rsepm_lr * m, "weight_decay": args.rsepm_weight_decay if i % 2 == 0 else 0.0}
              for i, (p, m) in enumerate(zip(net.parameter_groups(), LR_MULTS))]
    opt, sched = poly_optimizer(args.rsepm_optimizer, groups, len(loader) * args.rsepm_epochs,
                                momentum=args.rsepm_momentum, nesterov=args.rsepm_optimizer == "sgd")
    model = place(net, device, args.channels_last).train()
    cfg, mix_from = config(args), args.rsepm_epm_start * len(loader)

    def loss(forward, b: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        n_iter = sched.last_epoch  # iterations done: the scheduler's count survives a resume
        dist.reseed_globals(args.seed, n_iter)  # the decoder's dropout repeats after a resume
        x, y = b["img"].to(device, non_blocking=True), b["label"].to(device, non_blocking=True)
        out = rsepm_losses(forward, x, y, cfg, args.rsepm_mix and n_iter >= mix_from,
                           dist.iteration_generator(args.seed, n_iter))
        return out["loss"], {k: out[k].detach() / dist.world_size() for k in LOGGED}

    def on_epoch(epoch: int, mean: dict, last: dict) -> None:
        say(f"train_rsepm epoch {epoch}: mean " + ", ".join(f"{k} {v:.4f}" for k, v in mean.items()))

    weights = out_path(args, args.rsepm_weights_name)
    resume = EpochResume(args, weights, ("rsepm",))
    fit("train_rsepm", model, loader, opt, sched, args.rsepm_epochs, loss, device, args.amp, resume, weights,
        "RS+EPM network", sync_bn=True, on_epoch=on_epoch)


if __name__ == "__main__":
    step_main("train_rsepm")
