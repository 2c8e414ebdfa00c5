"""make_rib_cam cost: seconds per image of RIB's per-image fine-tuning, and the projection for VOC train_aug.

    python -m bench.bench_rib [--n_images 3] [--device auto] [--full]

Default: the toy recipe's network (width 32, one bottleneck per stage, scratch BatchNorm) on 128x96
targets with 128-pixel auxiliary crops. --full: a standard ResNet-50 under IRN's recipe on 500x375
targets with RIB's 512-pixel auxiliary crops (use it on a GPU). Both run rib_seed with every constant at
RIB's VOC default (K = 10 steps, 20 auxiliary images, scales 1.0/0.5/1.5/2.0 with flips, loss at
1.0/1.5/2.0) and the stops disabled, so every image takes all K steps (the worst case; real runs stop
early on some images). Inputs are random tensors (data loading runs in parallel workers in the step and
is not timed). Prints s/image and hours for 10,582 images.
"""
from __future__ import annotations

import argparse
import itertools
import time

import torch
import torch.nn.functional as F

from misc.torchutils import pick_device
from net.resnet50_cam import Net
from net.rib import RibSettings, rib_seed

VOC_TRAIN_AUG = 10582


def seconds_per_image(full: bool, device: torch.device, n_images: int) -> float:
    """Mean wall time of rib_seed on one image (after one warm-up image) at RIB's VOC constants with the
    stops disabled; ``full``: ResNet-50 on 500x375 targets and 512 crops, else the toy net on 128x96 and 128."""
    if full:
        model, size, crop = Net(20, "irn"), (375, 500), 512
    else:
        model, size, crop = Net(20, "scratch", width=32, blocks=(1, 1, 1, 1)), (96, 128), 128
    model = model.to(device).eval()
    theta0 = {k: v.clone() for k, v in model.state_dict().items()}
    settings = RibSettings(iters=10, lr=8e-6, tau=0.4, stop_logit=float("inf"), area_thres=0.3,
                           area_ratio=float("inf"), loss_scales=(1.0, 1.5, 2.0), weight_decay=1e-4, momentum=1e-4)
    scales = (1.0, 0.5, 1.5, 2.0)
    g = torch.Generator().manual_seed(0)
    img = torch.randn(1, 3, *size, generator=g)
    views = [F.interpolate(img, scale_factor=s, mode="bicubic", align_corners=False) if s != 1 else img
             for s in scales]
    views = [torch.stack([v, v.flip(-1)], 1).to(device) for v in views]
    label = torch.zeros(20, device=device)
    label[[3, 14]] = 1
    aux_label = torch.zeros(20, 20)
    aux_label[torch.arange(20), torch.arange(20) % 20] = 1
    aux_label[:, [3, 14]] = 0
    batch = {"img": torch.randn(20, 3, crop, crop, generator=g), "label": aux_label}
    times = []
    for _ in range(n_images + 1):  # the first image warms up
        model.load_state_dict(theta0)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t = time.perf_counter()
        rib_seed(model, views, scales, label, itertools.repeat(batch), settings, size)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t)
    return sum(times[1:]) / n_images


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n_images", type=int, default=3)
    p.add_argument("--device", type=str, default="auto")
    p.add_argument("--full", action="store_true")
    a = p.parse_args()
    device = pick_device(a.device)
    per = seconds_per_image(a.full, device, a.n_images)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"{'device':<28}{'network':<34}{'s/image':>9}{'VOC train_aug h':>17}")
    net = "ResNet-50, 500x375, crops 512" if a.full else "toy net, 128x96, crops 128"
    print(f"{name:<28}{net:<34}{per:>9.2f}{per * VOC_TRAIN_AUG / 3600:>17.1f}")


if __name__ == "__main__":
    main()
