"""Score the pseudo labels against the GT masks: mIoU, per-class IoU, IRN's false-positive/negative split.

    python -m step.eval_sem_seg [flags of run_sample.py]

Reads ``<sem_seg_out_dir>/<id>.png`` for every id of --eval_list (values above the class count, e.g.
255, count as background, as IRN). One confusion matrix is accumulated over the images (streaming, in
loader workers). fp = 1 - gt/union and fn = 1 - pred/union per class, printed for background and as the
mean over the foreground classes. When make_sem_seg_labels saved its score maps (--sem_seg_save_scores),
the background threshold is also swept over --sem_seg_eval_sweep. Writes
``<work_dir>/eval/eval_sem_seg.json``. Under torchrun each rank scores its share of the images, the
confusion matrices are summed over ranks, and rank 0 prints and writes.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from misc import dist
from misc.errors import UserError
from misc.imutils import read_label_png
from misc.io import save_json
from misc.metrics import confusion_matrix, fp_fn_rates, iou_from_confusion, never_predicted
from step.common.data import get_dataset, load_list, out_path
from step.common.entry import step_main
from step.common.evaluation import PerImageGT, accumulate, report, sweep_thresholds, thresholds_of
from step.common.reports import say_never_predicted

SECTIONS = ("run", "data", "toy", "sem_seg")  # the flag sections it reads


class _Confusion(PerImageGT):
    def __init__(self, ds, ids: list[str], pred_dir: Path):
        super().__init__(ds, ids)
        self.pred_dir = pred_dir

    def score(self, img_id: str, gt: np.ndarray) -> np.ndarray:
        pred = read_label_png(self.pred_dir / f"{img_id}.png")
        if pred.shape != gt.shape:
            raise UserError(f"{self.pred_dir / img_id}.png: size {pred.shape} differs from its GT mask "
                            f"{self.ds.gt_path(img_id)} {gt.shape}; rerun make_sem_seg_labels")
        n = self.ds.num_classes + 1
        return confusion_matrix(gt, np.where(pred < n, pred, 0), n)


def run(args: argparse.Namespace) -> dict:
    """Evaluate; returns the JSON dict (written to disk by rank 0)."""
    ds = get_dataset(args)
    ids = load_list(args, args.eval_list)
    pred_dir = out_path(args, args.sem_seg_out_dir)
    conf = accumulate(_Confusion(ds, ids, pred_dir), "eval_sem_seg", args.num_workers)
    iou = iou_from_confusion(conf)
    fp, fn = fp_fn_rates(conf)
    names = ("background",) + tuple(ds.class_names)
    columns = {"IoU": iou}
    result = {"list": args.eval_list, "num_images": len(ids), "classes": list(names), "miou": float(np.nanmean(iou)),
              "iou": iou.tolist(), "fp": fp.tolist(), "fn": fn.tolist(),
              "background_fp": float(fp[0]), "background_fn": float(fn[0]),
              "foreground_fp": float(np.nanmean(fp[1:])), "foreground_fn": float(np.nanmean(fn[1:])),
              "never_predicted": never_predicted(conf)}
    score_dir = pred_dir.with_name(pred_dir.name + "_scores")
    if all((score_dir / f"{i}.npz").is_file() for i in ids):
        thr = thresholds_of(args.sem_seg_eval_sweep, args.sem_seg_bg_thres)
        s, _, best = sweep_thresholds(ds, ids, score_dir, thr, args.sem_seg_bg_thres, args.num_workers,
                                      "eval_sem_seg sweep")
        columns[f"best thr {s['best']['threshold']:.2f}"] = best
        result["scores"] = s
    if not dist.is_main():
        return result
    report(names, columns)
    say_never_predicted("eval_sem_seg", names, result["never_predicted"])
    print(f"eval_sem_seg: background fp {fp[0]:.3f} fn {fn[0]:.3f}; foreground mean fp {result['foreground_fp']:.3f} "
          f"fn {result['foreground_fn']:.3f}")
    print(f"eval_sem_seg: mIoU {100 * result['miou']:.2f} ({len(ids)} images)"
          + (f"; from the saved scores, best {100 * result['scores']['best']['miou']:.2f} at background threshold "
             f"{result['scores']['best']['threshold']:.2f}" if "scores" in result else ""))
    save_json(out_path(args, args.eval_out_dir) / "eval_sem_seg.json", result)
    return result


if __name__ == "__main__":
    step_main("eval_sem_seg")
