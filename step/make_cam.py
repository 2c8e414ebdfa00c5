"""Multi-scale + flip CAMs (the seeds), batched over images of equal size.

    python -m step.make_cam [flags of run_sample.py]

For every id of --train_list writes ``<cam_out_dir>/<id>.npz`` (see misc.io.save_cam): the GT classes'
CAMs summed over --cam_scales and flips, at stride 4 (``cam``) and full size (``high_res``), each class
divided by its max + 1e-5. Ids whose file exists are skipped unless --overwrite. Under torchrun each rank
takes every W-th batch of same-size images (``step.common.bucketed_loader``), so its seeds are
bit-identical to a single-process run's.
"""
from __future__ import annotations

import argparse
from concurrent.futures import ThreadPoolExecutor
from typing import Sequence

import torch
import torch.nn.functional as F

from misc.data import MultiScaleDataset, collate_same_size
from misc.imutils import strided_size, strided_up_size
from misc.io import save_cam
from misc.torchutils import autocast, pick_device, seed_everything
from step.common import (bucketed_loader, get_dataset, load_checkpoint, load_labels, load_list, out_path, pending,
                         place, progress, say, step_main)
from step.train_cam import build_classifier


def multiscale_cams(model: torch.nn.Module, views: Sequence[torch.Tensor], size: tuple[int, int]
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum of the flip-merged CAMs of every scale for a batch of same-size images.

    views: list over scales of (B, 2, 3, h_s, w_s) [image, flipped]; size: the images' (H, W).
    Returns (strided (B, C, (H-1)//4+1, (W-1)//4+1), high_res (B, C, H, W)), unnormalised, all classes,
    float32 (the model's output is cast up when it ran under autocast).
    """
    strided, high = 0.0, 0.0
    for v in views:
        s, h = resize_merged(model(v.flatten(0, 1)).float().unflatten(0, (v.shape[0], 2)), size)
        strided, high = strided + s, high + h
    return strided, high


def resize_merged(cams: torch.Tensor, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """One scale's contribution: cams (B, 2, C, h, w) of [image, flipped image] are merged (the flipped one
    flipped back and added) and resized bilinearly to the stride-4 size and, via the 16-aligned size and a
    crop, to the full size. Returns (strided (B, C, (H-1)//4+1, (W-1)//4+1), high_res (B, C, H, W))."""
    x = cams[:, 0] + cams[:, 1].flip(-1)
    strided = F.interpolate(x, strided_size(size, 4), mode="bilinear", align_corners=False)
    high = F.interpolate(x, strided_up_size(size, 16), mode="bilinear", align_corners=False)[:, :, :size[0], :size[1]]
    return strided, high


def normalise_keep(cam: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """Keep the channels ``keys`` of a (C, h, w) map and divide each by its spatial max + 1e-5. (K, h, w)."""
    x = cam[keys]
    return x / (x.flatten(1).amax(1)[:, None, None] + 1e-5)


def run(args: argparse.Namespace) -> None:
    """Write the seed of every id of --train_list (this rank's share) that has none yet."""
    seed_everything(args.seed, args.deterministic)
    device = pick_device(args.device)
    ds = get_dataset(args)
    ids = load_list(args, args.train_list)
    labels = load_labels(args, ds, ids)
    out_dir = out_path(args, args.cam_out_dir)
    todo = pending(ids, lambda i: (out_dir / f"{i}.npz").is_file(), args.overwrite)
    if not todo:
        say(f"make_cam: all {len(ids)} seeds exist in {out_dir}")
        return
    model = build_classifier(args, ds.num_classes, cam=True)
    load_checkpoint(model, out_path(args, args.cam_weights_name))
    model = place(model, device, args.channels_last).eval()
    data = MultiScaleDataset(ds.image_path, todo, labels, args.cam_scales)
    loader = bucketed_loader(ds, data, todo, args.cam_batch_images, collate_same_size, args.num_workers, device)
    with torch.no_grad(), ThreadPoolExecutor(2) as writer, progress(total=sum(map(len, loader.batch_sampler)), desc="make_cam") as bar:
        writes = []
        for b in loader:
            views = [v.to(device, non_blocking=True) for v in b["img"]]
            with autocast(device, args.amp):
                strided, high = multiscale_cams(model, views, b["size"])
            for j, name in enumerate(b["name"]):
                keys = torch.nonzero(b["label"][j])[:, 0].to(device)
                cam = normalise_keep(strided[j], keys).cpu().numpy()
                hr = normalise_keep(high[j], keys).cpu().numpy()
                writes.append(writer.submit(save_cam, out_dir / f"{name}.npz", keys.cpu().numpy(), cam, hr))
            bar.update(len(b["name"]))
        for f in writes:
            f.result()
    say(f"make_cam: {len(todo)} seeds -> {out_dir}")


if __name__ == "__main__":
    step_main("make_cam", run)
