"""DRS localization maps as seeds in the common format.

    python -m step.make_drs_locmap [flags of run_sample.py]

For every id of --train_list: the image squashed to --drs_side (320, as published) and resized to each side
of --drs_scales (no flip); per scale the DRS classifier's class maps are ReLU'd, upsampled (bilinear,
align_corners=True), divided by their per-class max + 1e-5 and multiplied by the image labels; the scales are
max-fused (``net.vgg16_drs.localization_map``). Unlike the published uint8 320 x 320 maps they are computed at
the image's own size and written as ``<cam_out_dir>/<id>.npz`` (misc.io.save_cam: ``keys``, ``cam`` at
stride 4, ``high_res`` full size), so eval_cam, draw, the refinement step and the IRN stage read them. Ids
whose file exists are skipped unless --overwrite; under torchrun each rank takes every W-th id.
"""
from __future__ import annotations

import argparse

import torch

from misc.imutils import strided_size
from misc.io import AsyncWriter, save_cam
from misc.torchutils import autocast, pick_device, seed_everything
from net.vgg16_drs import localization_map, multiscale_cams
from step.common.checkpoints import load_checkpoint
from step.common.data import get_dataset, load_labels, load_list, out_path
from step.common.drs import drs_classifier, image_maps, square_loader
from step.common.entry import step_main
from step.common.parallel import pending, place, progress, say, shard

SECTIONS = ("run", "data", "toy", "seeds", "drs")  # the flag sections it reads


def run(args: argparse.Namespace) -> None:
    """Write the seed of every id of --train_list (this rank's share) that has none yet."""
    seed_everything(args.seed, args.deterministic)
    device = pick_device(args.device)
    ds = get_dataset(args)
    ids = load_list(args, args.train_list)
    labels = load_labels(args, ds, ids)
    out_dir = out_path(args, args.cam_out_dir)
    todo = shard(pending(ids, lambda i: (out_dir / f"{i}.npz").is_file(), args.overwrite))
    if not todo:
        say(f"make_drs_locmap: all {len(ids)} seeds exist in {out_dir}")
        return
    model = drs_classifier(args, ds.num_classes)
    load_checkpoint(model, out_path(args, args.drs_cls_weights_name))
    model = place(model, device, args.channels_last).eval()
    with torch.no_grad(), AsyncWriter() as writer, progress(total=len(todo), desc="make_drs_locmap") as bar:
        for b in square_loader(ds, todo, labels, args, device):
            with autocast(device, args.amp):
                cams = [c.float() for c in multiscale_cams(model, b["img"].to(device, non_blocking=True),
                                                          args.drs_scales)]
            lab = b["label"].to(device)
            high = image_maps(localization_map, cams, lab, b["size"])
            strided = image_maps(localization_map, cams, lab, [strided_size(s, 4) for s in b["size"]])
            for j, name in enumerate(b["name"]):
                keys = torch.nonzero(b["label"][j])[:, 0]
                k = keys.to(device)
                writer.submit(save_cam, out_dir / f"{name}.npz", keys.numpy(), strided[j][k].cpu().numpy(),
                              high[j][k].cpu().numpy())
            bar.update(len(b["name"]))
    say(f"make_drs_locmap: {len(todo)} seeds -> {out_dir}")


if __name__ == "__main__":
    step_main("make_drs_locmap")
