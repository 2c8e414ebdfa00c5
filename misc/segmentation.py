"""Pieces of the segmentation stage that are not modules: input normalisation, multi-scale + flip inference
(DeepLab's probability mean, ToCo's flip-sum / scale-max logits), the dense CRF on class probabilities with
DeepLab's or ToCo's parameters, and the poly learning rates of the recipes."""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import pydensecrf.densecrf as dcrf
import torch
import torch.nn.functional as F
from pydensecrf.utils import unary_from_softmax

from misc.imutils import normalize

CAFFE_BGR_MEAN = (104.008, 116.669, 122.675)

# DeepLab's CRF (kazuto1011's configs, VainF's eval, RS+EPM's conversion step all use these).
DEEPLAB_CRF = {"iters": 10, "pos_w": 3.0, "pos_xy_std": 1.0, "bi_w": 4.0, "bi_xy_std": 67.0, "bi_rgb_std": 3.0}
# ToCo's and PUFS's test-time CRF (utils/dcrf.py of both).
TOCO_CRF = {"iters": 10, "pos_w": 1.0, "pos_xy_std": 1.0, "bi_w": 4.0, "bi_xy_std": 121.0, "bi_rgb_std": 5.0}


def normalize_hwc(img: np.ndarray, style: str) -> np.ndarray:
    """uint8 RGB (H, W, 3) -> float32 (H, W, 3) in the input ``style`` of ``normalize_image``, channels last
    (for augmentations that flip and crop before the transpose); the mean colour maps to 0 in both styles."""
    if style == "caffe":
        return img[..., ::-1].astype(np.float32) - np.asarray(CAFFE_BGR_MEAN, np.float32)
    if style == "torchvision":
        return normalize(img)
    raise ValueError(f"unknown input style {style!r} (caffe or torchvision)")


def normalize_image(img: np.ndarray, style: str) -> np.ndarray:
    """uint8 RGB (H, W, 3) -> float32 (3, H, W) network input.

    'caffe': BGR channel order, 0-255 minus the caffe mean (104.008, 116.669, 122.675) — the input the
    kazuto1011-layout DeepLab files (COCO / ImageNet caffe inits) were trained with. 'torchvision': RGB in
    [0, 1] normalised with the ImageNet mean/std — torchvision's ResNet files (VainF's recipe).
    """
    return np.ascontiguousarray(normalize_hwc(img, style).transpose(2, 0, 1))


@torch.no_grad()
def multiscale_probs(forward: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor,
                     scales: Sequence[float] = (1.0,), flip: bool = False) -> torch.Tensor:
    """Class probabilities averaged over scales and (optionally) horizontal flips, as RS+EPM's ``infer_seg``.

    images: (B, 3, H, W). For each scale s the batch is resized (bilinear, align_corners False) to
    (int(H*s), int(W*s)) (no resize at s = 1), with its mirror image appended when ``flip``; ``forward``
    returns logits at any stride; they are resized (bilinear) to that pass's input size, turned into a
    softmax, resized (bilinear) to (H, W), un-flipped, and the mean over all len(scales) x (1 + flip) passes
    is returned: (B, C, H, W) float32 probabilities.

    With scales (1.0,) and no flip this is the published single-scale protocol (kazuto1011's test, whose
    0.5/0.75 multi-scale max fusion lives inside ``net.deeplab.DeepLabV2``; VainF's eval).
    """
    b, _, h, w = images.shape
    total = None
    for s in scales:
        size = (int(h * s), int(w * s))
        x = images if size == (h, w) else F.interpolate(images, size=size, mode="bilinear", align_corners=False)
        if flip:
            x = torch.cat([x, x.flip(-1)])
        logits = forward(x).float()
        if logits.shape[2:] != x.shape[2:]:
            logits = F.interpolate(logits, size=x.shape[2:], mode="bilinear", align_corners=False)
        p = torch.softmax(logits, 1)
        if p.shape[2:] != (h, w):
            p = F.interpolate(p, size=(h, w), mode="bilinear", align_corners=False)
        p = p[:b] + p[b:].flip(-1) if flip else p
        total = p if total is None else total + p
    return total / (len(scales) * (2 if flip else 1))


