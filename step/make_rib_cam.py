"""RIB seeds (Lee et al., NeurIPS 2021): per-image fine-tuning of the classifier on raw pooled logits.

    python -m step.make_rib_cam [flags of run_sample.py]   (run_sample.py --method rib runs it)

For every id of --train_list, starting from the trained classifier θ0 each time (restored in memory):
up to --rib_iters SGD steps (stages 3-4 at lr --rib_lr, classifier 10x, wd --cam_weight_decay, poly
over the steps, momentum --cam_momentum; conv1 to layer2 stay fixed under either recipe, as the published
code detaches stage 2's output) on L = -Σ y·z, z the raw logits pooled with ``net.rib.gndp``
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
from typing import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler, default_collate

from misc import dist
from misc.dist import PerItemSeed
from misc.io import AsyncWriter, save_cam
from misc.samples import ClassificationDataset, MultiScaleDataset
from misc.seeds import normalise_keep
from misc.torchutils import pick_device, seed_everything, worker_init_fn
from net.rib import RibSettings, rib_seed
from step.common.data import get_dataset, load_labels, load_list, out_path
from step.common.entry import step_main
from step.common.models import trained_classifier
from step.common.parallel import pending, place, progress, say, shard
from step.common.reports import EmptySeeds

SECTIONS = ("run", "data", "toy", "backbone", "classifier", "seeds", "rib")  # the flag sections it reads


class DisjointBatchSampler(Sampler):
    """Auxiliary batches for RIB: for each target in ``targets`` (in order), ``steps`` batches of ``batch``
    indices of images whose label set is disjoint from the target's.

    labels: (N, C) multi-hot of the pool; the class-presence bitmask (N, ceil(C/8)) is built once and each
    target's disjoint set is one vectorised AND over it. Inside a batch indices are distinct (drawn with
    replacement across batches; a pool smaller than ``batch`` repeats indices). A target with an empty
    disjoint pool gets empty batches. Target t's batches are drawn from a generator seeded by
    (``seed``, ``keys[t]``) (default key: t), so with a key that names the image (e.g. a hash of its id)
    they do not depend on which other targets are in the list (sharding, resuming).
    """

    def __init__(self, labels: np.ndarray, targets: Sequence[np.ndarray], steps: int, batch: int, seed: int = 0,
                 keys: Sequence[int] | None = None):
        self.bits = np.packbits(np.asarray(labels) > 0, axis=1)
        self.targets = [np.packbits(np.asarray(t) > 0) for t in targets]
        self.keys = list(range(len(targets)) if keys is None else keys)
        self.steps, self.batch, self.seed = steps, batch, seed

    def disjoint(self, t: int) -> np.ndarray:
        """Indices of the pool images sharing no class with target t."""
        return np.flatnonzero(~(self.bits & self.targets[t]).any(1))

    def __iter__(self) -> Iterator[list[int]]:
        for t in range(len(self.targets)):
            rng = np.random.default_rng([self.seed, self.keys[t]])
            pool = self.disjoint(t)
            for _ in range(self.steps):
                if len(pool) == 0:
                    yield []
                else:
                    yield rng.choice(pool, self.batch, replace=len(pool) < self.batch).tolist()

    def __len__(self) -> int:
        return len(self.targets) * self.steps


def _collate_aux(items: list[dict]) -> dict | None:
    return default_collate(items) if items else None


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
    settings = RibSettings(iters=args.rib_iters, lr=args.rib_lr, tau=args.rib_tau, stop_logit=args.rib_stop_logit,
                           area_thres=args.rib_area_thres, area_ratio=args.rib_area_ratio,
                           loss_scales=tuple(args.rib_loss_scales), weight_decay=args.cam_weight_decay,
                           momentum=args.cam_momentum, amp=args.amp)
    model = trained_classifier(args, ds.num_classes)
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
    steps_taken, empty = [], EmptySeeds()
    with AsyncWriter() as writer, progress(total=len(mine), desc="make_rib_cam") as bar:
        for item in target_loader:
            model.load_state_dict(theta0)
            label = item["label"].to(device)
            views = [v.to(device, non_blocking=True)[None] for v in item["img"]]
            strided, high, n = rib_seed(model, views, tuple(args.cam_scales), label, aux_batches, settings,
                                        tuple(item["size"]))
            steps_taken.append(n)
            keys = torch.nonzero(label)[:, 0]
            high = normalise_keep(high, keys).cpu().numpy()
            writer.submit(save_cam, out_dir / f"{item['name']}.npz", keys.cpu().numpy(),
                          normalise_keep(strided, keys).cpu().numpy(), high)
            empty.add(high)
            bar.update()
    images, updates, early = dist.sum_over_ranks(np.array([len(steps_taken), sum(steps_taken),
                                                           sum(n < args.rib_iters for n in steps_taken)]))
    say(f"make_rib_cam: {len(todo)} seeds -> {out_dir} (updates per image: mean {updates / images:.2f}, "
        f"{early / images * 100:.0f}% stopped early)")
    empty.report("make_rib_cam")


if __name__ == "__main__":
    step_main("make_rib_cam")
