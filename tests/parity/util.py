"""Shared pieces of the parity tests and of their fixture-regeneration scripts.

A parity fixture holds the inputs given to a published implementation, its outputs, and a ``meta`` JSON
record (published repository, commit, seeds). The regeneration scripts (``make_fixtures_<method>.py``,
not run by CI) write them with ``save_fixture``; the tests read them with ``load_fixture``. Weights come
from ``random_state_dict``, which depends only on the keys, shapes and seed, so the published model and
the toolkit's model receive the same tensors whatever order their modules are built in.
"""
from __future__ import annotations

import io
import json
import zipfile
import zlib
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

FIXTURES = Path(__file__).resolve().parent / "fixtures"


def random_state_dict(shapes: Mapping[str, tuple[int, ...]], seed: int) -> dict[str, torch.Tensor]:
    """Deterministic float32 tensors for ``shapes`` {key: shape}: each key's tensor is drawn from a generator
    seeded by (seed, CRC-32 of the key), so it does not depend on the other keys or their order.

    Weights of rank >= 2: N(0, 1/fan_in) (fan_in = product of all but the first dimension), so activations keep
    their scale through deep networks; BatchNorm ``running_var``: U(0.5, 1.5); ``running_mean``: N(0, 0.1^2);
    ``num_batches_tracked``: 0 (int64); other 1-D tensors (biases, norm weights): 1 + N(0, 0.1^2) for keys
    ending in ``.weight``, N(0, 0.1^2) otherwise. Returns {key: tensor of that shape}.
    """
    out = {}
    for key, shape in shapes.items():
        g = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(key.encode()))
        shape = tuple(shape)
        if key.endswith("num_batches_tracked"):
            out[key] = torch.zeros(shape, dtype=torch.int64)
        elif key.endswith("running_var"):
            out[key] = 0.5 + torch.rand(shape, generator=g)
        elif key.endswith("running_mean"):
            out[key] = 0.1 * torch.randn(shape, generator=g)
        elif len(shape) >= 2:
            fan_in = int(np.prod(shape[1:]))
            out[key] = torch.randn(shape, generator=g) / fan_in ** 0.5
        elif key.endswith(".weight"):
            out[key] = 1 + 0.1 * torch.randn(shape, generator=g)
        else:
            out[key] = 0.1 * torch.randn(shape, generator=g)
    return out


def save_fixture(name: str, meta: Mapping[str, Any], **arrays: np.ndarray) -> Path:
    """Write ``fixtures/<name>.npz``: the arrays plus ``meta`` (a JSON string), byte-reproducible (fixed zip
    timestamps, sorted members, deflate level 9). Returns the path."""
    FIXTURES.mkdir(parents=True, exist_ok=True)
    path = FIXTURES / f"{name}.npz"
    members = {k: np.asarray(v) for k, v in arrays.items()}
    members["meta"] = np.asarray(json.dumps(dict(meta), sort_keys=True))
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as z:
        for k in sorted(members):
            buf = io.BytesIO()
            np.lib.format.write_array(buf, members[k], allow_pickle=False)
            info = zipfile.ZipInfo(f"{k}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            z.writestr(info, buf.getvalue(), compresslevel=9)
    return path


def load_fixture(name: str) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Read ``fixtures/<name>.npz``. Returns (arrays without ``meta``, the meta record)."""
    with np.load(FIXTURES / f"{name}.npz", allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files if k != "meta"}
        meta = json.loads(str(z["meta"]))
    return arrays, meta


def save_keys(name: str, meta: Mapping[str, Any], shapes: Mapping[str, tuple[int, ...]]) -> Path:
    """Write ``fixtures/<name>.json``: a published model's state_dict keys and shapes, in its order, with ``meta``."""
    FIXTURES.mkdir(parents=True, exist_ok=True)
    path = FIXTURES / f"{name}.json"
    path.write_text(json.dumps({"meta": dict(meta), "shapes": {k: list(v) for k, v in shapes.items()}}, indent=0) + "\n")
    return path


def load_keys(name: str) -> dict[str, tuple[int, ...]]:
    """Read a key list written by ``save_keys``. Returns {key: shape} in the published order."""
    data = json.loads((FIXTURES / f"{name}.json").read_text())
    return {k: tuple(v) for k, v in data["shapes"].items()}
