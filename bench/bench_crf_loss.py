"""Cost of ToCo/PUFS's dense CRF loss (net/crf_loss.py) per image, forward and backward, at training crop sizes.

    python -m bench.bench_crf_loss [--crops 128 224] [--classes 21] [--device auto] [--repeat 2]

The loss filters at half the crop side (rloss's scale_factor 0.5), so a 448 crop (VOC/COCO recipes) filters
224 x 224 = 50,176 pixels and costs O(50,176^2 x K) per image; pass --crops 448 for it (minutes on a CPU).
Inputs: random 0-255 images and softmaxed random logits. The table gives ms per image and per training step
of the published per-GPU batch (2 images); the backward pass reuses the forward's filtered maps.
"""
from __future__ import annotations

import argparse
import time

import torch

from misc.torchutils import pick_device
from net.crf_loss import dense_crf_loss


def time_one(crop: int, classes: int, device: torch.device, repeat: int) -> float:
    """Seconds per image of dense_crf_loss forward + backward on a (1, classes, crop, crop) input."""
    g = torch.Generator().manual_seed(0)
    img = (torch.rand(1, 3, crop, crop, generator=g) * 255).to(device)
    logits = torch.randn(1, classes, crop, crop, generator=g).to(device).requires_grad_()
    roi = torch.ones(1, crop, crop, device=device)
    labels = torch.zeros(1, crop, crop, dtype=torch.long, device=device)
    best = float("inf")
    for _ in range(repeat):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t = time.perf_counter()
        dense_crf_loss(img, torch.softmax(logits, 1), roi, labels).backward()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - t)
    return best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--crops", type=int, nargs="+", default=[128, 224])
    p.add_argument("--classes", type=int, default=21)
    p.add_argument("--device", default="auto")
    p.add_argument("--repeat", type=int, default=2, help="runs per size; the best is reported")
    a = p.parse_args()
    device = pick_device(a.device)
    print(f"dense CRF loss, K={a.classes}, {device} ({torch.get_num_threads()} CPU threads)")
    print(f"{'crop':>6}{'filtered':>10}{'ms/image':>11}{'ms/step(2)':>12}")
    for crop in a.crops:
        s = time_one(crop, a.classes, device, a.repeat)
        print(f"{crop:>6}{crop // 2:>7}^2{1000 * s:>11.1f}{2000 * s:>12.1f}")


if __name__ == "__main__":
    main()