@torch.no_grad()
def flip_sum_scale_max(forward: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor,
                       scales: Sequence[float] = (1.0, 1.25, 1.5)) -> torch.Tensor:
    """ToCo's and PUFS's multi-scale segmentation logits.

    images: (B, 3, H, W). For each scale s the batch is resized (bilinear, align_corners False) to
    (int(H*s), int(W*s)) (no resize at s = 1) and run with its mirror image; ``forward`` returns logits at any
    stride, resized (bilinear) to (H, W); each image's pair is summed (the mirror flipped back) and the scales
    are fused by the elementwise max. Returns float32 (B, C, H, W) logits.
    """
    b, _, h, w = images.shape
    fused = None
    for s in scales:
        size = (int(h * s), int(w * s))
        x = images if size == (h, w) else F.interpolate(images, size=size, mode="bilinear", align_corners=False)
        y = F.interpolate(forward(torch.cat([x, x.flip(-1)])).float(), size=(h, w), mode="bilinear",
                          align_corners=False)
        y = y[:b] + y[b:].flip(-1)
        fused = y if fused is None else torch.maximum(fused, y)
    return fused


def dense_crf(img: np.ndarray, probs: np.ndarray, classes: Sequence[int] | None = None, iters: int = 10,
              pos_w: float = 3.0, pos_xy_std: float = 1.0, bi_w: float = 4.0, bi_xy_std: float = 67.0,
              bi_rgb_std: float = 3.0) -> np.ndarray:
    """Fully connected CRF on class probabilities (pydensecrf2), DeepLab's parameters by default.

    img: uint8 (H, W, 3) (RGB or BGR: the bilateral kernel treats the three channels alike, so the order does
    not matter); probs: (C, H, W) probabilities. Unary -log(max(p, 1e-5)); a Gaussian kernel (xy std
    ``pos_xy_std``, weight ``pos_w``) and a bilateral one (``bi_xy_std``, ``bi_rgb_std``, ``bi_w``), Potts
    compatibility; ``iters`` mean-field steps. Returns float32 (C, H, W) marginals.

    The argmax of the result is not limited to the classes that are the argmax of ``probs`` somewhere (the
    pairwise terms can make a class that is everywhere second the winner); it is limited to classes whose
    probability is not ~0. ``classes`` restricts the CRF to those channels: the others get marginal 0, so the
    argmax of the result lies in ``classes``.
    """
    c, h, w = probs.shape
    keep = np.arange(c) if classes is None else np.asarray(sorted(set(classes)), np.int64)
    d = dcrf.DenseCRF2D(w, h, len(keep))
    d.setUnaryEnergy(np.ascontiguousarray(unary_from_softmax(np.ascontiguousarray(probs[keep], np.float32))))
    d.addPairwiseGaussian(sxy=pos_xy_std, compat=pos_w)
    d.addPairwiseBilateral(sxy=bi_xy_std, srgb=bi_rgb_std, rgbim=np.ascontiguousarray(img, np.uint8), compat=bi_w)
    q = np.asarray(d.inference(iters), np.float32).reshape(len(keep), h, w)
    if classes is None:
        return q
    out = np.zeros((c, h, w), np.float32)
    out[keep] = q
    return out


def poly_lr(base_lr: float, step: int, max_step: int, power: float = 0.9, every: int = 1, min_lr: float = 0.0
            ) -> float:
    """The learning rate of 0-based iteration ``step`` under a poly schedule.

    lr = base_lr * (1 - t/max_step)^power with t = step rounded down to a multiple of ``every``, floored at
    ``min_lr``. kazuto1011's DeepLab-v2 recipe updates every 10 iterations (every=10: iterations 0-9 use
    base_lr, 10-19 use base_lr*(1-10/max)^0.9, ...); VainF's updates every iteration with min_lr 1e-6.
    Returns min_lr from max_step on.
    """
    t = (step // every) * every
    if t >= max_step:
        return min_lr
    return max(base_lr * (1.0 - t / max_step) ** power, min_lr)
