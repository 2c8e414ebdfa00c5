"""RIB seeds (Lee et al., NeurIPS 2021): per-image fine-tuning of the classifier on raw pooled logits.

    python -m step.make_rib_cam [flags of run_sample.py]   (run_sample.py --method rib runs it)

For every id of --train_list, starting from the trained classifier θ0 each time (restored in memory):
up to --rib_iters SGD steps (stages 3-4 at lr --rib_lr, classifier 10x, wd --cam_weight_decay, poly
over the steps, momentum --cam_momentum; conv1 to layer2 stay fixed under either recipe, as the published
code detaches stage 2's output) on L = -Σ y·z, z the raw logits pooled with ``misc.torchutils.gndp``
(τ = --rib_tau), summed over the target image at scales --rib_loss_scales with flips and over
--rib_aux_batch auxiliary images of --rib_aux_list (default --train_list) whose label sets are disjoint
from the target's (training augmentation of train_cam). Each step first adds the CAMs (ReLU,
flip-merged, every --cam_scales) of the current weights to the seed; then:
- area stop (from step 1 on, at scale 1.0, checked before the other scales): the union over the target's
  classes of (max-normalised CAM > --rib_area_thres) covers more than --rib_area_ratio of the image ->
  stop before updating; as in the published code, that step's scale-1.0 map is already in the seed;
- logit stop: |target loss| > --rib_stop_logit after an update -> stop (that update's CAM is not added).
The seed is the sum over the executed steps, written like make_cam's (keys, stride-4 ``cam``, full-size
``high_res``, per-class max-normalised) to --cam_out_dir. Ids whose file exists are skipped (resume); ids
are sharded over torchrun ranks (RANK/WORLD_SIZE) when launched that way. A target's auxiliary batches and
their augmentation are drawn from (--seed, a CRC-32 of its id), so its seed does not depend on the number
of processes, on resuming, or on the other ids of the list.
"""
from __future__ import annotations

import argparse
import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from torch.utils.data import DataLoader, default_collate

from misc.data import ClassificationDataset, DisjointBatchSampler, MultiScaleDataset
from misc import dist
from misc.dist import PerItemSeed
from misc.errors import UserError
from misc.imutils import strided_size
from misc.io import save_cam
from misc.torchutils import autocast, gndp, pick_device, poly_optimizer, seed_everything, worker_init_fn
from step.common import (get_dataset, load_checkpoint, load_labels, load_list, out_path, pending, place, progress,
                         say, shard, step_main)
from step.make_cam import normalise_keep, resize_merged
from step.train_cam import build_classifier


def _collate_aux(items: list[dict]) -> dict | None:
    return default_collate(items) if items else None


def area_exploded(merged: torch.Tensor, keys: torch.Tensor, thres: float, ratio: float) -> bool:
    """RIB's area stop: merged (C, h, w) ReLU'd CAM of one image; True when the union over ``keys`` of
    (map / its max > thres) covers more than ``ratio`` of the positions."""
    x = merged[keys]
    x = x / x.flatten(1).amax(1).clamp_min(1e-12)[:, None, None]
    return (x > thres).any(0).float().mean().item() > ratio


