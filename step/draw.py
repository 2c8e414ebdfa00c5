"""Pictures of the first --draw_num ids of --eval_list: image | each class's CAM | GT | pseudo label.

    python -m step.draw [flags of run_sample.py]

Writes ``<work_dir>/<draw_out_dir>/<id>.png``. The pseudo label panel appears once
``<work_dir>/<sem_seg_out_dir>/<id>.png`` exists; the CAM panels once the seed exists.
"""
from __future__ import annotations

import argparse

from PIL import Image

from misc.errors import UserError
from misc.imutils import read_image, read_label_png
from misc.io import atomic_path, load_cam
from misc.vis import colorize, overlay, panel
from step.common.data import get_dataset, load_list, out_path
from step.common.entry import step_main
from step.common.parallel import progress, say, shard

SECTIONS = ("run", "data", "toy", "seeds", "sem_seg", "draw")  # the flag sections it reads


def run(args: argparse.Namespace) -> None:
    """Draw one PNG per image."""
    ds = get_dataset(args)
    ids = load_list(args, args.eval_list)[:args.draw_num]
    out_dir = out_path(args, args.draw_out_dir)
    cam_dir = out_path(args, args.cam_out_dir)
    sem_dir = out_path(args, args.sem_seg_out_dir)
    for img_id in progress(shard(ids), desc="draw"):
        img = read_image(ds.image_path(img_id))
        tiles, titles = [img], [img_id]
        try:
            cam = load_cam(cam_dir, img_id)
        except UserError:
            cam = None
        if cam is not None and "high_res" in cam:
            for k, m in zip(cam["keys"], cam["high_res"]):
                tiles.append(overlay(img, m))
                titles.append(f"CAM {ds.class_names[k]}")
        gt = ds.gt_path(img_id)
        if gt.is_file():
            tiles.append(colorize(read_label_png(gt), ds.palette))
            titles.append("GT")
        if (sem_dir / f"{img_id}.png").is_file():
            tiles.append(colorize(read_label_png(sem_dir / f"{img_id}.png"), ds.palette))
            titles.append("pseudo label")
        with atomic_path(out_dir / f"{img_id}.png") as tmp:
            Image.fromarray(panel(tiles, titles)).save(tmp, format="PNG")
    say(f"draw: {len(ids)} pictures -> {out_dir}")


if __name__ == "__main__":
    step_main("draw")
