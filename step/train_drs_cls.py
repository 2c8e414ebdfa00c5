"""Train the DRS classifier: VGG-16-D1 with a suppression module after every conv (DRS's train_cls.py recipe).

    python -m step.train_drs_cls [flags of run_sample.py]

Images of --train_list squashed to --drs_resize squares (aspect ratio lost, as published), flipped, colour
jittered (--drs_jitter), randomly cropped to --drs_crop; multilabel soft-margin loss on the class maps'
spatial means. Nesterov SGD (--drs_momentum, --drs_weight_decay on every group) with four lr groups: trunk
weights --drs_learning_rate, trunk biases 2x, head and DRS controller weights 10x, head biases 20x; the lr
drops x0.1 at the start of each 0-based epoch of --drs_decay_epochs. --drs_batch_size is the total batch
whatever the number of torchrun processes (the published code multiplied it by the GPU count). With
--drs_select gt_miou every epoch is scored by its saliency pseudo labels against the GT masks of
--eval_list and the best epoch is kept (the published selection; it uses pixel labels). Writes
--drs_cls_weights_name (default <work_dir>/sess/vgg16_drs.pth); resumes after the last finished epoch.
"""
from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from misc import dist
from misc.samples import SquareDataset
from misc.torchutils import pick_device, seed_everything, step_decay
from step.common.checkpoints import EpochResume
from step.common.data import get_dataset, out_path
from step.common.drs import BestEpoch, drs_classifier, init_trunk, localization_scores, saliency_miou, training_ids
from step.common.entry import step_main
from step.common.parallel import place, say, train_loader
from step.common.training import fit

SECTIONS = ("run", "data", "toy", "drs")  # the flag sections it reads


def run(args: argparse.Namespace) -> None:
    """Train (resuming an interrupted run with the same flags), select the epoch, save atomically."""
    seed_everything(args.seed, args.deterministic)
    device = pick_device(args.device)
    ds = get_dataset(args)
    ids, eval_ids, labels = training_ids(args, ds)
    select = bool(eval_ids)
    data = SquareDataset(ds.image_path, ids, labels, args.drs_resize, crop=args.drs_crop, jitter=args.drs_jitter,
                         flip=True)
    loader = train_loader(data, args.drs_batch_size, "--drs_batch_size", args.train_list, args.seed, args.num_workers,
                          device)
    model = init_trunk(drs_classifier(args, ds.num_classes), args)
    model = place(model, device, args.channels_last).train()
    groups = model.lr_groups(args.drs_learning_rate)
    if args.drs_optimizer == "sgd":
        opt = torch.optim.SGD(groups, lr=args.drs_learning_rate, momentum=args.drs_momentum, nesterov=True,
                              weight_decay=args.drs_weight_decay)
    else:
        opt = torch.optim.Adam(groups, lr=args.drs_learning_rate, weight_decay=args.drs_weight_decay)
    sched = step_decay(opt, len(loader), args.drs_decay_epochs)
    weights = out_path(args, args.drs_cls_weights_name)
    resume = EpochResume(args, weights, ("drs",), ("eval_list",))
    best = BestEpoch(weights, resume.flags)

    def loss(forward, b: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        logits, _ = forward(b["img"].to(device, non_blocking=True))
        value = F.multilabel_soft_margin_loss(logits, b["label"].to(device, non_blocking=True))
        return value, {"loss": value / dist.world_size()}  # the ranks' shares add up to the total batch's mean

    def on_epoch(epoch: int, mean: dict, last: dict) -> None:
        msg = f"train_drs_cls epoch {epoch}: mean loss {mean['loss']:.4f}"
        if select:
            model.eval()
            score = saliency_miou(localization_scores(model, device, args.drs_scales), ds, eval_ids, labels, args,
                                  device)
            model.train()
            best.update(model, epoch, score)
            msg += f", GT mIoU of its saliency pseudo labels {100 * score:.2f}"
        say(msg)

    fit("train_drs_cls", model, loader, opt, sched, args.drs_num_epoches, loss, device, args.amp, resume, weights,
        "DRS classifier", sync_bn=args.drs_norm, on_epoch=on_epoch,
        finalize=(lambda m: best.restore(m, "train_drs_cls")) if select else None)
    best.clear()


if __name__ == "__main__":
    step_main("train_drs_cls")
