"""Confusion matrix and IoU on hand-made arrays, and the threshold-sweep histogram against a direct argmax."""
import numpy as np
import pytest

from misc.metrics import confusion_matrix, fp_fn_rates, iou_from_confusion
from step.common.evaluation import cam_histogram, confusions_from_histogram


def test_known_ious_and_ignore():
    gt = np.array([[0, 0, 1, 1], [0, 255, 1, 1]], np.uint8)
    pred = np.array([[0, 1, 1, 1], [0, 2, 1, 0]], np.uint8)
    conf = confusion_matrix(gt, pred, 4)
    assert conf.sum() == 7  # the 255 pixel is skipped, its prediction (2) too
    assert conf[0, 0] == 2 and conf[0, 1] == 1 and conf[1, 1] == 3 and conf[1, 0] == 1
    iou = iou_from_confusion(conf)
    assert iou[0] == pytest.approx(2 / 4) and iou[1] == pytest.approx(3 / 5)
    assert np.isnan(iou[2]) and np.isnan(iou[3])  # absent from GT and prediction
    assert np.nanmean(iou) == pytest.approx((0.5 + 0.6) / 2)


def test_false_positive_class_counts_as_zero():
    gt = np.zeros((2, 2), np.uint8)
    pred = np.array([[0, 0], [0, 3]], np.uint8)
    iou = iou_from_confusion(confusion_matrix(gt, pred, 4))
    assert iou[3] == 0.0 and iou[0] == pytest.approx(0.75)


def test_out_of_range_label_raises():
    with pytest.raises(ValueError):
        confusion_matrix(np.array([[5]], np.uint8), np.array([[0]], np.uint8), 4)


def test_fp_fn_rates():
    conf = np.array([[6, 2], [1, 3]])
    fp, fn = fp_fn_rates(conf)
    union0 = 8 + 7 - 6
    assert fp[0] == pytest.approx(1 - 8 / union0) and fn[0] == pytest.approx(1 - 7 / union0)


def test_threshold_sweep_equals_direct_argmax():
    rng = np.random.default_rng(0)
    thresholds = np.round(np.arange(0.05, 0.6, 0.05), 6)
    n = 21
    hist = 0
    direct = np.zeros((len(thresholds), n, n), np.int64)
    for _ in range(5):
        gt = rng.integers(0, 4, (13, 17)).astype(np.uint8)
        gt[rng.random(gt.shape) < 0.1] = 255
        keys = np.array([2, 7, 19])
        cams = rng.random((3, 13, 17)).astype(np.float32) * 0.7
        cams[0, 0, 0] = thresholds[3]  # an exact tie with a threshold goes to background
        hist = hist + cam_histogram(gt, cams, keys, thresholds, n)
        for i, t in enumerate(thresholds):
            stacked = np.concatenate([np.full((1, 13, 17), t, np.float32), cams])
            pred = np.concatenate([[0], keys + 1])[stacked.argmax(0)]
            direct[i] += confusion_matrix(gt, pred, n)
    np.testing.assert_array_equal(confusions_from_histogram(hist), direct)
