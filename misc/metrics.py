"""Semantic segmentation metrics from a confusion matrix (our own replacement for chainercv's)."""
from __future__ import annotations

import numpy as np

from misc.seeds import IGNORE


def confusion_matrix(gt: np.ndarray, pred: np.ndarray, n: int) -> np.ndarray:
    """Pixel confusion matrix of one image. Rows are GT classes, columns predicted classes.

    Pixels whose GT is ``IGNORE`` (255) are skipped; any other GT or prediction outside [0, n) raises
    ValueError. Returns int64 (n, n).
    """
    if gt.shape != pred.shape:
        raise ValueError(f"GT shape {gt.shape} differs from prediction shape {pred.shape}")
    keep = gt != IGNORE
    g = gt[keep].astype(np.int64)
    p = pred[keep].astype(np.int64)
    if g.size and (g.max() >= n or p.max() >= n or g.min() < 0 or p.min() < 0):
        raise ValueError(f"label value outside [0, {n}) (GT max {g.max()}, prediction max {p.max()})")
    return np.bincount(g * n + p, minlength=n * n).reshape(n, n)


def iou_from_confusion(conf: np.ndarray) -> np.ndarray:
    """IoU per class, tp / (gt + pred - tp). A class absent from both GT and prediction is NaN. float64 (n,)."""
    tp = np.diag(conf).astype(np.float64)
    union = conf.sum(0) + conf.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, tp / np.maximum(union, 1), np.nan)


def fp_fn_rates(conf: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """IRN's error split per class: fp = 1 - gt/union and fn = 1 - pred/union. Two float64 (n,) arrays."""
    tp = np.diag(conf).astype(np.float64)
    gt, pred = conf.sum(1).astype(np.float64), conf.sum(0).astype(np.float64)
    union = gt + pred - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return 1 - gt / union, 1 - pred / union


def never_predicted(conf: np.ndarray) -> list[int]:
    """The classes (row / column indices) with GT pixels that no pixel is predicted as: column sum 0, row
    sum > 0. Sorted list of ints."""
    return [int(c) for c in np.flatnonzero((conf.sum(1) > 0) & (conf.sum(0) == 0))]
