"""Segmentation stage throughput: train_seg iterations/s and make_seg images/s (network pass, and the dense
CRF in a process pool), with the projected hours of the published VOC recipes.

    python -m bench.bench_seg [--device auto] [--full] [--steps 3] [--images 4] [--crf_pool N]

Default (quick, CPU): the toy recipe's narrow DeepLab-v2 (width 32, one block per stage, frozen BN) at
96-pixel crops, batch 8, 100 iterations, and 128x96 test images. --full: ResNet-101 DeepLab-v2 MSC at the
published recipe (batch 10 of 321 crops, frozen BN) and DeepLab-v3+ (batch 32 of 513 crops, OS 16, trained
BN), VOC-sized 500x375 test images; meant for a GPU. Random weights and inputs (speed does not depend on
them); one warm-up iteration is not timed. The projection multiplies: train_seg iterations (toy 100, v2 30k,
v3+ 20k) / iterations per second, and VOC val (1,449 images) / images per second, for the network pass and
for the CRF at the measured pool rate.
"""
from __future__ import annotations

import argparse
import os
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import torch

from misc.segmentation import DEEPLAB_CRF, dense_crf, multiscale_probs
from misc.torchutils import pick_device
from net.deeplab import DeepLabV2, DeepLabV3Plus, deeplab_v2_param_groups, deeplab_v3plus_param_groups
from net.seg_loss import seg_loss


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def train_rate(model: torch.nn.Module, groups: list[dict], batch: int, crop: int, steps: int,
               device: torch.device) -> float:
    """Training iterations per second (forward, loss on every output, backward, SGD step) on random data."""
    model.to(device).train()
    opt = torch.optim.SGD(groups, lr=1e-4, momentum=0.9)
    n = model(torch.zeros(1, 3, 64, 64, device=device))
    n = (n[0] if isinstance(n, (list, tuple)) else n).shape[1]
    x = torch.randn(batch, 3, crop, crop, device=device)
    y = torch.randint(0, n, (batch, crop, crop), device=device)
    t = 0.0
    for i in range(steps + 1):
        _sync(device)
        s = time.perf_counter()
        loss = seg_loss(model(x), y, "balanced")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        _sync(device)
        t += (time.perf_counter() - s) if i else 0.0
    return steps / t


def infer_rate(model: torch.nn.Module, images: int, h: int, w: int, device: torch.device
               ) -> tuple[float, np.ndarray]:
    """Images per second of make_seg's network pass (one image per pass, probabilities to the CPU); returns
    (rate, the last image's probabilities (C, h, w))."""
    model.to(device).eval()
    x = torch.randn(1, 3, h, w, device=device)
    t, p = 0.0, None
    for i in range(images + 1):
        _sync(device)
        s = time.perf_counter()
        p = multiscale_probs(model, x).cpu().numpy()[0]
        t += (time.perf_counter() - s) if i else 0.0
    return images / t, p


def _crf(item: tuple[np.ndarray, np.ndarray]) -> int:
    img, probs = item
    return int(dense_crf(img, probs, **DEEPLAB_CRF).argmax(0).sum())


def crf_rate(probs: np.ndarray, images: int, pool: int) -> float:
    """Images per second of DeepLab's CRF on ``probs`` with a random image, in a pool of ``pool`` processes."""
    img = np.random.default_rng(0).integers(0, 256, probs.shape[1:] + (3,), dtype=np.uint8)
    items = [(img, probs)] * images
    s = time.perf_counter()
    if pool <= 1:
        [_crf(it) for it in items]
    else:
        with ProcessPoolExecutor(pool) as ex:
            list(ex.map(_crf, items))
    return images / (time.perf_counter() - s)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto")
    p.add_argument("--full", action="store_true", help="ResNet-101 networks and the published sizes (GPU)")
    p.add_argument("--steps", type=int, default=3, help="timed training iterations")
    p.add_argument("--images", type=int, default=4, help="timed test images (and CRF images)")
    p.add_argument("--crf_pool", type=int, default=os.cpu_count() or 1, help="CRF process pool size")
    a = p.parse_args()
    device = pick_device(a.device)
    torch.manual_seed(0)
    if a.full:
        v2 = DeepLabV2(21, frozen_bn=True)
        v3 = DeepLabV3Plus(21, output_stride=16, frozen_bn=False)
        runs = [("deeplab_v2 MSC", v2, deeplab_v2_param_groups(v2, 2.5e-4, 5e-4), 10, 321, 30000),
                ("deeplab_v3plus", v3, deeplab_v3plus_param_groups(v3, 0.05, 1e-4), 32, 513, 20000)]
        h, w = 375, 500
    else:
        v2 = DeepLabV2(21, blocks=(1, 1, 1, 1), width=32, scales=(), frozen_bn=True)
        runs = [("toy deeplab_v2", v2, deeplab_v2_param_groups(v2, 1e-4, 5e-4), 8, 96, 100)]
        h, w = 96, 128
    print(f"device {device}, {os.cpu_count()} CPU cores, torch threads {torch.get_num_threads()}; test images "
          f"{w}x{h}, VOC val 1449 images")
    print(f"{'network':<16}{'batch x crop':>14}{'train it/s':>12}{'infer img/s':>13}{'crf img/s':>11}"
          f"{'train h':>9}{'infer h':>9}{'crf h':>8}")
    for name, model, groups, batch, crop, iters in runs:
        tr = train_rate(model, groups, batch, crop, a.steps, device)
        ir, probs = infer_rate(model, a.images, h, w, device)
        cr = crf_rate(probs, a.images, a.crf_pool)
        print(f"{name:<16}{f'{batch} x {crop}':>14}{tr:>12.3f}{ir:>13.2f}{cr:>11.2f}{iters / tr / 3600:>9.2f}"
              f"{1449 / ir / 3600:>9.2f}{1449 / cr / 3600:>8.2f}")


if __name__ == "__main__":
    main()
