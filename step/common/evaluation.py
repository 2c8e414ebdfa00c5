"""Evaluation pieces the eval steps share: streaming per-image scores summed over images (and ranks), the
scores of a folder of label PNGs, the background-threshold sweep over score maps in the seed format, and the
printed per-class table."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from torch.utils.data import DataLoader, Dataset, Subset

from misc import dist
from misc.dataset_spec import DatasetSpec
from misc.errors import UserError
from misc.imutils import read_label_png
from misc.io import load_cam
from misc.metrics import confusion_matrix, fp_fn_rates, iou_from_confusion, never_predicted
from misc.seeds import IGNORE
from step.common.parallel import progress


class PerImageGT(Dataset):
    """Base of the streaming evaluators: item i = ``score(id, gt)`` of image ids[i], with gt its checked
    uint8 GT mask (H, W); subclasses define ``score`` (returning an array to be summed over images)."""

    def __init__(self, ds: DatasetSpec, ids: list[str]):
        self.ds, self.ids = ds, list(ids)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> np.ndarray:
        return self.score(self.ids[i], self.ds.read_gt(self.ids[i]))

    def score(self, img_id: str, gt: np.ndarray) -> np.ndarray:
        raise NotImplementedError


def accumulate(data: Dataset, desc: str, num_workers: int) -> np.ndarray:
    """Sum the arrays a Dataset returns per item, computed in ``num_workers`` loader processes (streaming:
    one item in memory per worker). Under torchrun each rank sums items rank, rank + W, ... and the ranks'
    sums are added (``dist.sum_over_ranks``; exact for counts). Returns the sum over all items, on every rank."""
    total = None
    mine = Subset(data, range(dist.rank(), len(data), dist.world_size()))
    loader = DataLoader(mine, batch_size=None, num_workers=num_workers)
    for h in progress(loader, desc=desc, total=len(mine)):
        h = np.asarray(h)
        total = h.copy() if total is None else total + h
    return dist.sum_over_ranks(total)


class LabelConfusion(PerImageGT):
    """Per image: the confusion matrix (rows GT 0..C, columns prediction) of its GT mask and its label PNG
    ``<pred_dir>/<id>.png``; prediction values above C (e.g. 255) count as background, as IRN's evaluation.
    ``rerun`` names the step that writes the PNGs (in the size-mismatch message)."""

    def __init__(self, ds: DatasetSpec, ids: list[str], pred_dir: Path, rerun: str):
        super().__init__(ds, ids)
        self.pred_dir, self.rerun = pred_dir, rerun

    def score(self, img_id: str, gt: np.ndarray) -> np.ndarray:
        path = self.pred_dir / f"{img_id}.png"
        if not path.is_file():
            raise UserError(f"{path}: missing; run {self.rerun} on this id list first")
        pred = read_label_png(path)
        if pred.shape != gt.shape:
            raise UserError(f"{path}: size {pred.shape} differs from its GT mask {self.ds.gt_path(img_id)} "
                            f"{gt.shape}; rerun {self.rerun}")
        n = self.ds.num_classes + 1
        return confusion_matrix(gt, np.where(pred < n, pred, 0), n)


def score_labels(ds: DatasetSpec, ids: list[str], pred_dir: Path, rerun: str, desc: str, num_workers: int,
                 list_name: str) -> dict:
    """Score the label PNGs of ``pred_dir`` on ``ids`` (list ``list_name``) against the GT masks (one
    confusion matrix streamed over the images, under torchrun over the ranks too). Returns {'list',
    'num_images', 'classes', 'miou', 'iou', 'fp', 'fn', 'background_fp', 'background_fn', 'foreground_fp',
    'foreground_fn', 'never_predicted'} (fractions; fp = 1 - gt/union and fn = 1 - pred/union per class, IRN's
    split; never_predicted: see misc.metrics.never_predicted), on every rank."""
    conf = accumulate(LabelConfusion(ds, ids, pred_dir, rerun), desc, num_workers)
    iou = iou_from_confusion(conf)
    fp, fn = fp_fn_rates(conf)
    return {"list": list_name, "num_images": len(ids), "classes": ["background", *ds.class_names],
            "miou": float(np.nanmean(iou)), "iou": iou.tolist(), "fp": fp.tolist(), "fn": fn.tolist(),
            "background_fp": float(fp[0]), "background_fn": float(fn[0]),
            "foreground_fp": float(np.nanmean(fp[1:])), "foreground_fn": float(np.nanmean(fn[1:])),
            "never_predicted": never_predicted(conf)}


def report(names: tuple[str, ...], columns: dict[str, np.ndarray]) -> None:
    """Print a per-class IoU table (percent) with one column per entry of ``columns`` and a mIoU row."""
    w = max(len(n) for n in names) + 2
    print("".join([f"{'class':<{w}}"] + [f"{c:>16}" for c in columns]))
    for i, n in enumerate(names):
        print("".join([f"{n:<{w}}"] + [f"{100 * v[i]:>16.2f}" if np.isfinite(v[i]) else f"{'-':>16}"
                                         for v in columns.values()]))
    print("".join([f"{'mIoU':<{w}}"] + [f"{100 * np.nanmean(v):>16.2f}" for v in columns.values()]))


def cam_histogram(gt: np.ndarray, high_res: np.ndarray, keys: np.ndarray, thresholds: np.ndarray, n: int
                  ) -> np.ndarray:
    """Counts H[k, g, a] of pixels with GT g, top CAM class a (label value) and k = #thresholds below its score.

    gt: uint8 (H, W) with IGNORE skipped; high_res: (K, H, W); keys: (K,) 0-based classes; thresholds:
    sorted (T,). Returns int64 (T+1, n, n). ``confusions_from_histogram`` turns the sum over images into the
    confusion matrix at every threshold.
    """
    keep = gt != IGNORE
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
    """Per image: ``cam_histogram`` of its GT mask and its score file (``high_res`` and ``keys``)."""

    def __init__(self, ds: DatasetSpec, ids: list[str], cam_dir: Path, thresholds: np.ndarray):
        super().__init__(ds, ids)
        self.cam_dir, self.thresholds = cam_dir, thresholds

    def score(self, img_id: str, gt: np.ndarray) -> np.ndarray:
        cam = load_cam(self.cam_dir, img_id)
        if "high_res" not in cam or cam["high_res"].shape[1:] != gt.shape:
            raise UserError(f"{self.cam_dir / img_id}.npz: high_res missing or of another size than its GT mask "
                            f"{self.ds.gt_path(img_id)}; rerun the step that wrote it")
        return cam_histogram(gt, cam["high_res"], cam["keys"], self.thresholds, self.ds.num_classes + 1)


def thresholds_of(sweep: tuple[float, float, float], fixed: float) -> np.ndarray:
    """The thresholds LO..HI by STEP (inclusive; LO <= HI and STEP > 0, checked when the flags are parsed)
    plus the fixed one, sorted and rounded to 1e-6."""
    lo, hi, step = sweep
    t = np.arange(lo, hi + step / 2, step)
    return np.unique(np.round(np.append(t, fixed), 6))


def sweep_thresholds(ds: DatasetSpec, ids: list[str], cam_dir: Path, thr: np.ndarray, fixed: float,
                     num_workers: int, desc: str) -> tuple[dict, np.ndarray, np.ndarray]:
    """Score the score maps of ``cam_dir`` (seed format) at every background threshold in ``thr``.

    Returns (summary {'fixed': {'threshold', 'miou', 'iou', 'never_predicted'}, 'best': {'threshold', 'miou',
    'iou'}, 'sweep': [{'threshold', 'miou'}]} where never_predicted lists the classes (indices) with GT
    pixels that no pixel is predicted as at the fixed threshold,
    IoU (C+1,) at the fixed threshold, IoU at the best one); mIoU and IoU are fractions.
    """
    hist = accumulate(CamHistogram(ds, ids, cam_dir, thr), desc, num_workers)
    confusions = confusions_from_histogram(hist)
    ious = np.stack([iou_from_confusion(c) for c in confusions])
    miou = np.nanmean(ious, 1)
    best = int(np.nanargmax(miou))
    at = int(np.argmin(np.abs(thr - fixed)))
    summary = {"fixed": {"threshold": float(thr[at]), "miou": float(miou[at]), "iou": ious[at].tolist(),
                         "never_predicted": never_predicted(confusions[at])},
               "best": {"threshold": float(thr[best]), "miou": float(miou[best]), "iou": ious[best].tolist()},
               "sweep": [{"threshold": float(t), "miou": float(m)} for t, m in zip(thr, miou)]}
    return summary, ious[at], ious[best]