def rib_seed(model: torch.nn.Module, views: list[torch.Tensor], scales: tuple[float, ...], label: torch.Tensor,
             aux_batches, args: argparse.Namespace, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Run RIB on one image from the model's current weights (the caller restores θ0).

    views: per scale (1, 2, 3, h_s, w_s) on the model's device; label: (C,) multi-hot there; aux_batches:
    an iterator giving one auxiliary batch ({'img', 'label'} or None) per step. Freezes stages 1-2 of ``model``
    (``freeze_early_stages``). Returns (strided (C, h, w), high_res (C, H, W)) seed sums over all classes,
    unnormalised, and the number of updates taken.
    """
    keys = torch.nonzero(label)[:, 0]
    if len(keys) == 0:  # nothing to localise (an image without classes): all background
        for _ in range(args.rib_iters):
            next(aux_batches)
        c = label.shape[0]
        return label.new_zeros((c,) + strided_size(size, 4)), label.new_zeros((c,) + tuple(size)), 0
    model.freeze_early_stages()  # as published (stage 2's output detached), whatever recipe trained them
    bb, head = model.trainable_parameters()
    opt, sched = poly_optimizer(
        "sgd", [{"params": bb, "lr": args.rib_lr, "weight_decay": args.cam_weight_decay},
                {"params": head, "lr": 10 * args.rib_lr, "weight_decay": args.cam_weight_decay}],
        args.rib_iters, momentum=args.cam_momentum)
    order = sorted(range(len(scales)), key=lambda i: scales[i] != 1.0)  # scale 1.0 first, for the area stop
    loss_scales = set(args.rib_loss_scales)
    amp = autocast(label.device, args.amp)
    strided = high = 0.0
    updates = 0
    for step in range(args.rib_iters):
        aux = next(aux_batches)
        pooled, stop = [], False
        for i in order:
            need_grad = scales[i] in loss_scales
            with torch.set_grad_enabled(need_grad), amp:
                raw = model.raw_cam(views[i][0]).float()  # (2, C, h, w)
            s, h = resize_merged(torch.relu(raw.detach())[None], size)
            strided, high = strided + s[0], high + h[0]
            if scales[i] == 1.0 and step > 0 and \
                    area_exploded(torch.relu(raw[0].detach()) + torch.relu(raw[1].detach()).flip(-1), keys,
                                  args.rib_area_thres, args.rib_area_ratio):
                stop = True
                break
            if need_grad:
                pooled.append(gndp(raw, label.expand(2, -1), args.rib_tau))
        if stop:
            break
        target = -(torch.cat(pooled) * label).sum()
        loss = target
        if aux is not None:
            a_img, a_lab = aux["img"].to(label.device, non_blocking=True), aux["label"].to(label.device)
            with amp:
                a_cam = model.raw_cam(a_img).float()
            loss = loss - (gndp(a_cam, a_lab, args.rib_tau) * a_lab).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        updates += 1
        if abs(target.item()) > args.rib_stop_logit:
            break
    for _ in range(step + 1, args.rib_iters):  # keep the auxiliary stream aligned with the next target
        next(aux_batches)
    return strided, high, updates


def run(args: argparse.Namespace) -> None:
    """Write the RIB seed of every id of --train_list (this rank's share) that has none yet."""
    seed_everything(args.seed, args.deterministic)
    device = pick_device(args.device)
    ds = get_dataset(args)
    pool_ids = load_list(args, args.rib_aux_list or args.train_list)
    all_ids = load_list(args, args.train_list)
    labels = load_labels(args, ds, all_ids + pool_ids)
    out_dir = out_path(args, args.cam_out_dir)
    todo = pending(all_ids, lambda i: (out_dir / f"{i}.npz").is_file(), args.overwrite)
    if not todo:
        say(f"make_rib_cam: all {len(all_ids)} seeds exist in {out_dir}")
        return
    if 1.0 not in args.cam_scales or not set(args.rib_loss_scales) <= set(args.cam_scales):
        raise UserError(f"--rib_loss_scales {args.rib_loss_scales}: must be among --cam_scales {args.cam_scales}, "
                        "which must hold 1.0 (the area stop looks at it)")
    model = build_classifier(args, ds.num_classes)
    load_checkpoint(model, out_path(args, args.cam_weights_name))
    model = place(model, device, args.channels_last).eval()  # BatchNorm on running statistics, as IRN's frozen BN
    theta0 = {k: v.clone() for k, v in model.state_dict().items()}

    mine = shard(todo)
    targets = MultiScaleDataset(ds.image_path, mine, labels, args.cam_scales)
    kw = dict(num_workers=args.num_workers, pin_memory=device.type == "cuda", worker_init_fn=worker_init_fn)
    target_loader = DataLoader(targets, batch_size=None, **kw)
    aux = ClassificationDataset(ds.image_path, pool_ids, labels, crop=args.cam_crop_size,
                                resize_long=tuple(args.cam_resize_long))
    target_keys = [zlib.crc32(i.encode()) for i in mine]
    sampler = DisjointBatchSampler(np.stack([labels[i] for i in pool_ids]), [labels[i] for i in mine],
                                   args.rib_iters, args.rib_aux_batch, seed=args.seed, keys=target_keys)
    salted = ([(args.seed, target_keys[n // args.rib_iters], n % args.rib_iters, j, i) for j, i in enumerate(b)]
              for n, b in enumerate(sampler))  # PerItemSeed keys: augmentation fixed per target, step, slot
    aux_batches = iter(DataLoader(PerItemSeed(aux), batch_sampler=salted, collate_fn=_collate_aux, **kw))
    steps_taken = []
    with ThreadPoolExecutor(2) as writer, progress(total=len(mine), desc="make_rib_cam") as bar:
        writes = []
        for item in target_loader:
            model.load_state_dict(theta0)
            label = item["label"].to(device)
            views = [v.to(device, non_blocking=True)[None] for v in item["img"]]
            strided, high, n = rib_seed(model, views, tuple(args.cam_scales), label, aux_batches, args,
                                        tuple(item["size"]))
            steps_taken.append(n)
            keys = torch.nonzero(label)[:, 0]
            writes.append(writer.submit(save_cam, out_dir / f"{item['name']}.npz", keys.cpu().numpy(),
                                         normalise_keep(strided, keys).cpu().numpy(),
                                         normalise_keep(high, keys).cpu().numpy()))
            bar.update()
        for f in writes:
            f.result()
    images, updates, early = dist.sum_over_ranks(np.array([len(steps_taken), sum(steps_taken),
                                                           sum(n < args.rib_iters for n in steps_taken)]))
    say(f"make_rib_cam: {len(todo)} seeds -> {out_dir} (updates per image: mean {updates / images:.2f}, "
        f"{early / images * 100:.0f}% stopped early)")


if __name__ == "__main__":
    step_main("make_rib_cam", run)
