"""Optimiser, schedule, seeding and device helpers."""
from __future__ import annotations

import contextlib
import os
import random
from typing import Iterable, Sequence

import numpy as np
import torch


def poly_multiplier(step: int, max_step: int, power: float = 0.9) -> float:
    """Poly learning-rate factor (1 - step/max_step)^power; 0 from max_step on."""
    if step >= max_step:
        return 0.0
    return (1.0 - step / max_step) ** power


def poly_optimizer(kind: str, groups: Iterable[dict], max_step: int, momentum: float = 0.0, power: float = 0.9,
                   nesterov: bool = False) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """An optimiser whose groups' learning rates follow the poly schedule: the lr used at step i (0-based)
    is lr0 * poly_multiplier(i, max_step, power). Call ``scheduler.step()`` after every ``optimizer.step()``.

    kind: 'sgd' or 'adam'. ``momentum`` (SGD only) is explicit: IRN's PolyOptimizer passed weight decay
    positionally into SGD's momentum slot, so IRN and RIB really trained with momentum 1e-4 (none to speak
    of); 1e-4 reproduces their numbers. ``nesterov``: Nesterov momentum (SGD only). Weight decay is set per
    group (for Adam it is L2, as in SGD).
    """
    groups = list(groups)
    if kind == "sgd":
        opt = torch.optim.SGD(groups, lr=0.0, momentum=momentum, nesterov=nesterov)
    elif kind == "adam":
        opt = torch.optim.Adam(groups, lr=0.0)
    else:
        raise ValueError(f"unknown optimizer {kind!r} (sgd or adam)")
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: poly_multiplier(i, max_step, power))
    return opt, sched


def step_decay(opt: torch.optim.Optimizer, iters_per_epoch: int, decay_epochs: Sequence[int], factor: float = 0.1
               ) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-iteration schedule of a step decay by epochs: the lr of iteration i (0-based) is lr0 * factor^k,
    k = how many of ``decay_epochs`` are <= i // iters_per_epoch, i.e. the lr drops at the start of each
    0-based epoch listed (DRS: 1-based epochs 5 and 10 are 0-based 4 and 9). Call ``step()`` after every
    ``optimizer.step()``."""
    points = sorted(decay_epochs)
    return torch.optim.lr_scheduler.LambdaLR(
        opt, lambda i: factor ** sum(i // iters_per_epoch >= p for p in points))


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed Python, NumPy and torch (all devices); with ``deterministic`` also ask for deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


def worker_init_fn(worker_id: int) -> None:
    """DataLoader worker seeding: NumPy and ``random`` follow torch's per-worker seed (itself from the run seed)."""
    s = torch.initial_seed() % 2**32
    np.random.seed(s)
    random.seed(s)


def pick_device(name: str = "auto") -> torch.device:
    """'auto' -> a CUDA device when present, else CPU; anything else is passed to torch.device. 'auto' and
    a bare 'cuda' mean this process's GPU: cuda:LOCAL_RANK under torchrun (one process per GPU), else cuda:0."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device(name)


def autocast(device: torch.device, amp: str) -> contextlib.AbstractContextManager:
    """The --amp setting as a context: 'bf16' runs the block under bfloat16 autocast on ``device``
    (conv/matmul in bf16, reductions and losses in fp32), 'off' is a no-op."""
    if amp not in ("off", "bf16"):
        raise ValueError(f"unknown amp mode {amp!r} (off or bf16)")
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp == "bf16")
