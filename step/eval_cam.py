"""Score the seeds: background threshold fixed (IRN 0.15) and swept, mIoU against the GT masks.

    python -m step.eval_cam [flags of run_sample.py]

Prediction per pixel: the class of the highest ``high_res`` CAM if it is above the threshold, else
background (ties go to background). Prints the per-class table at the fixed and at the best threshold and
writes ``<work_dir>/eval/eval_cam.json``. Under torchrun each rank histograms its share of the images, the
histograms are summed over ranks, and rank 0 prints and writes.
"""
from __future__ import annotations

import argparse

from misc import dist
from misc.io import save_json
from step.common.data import get_dataset, load_list, out_path
from step.common.entry import step_main
from step.common.evaluation import report, sweep_thresholds, thresholds_of
from step.common.reports import say_never_predicted

SECTIONS = ("run", "data", "toy", "seeds")  # the flag sections it reads


def run(args: argparse.Namespace) -> dict:
    """Evaluate; returns the JSON dict (written to disk by rank 0)."""
    ds = get_dataset(args)
    ids = load_list(args, args.eval_list)
    thr = thresholds_of(args.cam_eval_sweep, args.cam_eval_thres)
    s, fixed, best = sweep_thresholds(ds, ids, out_path(args, args.cam_out_dir), thr, args.cam_eval_thres,
                                      args.num_workers, "eval_cam")
    names = ("background",) + tuple(ds.class_names)
    result = {"list": args.eval_list, "num_images": len(ids), "classes": list(names), **s}
    if not dist.is_main():
        return result
    report(names, {f"thr {s['fixed']['threshold']:.2f}": fixed, f"best thr {s['best']['threshold']:.2f}": best})
    save_json(out_path(args, args.eval_out_dir) / "eval_cam.json", result)
    fixed_thr = s["fixed"]["threshold"]
    say_never_predicted("eval_cam", names, s["fixed"]["never_predicted"], f" at threshold {fixed_thr:.2f}")
    print(f"eval_cam: mIoU {100 * s['fixed']['miou']:.2f} at threshold {s['fixed']['threshold']:.2f}, best "
          f"{100 * s['best']['miou']:.2f} at {s['best']['threshold']:.2f} ({len(ids)} images)")
    return result


if __name__ == "__main__":
    step_main("eval_cam")
