"""Dense CRF on hard labels (pydensecrf2), with IRN's settings as defaults, and IRN's confident-region
labels (IR labels) made from seeds with two CRF passes."""
from __future__ import annotations

import numpy as np
import pydensecrf.densecrf as dcrf
from pydensecrf.utils import unary_from_labels

from misc.seeds import IGNORE, background_argmax, label_lut


def crf_inference_label(img: np.ndarray, labels: np.ndarray, n_labels: int, iters: int = 10, gt_prob: float = 0.7,
                        gauss_sxy: float = 3, gauss_compat: float = 3, bi_sxy: float = 50, bi_srgb: float = 5,
                        bi_compat: float = 10) -> np.ndarray:
    """Refine a hard label map with a fully connected CRF.

    img: uint8 (H, W, 3) RGB; labels: int (H, W) in [0, n_labels). The unary gives the input label
    probability ``gt_prob`` (label 0 is a real label, not 'unsure'); pairwise: a Gaussian kernel (sxy 3,
    compat 3) and a bilateral one (sxy 50, srgb 5, compat 10); ``iters`` mean-field iterations.
    Returns int64 (H, W), the argmax of the CRF marginals.
    """
    h, w = labels.shape
    d = dcrf.DenseCRF2D(w, h, n_labels)
    d.setUnaryEnergy(unary_from_labels(labels, n_labels, gt_prob=gt_prob, zero_unsure=False))
    d.addPairwiseGaussian(sxy=gauss_sxy, compat=gauss_compat)
    d.addPairwiseBilateral(sxy=bi_sxy, srgb=bi_srgb, rgbim=np.require(img, np.uint8, ['C', 'W']), compat=bi_compat)
    q = d.inference(iters)
    return np.argmax(np.asarray(q).reshape(n_labels, h, w), axis=0)


def confident_labels(img: np.ndarray, high_res: np.ndarray, keys: np.ndarray, fg_thres: float, bg_thres: float,
                     **crf: float) -> np.ndarray:
    """IR label of one image: the foreground pass labels each pixel with the class of its highest seed when
    above ``fg_thres``, else background, refined by the dense CRF; the background pass does the same at
    ``bg_thres``. A pixel is its class where the foreground pass says a class, background where both passes
    say background, and IGNORE (unsure) elsewhere.

    img uint8 (H, W, 3); high_res (K, H, W) max-normalised seeds; keys (K,) 0-based classes; ``crf``
    overrides crf_inference_label's settings. Returns uint8 (H, W) with values in {0, keys+1, IGNORE}."""
    if len(keys) == 0:  # an image without classes: all confident background (a 1-label CRF is undefined)
        return np.zeros(img.shape[:2], np.uint8)
    lut = label_lut(keys)

    def one_pass(thres: float) -> np.ndarray:
        return lut[crf_inference_label(img, background_argmax(high_res, thres), len(lut), **crf)]

    fg, bg = one_pass(fg_thres), one_pass(bg_thres)
    out = fg.copy()
    out[fg == 0] = IGNORE
    out[(fg == 0) & (bg == 0)] = 0
    return out
