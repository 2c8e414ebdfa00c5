"""Score the segmentation network's labels against the GT masks, without and with the dense CRF.

    python -m step.eval_seg [flags of run_sample.py]      # or run_sample.py --seg True

Reads ``<seg_out_dir>/<id>.png`` (and ``<seg_crf_out_dir>/<id>.png`` with --seg_crf) for every id of
--seg_eval_list (default val) and scores them as eval_sem_seg scores pseudo labels
(``step.common.evaluation.score_labels``: one streamed confusion matrix, mIoU, per-class IoU, fp/fn).
Prints the per-class table and writes ``<work_dir>/<eval_out_dir>/eval_seg.json`` {'list', 'num_images',
'weights', 'select', 'no_crf': scores, 'crf': scores or null}.
"""
from __future__ import annotations

import argparse

import numpy as np

from misc import dist
from misc.io import save_json
from step.common.data import get_dataset, load_list, out_path
from step.common.entry import step_main
from step.common.evaluation import report, score_labels

SECTIONS = ("run", "data", "toy", "seg")  # the flag sections it reads


def run(args: argparse.Namespace) -> dict:
    """Evaluate; returns the JSON dict (written to disk by rank 0)."""
    ds = get_dataset(args)
    ids = load_list(args, args.seg_eval_list)
    scores = {"no_crf": score_labels(ds, ids, out_path(args, args.seg_out_dir), "make_seg", "eval_seg",
                                     args.num_workers, args.seg_eval_list),
              "crf": (score_labels(ds, ids, out_path(args, args.seg_crf_out_dir), "make_seg", "eval_seg crf",
                                   args.num_workers, args.seg_eval_list) if args.seg_crf else None)}
    result = {"list": args.seg_eval_list, "num_images": len(ids), "weights": args.seg_weights_name,
              "select": args.seg_select, **scores}
    if not dist.is_main():
        return result
    columns = {k.replace("_", " "): np.asarray(v["iou"]) for k, v in scores.items() if v is not None}
    report(tuple(scores["no_crf"]["classes"]), columns)
    print(f"eval_seg: mIoU {100 * scores['no_crf']['miou']:.2f}"
          + (f", with CRF {100 * scores['crf']['miou']:.2f}" if scores["crf"] else "")
          + f" ({len(ids)} images of {args.seg_eval_list})")
    save_json(out_path(args, args.eval_out_dir) / "eval_seg.json", result)
    return result


if __name__ == "__main__":
    step_main("eval_seg")
