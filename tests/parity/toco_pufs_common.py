"""Helpers shared by the ToCo/PUFS parity tests and their fixture scripts: the tiny ViT used on both sides, the
image normalisation, synthetic test images, and (scripts only) the run-time patches that let the published
code run on a CPU without its compiled extension."""
from __future__ import annotations

import sys
import types

import numpy as np
import torch
import torch.nn.functional as F

# The tiny ViT both sides use for the whole-step parity (published constructors patched to it at run time).
TINY = {"patch_size": 16, "embed_dim": 64, "depth": 4, "num_heads": 4}
STEP_SIZE = 96  # crop side of the whole-step fixtures (6 x 6 tokens)
MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def normalize(u8: np.ndarray) -> torch.Tensor:
    """(N, H, W, 3) uint8 RGB -> (N, 3, H, W) float32 ImageNet-normalised tensor."""
    x = (u8.astype(np.float32) / np.float32(255.0) - MEAN) / STD
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def synthetic_images(rng: np.random.RandomState, n: int, h: int, w: int) -> np.ndarray:
    """(n, h, w, 3) uint8: smooth colour fields with a few flat rectangles, so the images have edges and
    regions like photographs and compress well (deterministic given rng)."""
    low = torch.from_numpy(rng.rand(n, 3, 4, 4).astype(np.float32))
    img = F.interpolate(low, size=(h, w), mode="bilinear", align_corners=False).numpy() * 255
    for i in range(n):
        for _ in range(3):
            y0, x0 = rng.randint(0, h - 8), rng.randint(0, w - 8)
            y1, x1 = y0 + rng.randint(6, h // 2), x0 + rng.randint(6, w // 2)
            img[i, :, y0:y1, x0:x1] = rng.randint(0, 256, size=3)[:, None, None]
    return np.clip(img, 0, 255).round().astype(np.uint8).transpose(0, 2, 3, 1).copy()


def smooth_maps(low: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
    """Coarse float32 maps (N, C, h, w) upsampled bilinearly (align_corners False) to ``size``."""
    return F.interpolate(torch.from_numpy(low), size=size, mode="bilinear", align_corners=False)


def dense_bilateral_batch(images, ins, outs, n, k, h, w, sigma_rgb, sigma_xy) -> None:
    """Stand-in for rloss's SWIG ``bilateralfilter_batch`` (same flat-array signature, result written into
    ``outs``): the Gaussian kernel its permutohedral lattice approximates, exp(-|f_i - f_j|^2 / 2) with
    f = (x/sigma_xy, y/sigma_xy, rgb/sigma_rgb), evaluated exactly and densely in float64."""
    img = np.asarray(images, dtype=np.float64).reshape(n, 3, h * w)
    val = np.asarray(ins, dtype=np.float64).reshape(n, k, h * w)
    ys, xs = np.divmod(np.arange(h * w), w)
    res = np.empty((n, k, h * w))
    for b in range(n):
        f = np.concatenate([xs[None] / sigma_xy, ys[None] / sigma_xy, img[b] / sigma_rgb])
        d2 = np.zeros((h * w, h * w))
        for c in range(5):
            d2 += (f[c][:, None] - f[c][None, :]) ** 2
        res[b] = val[b] @ np.exp(-0.5 * d2)
    outs[:] = res.reshape(-1).astype(np.float32)


def patch_for_cpu() -> None:
    """Run-time patches for the published code: ``.cuda()`` is a no-op, and stub modules stand in for the
    rloss extension (dense reference filter), matplotlib and texttable (imported but unused here)."""
    torch.Tensor.cuda = lambda self, *a, **k: self
    torch.nn.Module.cuda = lambda self, *a, **k: self
    bf = types.ModuleType("bilateralfilter")
    bf.bilateralfilter_batch = dense_bilateral_batch
    bf.bilateralfilter = None
    sys.modules["bilateralfilter"] = bf
    for name in ("matplotlib", "matplotlib.pyplot", "texttable"):
        sys.modules.setdefault(name, types.ModuleType(name))
    sys.modules["texttable"].Texttable = object
    sys.modules["matplotlib"].pyplot = sys.modules["matplotlib.pyplot"]


def shapes_of(module: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    """{state_dict key: shape} of a module, in its order."""
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}
