"""Score the seeds: background threshold fixed (IRN 0.15) and swept, mIoU against the GT masks.

    python -m step.eval_cam [flags of run_sample.py]

Prediction per pixel: the class of the highest ``high_res`` CAM if it is above the threshold, else
background (ties go to background). Prints the per-class table at the fixed and at the best threshold and
writes ``<work_dir>/eval/eval_cam.json``. Under torchrun each rank histograms its share of the images, the
histograms are summed over ranks, and rank 0 prints and writes.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from misc import dist
from misc.errors import UserError
from misc.io import load_cam, save_json
from misc.metrics import iou_from_confusion
from step.common import PerImageGT, accumulate, get_dataset, load_list, out_path, report, step_main


def cam_histogram(gt: np.ndarray, high_res: np.ndarray, keys: np.ndarray, thresholds: np.ndarray, n: int
                  ) -> np.ndarray:
    """Counts H[k, g, a] of pixels with GT g, top CAM class a (label value) and k = #thresholds below its score.

    gt: uint8 (H, W) with 255 ignored; high_res: (K, H, W); keys: (K,) 0-based classes; thresholds: sorted
    (T,). Returns int64 (T+1, n, n). ``confusions_from_histogram`` turns the sum over images into the
    confusion matrix at every threshold.
    """
    keep = gt != 255
    g = gt[keep].astype(np.int64)
    if len(keys):
        score = high_res.max(0)[keep]
        arg = (np.asarray(keys, np.int64) + 1)[high_res.argmax(0)[keep]]
    else:
        score, arg = np.zeros(g.shape, np.float32), np.zeros(g.shape, np.int64)
    k = np.searchsorted(np.asarray(thresholds, score.dtype), score, side="left")  # compare in the CAM's dtype
    return np.bincount((k * n + g) * n + arg, minlength=(len(thresholds) + 1) * n * n).reshape(-1, n, n)


def confusions_from_histogram(hist: np.ndarray) -> np.ndarray:
    """(T+1, n, n) counts -> (T, n, n) confusion matrices, one per threshold (rows GT, columns prediction)."""
    above = np.cumsum(hist[::-1], 0)[::-1][1:]  # sum over k > i: pixels whose score beats threshold i
    below = np.cumsum(hist, 0)[:-1]  # sum over k <= i: background at threshold i
    conf = above.copy()
    conf[:, :, 0] = below.sum(2) + above[:, :, 0]
    return conf


class CamHistogram(PerImageGT):
    """Per image: ``cam_histogram`` of its GT mask and its seed file (``high_res`` and ``keys``)."""

    def __init__(self, ds, ids: list[str], cam_dir: Path, thresholds: np.ndarray):
        super().__init__(ds, ids)
        self.cam_dir, self.thresholds = cam_dir, thresholds

    def score(self, img_id: str, gt: np.ndarray) -> np.ndarray:
        cam = load_cam(self.cam_dir, img_id)
        if "high_res" not in cam or cam["high_res"].shape[1:] != gt.shape:
            raise UserError(f"{self.cam_dir / img_id}.npz: high_res missing or of another size than its GT mask "
                            f"{self.ds.gt_path(img_id)}; rerun make_cam")
        return cam_histogram(gt, cam["high_res"], cam["keys"], self.thresholds, self.ds.num_classes + 1)


def thresholds_of(sweep: tuple[float, float, float], fixed: float, flag: str = "--cam_eval_sweep") -> np.ndarray:
    """The thresholds LO..HI by STEP (inclusive) plus the fixed one, sorted and rounded to 1e-6."""
    lo, hi, step = sweep
    if step <= 0 or hi < lo:
        raise UserError(f"{flag} {lo} {hi} {step}: need LO <= HI and STEP > 0")
    t = np.arange(lo, hi + step / 2, step)
    return np.unique(np.round(np.append(t, fixed), 6))


def sweep_thresholds(ds, ids: list[str], cam_dir: Path, thr: np.ndarray, fixed: float, num_workers: int,
                     desc: str) -> tuple[dict, np.ndarray, np.ndarray]:
    """Score the score maps of ``cam_dir`` (seed format) at every background threshold in ``thr``.

    Returns (summary {'fixed', 'best': {'threshold', 'miou', 'iou'}, 'sweep': [{'threshold', 'miou'}]},
    IoU (C+1,) at the fixed threshold, IoU at the best one); mIoU and IoU are fractions.
    """
    hist = accumulate(CamHistogram(ds, ids, cam_dir, thr), desc, num_workers)
    ious = np.stack([iou_from_confusion(c) for c in confusions_from_histogram(hist)])
    miou = np.nanmean(ious, 1)
    best = int(np.nanargmax(miou))
    at = int(np.argmin(np.abs(thr - fixed)))
    summary = {"fixed": {"threshold": float(thr[at]), "miou": float(miou[at]), "iou": ious[at].tolist()},
               "best": {"threshold": float(thr[best]), "miou": float(miou[best]), "iou": ious[best].tolist()},
               "sweep": [{"threshold": float(t), "miou": float(m)} for t, m in zip(thr, miou)]}
    return summary, ious[at], ious[best]


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
    print(f"eval_cam: mIoU {100 * s['fixed']['miou']:.2f} at threshold {s['fixed']['threshold']:.2f}, best "
          f"{100 * s['best']['miou']:.2f} at {s['best']['threshold']:.2f} ({len(ids)} images)")
    return result


if __name__ == "__main__":
    step_main("eval_cam", run)
