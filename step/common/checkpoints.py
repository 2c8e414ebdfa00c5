"""Checkpoints: strict state_dict loading with one-line errors, atomic saving on rank 0, and the epoch-level
resume state of the training steps."""
from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path
from typing import Callable

import torch

from misc import dist
from misc.config import flags_in
from misc.errors import UserError
from misc.io import save_json, save_torch
from step.common.data import data_digest, out_path
from step.common.parallel import say


def load_checkpoint(model: torch.nn.Module, path: Path, drop: tuple[str, ...] = (), *,
                    select: Callable[[dict], dict] | None = None) -> None:
    """Load a state_dict file into ``model`` with strict key checking; mismatches are one clear line.
    Keys starting with a prefix in ``drop`` (non-weight buffers of legacy checkpoints) are ignored; a file that
    wraps its state_dict as ``{'model': state_dict, ...}`` (released DRS checkpoints) is unwrapped; ``select``
    maps the file's dict to the model's (e.g. strip a DDP ``module.`` prefix, pick a sub-model)."""
    if not path.is_file():
        raise UserError(f"{path}: checkpoint not found; run the training step first or fix the weights flag")
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for a bad file
        raise UserError(f"{path}: not a loadable state_dict ({e})") from None
    if isinstance(sd, dict) and isinstance(sd.get("model"), dict):  # released DRS files: {'model': state_dict, ...}
        sd = sd["model"]
    sd = {k: v for k, v in sd.items() if not k.startswith(drop)} if drop else sd
    sd = select(sd) if select is not None else sd
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    shape = [k for k in own if k in sd and own[k].shape != sd[k].shape]
    if missing or unexpected or shape:
        raise UserError(f"{path}: checkpoint does not fit the model (missing {missing[:2]}, unexpected "
                        f"{unexpected[:2]}, shape mismatch {shape[:2]}); check --backbone_width, the class "
                        "count and the network flags")
    model.load_state_dict(sd)


def save_checkpoint(model: torch.nn.Module, path: Path, what: str) -> None:
    """Write ``model``'s state_dict to ``path`` atomically and say so (``what`` names it in the message);
    rank 0 only (DDP keeps the ranks' weights equal)."""
    if not dist.is_main():
        return
    save_torch(path, model.state_dict())
    print(f"{what} -> {path}")


class EpochResume:
    """Epoch-level resume state of a training step, in ``<weights>.resume`` beside the final weights: the
    model, optimiser and scheduler state after the last finished epoch, that epoch count, and the
    fingerprint of the run. Rank 0 writes it atomically after every epoch and removes it once the final
    weights are saved. A restarted run with the same fingerprint continues from it (sample order and
    augmentation are seeded per epoch and item, so the result equals an uninterrupted run's); with another
    it starts over.

    The fingerprint holds what decides the trained weights and nothing else: the flags of the training
    step's own ``sections`` (train_cam: backbone, classifier; train_irn: backbone, irn), the flags named in
    ``inputs`` (files it trains from, e.g. train_irn's IR labels and classifier), and what shapes its data
    and arithmetic: --dataset, the dataset root (or, on the toy dataset, every toy flag), --train_list,
    --seed and --amp. Everything else (the method, other steps' flags such as --draw_num, the work folder,
    --device, --num_workers, --channels_last, --deterministic, --overwrite, --val_list) may change between
    the interrupted run and its restart: ``--method rib`` after an interrupted IRN train_cam resumes it,
    as both methods share the classifier. The data part also holds ``step.common.data.data_digest`` (the
    dataset's fingerprint and the --train_list ids), so a dataset changed in place trains again, and, for an
    input naming weights with a record (train_irn's classifier), their hash, so retrained inputs train again.

    The same fingerprint decides whether a finished training is done (``finished``): ``fit`` skips a
    training whose final weights exist with a record ``<weights>.json`` (``record``) of this fingerprint
    and of their hash, unless --overwrite."""

    DATA = ("dataset", "voc12_root", "coco14_root", "toy", "train_list", "seed", "amp")

    def __init__(self, args: argparse.Namespace, weights: Path, sections: tuple[str, ...],
                 inputs: tuple[str, ...] = ()):
        self.path = weights.with_name(weights.name + ".resume")
        self.record_path = weights.with_name(weights.name + ".json")
        self.overwrite = bool(args.overwrite)
        flags = flags_in(args, sections + (("toy",) if args.toy else ()))
        flags.update({k: getattr(args, k) for k in self.DATA + inputs})
        flags["data"] = data_digest(args)
        for k in inputs:  # an input that is trained weights: the hash its record holds (retrained: train again)
            rec = out_path(args, str(getattr(args, k)))
            rec = rec.with_name(rec.name + ".json")
            if rec.is_file():
                flags[f"{k} sha256"] = json.loads(rec.read_text()).get("sha256")
        self.flags = json.loads(json.dumps(flags, default=str))

    def finished(self, weights: Path) -> bool:
        """Whether ``weights`` are the final weights of this very training: they exist, and the record beside
        them (``<weights>.json``, written by ``record``) holds this run's fingerprint and their hash. Says why
        not when weights exist; False with --overwrite."""
        if self.overwrite or not weights.is_file():
            return False
        try:
            rec = json.loads(self.record_path.read_text())
        except (OSError, ValueError):
            say(f"{weights}: exists without a record of its training flags ({self.record_path.name}); training again "
                "(to use these weights as they are, skip the step with --<step>_pass False)")
            return False
        changed = _changed(self.flags, rec.get("flags", {}))
        if changed or rec.get("sha256") != _sha256(weights):
            why = (f"trained under other flags ({', '.join(changed[:5])})" if changed
                   else "not the weights its record names")
            say(f"{weights}: {why}; training again")
            return False
        return True

    def record(self, weights: Path) -> None:
        """Write ``<weights>.json`` (rank 0): the fingerprint the weights were trained under and their hash."""
        if dist.is_main():
            save_json(self.record_path, {"flags": self.flags, "sha256": _sha256(weights)})

    def load(self, model: torch.nn.Module, opt: torch.optim.Optimizer, sched: object) -> int:
        """Restore the saved state into ``model``, ``opt`` and ``sched`` when it fits this run. Returns the
        number of epochs already done (0: start from the beginning)."""
        if not self.path.is_file():
            return 0
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as e:  # a torn or foreign file: training from the start is always correct
            say(f"{self.path}: unreadable resume state ({type(e).__name__}); starting over")
            return 0
        if state.get("flags") != self.flags:
            changed = _changed(self.flags, state.get("flags", {}))
            say(f"{self.path}: flags changed since the interrupted run ({', '.join(changed[:5])}); starting over")
            return 0
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        say(f"{self.path}: resuming after epoch {state['epoch']}")
        return int(state["epoch"])

    def save(self, model: torch.nn.Module, opt: torch.optim.Optimizer, sched: object, epoch: int) -> None:
        """Record the state after ``epoch`` finished epochs (rank 0, atomic)."""
        if dist.is_main():
            save_torch(self.path, {"model": model.state_dict(), "optimizer": opt.state_dict(),
                                   "scheduler": sched.state_dict(), "epoch": epoch, "flags": self.flags})

    def clear(self) -> None:
        """Remove the resume state (rank 0), once the final weights are written."""
        if dist.is_main():
            self.path.unlink(missing_ok=True)


def _changed(a: dict, b: dict) -> list[str]:
    """The sorted keys whose values differ between two fingerprints."""
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))


def _sha256(path: Path) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
