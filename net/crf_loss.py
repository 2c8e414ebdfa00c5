"""The dense-CRF regularised loss of ToCo and PUFS (Tang et al.'s "rloss"), in pure PyTorch.

The published code filters with rloss's SWIG/C++ permutohedral lattice on the CPU (numpy, OpenMP). Here the
Gaussian bilateral filter is computed exactly and densely, in row chunks, with ordinary tensor ops, so it runs
on the GPU and needs no compiled extension. The lattice is an approximation of the same filter with its own
normalisation, so absolute loss values differ from the published run by the lattice's gain (see
docs/methods/toco_pufs.md); the formula and the gradient are the published ones.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from misc.seeds import IGNORE


def _features(image: torch.Tensor, sigma_rgb: float, sigma_xy: float) -> torch.Tensor:
    """(3, H, W) 0-255 image -> (H*W, 5) float32 features (x/sigma_xy, y/sigma_xy, r, g, b / sigma_rgb) / sqrt(2),
    so that the squared distance of two features is the exponent of the Gaussian kernel."""
    _, h, w = image.shape
    ys, xs = torch.meshgrid(torch.arange(h, device=image.device, dtype=torch.float32),
                            torch.arange(w, device=image.device, dtype=torch.float32), indexing="ij")
    f = torch.cat([torch.stack([xs, ys]) / sigma_xy, image.float() / sigma_rgb]).reshape(5, -1).t()
    return f * 0.5 ** 0.5


def bilateral_filter(images: torch.Tensor, values: torch.Tensor, sigma_rgb: float, sigma_xy: float,
                     chunk: int = 2048) -> torch.Tensor:
    """Exact dense Gaussian bilateral filter, in float32 whatever the autocast state.

    images: (B, 3, H, W) in 0-255; values: (B, K, H, W). Returns out (B, K, H, W) with
    out[b, k, i] = sum_j exp(-|p_i - p_j|^2 / (2 sigma_xy^2) - |I_i - I_j|^2 / (2 sigma_rgb^2)) values[b, k, j],
    the sum over all pixels j including i (p: (x, y) pixel coordinates), the kernel that rloss's
    permutohedral lattice approximates. Cost O(B (HW)^2 K) time and O(chunk * HW) memory: feature distances
    come from ``torch.cdist`` without the matmul expansion (exact to float32 rounding, and unaffected by TF32
    matmul settings), then exp, then a matmul with the values.
    """
    b, k, h, w = values.shape
    out = torch.empty(b, k, h * w, device=values.device, dtype=torch.float32)
    with torch.autocast(values.device.type, enabled=False):
        for n in range(b):
            f = _features(images[n], sigma_rgb, sigma_xy)
            v = values[n].reshape(k, -1).t().float()
            for i in range(0, h * w, chunk):
                d = torch.cdist(f[i:i + chunk], f, compute_mode="donot_use_mm_for_euclid_dist")
                out[n, :, i:i + chunk] = (d.square_().neg_().exp_() @ v).t()
    return out.reshape(b, k, h, w)


class _DenseEnergy(torch.autograd.Function):
    """E = -(1/B) sum_{b,k,i} S~ (W S~ * G), S~ = probs * roi; backward: dE/dprobs = -2 (W S~ * G) * roi / B."""

    @staticmethod
    def forward(ctx, probs: torch.Tensor, images: torch.Tensor, gate: torch.Tensor, roi: torch.Tensor,
                sigma_rgb: float, sigma_xy: float) -> torch.Tensor:
        seg = probs * roi[:, None]
        filtered = bilateral_filter(images, seg, sigma_rgb, sigma_xy) * gate[:, None]
        ctx.save_for_backward(filtered, roi)
        return -(seg * filtered).sum() / probs.shape[0]

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        filtered, roi = ctx.saved_tensors
        grad = -2.0 * grad_out * filtered / filtered.shape[0] * roi[:, None]
        return grad, None, None, None, None, None


def dense_crf_loss(images: torch.Tensor, probs: torch.Tensor, roi: torch.Tensor, labels: torch.Tensor,
                   weight: float = 1e-7, sigma_rgb: float = 15.0, sigma_xy: float = 100.0, scale_factor: float = 0.5,
                   ignore_index: int = IGNORE) -> torch.Tensor:
    """rloss's DenseEnergyLoss as ToCo and PUFS use it. Returns weight * E, a scalar.

    images: (B, 3, H, W) in 0-255 (de-normalised); probs: (B, K, H, W) softmax of the segmentation logits;
    roi: (B, H, W) 1 inside the valid image area (ToCo's img_box), 0 in padding; labels: (B, H, W) pseudo
    labels (ignore_index where unlabelled). Images, roi and labels are downscaled by ``scale_factor`` with
    nearest, probs bilinearly (align_corners False), and sigma_xy is multiplied by ``scale_factor``. On that
    grid the gate is G = max(0, roi - max_k S_k), set to 1 where the label is ignore_index, and
    E = -(1/B) sum_k S~_k^T (W S~_k * G) with S~ = S * roi and W the Gaussian kernel of ``bilateral_filter``.

    The gradient is rloss's hand-written one, dE/dS = -2 (W S~ * G) * roi / B, which treats the gate as a
    constant and takes W S~ * G for the derivative of S~^T(W S~ * G): it is *not* the exact gradient of E
    (that would be -(W S~ * G + W(S~ * G)) * roi / B); the two agree only where G is constant.
    """
    kw = {"scale_factor": scale_factor, "recompute_scale_factor": True}
    images = F.interpolate(images, **kw)
    probs = F.interpolate(probs, mode="bilinear", align_corners=False, **kw)
    roi = F.interpolate(roi[:, None].float(), **kw)[:, 0]
    unlabeled = F.interpolate(labels[:, None].float(), mode="nearest", **kw)[:, 0].long() == ignore_index
    with torch.no_grad():
        gate = (roi - probs.max(dim=1)[0]).masked_fill(unlabeled, 1.0).clamp(min=0)
    return weight * _DenseEnergy.apply(probs, images, gate, roi, sigma_rgb, sigma_xy * scale_factor)
