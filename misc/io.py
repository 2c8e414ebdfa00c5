"""Atomic writers, the asynchronous writer of the make-steps, id lists, labels and the seed (CAM) artifact format."""
from __future__ import annotations

import errno
import io
import json
import os
import tempfile
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from PIL import Image

from misc.errors import UserError


def default_mode(folder: bool = False) -> int:
    """The permission bits the process umask gives a new file (0o666 & ~umask) or, with ``folder``, a new
    folder (0o777 & ~umask), e.g. 0o644 / 0o755 under umask 022. Read from /proc where it is there, so that
    the umask is never changed, not even for an instant, while other threads create files."""
    try:
        line = next(ln for ln in Path("/proc/self/status").read_text().splitlines() if ln.startswith("Umask:"))
        mask = int(line.split()[1], 8)
    except (OSError, StopIteration, ValueError, IndexError):
        mask = os.umask(0o22)
        os.umask(mask)
    return (0o777 if folder else 0o666) & ~mask


# write failures a user fixes outside the toolkit (space, quota, permissions, a read-only disk)
_DISK_ERRORS = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is exceeded"}
_ACCESS_ERRORS = (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR, errno.EEXIST)


def write_error(path: Path, e: OSError) -> UserError:
    """The one-line UserError of a failed write of ``path``: a full disk or quota (nothing partial is left,
    finished files are kept, so rerunning resumes), or a folder that cannot be written."""
    if e.errno in _DISK_ERRORS:
        return UserError(f"{path}: not written, {_DISK_ERRORS[e.errno]}; no partial file was left and finished files "
                         f"are kept: free space under {path.parent} and rerun the same command to resume")
    return UserError(f"{path}: cannot be written ({e.strerror or e}); pass a --work_dir (or output flag) you can "
                     "write to")


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it is renamed onto ``path`` (atomic on POSIX) with
    the mode the umask gives a new file (``default_mode``). Nothing is left behind on failure; a full disk
    or an unwritable folder becomes one UserError line (``write_error``)."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix="." + path.name, suffix=".tmp" + path.suffix)
        os.close(fd)
    except OSError as e:
        if e.errno in _DISK_ERRORS or e.errno in _ACCESS_ERRORS:
            raise write_error(path, e) from None
        raise
    try:
        os.chmod(tmp, default_mode())
        yield Path(tmp)
        os.replace(tmp, path)
    except OSError as e:
        if e.errno in _DISK_ERRORS or e.errno in _ACCESS_ERRORS:
            raise write_error(path, e) from None
        raise
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def save_torch(path: str | Path, obj: Any) -> None:
    """``torch.save(obj)`` to ``path`` atomically, byte-reproducible: equal tensors give equal files (the
    archive is built in memory under a fixed name; saved to the temporary path, torch would store that
    path's random name inside the file)."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buf.getbuffer())


class AsyncWriter:
    """File writes of a make-step on background threads, so that writing overlaps computing.

    ``with AsyncWriter() as w: w.submit(save_cam, path, ...)``: ``submit(fn, *args)`` queues ``fn(*args)``
    on one of ``threads`` threads; a failed write is re-raised by a later ``submit`` or, at the latest,
    when the block ends, which waits for every write.
    """

    def __init__(self, threads: int = 2):
        self._pool = ThreadPoolExecutor(threads)
        self._pending: list[Future] = []

    def submit(self, fn: Callable[..., object], *args: object) -> None:
        """Queue ``fn(*args)``; raises the error of an earlier write that failed."""
        done = [f for f in self._pending if f.done()]
        self._pending = [f for f in self._pending if not f.done()]
        for f in done:
            f.result()
        self._pending.append(self._pool.submit(fn, *args))

    def __enter__(self) -> AsyncWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                for f in self._pending:
                    f.result()
        finally:
            self._pool.shutdown(wait=True)


def save_json(path: str | Path, obj: Any) -> None:
    """Write JSON atomically (indented, keys in insertion order)."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=1) + "\n")


