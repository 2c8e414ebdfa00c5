"""DRS pseudo labels: refined maps for the object cue, a saliency map for the background cue.

    python -m step.make_drs_pseudo [flags of run_sample.py]

For every id of --infer_list: the image squashed to --drs_side and resized to each side of --drs_scales; the
refinement network's maps upsampled to the image's own size, multiplied by the image labels and max-fused
with 0 (``net.vgg16_refine.fuse_refined``); scores below --drs_alpha dropped, background = not salient
(saliency map > --drs_saliency_thres, ``--saliency_root/<id>.png``, checked for every id before the work
starts), arg-max; 255 where more than --drs_max_confident channels exceed --drs_confident and where a salient
pixel is left background (``misc.saliency.saliency_pseudo_label``; no CRF, as published). Writes
``<sem_seg_out_dir>/<id>.png`` (palette PNG), which eval_sem_seg scores and draw shows. Ids whose PNG exists
are skipped unless --overwrite; under torchrun each rank takes every W-th id.
"""
from __future__ import annotations

import argparse

import torch

from misc.io import AsyncWriter, save_png
from misc.saliency import binarize_saliency, saliency_pseudo_label
from misc.torchutils import autocast, pick_device, seed_everything
from net.vgg16 import square_views
from net.vgg16_refine import fuse_raw
from step.common.checkpoints import load_checkpoint
from step.common.data import get_dataset, load_labels, load_list, out_path
from step.common.drs import image_maps, refine_net, square_loader
from step.common.entry import step_main
from step.common.parallel import pending, place, progress, say, shard

SECTIONS = ("run", "data", "toy", "drs", "sem_seg")  # the flag sections it reads


def run(args: argparse.Namespace) -> None:
    """Write the pseudo label of every id of --infer_list (this rank's share) that has none yet."""
    seed_everything(args.seed, args.deterministic)
    device = pick_device(args.device)
    ds = get_dataset(args)
    ids = load_list(args, args.infer_list)
    labels = load_labels(args, ds, ids)
    out_dir = out_path(args, args.sem_seg_out_dir)
    todo = shard(pending(ids, lambda i: (out_dir / f"{i}.png").is_file(), args.overwrite))
    if not todo:
        say(f"make_drs_pseudo: all {len(ids)} pseudo labels exist in {out_dir}")
        return
    folder = ds.check_saliency(args.saliency_root, todo)
    model = refine_net(args, ds.num_classes)
    load_checkpoint(model, out_path(args, args.drs_refine_weights_name))
    model = place(model, device, args.channels_last).eval()
    with torch.no_grad(), AsyncWriter() as writer, progress(total=len(todo), desc="make_drs_pseudo") as bar:
        for b in square_loader(ds, todo, labels, args, device):
            with autocast(device, args.amp):
                raws = [model.raw(v).float() for v in square_views(b["img"].to(device, non_blocking=True),
                                                                  args.drs_scales)]
            for name, scores in zip(b["name"], image_maps(fuse_raw, raws, b["label"].to(device), b["size"])):
                sal = binarize_saliency(torch.from_numpy(ds.read_saliency(folder, name)), args.drs_saliency_thres)
                label = saliency_pseudo_label(scores.cpu(), sal, args.drs_alpha, args.drs_confident,
                                              args.drs_max_confident)
                writer.submit(save_png, out_dir / f"{name}.png", label.numpy(), ds.palette)
            bar.update(len(b["name"]))
    say(f"make_drs_pseudo: {len(todo)} pseudo labels -> {out_dir}")


if __name__ == "__main__":
    step_main("make_drs_pseudo")
