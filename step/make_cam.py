"""Multi-scale + flip CAMs (the seeds), batched over images of equal size.

    python -m step.make_cam [flags of run_sample.py]

For every id of --train_list writes ``<cam_out_dir>/<id>.npz`` (see misc.io.save_cam): the GT classes'
CAMs summed over --cam_scales and flips, at stride 4 (``cam``) and full size (``high_res``), each class
divided by its max + 1e-5; how many class maps are empty (all zero) is reported. Ids whose file exists
are skipped unless --overwrite. Under torchrun each rank takes every W-th batch of same-size images
(``step.common.parallel.bucketed_loader``), so its seeds are bit-identical to a single-process run's.
"""
from __future__ import annotations

import argparse

import torch

from misc.io import AsyncWriter, save_cam
from misc.samples import MultiScaleDataset, collate_same_size
from misc.seeds import multiscale_cams, normalise_keep
from misc.torchutils import autocast, pick_device, seed_everything
from step.common.data import get_dataset, load_labels, load_list, out_path
from step.common.entry import step_main
from step.common.models import trained_classifier
from step.common.parallel import bucketed_loader, pending, place, progress, say
from step.common.reports import EmptySeeds

SECTIONS = ("run", "data", "toy", "backbone", "classifier", "seeds")  # the flag sections it reads


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
    model = place(trained_classifier(args, ds.num_classes, cam=True), device, args.channels_last).eval()
    data = MultiScaleDataset(ds.image_path, todo, labels, args.cam_scales)
    loader = bucketed_loader(ds, data, todo, args.cam_batch_images, collate_same_size, args.num_workers, device)
    total = sum(map(len, loader.batch_sampler))
    empty = EmptySeeds()
    with torch.no_grad(), AsyncWriter() as writer, progress(total=total, desc="make_cam") as bar:
        for b in loader:
            views = [v.to(device, non_blocking=True) for v in b["img"]]
            with autocast(device, args.amp):
                strided, high = multiscale_cams(model, views, b["size"])
            for j, name in enumerate(b["name"]):
                keys = torch.nonzero(b["label"][j])[:, 0].to(device)
                cam = normalise_keep(strided[j], keys).cpu().numpy()
                hr = normalise_keep(high[j], keys).cpu().numpy()
                writer.submit(save_cam, out_dir / f"{name}.npz", keys.cpu().numpy(), cam, hr)
                empty.add(hr)
            bar.update(len(b["name"]))
    say(f"make_cam: {len(todo)} seeds -> {out_dir}")
    empty.report("make_cam")


if __name__ == "__main__":
    step_main("make_cam")
