"""Pictures of the first --draw_num ids of --eval_list: image | each class's CAM | seed label | IR label | GT |
pseudo label, with a colour legend of the classes present.

    python -m step.draw [flags of run_sample.py]

Writes ``<work_dir>/<draw_out_dir>/<id>.png``. Every panel is scaled to one height (HEIGHT rows; labels
nearest, images bicubic) so captions stay readable on large images. The CAM panels appear once the seed
exists, a class map that is all zero captioned EMPTY in red; the seed label is the seed at --cam_eval_thres
(the eval_cam rule); the IR label panel once ``<ir_label_out_dir>/<id>.png`` exists (255, unsure, in the
palette's light grey); the pseudo label panel once ``<sem_seg_out_dir>/<id>.png`` exists. With a GT mask
the seed label and the pseudo label are captioned with their mIoU on this image (percent, over the
classes in the GT or the prediction).
"""
from __future__ import annotations

import argparse

import numpy as np
from PIL import Image

from misc.dataset_spec import DatasetSpec
from misc.errors import UserError
from misc.imutils import read_image, read_label_png
from misc.io import atomic_path, load_cam
from misc.metrics import confusion_matrix, iou_from_confusion
from misc.seeds import IGNORE, label_from_scores
from misc.vis import colorize, fit_height, overlay, panel
from step.common.data import get_dataset, load_list, out_path
from step.common.entry import step_main
from step.common.parallel import progress, say, shard
from step.common.reports import EMPTY_PEAK

SECTIONS = ("run", "data", "toy", "seeds", "ir_label", "sem_seg", "draw")  # the flag sections it reads
HEIGHT = 320  # rows of every panel


def image_miou(gt: np.ndarray, pred: np.ndarray, num_classes: int) -> float:
    """mIoU (percent) of one label map against its GT (uint8 (H, W); GT 255 ignored, predictions above the
    class count count as background), over the classes in either."""
    pred = np.where(pred <= num_classes, pred, 0)
    return 100 * float(np.nanmean(iou_from_confusion(confusion_matrix(gt, pred, num_classes + 1))))


def legend(ds: DatasetSpec, labels: list[np.ndarray]) -> list[tuple[str, tuple[int, ...]]]:
    """(name, colour) of background, of every class value in ``labels`` (uint8 maps), and of 255 when present."""
    values = sorted(set().union(*(set(np.unique(v).tolist()) for v in labels)) | {0})
    names = {0: "background", IGNORE: "unsure / ignore"}
    return [(names.get(v) or ds.class_names[v - 1], tuple(int(c) for c in ds.palette[v])) for v in values
            if v in names or 0 < v <= ds.num_classes]


def draw_one(args: argparse.Namespace, ds: DatasetSpec, img_id: str) -> np.ndarray:
    """The picture of one id (see the module doc). Returns uint8 (rows, columns, 3)."""
    img = read_image(ds.image_path(img_id))
    tiles, titles, alerts, shown = [fit_height(img, HEIGHT)], [img_id], [False], []
    gt_path = ds.gt_path(img_id)
    gt = read_label_png(gt_path) if gt_path.is_file() else None

    def add_label(label: np.ndarray, title: str, scored: bool) -> None:
        if scored and gt is not None and label.shape == gt.shape:
            title += f": mIoU {image_miou(gt, label, ds.num_classes):.1f}"
        tiles.append(fit_height(colorize(label, ds.palette), HEIGHT, label=True))
        titles.append(title)
        alerts.append(False)
        shown.append(label)

    try:
        cam = load_cam(out_path(args, args.cam_out_dir), img_id)
    except UserError:
        cam = None
    if cam is not None and "high_res" in cam:
        for k, m in zip(cam["keys"], cam["high_res"]):
            empty = float(m.max()) < EMPTY_PEAK
            tiles.append(fit_height(overlay(img, m), HEIGHT))
            titles.append(f"CAM {ds.class_names[k]}" + (": EMPTY" if empty else ""))
            alerts.append(empty)
        add_label(label_from_scores(cam["high_res"], cam["keys"], args.cam_eval_thres),
                  f"seed @{args.cam_eval_thres:.2f}", True)
    ir = out_path(args, args.ir_label_out_dir) / f"{img_id}.png"
    if ir.is_file():
        add_label(read_label_png(ir), "IR label", False)
    if gt is not None:
        add_label(gt, "GT", False)
    sem = out_path(args, args.sem_seg_out_dir) / f"{img_id}.png"
    if sem.is_file():
        add_label(read_label_png(sem), "pseudo label", True)
    return panel(tiles, titles, HEIGHT, alerts=alerts, legend=legend(ds, shown))


def run(args: argparse.Namespace) -> None:
    """Draw one PNG per image."""
    ds = get_dataset(args)
    ids = load_list(args, args.eval_list)[:args.draw_num]
    out_dir = out_path(args, args.draw_out_dir)
    for img_id in progress(shard(ids), desc="draw"):
        picture = draw_one(args, ds, img_id)
        with atomic_path(out_dir / f"{img_id}.png") as tmp:
            Image.fromarray(picture).save(tmp, format="PNG")
    say(f"draw: {len(ids)} pictures -> {out_dir}")


if __name__ == "__main__":
    step_main("draw")
