"""Warm-up AdamW optimisers of the single-stage methods, and their per-step schedules.

``warmup_adamw`` builds torch's AdamW (betas (0.9, 0.999), eps 1e-8) with a LambdaLR whose factor at step i
(0-based, the i-th ``optimizer.step()``) is ``warmup_multiplier(i, ...)``; call ``scheduler.step()`` after every
``optimizer.step()``. This reproduces ToCo's PolyWarmupAdamW (poly, warm-up ratio 1e-6) and PUFS's
CosWarmupAdamW (cosine, warm-up ratio 0.1), which set the learning rates inside ``step()`` from a step counter.
"""
from __future__ import annotations

import math

import torch


def warmup_multiplier(step: int, warmup_iters: int, max_iters: int, warmup_ratio: float, schedule: str,
                      power: float = 0.9) -> float:
    """Learning-rate factor at 0-based step ``step``: linear warm-up 1 - (1 - step/warmup)(1 - warmup_ratio) for
    step < warmup_iters, then 'poly': (1 - step/max_iters)^power (step counted from 0, not from the warm-up's end)
    or 'cosine': 0.5 (1 + cos(pi (step - warmup)/(max_iters - warmup))). From max_iters on, the last value."""
    step = min(step, max_iters - 1)
    if step < warmup_iters:
        return 1 - (1 - step / warmup_iters) * (1 - warmup_ratio)
    if schedule == "poly":
        return (1 - step / max_iters) ** power
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * (step - warmup_iters) / (max_iters - warmup_iters)))
    raise ValueError(f"unknown schedule {schedule!r} (poly or cosine)")


def warmup_adamw(groups: list[dict], lr: float, weight_decay: float, max_iters: int, warmup_iters: int,
                 warmup_ratio: float, schedule: str, power: float = 0.9, betas: tuple[float, float] = (0.9, 0.999)
                 ) -> tuple[torch.optim.AdamW, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW over ``groups`` ({'params', 'lr_mult', 'decay': bool}): group lr = lr * lr_mult, weight decay
    ``weight_decay`` where 'decay' else 0, with the warm-up schedule of ``warmup_multiplier``.

    ToCo (VOC and COCO): lr 6e-5, weight_decay 0.01, warmup 1500, warmup_ratio 1e-6, 'poly', power 0.9.
    PUFS: lr 6e-5, weight_decay 0.05, warmup 1500, warmup_ratio 0.1, 'cosine'.
    Returns (optimizer, scheduler).
    """
    opt = torch.optim.AdamW([{"params": g["params"], "lr": lr * g["lr_mult"],
                              "weight_decay": weight_decay if g["decay"] else 0.0} for g in groups],
                            lr=lr, betas=betas, eps=1e-8, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda i: warmup_multiplier(i, warmup_iters, max_iters, warmup_ratio, schedule, power))
    return opt, sched


def cosine_momentum(step: int, total: int, base: float = 0.9995, final: float = 1.0) -> float:
    """PUFS's teacher EMA momentum at 0-based step: final + (base - final)(1 + cos(pi step/total)) / 2 for
    step < total (base at 0), ``final`` from total on."""
    if step >= total:
        return final
    return final + 0.5 * (base - final) * (1 + math.cos(math.pi * step / total))


def teacher_temperature(step: int, max_iters: int, warmup: float = 0.04, final: float = 0.07) -> float:
    """PUFS's FSR teacher temperature at 0-based step: linear from ``warmup`` (step 0) to ``final`` (step W-1)
    over W = int(max_iters / 8) steps (numpy.linspace), then ``final``."""
    w = int(max_iters / 8)
    if step >= w:
        return final
    return warmup + step * ((final - warmup) / (w - 1)) if w > 1 else final
