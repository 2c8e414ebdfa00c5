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

import numpy as np

from misc import dist
from misc.io import save_json
from step.common.data import get_dataset, load_list, out_path
from step.common.entry import step_main
from step.common.evaluation import report, score_labels, sweep_thresholds, thresholds_of
from step.common.reports import say_never_predicted

SECTIONS = ("run", "data", "toy", "sem_seg")  # the flag sections it reads


def run(args: argparse.Namespace) -> dict:
    """Evaluate; returns the JSON dict (written to disk by rank 0)."""
    ds = get_dataset(args)
    ids = load_list(args, args.eval_list)
    pred_dir = out_path(args, args.sem_seg_out_dir)
    result = score_labels(ds, ids, pred_dir, "make_sem_seg_labels", "eval_sem_seg", args.num_workers, args.eval_list)
    iou, fp = np.asarray(result["iou"]), result["fp"]
    names = tuple(result["classes"])
    columns = {"IoU": iou}
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
    print(f"eval_sem_seg: background fp {fp[0]:.3f} fn {result['background_fn']:.3f}; foreground mean fp "
          f"{result['foreground_fp']:.3f} fn {result['foreground_fn']:.3f}")
    print(f"eval_sem_seg: mIoU {100 * result['miou']:.2f} ({len(ids)} images)"
          + (f"; from the saved scores, best {100 * result['scores']['best']['miou']:.2f} at background threshold "
             f"{result['scores']['best']['threshold']:.2f}" if "scores" in result else ""))
    save_json(out_path(args, args.eval_out_dir) / "eval_sem_seg.json", result)
    return result


if __name__ == "__main__":
    step_main("eval_sem_seg")
