"""The one training loop of the training steps (``fit``): epoch resume, DDP wrapping, autocast, the
optimiser and its per-iteration schedule, a progress bar, per-epoch reporting, an after-step hook, and
the final atomic save."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
from torch.utils.data import DataLoader

from misc import dist
from misc.torchutils import autocast
from step.common.checkpoints import EpochResume, load_checkpoint, save_checkpoint
from step.common.parallel import distribute, progress, say

# loss(forward, batch) -> (the loss to backpropagate, {name: scalar to log}); forward(*inputs) runs the
# (DDP-wrapped) model under autocast and returns its output(s) (tensor, tuple or dict) in float32. The logged
# scalars are this rank's shares: summed over the ranks they give the value of the total batch.
LossFn = Callable[[Callable[..., object], dict], tuple[torch.Tensor, dict[str, torch.Tensor]]]


def _float(out: object) -> object:
    """A model output (tensor, or a dict, tuple, NamedTuple or list of outputs, nested; None kept) in float32
    (a no-op for float32 outputs)."""
    if out is None:
        return None
    if isinstance(out, dict):
        return {k: _float(v) for k, v in out.items()}
    if isinstance(out, tuple) and hasattr(out, "_fields"):
        return type(out)._make(_float(o) for o in out)
    return type(out)(_float(o) for o in out) if isinstance(out, (tuple, list)) else out.float()


def fit(name: str, model: torch.nn.Module, loader: DataLoader, opt: torch.optim.Optimizer, sched: object,
        epochs: int, loss: LossFn, device: torch.device, amp: str, resume: EpochResume, weights: Path, what: str,
        *, sync_bn: bool = False, on_epoch: Callable[[int, dict[str, float], dict[str, float]], None] | None = None,
        after_step: Callable[[int], None] | None = None,
        finalize: Callable[[torch.nn.Module], None] | None = None) -> torch.nn.Module:
    """Train ``model`` (on ``device``, in train mode) for ``epochs`` epochs over ``loader`` and save it.

    A finished training is not repeated: when ``weights`` exist with the record of this run's fingerprint
    beside them (``EpochResume.finished``; not with --overwrite), they are loaded into ``model`` and
    returned, as a make-step skips its finished ids.

    Continues after the last finished epoch of an interrupted run when ``resume`` (EpochResume) fits this
    run. Under torchrun the model is wrapped in DistributedDataParallel (``sync_bn``: SyncBatchNorm on CUDA).
    Each epoch sets the loader's sampler epoch (``set_epoch``, e.g. misc.dist.RankShuffle); each iteration
    runs ``loss(forward, batch)`` (forward under the --amp autocast), backward, ``opt.step()``, then
    ``sched.step()`` (schedules are per iteration) and ``after_step(steps done)`` (e.g. an EMA teacher kept
    as a submodule of ``model``, so that the resume state holds it). After every epoch ``on_epoch(epoch,
    mean, last)`` gets the logged scalars of the total batch (mean over the epoch's iterations, and of its
    last iteration) and the resume state is written. At the end ``finalize(model)`` (e.g. a calibration),
    then the weights go to ``weights`` atomically (``what`` names them in the message), their record
    ``<weights>.json`` (the fingerprint and their hash) beside them, and the resume state is removed.
    Returns ``model`` (unwrapped).
    """
    if resume.finished(weights):
        load_checkpoint(model, weights)
        say(f"{name}: {weights} exists, trained under the same flags; skipped (--overwrite True trains again)")
        return model
    start = resume.load(model, opt, sched)
    net = distribute(model, device, sync_bn=sync_bn)

    def forward(*inputs: torch.Tensor) -> object:
        with autocast(device, amp):
            out = net(*inputs)
        return _float(out)

    steps = start * len(loader)
    for ep in range(start, epochs):
        if hasattr(loader.sampler, "set_epoch"):
            loader.sampler.set_epoch(ep)
        sums = last = None
        bar = progress(loader, desc=f"{name} epoch {ep + 1}/{epochs}", leave=False)
        for b in bar:
            total, logs = loss(forward, b)
            opt.zero_grad(set_to_none=True)
            total.backward()
            opt.step()
            sched.step()
            steps += 1
            if after_step is not None:
                after_step(steps)
            last = torch.stack([v.detach().double() for v in logs.values()])
            sums = last.clone() if sums is None else sums + last
            bar.set_postfix(loss=f"{total.item():.4f}", lr=f"{opt.param_groups[0]['lr']:.4f}")
        if sums is not None:
            reduced = dist.all_reduce_(torch.cat([sums / len(loader), last])).tolist()
            if on_epoch is not None:
                on_epoch(ep + 1, dict(zip(logs, reduced[:len(logs)])), dict(zip(logs, reduced[len(logs):])))
        resume.save(model, opt, sched, ep + 1)
    if finalize is not None:
        finalize(model)
    save_checkpoint(model, weights, what)
    resume.record(weights)
    resume.clear()
    return model
