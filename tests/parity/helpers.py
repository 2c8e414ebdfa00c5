"""Pieces shared by the IRN/RIB parity tests and their fixture-regeneration scripts.

``tied_random_state_dict`` is used by both sides (it gives a module's aliased keys, e.g. ``resnet50.conv1.weight``
and ``stage1.0.weight``, one tensor). The rest is for the regeneration scripts only: it imports a published
checkout and lets its code run on CPU by patching at run time (nothing of the published code is copied).
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib
import os
import subprocess
import sys
import types
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch

from tests.parity.util import random_state_dict


def tied_random_state_dict(module: torch.nn.Module, seed: int) -> tuple[dict[str, torch.Tensor], list[str]]:
    """``random_state_dict`` for a module whose state_dict names some tensors several times (the IRN layout
    registers each trunk layer as ``resnet50.*``, ``stageN.*`` and ``backbone.*``): the tensor is drawn once,
    for the first of its names, and given to all of them. Returns ({key: tensor} for every key, the first
    names in state_dict order)."""
    first: dict[int, str] = {}
    canonical: dict[str, str] = {}
    shapes: dict[str, tuple[int, ...]] = {}
    for k, v in module.state_dict(keep_vars=True).items():
        c = first.setdefault(id(v), k)
        canonical[k] = c
        shapes.setdefault(c, tuple(v.shape))
    drawn = random_state_dict(shapes, seed)
    return {k: drawn[c] for k, c in canonical.items()}, list(shapes)


EDGE_GAIN, EDGE_SHIFT = 16.0, 10.0


def irn_random_state_dict(module: torch.nn.Module, seed: int) -> tuple[dict[str, torch.Tensor], list[str]]:
    """``tied_random_state_dict`` for an IRNet, with the boundary logit's layer (``fc_edge6``) scaled by
    EDGE_GAIN and its bias raised by EDGE_SHIFT: random features then give a boundary map spanning (0, 1)
    with strong edges, like a trained one, instead of sigmoid values near 0.3 everywhere, through which
    IRN's 256-step walk would spread every seed evenly. Returns what ``tied_random_state_dict`` returns."""
    sd, first = tied_random_state_dict(module, seed)
    sd["fc_edge6.weight"].mul_(EDGE_GAIN)  # aliases (edge_layers.5.*) share these tensors
    sd["fc_edge6.bias"].mul_(EDGE_GAIN).add_(EDGE_SHIFT)
    return sd, first


def published_layout(x: torch.Tensor) -> torch.Tensor:
    """``x`` (..., C, H, W) in the memory layout the published loaders hand the network: CHW views of
    HWC arrays (``np.transpose`` then ``np.stack``), i.e. channels-last strides. The CPU convolution picks
    its kernel by layout, so this is what makes the outputs bit-identical on the generating machine."""
    lead = x.shape[:-3]
    return x.reshape(-1, *x.shape[-3:]).contiguous(memory_format=torch.channels_last).view(*lead, *x.shape[-3:])


def digest(t: torch.Tensor | np.ndarray) -> str:
    """SHA-256 of an array's dtype, shape and bytes (bit-identity checks)."""
    a = np.ascontiguousarray(t.detach().cpu().numpy() if isinstance(t, torch.Tensor) else t)
    return hashlib.sha256(f"{a.dtype}{a.shape}".encode() + a.tobytes()).hexdigest()


def published_commit(root: Path) -> str:
    """The commit of a published checkout: ``git rev-parse HEAD`` in it, else its line in the sibling
    ``COMMITS.txt`` (name commit), as /work/published keeps them."""
    r = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True)
    if r.returncode == 0 and (root / ".git").exists():
        return r.stdout.strip()
    listing = root.parent / "COMMITS.txt"
    if listing.is_file():
        for line in listing.read_text().splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[0] == root.name:
                return parts[1]
    raise SystemExit(f"{root}: cannot tell its commit (not a git checkout, no COMMITS.txt line)")


