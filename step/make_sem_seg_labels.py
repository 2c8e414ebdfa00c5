"""Pseudo labels: the seeds random-walked over IRNet's class boundaries.

    python -m step.make_sem_seg_labels [flags of run_sample.py]

For every id of --infer_list: the boundary map B (mean of the image's and its flip's logits, sigmoid) at
stride 4 (images zero-padded bottom/right to at least --sem_seg_canvas, default --irn_crop_size as IRN, and
to a multiple of 16); each class seed (the stride-4 ``cam`` of the seed file, raised to --sem_seg_power,
IRN 1) is attenuated to cam ⊙ (1 - B) and walked 2^--exp_times steps over the affinities
(1 - max B on the path)^--beta of all pixel pairs within --sem_seg_radius (``misc.seeds.walk_scores``,
``misc.randomwalk.random_walk``: a stencil on the device, never the n x n matrix, any image size). The
result is upsampled x4, divided by its global max, and each pixel takes the class of its highest score, or
background below --sem_seg_bg_thres (IRN 0.25). Writes ``<sem_seg_out_dir>/<id>.png`` (palette PNG of
0..C) and, with --sem_seg_save_scores, the normalised scores before the threshold to
``<sem_seg_out_dir>_scores/<id>.npz`` (the seed format of misc.io.save_cam) so eval_sem_seg can sweep the
threshold offline. Images of one size are walked together (--sem_seg_batch_images); ids whose PNG exists
are skipped unless --overwrite. Under torchrun each rank takes every W-th batch of same-size images
(``step.common.parallel.bucketed_loader``). With --amp bf16 only IRNet's pass runs in bf16; the walk runs
in fp32.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from misc.dataset_spec import DatasetSpec
from misc.errors import UserError
from misc.imutils import strided_size
from misc.io import AsyncWriter, load_cam, save_cam, save_png
from misc.samples import MultiScaleDataset
from misc.seeds import label_from_scores, walk_scores
from misc.torchutils import autocast, pick_device
from net.resnet50_irn import LEGACY_BUFFER_PREFIXES, EdgeDisplacement
from step.common.checkpoints import load_checkpoint
from step.common.data import get_dataset, load_labels, load_list, out_path
from step.common.entry import step_main
from step.common.parallel import bucketed_loader, pending, place, progress, say

SECTIONS = ("run", "data", "toy", "backbone", "seeds", "irn", "sem_seg")  # the flag sections it reads


class _WalkInput(MultiScaleDataset):
    """MultiScaleDataset at scale 1 plus the seed: item adds 'keys' (K,) and 'cam' (K, h, w) stride-4 seeds."""

    def __init__(self, ds: DatasetSpec, ids: list[str], labels: dict, cam_dir: Path):
        super().__init__(ds.image_path, ids, labels, scales=(1.0,))
        self.cam_dir = cam_dir

    def __getitem__(self, i: int) -> dict:
        item = super().__getitem__(i)
        seed = load_cam(self.cam_dir, self.ids[i])
        if seed["cam"].shape[1:] != strided_size(item["size"], 4):
            raise UserError(f"{self.cam_dir / self.ids[i]}.npz: stride-4 cam of size {seed['cam'].shape[1:]}, "
                            f"expected {strided_size(item['size'], 4)} for its image; rerun make_cam")
        return {**item, "img": item["img"][0], "keys": seed["keys"], "cam": torch.from_numpy(seed["cam"])}


def _collate(items: list[dict]) -> dict:
    return {"name": [it["name"] for it in items], "size": tuple(items[0]["size"]),
            "img": torch.stack([it["img"] for it in items]), "keys": [it["keys"] for it in items],
            "cam": [it["cam"] for it in items]}


def run(args: argparse.Namespace) -> None:
    """Write the pseudo label of every id of --infer_list that has none yet."""
    device = pick_device(args.device)
    ds = get_dataset(args)
    ids = load_list(args, args.infer_list)
    labels = load_labels(args, ds, ids)
    out_dir = out_path(args, args.sem_seg_out_dir)
    score_dir = out_dir.with_name(out_dir.name + "_scores")
    todo = pending(ids, lambda i: (out_dir / f"{i}.png").is_file(), args.overwrite)
    if not todo:
        say(f"make_sem_seg_labels: all {len(ids)} pseudo labels exist in {out_dir}")
        return
    canvas = args.irn_crop_size if args.sem_seg_canvas is None else args.sem_seg_canvas
    model = EdgeDisplacement(args.backbone_width, tuple(args.backbone_blocks), canvas=canvas)
    load_checkpoint(model, out_path(args, args.irn_weights_name), drop=LEGACY_BUFFER_PREFIXES)
    model = place(model, device, args.channels_last).eval()
    data = _WalkInput(ds, todo, labels, out_path(args, args.cam_out_dir))
    loader = bucketed_loader(ds, data, todo, args.sem_seg_batch_images, _collate, args.num_workers, device)
    total = sum(map(len, loader.batch_sampler))
    with torch.no_grad(), AsyncWriter() as writer, progress(total=total, desc="make_sem_seg_labels") as bar:
        for b in loader:
            with autocast(device, args.amp):
                boundary, _ = model(b["img"].to(device, non_blocking=True))
            scores = walk_scores(b["cam"], boundary.float(), b["size"], args.sem_seg_power, args.sem_seg_radius,
                                 args.beta, args.exp_times)
            for name, keys, (small, full) in zip(b["name"], b["keys"], scores):
                writer.submit(save_png, out_dir / f"{name}.png", label_from_scores(full, keys, args.sem_seg_bg_thres),
                              ds.palette)
                if args.sem_seg_save_scores:
                    writer.submit(save_cam, score_dir / f"{name}.npz", keys, small.cpu().numpy(), full.cpu().numpy())
            bar.update(len(b["name"]))
    say(f"make_sem_seg_labels: {len(todo)} pseudo labels -> {out_dir}"
        + (f" (scores -> {score_dir})" if args.sem_seg_save_scores else ""))


if __name__ == "__main__":
    step_main("make_sem_seg_labels")
