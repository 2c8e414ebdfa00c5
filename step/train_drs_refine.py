"""Train DRS's localization-map refinement network on the DRS seeds (DRS's train_refine.py recipe).

    python -m step.train_drs_refine [flags of run_sample.py]

Images of --train_list squashed to --drs_side (aspect ratio lost, as published), colour jittered
(--drs_jitter) and flipped together with their target: the seed (``<cam_out_dir>/<id>.npz``, e.g.
make_drs_locmap's) resized to the square (``net.vgg16_refine.seed_to_square``) with each pixel keeping only
its arg-max class's value (``refinement_target``). Plain VGG-16-D1 + 3 convs + 1x1 to the classes, MSE over
every class and pixel (no label masking in training, as published), trunk per --drs_init, Adam
--drs_refine_learning_rate without weight decay, lr x0.1 at the start of each 0-based epoch of
--drs_refine_decay_epochs, total batch --drs_refine_batch_size over the torchrun processes. --drs_select
gt_miou keeps the epoch whose saliency pseudo labels score best against the GT masks of --eval_list
(published; uses pixel labels). Writes --drs_refine_weights_name (default
<work_dir>/sess/vgg16_drs_refine.pth); resumes after the last finished epoch.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from misc import dist, imutils
from misc.dataset_spec import DatasetSpec
from misc.io import load_cam
from misc.samples import SquareDataset
from misc.torchutils import pick_device, seed_everything, step_decay
from net.vgg16_refine import refinement_target, seed_to_square
from step.common.checkpoints import EpochResume
from step.common.data import get_dataset, out_path
from step.common.drs import BestEpoch, init_trunk, refine_net, refined_scores, saliency_miou, training_ids
from step.common.entry import step_main
from step.common.parallel import place, say, train_loader
from step.common.training import fit

SECTIONS = ("run", "data", "toy", "seeds", "drs")  # the flag sections it reads


class RefineData(SquareDataset):
    """SquareDataset training items plus 'target' float32 (C, side, side): the seed's arg-max-kept map, flipped
    with the image."""

    def __init__(self, ds: DatasetSpec, ids: list[str], labels: dict, cam_dir: Path, side: int, jitter):
        super().__init__(ds.image_path, ids, labels, side, jitter=jitter, flip=True)
        self.cam_dir, self.num_classes = cam_dir, ds.num_classes

    def __getitem__(self, i: int) -> dict:
        x, _, flipped = self.square(i)
        seed = load_cam(self.cam_dir, self.ids[i])
        target = refinement_target(seed_to_square(torch.from_numpy(seed["keys"]), torch.from_numpy(seed["high_res"]),
                                                  self.num_classes, self.side))
        x = imutils.normalize(x).transpose(2, 0, 1)
        return {"name": self.ids[i], "img": torch.from_numpy(np.ascontiguousarray(x)),
                "target": target.flip(-1) if flipped else target}


def run(args: argparse.Namespace) -> None:
    """Train (resuming an interrupted run with the same flags), select the epoch, save atomically."""
    seed_everything(args.seed, args.deterministic)
    device = pick_device(args.device)
    ds = get_dataset(args)
    ids, eval_ids, labels = training_ids(args, ds)
    select = bool(eval_ids)
    cam_dir = out_path(args, args.cam_out_dir)
    load_cam(cam_dir, ids[0])  # a missing seed folder is one line before the workers start
    data = RefineData(ds, ids, labels, cam_dir, args.drs_side, args.drs_jitter)
    loader = train_loader(data, args.drs_refine_batch_size, "--drs_refine_batch_size", args.train_list, args.seed,
                          args.num_workers, device)
    model = place(init_trunk(refine_net(args, ds.num_classes), args), device, args.channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=args.drs_refine_learning_rate)
    sched = step_decay(opt, len(loader), args.drs_refine_decay_epochs)
    weights = out_path(args, args.drs_refine_weights_name)
    resume = EpochResume(args, weights, ("drs",), ("eval_list",))
    best = BestEpoch(weights, resume.flags)

    def loss(forward, b: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        value = F.mse_loss(forward(b["img"].to(device, non_blocking=True)), b["target"].to(device, non_blocking=True))
        return value, {"loss": value / dist.world_size()}

    def on_epoch(epoch: int, mean: dict, last: dict) -> None:
        msg = f"train_drs_refine epoch {epoch}: mean loss {mean['loss']:.5f}"
        if select:
            model.eval()
            score = saliency_miou(refined_scores(model, device, args.drs_scales), ds, eval_ids, labels, args, device)
            model.train()
            best.update(model, epoch, score)
            msg += f", GT mIoU of its saliency pseudo labels {100 * score:.2f}"
        say(msg)

    fit("train_drs_refine", model.train(), loader, opt, sched, args.drs_refine_num_epoches, loss, device, args.amp,
        resume, weights, "DRS refinement network", sync_bn=args.drs_norm, on_epoch=on_epoch,
        finalize=(lambda m: best.restore(m, "train_drs_refine")) if select else None)
    best.clear()


if __name__ == "__main__":
    step_main("train_drs_refine")