def import_published(root: Path, names: Iterable[str]) -> dict[str, types.ModuleType]:
    """Import modules of a published checkout (e.g. 'net.resnet50_cam') with ``root`` first on sys.path
    and as the working directory during the import (IRN's voc12.dataloader reads voc12/cls_labels.npy
    relative to it). The published folders have no ``__init__.py``, so a regular package of the same name
    (the toolkit's ``net``, ``misc``, ...) would win wherever it sits on sys.path: the entries holding one are
    removed. Refuses when a same-named package is already imported."""
    tops = {n.split(".")[0] for n in names}
    for top in tops:
        mod = sys.modules.get(top)
        if mod is not None and not str(getattr(mod, "__file__", None) or mod.__path__[0]).startswith(str(root)):
            raise SystemExit(f"module {top!r} already imported from elsewhere; run this script in a fresh process")
    sys.path[:] = [str(root)] + [p for p in sys.path
                                 if not any((Path(p or os.getcwd()) / t / "__init__.py").is_file() for t in tops)]
    cwd = os.getcwd()
    os.chdir(root)
    try:
        return {n: importlib.import_module(n) for n in names}
    finally:
        os.chdir(cwd)


def run_on_cpu(device_count: int = 2) -> None:
    """Make CUDA-only published code run on CPU: ``.cuda()`` of tensors and modules returns them unchanged,
    ``torch.cuda.device(i)`` is a no-op context, and ``torch.cuda.device_count()`` answers ``device_count``
    (2 by default: the published loops call process 0 with n_gpus = 2, so no modulo or division by zero, and
    the progress print, which divides by len(bin) // 20, is left to the absent last process)."""
    torch.Tensor.cuda = lambda self, *a, **k: self
    torch.nn.Module.cuda = lambda self, *a, **k: self
    torch.cuda.device = lambda *a, **k: contextlib.nullcontext()
    torch.cuda.device_count = lambda: device_count
    torch.cuda.empty_cache = lambda: None


def without_imagenet(resnet50_module: types.ModuleType) -> None:
    """The published ``net.resnet50.resnet50(pretrained=True)`` downloads ImageNet weights; build it
    without them (the caller loads random weights right after)."""
    build = resnet50_module.resnet50
    resnet50_module.resnet50 = lambda pretrained=True, **kw: build(pretrained=False, **kw)


def serve_images(dataloader_module: types.ModuleType, images: dict[str, np.ndarray]) -> None:
    """Let a published dataloader's ``imageio.imread(<root>/JPEGImages/<id>.jpg)`` return images[id]."""
    dataloader_module.imageio = types.SimpleNamespace(imread=lambda path: images[Path(path).stem].copy())


def write_id_list(path: Path, ids: Iterable[str]) -> Path:
    """An id list the published loaders read (np.loadtxt as int32): VOC ids without the underscore."""
    path.write_text("".join(i.replace("_", "") + "\n" for i in ids))
    return path


def sample_indices(shapes: dict[str, tuple[int, ...]], per_tensor: int, seed: int) -> dict[str, np.ndarray]:
    """Fixed flat positions in each tensor (at most ``per_tensor``), for storing small samples of weights."""
    rng = np.random.default_rng(seed)
    return {k: np.sort(rng.choice(int(np.prod(s)), min(per_tensor, int(np.prod(s))), replace=False))
            for k, s in shapes.items()}


def args_namespace(**kw: Any) -> types.SimpleNamespace:
    """An argparse-like namespace for calling a published step's ``run``/``_work``."""
    return types.SimpleNamespace(**kw)


def published_flags(method: str, dataset: str = "voc12") -> argparse.Namespace:
    """The flags the toolkit resolves for ``method`` on a real ``dataset`` (its defaults and published recipes,
    no toy recipe; the dataset folder is not read). Parity tests take the published constants from here, so a
    changed default or recipe constant in run_sample.py fails them."""
    import run_sample  # the config file at the top of the tree

    return run_sample.parse_args([f"--{dataset}_root", "PUBLISHED", "--method", method])
