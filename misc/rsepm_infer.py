"""RS+EPM's released inference (``infer_rsepm.py`` and ``convert_seed_to_pseudo_masks.py``, df538e2) as pure
functions, batched over images of one size and device-agnostic; the CRF runs on the CPU.

1. ``multiscale_predict``: every scale (1.0, 0.5, 1.5, 2.0) and its horizontal flip; the segmentation
   logits go to the scaled input size and then to the image size with *nearest* resizing; the softmax and the
   sigmoid class probabilities are averaged over the 8 passes.
2. ``select_classes``: the image-level labels (train) or the predicted probabilities >= 0.34 (val/test).
3. ``seed_maps``: the foreground probabilities, each class divided by its own max (+1e-5).
4. ``common_seed``: the selected classes in the toolkit's seed format.
5. ``seed_to_label``: background (1 - max_c seed)^2, a dense CRF with the released "deeplab" preset on the
   resulting scores, argmax, mapped to 0 = background and c + 1 for class c.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import pydensecrf.densecrf as dcrf
import torch
import torch.nn.functional as F
from pydensecrf.utils import unary_from_softmax

SCALES = (1.0, 0.5, 1.5, 2.0)
CONF_TH = 0.34
BG_GAMMA = 2.0
# convert_seed_to_pseudo_masks.py's 'deeplab' preset
DEEPLAB_CRF = {"iters": 10, "pos_xy_std": 1, "pos_w": 3, "bi_xy_std": 67, "bi_rgb_std": 3, "bi_w": 4}


def _resize(x: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    """F.interpolate to ``size`` (align_corners False for bilinear), skipped when the size is already right."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode=mode, align_corners=False if mode == "bilinear" else None)


@torch.no_grad()
def multiscale_predict(forward: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]], images: torch.Tensor,
                       scales: Sequence[float] = SCALES, flip: bool = True,
                       interpolation: str = "nearest") -> tuple[torch.Tensor, torch.Tensor]:
    """images: (B, 3, H, W) normalised, one size; ``forward(x)`` returns (class logits (N, C), segmentation
    logits (N, C + 1, h, w)) for a batch. Each scale s resizes the images bilinearly to
    (int(H * s), int(W * s)). Returns (mean softmax (B, C + 1, H, W), mean sigmoid class probabilities (B, C))."""
    b, _, h, w = images.shape
    seg_sum, cls_sum = 0.0, 0.0
    for s in scales:
        x = _resize(images, (int(h * s), int(w * s)), "bilinear")
        if flip:
            x = torch.cat([x, x.flip(-1)])
        logits, seg = forward(x)
        cls_p = torch.sigmoid(logits)
        seg_p = _resize(torch.softmax(_resize(seg, x.shape[2:], interpolation), 1), (h, w), interpolation)
        if flip:
            cls_p, seg_p = cls_p[:b] + cls_p[b:], seg_p[:b] + seg_p[b:].flip(-1)
        seg_sum, cls_sum = seg_sum + seg_p, cls_sum + cls_p
    n = len(scales) * (2 if flip else 1)
    return seg_sum / n, cls_sum / n


def select_classes(class_probs: torch.Tensor, labels: torch.Tensor | None = None,
                   conf_th: float = CONF_TH) -> torch.Tensor:
    """(B, C) probabilities -> bool (B, C): the given image-level labels (B, C) when ``labels`` is not None
    (the released train setting, conf_th -1), otherwise the classes with probability >= ``conf_th``."""
    return labels.bool() if labels is not None else class_probs >= conf_th


def seed_maps(probs: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """(B, C + 1, H, W) mean softmax -> (B, C, H, W) foreground maps, each divided by its max + eps."""
    fg = probs[:, 1:]
    return fg / (fg.amax((2, 3), keepdim=True) + eps)


def common_seed(seed: torch.Tensor, selected: torch.Tensor, eps: float = 1e-5) -> dict[str, np.ndarray]:
    """One image's seed (C, H, W) from ``seed_maps`` and its selected classes (C,) bool -> the toolkit's seed
    record {'keys': int64 (K,) 0-based classes, 'high_res': float32 (K, H, W) (the seed maps themselves),
    'cam': float32 (K, (H-1)//4+1, (W-1)//4+1): 4x4 means (partial cells at the border), each divided by
    its max + eps}; K may be 0 (an image without classes)."""
    keys = torch.nonzero(selected).flatten()
    high = seed[keys]
    if len(keys) == 0:
        h, w = seed.shape[1:]
        cam = high.new_zeros((0, (h - 1) // 4 + 1, (w - 1) // 4 + 1))
    else:
        cam = F.avg_pool2d(high[None], 4, ceil_mode=True)[0]
    cam = cam / (cam.amax((1, 2), keepdim=True) + eps)
    return {"keys": keys.cpu().numpy().astype(np.int64), "cam": cam.float().cpu().numpy(),
            "high_res": high.float().cpu().numpy()}


def crf_scores(image: np.ndarray, scores: np.ndarray, iters: int, pos_xy_std: float, pos_w: float,
               bi_xy_std: float, bi_rgb_std: float, bi_w: float) -> np.ndarray:
    """Dense CRF (pydensecrf2) on class scores used as probabilities. image: uint8 (H, W, 3); scores:
    (L, H, W), clipped to [1e-5, 1] before the log. Returns float32 (L, H, W) marginals."""
    n, h, w = scores.shape
    d = dcrf.DenseCRF2D(w, h, n)
    d.setUnaryEnergy(np.ascontiguousarray(unary_from_softmax(scores)))
    d.addPairwiseGaussian(sxy=pos_xy_std, compat=pos_w)
    d.addPairwiseBilateral(sxy=bi_xy_std, srgb=bi_rgb_std, rgbim=np.ascontiguousarray(image, np.uint8),
                           compat=bi_w)
    return np.asarray(d.inference(iters), np.float32).reshape(n, h, w)


def seed_to_label(image: np.ndarray, high_res: np.ndarray, keys: np.ndarray, bg_gamma: float = BG_GAMMA,
                  crf: dict | None = None) -> np.ndarray:
    """image: uint8 (H, W, 3); high_res: (K, H, W) max-normalised seeds of the 0-based classes ``keys`` (K,).
    Background score (1 - max_k seed)^bg_gamma; the CRF (default: the 'deeplab' preset) refines the K + 1
    scores. Returns uint8 (H, W): 0 background, c + 1 for class c; all 0 when K = 0."""
    if len(keys) == 0:
        return np.zeros(image.shape[:2], np.uint8)
    high_res = np.asarray(high_res, np.float32)
    bg = np.power(1 - high_res.max(0, keepdims=True), bg_gamma)
    q = crf_scores(image, np.concatenate([bg, high_res]), **(crf or DEEPLAB_CRF))
    lut = np.concatenate([[0], np.asarray(keys) + 1]).astype(np.uint8)
    return lut[q.argmax(0)]
