"""Segmentation and seeds of a trained single-stage ViT (--method toco or pufs).

    python -m step.infer_single_stage --method toco [flags of run_sample.py]

For every id of --infer_list (the method recipes: val) writes

- ``<sem_seg_out_dir>/<id>.png``: the palette label of the segmentation decoder on the whole image at
  --ss_infer_scales, each with its flip (flip logits summed, scales max-fused, ``misc.segmentation.
  flip_sum_scale_max``), refined by the dense CRF with the published parameters (``TOCO_CRF``, in a process pool
  of --ss_crf_num_workers) unless --ss_crf False; eval_sem_seg scores it;
- ``<cam_out_dir>/<id>.npz``: the seed (``misc.io.save_cam``) of the image's classes from the final classifier's
  multi-scale CAM (--ss_cam_scales with flips, as in training), so eval_cam, draw and the IRN stage
  (cam_to_ir_label, train_irn, make_sem_seg_labels) take it unchanged.

Reads --ss_weights_name: this toolkit's train_single_stage file, a published ToCo checkpoint, or PUFS's
student.pth / teacher.pth (PUFS: --pufs_eval_model picks student or teacher from a file holding both). Ids
whose two outputs exist are skipped unless --overwrite; under torchrun each rank takes every W-th batch of
same-size images.
"""
from __future__ import annotations

import argparse
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from misc.imutils import strided_size
from misc.io import AsyncWriter, save_cam, save_png
from misc.seeds import normalise_keep
from misc.segmentation import TOCO_CRF, dense_crf, flip_sum_scale_max
from misc.torchutils import autocast, pick_device, seed_everything
from misc.views import InferenceImages, collate_inference
from net.single_stage import multi_scale_cam
from step.common.data import get_dataset, load_labels, load_list, out_path
from step.common.entry import step_main
from step.common.parallel import bucketed_loader, pending, place, progress, say
from step.common.single_stage import build_network, load_trained

SECTIONS = ("run", "data", "toy", "seeds", "sem_seg", "single_stage", "toco", "pufs")  # the flag sections it reads


def _crf_png(path: Path, rgb: np.ndarray, probs: np.ndarray, palette: np.ndarray) -> None:
    """Dense CRF (ToCo's parameters) on class probabilities (C, H, W); writes the argmax as a palette PNG."""
    save_png(path, dense_crf(rgb, probs, **TOCO_CRF).argmax(0).astype(np.uint8), palette)


def run(args: argparse.Namespace) -> None:
    """Write the segmentation and the seed of every id of --infer_list (this rank's share) not done yet."""
    seed_everything(args.seed, args.deterministic)
    device = pick_device(args.device)
    ds = get_dataset(args)
    ids = load_list(args, args.infer_list)
    labels = load_labels(args, ds, ids)
    cam_dir, seg_dir = out_path(args, args.cam_out_dir), out_path(args, args.sem_seg_out_dir)
    todo = pending(ids, lambda i: (cam_dir / f"{i}.npz").is_file() and (seg_dir / f"{i}.png").is_file(),
                   args.overwrite)
    if not todo:
        say(f"infer_single_stage: all {len(ids)} outputs exist in {seg_dir} and {cam_dir}")
        return
    net = build_network(args, ds.num_classes, train=False)
    load_trained(args, net, out_path(args, args.ss_weights_name))
    net = place(net, device, args.channels_last).eval()
    loader = bucketed_loader(ds, InferenceImages(ds.image_path, todo, labels), todo, args.cam_batch_images,
                             collate_inference, args.num_workers, device)
    total = sum(map(len, loader.batch_sampler))
    pool = ProcessPoolExecutor(args.ss_crf_num_workers) if args.ss_crf and args.ss_crf_num_workers > 1 else None
    crf_jobs: list[Future] = []
    with torch.no_grad(), AsyncWriter() as writer, progress(total=total, desc="infer_single_stage") as bar:
        for b in loader:
            x = b["img"].to(device, non_blocking=True)
            with autocast(device, args.amp):
                logits = flip_sum_scale_max(net.segment, x, args.ss_infer_scales)
                cams = multi_scale_cam(net.cams, x, tuple(args.ss_cam_scales))[0].float()
            size = tuple(x.shape[2:])
            strided = F.interpolate(cams, size=strided_size(size, 4), mode="bilinear", align_corners=False)
            probs = torch.softmax(logits, 1).cpu().numpy()
            for j, name in enumerate(b["name"]):
                keys = torch.nonzero(b["label"][j])[:, 0].to(device)
                writer.submit(save_cam, cam_dir / f"{name}.npz", keys.cpu().numpy(),
                              normalise_keep(strided[j], keys).cpu().numpy(),
                              normalise_keep(cams[j], keys).cpu().numpy())
                png = seg_dir / f"{name}.png"
                if not args.ss_crf:
                    writer.submit(save_png, png, probs[j].argmax(0).astype(np.uint8), ds.palette)
                elif pool is None:
                    _crf_png(png, b["rgb"][j], probs[j], ds.palette)
                else:
                    crf_jobs.append(pool.submit(_crf_png, png, b["rgb"][j], probs[j], ds.palette))
            while len(crf_jobs) > 4 * args.ss_crf_num_workers:  # bound the probabilities waiting in memory
                crf_jobs.pop(0).result()
            bar.update(len(b["name"]))
    for job in crf_jobs:
        job.result()
    if pool is not None:
        pool.shutdown()
    say(f"infer_single_stage: {len(todo)} segmentations -> {seg_dir}, seeds -> {cam_dir}")


if __name__ == "__main__":
    step_main("infer_single_stage")