def save_png(path: str | Path, label: np.ndarray, palette: np.ndarray | None = None) -> None:
    """Write a uint8 (H, W) index map as PNG atomically; with ``palette`` ((n,3) uint8) as a palette PNG."""
    im = Image.fromarray(np.ascontiguousarray(label, np.uint8))
    if palette is not None:
        im = im.convert("P")
        im.putpalette(np.asarray(palette, np.uint8).reshape(-1).tolist())
    with atomic_path(path) as tmp:
        im.save(tmp, format="PNG")


def read_id_list(path: str | Path) -> list[str]:
    """Read an id list: one string id per line; blank lines and anything after the first space are dropped."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: id list not found; run the dataset's make_cls_labels (voc12 or coco14), or pass an "
                        "existing list file")
    ids = [ln.split()[0] for ln in path.read_text().splitlines() if ln.strip()]
    if not ids:
        raise UserError(f"{path}: id list is empty; regenerate it with make_cls_labels")
    return ids


def write_id_list(path: str | Path, ids: list[str]) -> None:
    """Write an id list atomically, one id per line."""
    with atomic_path(path) as tmp:
        tmp.write_text("".join(i + "\n" for i in ids))


def load_cls_labels(path: str | Path, num_classes: int) -> dict[str, np.ndarray]:
    """Read image-level labels written by make_cls_labels: JSON {id: [0-based class, ...]}.

    Returns {id: float32 (num_classes,) multi-hot}. A class index outside [0, num_classes) is an error.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: image-level labels not found; run `python -m voc12.make_cls_labels` (or "
                        "coco14.make_cls_labels) first")
    out = {}
    for k, classes in json.loads(path.read_text()).items():
        v = np.zeros(num_classes, np.float32)
        for c in classes:
            if not 0 <= c < num_classes:
                raise UserError(f"{path}: id {k} has class {c} outside [0, {num_classes}); regenerate the labels")
            v[c] = 1
        out[k] = v
    return out


def save_cam(path: str | Path, keys: np.ndarray, cam: np.ndarray, high_res: np.ndarray) -> None:
    """Write one seed artifact atomically as .npz.

    keys: int64 (K,) 0-based class indices present; cam: float32 (K, h, w) at stride 4 with
    h = (H-1)//4+1; high_res: float32 (K, H, W). Each class map is max-normalised (peak just under 1).
    """
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, keys=np.asarray(keys, np.int64), cam=np.asarray(cam, np.float32),
                     high_res=np.asarray(high_res, np.float32))


def load_cam(cam_dir: str | Path, img_id: str) -> dict[str, np.ndarray]:
    """Read the seed of ``img_id`` from ``<cam_dir>/<id>.npz``, or an IRN/RIB legacy ``<id>.npy`` dict.

    Returns {'keys': int64 (K,), 'cam': float32 (K,h,w) or absent, 'high_res': float32 (K,H,W) or absent}.
    """
    cam_dir = Path(cam_dir)
    npz, npy = cam_dir / f"{img_id}.npz", cam_dir / f"{img_id}.npy"
    if npz.is_file():
        try:
            with np.load(npz) as z:
                return {k: z[k] for k in z.files}
        except (OSError, ValueError) as e:
            raise UserError(f"{npz}: unreadable seed file ({e}); delete it and rerun the seed step") from None
    if npy.is_file():
        return _load_legacy_cam(npy)
    raise UserError(f"{npz}: seed not found; run the seed step (make_cam) for this id or check --cam_out_dir")


def _load_legacy_cam(path: Path) -> dict[str, np.ndarray]:
    """IRN/RIB wrote a pickled dict whose 'keys' and 'cam' may be torch tensors (needs torch to unpickle)."""
    try:
        d = np.load(path, allow_pickle=True).item()
    except Exception as e:  # a pickle can fail in many ways
        raise UserError(f"{path}: unreadable legacy seed file ({e}); regenerate it with make_cam") from None
    out = {}
    for k in ("keys", "cam", "high_res"):
        if k in d:
            v = d[k]
            v = v.cpu().numpy() if hasattr(v, "cpu") else np.asarray(v)
            out[k] = v.astype(np.int64 if k == "keys" else np.float32)
    return out
