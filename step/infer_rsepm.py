"""Seeds and pseudo labels of a trained RS+EPM network (--method rsepm / rsepm_irn) by the released inference
(``misc.rsepm_infer``: scales 1.0/0.5/1.5/2.0 with flips, nearest resizing, softmax averaged).

    python -m step.infer_rsepm --method rsepm [flags of run_sample.py]

Reads --rsepm_weights_name (train_rsepm's file or a released checkpoint). Writes

- ``<cam_out_dir>/<id>.npz`` for every id of --train_list: the seed (``misc.io.save_cam``) of the selected
  classes, each foreground probability map divided by its max, so eval_cam and the IRN stage (cam_to_ir_label,
  train_irn, make_sem_seg_labels: --method rsepm_irn) take it unchanged;
- ``<sem_seg_out_dir>/<id>.png`` for every id of --infer_list when --rsepm_pseudo_labels: the released pseudo
  label (background (1 - max seed)^--rsepm_bg_gamma, dense CRF with the released "deeplab" preset) as a palette
  PNG, in a process pool of --crf_num_workers.

Classes: the image-level labels with --rsepm_conf_th -1 (released train setting), else the predicted
probabilities >= it (released val/test: 0.34). Ids whose outputs exist are skipped unless --overwrite; under
torchrun each rank takes every W-th batch of same-size images.
"""
from __future__ import annotations

import argparse
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch

from misc import rsepm_infer as ri
from misc.io import AsyncWriter, save_cam, save_png
from misc.torchutils import autocast, pick_device, seed_everything
from misc.views import InferenceImages, collate_inference
from step.common.data import get_dataset, load_labels, load_list, out_path
from step.common.entry import step_main
from step.common.models import trained_rsepm
from step.common.parallel import bucketed_loader, pending, place, progress, say
from step.common.reports import EmptySeeds

SECTIONS = ("run", "data", "toy", "seeds", "ir_label", "sem_seg", "rsepm", "rsepm_infer")  # the flag sections it reads


def _label_png(path: Path, rgb: np.ndarray, high_res: np.ndarray, keys: np.ndarray, bg_gamma: float,
               palette: np.ndarray) -> None:
    """The released pseudo label of one image's seed (``misc.rsepm_infer.seed_to_label``) as a palette PNG."""
    save_png(path, ri.seed_to_label(rgb, high_res, keys, bg_gamma), palette)


def run(args: argparse.Namespace) -> None:
    """Write the seed of every id of --train_list and the pseudo label of every id of --infer_list (this rank's
    share) not written yet."""
    seed_everything(args.seed, args.deterministic)
    device = pick_device(args.device)
    ds = get_dataset(args)
    seeded = load_list(args, args.train_list)
    labelled = load_list(args, args.infer_list) if args.rsepm_pseudo_labels else []
    ids = list(dict.fromkeys(seeded + labelled))
    labels = load_labels(args, ds, ids)
    cam_dir, seg_dir = out_path(args, args.cam_out_dir), out_path(args, args.sem_seg_out_dir)
    want_seed, want_label = set(seeded), set(labelled)

    def done(i: str) -> bool:
        return ((i not in want_seed or (cam_dir / f"{i}.npz").is_file())
                and (i not in want_label or (seg_dir / f"{i}.png").is_file()))

    todo = pending(ids, done, args.overwrite)
    if not todo:
        say(f"infer_rsepm: all seeds exist in {cam_dir}" + (f", all pseudo labels in {seg_dir}" if labelled else ""))
        return
    net = place(trained_rsepm(args, ds.num_classes), device, args.channels_last).eval()

    def forward(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with autocast(device, args.amp):
            out = net(x)
        return out.logits.float(), out.seg.float()

    loader = bucketed_loader(ds, InferenceImages(ds.image_path, todo, labels), todo, args.rsepm_batch_images,
                             collate_inference, args.num_workers, device)
    total = sum(map(len, loader.batch_sampler))
    pool = ProcessPoolExecutor(args.crf_num_workers) if labelled and args.crf_num_workers > 1 else None
    jobs: list[Future] = []
    empty = EmptySeeds()
    with torch.no_grad(), AsyncWriter() as writer, progress(total=total, desc="infer_rsepm") as bar:
        for b in loader:
            probs, cls_p = ri.multiscale_predict(forward, b["img"].to(device, non_blocking=True),
                                                 tuple(args.rsepm_infer_scales))
            given = b["label"].to(device) if args.rsepm_conf_th < 0 else None
            selected = ri.select_classes(cls_p, given, args.rsepm_conf_th)
            seeds = ri.seed_maps(probs)
            for j, name in enumerate(b["name"]):
                rec = ri.common_seed(seeds[j], selected[j])
                if name in want_seed:
                    writer.submit(save_cam, cam_dir / f"{name}.npz", rec["keys"], rec["cam"], rec["high_res"])
                    empty.add(rec["high_res"])
                if name in want_label:
                    job = (seg_dir / f"{name}.png", b["rgb"][j], rec["high_res"], rec["keys"], args.rsepm_bg_gamma,
                           ds.palette)
                    if pool is None:
                        _label_png(*job)
                    else:
                        jobs.append(pool.submit(_label_png, *job))
            while len(jobs) > 4 * args.crf_num_workers:  # bound the seeds waiting in memory
                jobs.pop(0).result()
            bar.update(len(b["name"]))
    for job in jobs:
        job.result()
    if pool is not None:
        pool.shutdown()
    say(f"infer_rsepm: {len(todo)} images -> seeds in {cam_dir}"
        + (f", pseudo labels in {seg_dir}" if labelled else ""))
    empty.report("infer_rsepm")


if __name__ == "__main__":
    step_main("infer_rsepm")
