"""Confident-region mining: seeds -> IR labels {0 background, 1..C class, 255 unsure} via two dense CRF passes.

    python -m step.cam_to_ir_label [flags of run_sample.py]

For every id of --train_list: the foreground pass labels each pixel with the class of its highest seed
when above --conf_fg_thres (IRN 0.30), else background, and refines that with a dense CRF; the
background pass does the same at --conf_bg_thres (IRN 0.05). A pixel is foreground (its class) where the
foreground pass says a class, background where both passes say background, and 255 elsewhere
(``misc.crf.confident_labels``). Writes
``<work_dir>/<ir_label_out_dir>/<id>.png`` (uint8); ids already done are skipped unless --overwrite. The
CRF is CPU-bound and runs in a process pool of --crf_num_workers. Under torchrun each rank labels its
share of the ids (``step.common.parallel.shard``) with its own pool, and the quality score is reduced over ranks.
"""
from __future__ import annotations

import argparse
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from pathlib import Path

import numpy as np

from misc import dist
from misc.crf import confident_labels
from misc.errors import UserError
from misc.imutils import read_image, read_label_png
from misc.io import load_cam, save_json, save_png
from misc.metrics import confusion_matrix
from misc.seeds import IGNORE
from step.common.data import get_dataset, load_list, out_path
from step.common.entry import step_main
from step.common.evaluation import PerImageGT, accumulate
from step.common.parallel import pending, progress, say, shard

SECTIONS = ("run", "data", "toy", "seeds", "ir_label")  # the flag sections it reads


def _work(img_id: str, image_path: Path, cam_dir: Path, out_dir: Path, fg: float, bg: float, iters: int,
          gt_prob: float) -> str:
    img = read_image(image_path)
    cam = load_cam(cam_dir, img_id)
    if cam.get("high_res") is None or cam["high_res"].shape[1:] != img.shape[:2]:
        raise UserError(f"{cam_dir / img_id}.npz: high_res missing or not the size of {image_path}; rerun make_cam")
    save_png(out_dir / f"{img_id}.png",
             confident_labels(img, cam["high_res"], cam["keys"], fg, bg, iters=iters, gt_prob=gt_prob))
    return img_id


class _IRConfusion(PerImageGT):
    """Per image: the confusion of its GT (rows 0..C) with its IR label (columns 0..C, unsure as C+1)."""

    def __init__(self, ds, ids: list[str], label_dir: Path):
        super().__init__(ds, ids)
        self.label_dir = label_dir

    def score(self, img_id: str, gt: np.ndarray) -> np.ndarray:
        n = self.ds.num_classes + 2
        lab = read_label_png(self.label_dir / f"{img_id}.png").astype(np.int64)
        lab[lab == IGNORE] = n - 1
        return confusion_matrix(gt, lab, n)


def ir_label_quality(ds, ids: list[str], label_dir: Path, num_workers: int = 0) -> dict[str, float]:
    """Precision and recall of the confident regions of the IR labels of ``ids`` against the GT masks
    (one confusion matrix accumulated in ``num_workers`` loader processes; under torchrun each rank scores
    its share and the sums are added, every rank gets the result).

    Returns {'fg_precision', 'fg_recall', 'bg_precision', 'bg_recall', 'unsure'}: foreground precision is
    the share of pixels labelled with a class whose GT is that class; recall the share of GT foreground
    (background) pixels labelled correctly; 'unsure' the share of pixels labelled 255. GT 255 is ignored.
    """
    n = ds.num_classes + 2  # 0..C and 'unsure' as C+1
    conf = accumulate(_IRConfusion(ds, ids, label_dir), "IR label quality", num_workers)
    tp = np.diag(conf)[:n - 1]
    return {"fg_precision": float(tp[1:].sum() / max(conf[:, 1:n - 1].sum(), 1)),
            "fg_recall": float(tp[1:].sum() / max(conf[1:n - 1].sum(), 1)),
            "bg_precision": float(tp[0] / max(conf[:, 0].sum(), 1)),
            "bg_recall": float(tp[0] / max(conf[0].sum(), 1)),
            "unsure": float(conf[:, n - 1].sum() / max(conf.sum(), 1))}


def run(args: argparse.Namespace) -> None:
    """Write the IR label of every id of --train_list that has none yet; score those of --eval_list."""
    ds = get_dataset(args)
    ids = load_list(args, args.train_list)
    out_dir = out_path(args, args.ir_label_out_dir)
    todo = pending(ids, lambda i: (out_dir / f"{i}.png").is_file(), args.overwrite)
    mine = shard(todo)
    work = partial(_work, cam_dir=out_path(args, args.cam_out_dir), out_dir=out_dir, fg=args.conf_fg_thres,
                   bg=args.conf_bg_thres, iters=args.crf_iters, gt_prob=args.crf_gt_prob)
    paths = [ds.image_path(i) for i in mine]
    bar = progress(total=len(mine), desc="cam_to_ir_label")
    if args.crf_num_workers <= 1 or len(mine) <= 1:
        for i, p in zip(mine, paths):
            work(i, p)
            bar.update()
    else:
        with ProcessPoolExecutor(args.crf_num_workers) as pool:
            for _ in pool.map(work, mine, paths, chunksize=4):
                bar.update()
    bar.close()
    say(f"cam_to_ir_label: {len(todo)} new IR labels ({len(ids) - len(todo)} existed) -> {out_dir}")
    dist.barrier()  # every rank's labels are written before any rank scores them
    scored = [i for i in load_list(args, args.eval_list) if (out_dir / f"{i}.png").is_file()]
    if scored:
        q = ir_label_quality(ds, scored, out_dir, args.num_workers)
        if dist.is_main():
            save_json(out_path(args, args.eval_out_dir) / "eval_ir_label.json", {"num_images": len(scored), **q})
        say("cam_to_ir_label on {} images of --eval_list: fg precision {:.1f}, fg recall {:.1f}, bg precision "
            "{:.1f}, bg recall {:.1f}, unsure {:.1f} (%)".format(len(scored), *(100 * v for v in q.values())))


if __name__ == "__main__":
    step_main("cam_to_ir_label")
