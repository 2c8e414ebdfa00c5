"""RS+EPM's training cost: SCG and PAMR at VOC sizes, whole training steps (RecurSeed only, and with
EdgePredictMix), and the projected hours of the reconstructed VOC schedule.

    python -m bench.bench_rsepm [--device auto] [--steps 2] [--voc_batch 2] [--skip_voc_step]

SCG: one image's C2..C5 features of ResNet-50 (256/512/1024/2048 channels) resized to the C3 grid of a
512-pixel crop (64 x 64, N = 4096), 20 classes, both correlation orders. PAMR: 21 channels at stride 4 of a
512 crop (128 x 128), the released setting (1 iteration, dilation 1) and the PAMR paper's (10 iterations at
1, 2, 4, 8, 12, 24). Steps: forward, the losses (net.rsepm_losses), backward and an SGD step on random inputs,
best of --steps after one warm-up; toy = the toy recipe's network (run_sample.RSEPM_TOY) at its batch and
crop; voc = ResNet-50 / 256-wide head at 512 crops, --voc_batch images per step. The projection: 20 epochs of
VOC train_aug (10,582 images) at the total batch 16 = 13,220 iterations, 5 epochs RecurSeed only, 15 with the
mix, one device doing the whole batch (step time x 16 / --voc_batch).
"""
from __future__ import annotations

import argparse
import time
from typing import Callable

import torch

from misc.pamr import pamr
from misc.scg import scg
from misc.torchutils import pick_device
from net.rsepm import RSEPM
from net.rsepm_losses import RSEPMConfig, rsepm_losses
from run_sample import RSEPM_TOY as TOY

VOC_IMAGES, EPOCHS, WARM_EPOCHS, TOTAL_BATCH = 10582, 20, 5, 16


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def best_seconds(fn: Callable[[], object], device: torch.device, repeats: int) -> float:
    """Best wall seconds of ``fn()`` over ``repeats`` calls after one warm-up call."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        _sync(device)
        t = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - t)
    return best


def scg_seconds(device: torch.device, repeats: int) -> float:
    """One image's SCG on ResNet-50's C2..C5 at the 64 x 64 grid of a 512 crop, 20 classes."""
    g = torch.Generator().manual_seed(0)
    feats = [torch.rand(1, c, 64, 64, generator=g).to(device) for c in (256, 512, 1024, 2048)]
    cams = torch.rand(1, 20, 64, 64, generator=g).to(device)
    return best_seconds(lambda: scg(cams, feats), device, repeats)


def pamr_seconds(device: torch.device, repeats: int, iters: int, dilations: tuple[int, ...]) -> float:
    """One image's PAMR of 21 maps at 128 x 128 (stride 4 of a 512 crop)."""
    g = torch.Generator().manual_seed(1)
    image = torch.rand(1, 3, 128, 128, generator=g).to(device)
    masks = torch.rand(1, 21, 128, 128, generator=g).to(device)
    return best_seconds(lambda: pamr(image, masks, iters, dilations), device, repeats)


def step_seconds(net: RSEPM, batch: int, crop: int, mix: bool, device: torch.device, repeats: int) -> float:
    """One training step (forward, losses, backward, SGD step) of ``net`` on ``batch`` random crops."""
    net = net.to(device).train()
    opt = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.9, nesterov=True)
    g = torch.Generator().manual_seed(2)
    images = torch.randn(batch, 3, crop, crop, generator=g).to(device)
    labels = (torch.rand(batch, 20, generator=g) < 0.15).float()
    labels[:, 0] = 1
    labels = labels.to(device)

    def one() -> None:
        out = rsepm_losses(net, images, labels, RSEPMConfig(), mix, torch.Generator().manual_seed(0))
        opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        opt.step()

    return best_seconds(one, device, repeats)


def main(argv: list[str] | None = None) -> list[tuple[str, str]]:
    """Print the table; returns its rows (what, value)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto")
    p.add_argument("--steps", type=int, default=2, help="timed repeats after one warm-up")
    p.add_argument("--voc_batch", type=int, default=2, help="images per timed VOC-size step (BatchNorm needs 2)")
    p.add_argument("--skip_voc_step", action="store_true", help="time SCG, PAMR and the toy steps only")
    a = p.parse_args(argv)
    device = pick_device(a.device)
    rows = [("device", f"{device} ({torch.get_num_threads()} threads)")]
    rows.append(("SCG, 1 image, C2..C5 at 64x64 (s)", f"{scg_seconds(device, a.steps):.3f}"))
    rows.append(("PAMR, 1 image, 21 maps at 128x128, 1 it. dil. 1 (s)",
                 f"{pamr_seconds(device, a.steps, 1, (1,)):.4f}"))
    rows.append(("PAMR, 1 image, 10 it. dil. 1..24 (s)",
                 f"{pamr_seconds(device, a.steps, 10, (1, 2, 4, 8, 12, 24)):.4f}"))
    toy = RSEPM(20, width=TOY["rsepm_width"], blocks=TOY["rsepm_blocks"], feature_size=TOY["rsepm_feature_size"])
    for mix in (False, True):
        s = step_seconds(toy, TOY["rsepm_batch_size"], TOY["rsepm_crop_size"], mix, device, a.steps)
        rows.append((f"toy step, batch {TOY['rsepm_batch_size']}, {'with' if mix else 'no'} mix (steps/s)",
                     f"{1 / s:.2f}"))
    if not a.skip_voc_step:
        secs = {}
        for mix in (False, True):
            secs[mix] = step_seconds(RSEPM(20), a.voc_batch, 512, mix, device, a.steps)
            rows.append((f"VOC step, ResNet-50, 512 crop, batch {a.voc_batch}, {'with' if mix else 'no'} mix (s)",
                         f"{secs[mix]:.2f}"))
        iters = VOC_IMAGES // TOTAL_BATCH
        scale = TOTAL_BATCH / a.voc_batch
        hours = iters * scale * (WARM_EPOCHS * secs[False] + (EPOCHS - WARM_EPOCHS) * secs[True]) / 3600
        rows.append((f"projected VOC training, {EPOCHS} epochs x {iters} iterations of {TOTAL_BATCH} (h)",
                     f"{hours:.1f}"))
    width = max(len(r[0]) for r in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    return rows


if __name__ == "__main__":
    main()
