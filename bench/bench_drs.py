"""DRS training cost: images/s of one training step of the DRS classifier and of the refinement network, and
the projected hours of the published recipes on VOC train_aug.

    python -m bench.bench_drs [--steps 3] [--batch 2] [--device auto] [--full]

Default: the toy recipe's networks (width 16, one conv per stage, BatchNorm) at its 96-pixel inputs.
--full: the published networks (VGG-16-D1, learnable DRS; the refinement net) at the published inputs
(320 crops of the classifier, 320 squares of the refinement; use it on a GPU). One step = forward, loss
(soft margin / MSE), backward, optimiser step (Nesterov SGD with the four lr groups / Adam); inputs are
random tensors (data loading runs in the loader workers and is not timed); one warm-up step. Projection:
10,582 images x 15 epochs (classifier) and x 30 epochs (refinement).
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from misc.torchutils import pick_device
from net.vgg16_drs import DRSClassifier
from net.vgg16_refine import RefineNet

VOC_TRAIN_AUG = 10582
EPOCHS = {"classifier": 15, "refinement": 30}


def images_per_second(kind: str, full: bool, batch: int, steps: int, device: torch.device) -> float:
    """Training images per second of ``kind`` ('classifier' or 'refinement') over ``steps`` timed steps."""
    net = dict(width=64) if full else dict(width=16, convs=(1, 1, 1, 1, 1), norm=True)
    side = 320 if full else 96
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, side, side, generator=g).to(device)
    if kind == "classifier":
        model = DRSClassifier(20, **net).to(device).train()
        opt = torch.optim.SGD(model.lr_groups(1e-3), lr=1e-3, momentum=0.9, nesterov=True, weight_decay=5e-4)
        y = (torch.rand(batch, 20, generator=g) < 0.1).float().to(device)

        def loss() -> torch.Tensor:
            return F.multilabel_soft_margin_loss(model(x)[0], y)
    else:
        model = RefineNet(20, **net).to(device).train()
        opt = torch.optim.Adam(model.parameters(), lr=1e-4)
        y = torch.rand(batch, 20, side, side, generator=g).to(device)

        def loss() -> torch.Tensor:
            return F.mse_loss(model(x), y)
    times = []
    for _ in range(steps + 1):  # the first step warms up
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss().backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t)
    return batch * steps / sum(times[1:])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--device", type=str, default="auto")
    p.add_argument("--full", action="store_true")
    a = p.parse_args()
    device = pick_device(a.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    net = "VGG-16-D1, 320 px" if a.full else "toy net, 96 px"
    print(f"{'device':<24}{'network':<20}{'training':<12}{'images/s':>10}{'VOC train_aug h':>17}")
    for kind, epochs in EPOCHS.items():
        ips = images_per_second(kind, a.full, a.batch, a.steps, device)
        print(f"{name:<24}{net:<20}{kind:<12}{ips:>10.2f}{VOC_TRAIN_AUG * epochs / ips / 3600:>17.1f}")


if __name__ == "__main__":
    main()
