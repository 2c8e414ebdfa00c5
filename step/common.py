"""What every step needs: the dataset of a run, id lists, labels, artifact paths, checkpoints, the CLI, and
the torchrun pieces (id shards, rank-0 output, DDP wrapping)."""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm import tqdm

from coco14.dataloader import COCO14
from coco14.make_cls_labels import make_cls_labels as coco14_cls_labels
from coco14.toy import write_toy_coco
from misc import dist
from misc.data import SizeBucketSampler
from misc.datasets import DatasetSpec
from misc.errors import UserError
from misc.imutils import image_size
from misc.io import atomic_path, load_cls_labels, read_id_list, save_json
from misc.torchutils import pick_device
from voc12.dataloader import VOC12
from voc12.make_cls_labels import make_cls_labels as voc12_cls_labels
from voc12.toy import write_toy_voc

# --dataset -> (spec class, label and list derivation)
DATASETS: dict[str, tuple[Callable[[Path], DatasetSpec], Callable[[DatasetSpec, Path], dict]]] = {
    "voc12": (VOC12, voc12_cls_labels), "coco14": (COCO14, coco14_cls_labels)}


def out_path(args: argparse.Namespace, name: str) -> Path:
    """An artifact path: ``name`` itself when absolute, else inside ``args.work_dir``."""
    p = Path(name)
    return p if p.is_absolute() else Path(args.work_dir) / p


def meta_dir(args: argparse.Namespace) -> Path:
    """Folder of the run's image-level labels and id lists (written by make_cls_labels)."""
    return Path(args.work_dir) / "meta"


def dataset_root(args: argparse.Namespace) -> Path:
    """The run's dataset folder: --voc12_root / --coco14_root, or the toy folder of --dataset (generated
    when missing: VOC layout with train_aug/train/val, COCO's official layout with train/val)."""
    if not args.toy:
        return Path(args.voc12_root if args.dataset == "voc12" else args.coco14_root)
    if args.dataset == "coco14":
        return write_toy_coco(args.toy_root, args.toy_seed, args.toy_n_train, args.toy_n_val, args.toy_size,
                              args.toy_classes)
    return write_toy_voc(args.toy_root, args.toy_seed, args.toy_n_train_aug, args.toy_n_train, args.toy_n_val,
                         args.toy_size)


def get_dataset(args: argparse.Namespace) -> DatasetSpec:
    """The dataset of this run (--dataset); generates the toy folder and derives labels and lists into
    ``<work_dir>/meta`` when missing or derived from another folder (under torchrun rank 0 does that while
    the other ranks wait, then they find everything in place)."""
    with dist.main_first():
        root = dataset_root(args)
        spec, derive = DATASETS[args.dataset]
        ds = spec(root)
        labels = meta_dir(args) / "cls_labels.json"
        stamp = meta_dir(args) / "source.txt"
        toy = Path(root) / "toy.json"  # a regenerated toy folder (other parameters) needs new labels too
        source = str(Path(root).resolve()) + ("\n" + toy.read_text().strip() if toy.is_file() else "")
        if not labels.is_file() or not stamp.is_file() or stamp.read_text().strip() != source:
            derive(ds, meta_dir(args))
            with atomic_path(stamp) as tmp:
                tmp.write_text(source + "\n")
    return ds


def load_list(args: argparse.Namespace, name: str) -> list[str]:
    """Ids of a list flag: a split name (file ``<meta>/<name>.txt``) or a path to a .txt file."""
    p = Path(name) if ("/" in name or name.endswith(".txt")) else meta_dir(args) / f"{name}.txt"
    return read_id_list(p)


def shard(ids: list[str]) -> list[str]:
    """This process's share of ``ids`` under torchrun (env RANK, WORLD_SIZE): ids[rank::world_size], so the
    ranks cover every id exactly once. Without torchrun, all ids."""
    return ids[dist.rank()::dist.world_size()]


def pending(ids: list[str], done: Callable[[str], bool], overwrite: bool) -> list[str]:
    """A make-step's work: the ids of ``ids`` not ``done`` (their output exists), or all with ``overwrite``
    (resume). Every rank lists them all and then waits for the others, so all ranks agree on the list before
    any rank writes; the step then shards it (``shard``, or ``bucketed_loader``'s batches)."""
    todo = [i for i in ids if overwrite or not done(i)]
    dist.barrier()
    return todo


def say(msg: str) -> None:
    """Print a whole-step summary, on rank 0 only."""
    if dist.is_main():
        print(msg, flush=True)


def progress(iterable=None, **kw) -> tqdm:
    """A tqdm progress bar on rank 0; a disabled one on the other ranks."""
    return tqdm(iterable, **kw) if dist.is_main() else tqdm(iterable, disable=True, **kw)


def rank_batch(total: int, flag: str) -> int:
    """The per-rank batch of a total batch ``total`` (flag ``flag``): total / world size, so the optimiser
    sees the recipe's batch whatever the number of processes. UserError when the world size does not
    divide it."""
    world = dist.world_size()
    if total % world:
        raise UserError(f"{flag} {total}: not divisible by the {world} torchrun processes; pick a multiple of {world}")
    return total // world


def place(model: torch.nn.Module, device: torch.device, channels_last: bool) -> torch.nn.Module:
    """``model`` on ``device``, its 4-D weights in channels_last memory format when asked (--channels_last)."""
    model = model.to(device)
    return model.to(memory_format=torch.channels_last) if channels_last else model


def distribute(model: torch.nn.Module, device: torch.device, sync_bn: bool = False) -> torch.nn.Module:
    """``model`` wrapped in DistributedDataParallel under torchrun (gradients averaged over ranks after each
    backward); ``model`` itself single-process. With ``sync_bn`` on CUDA its BatchNorm layers become
    SyncBatchNorm (statistics over the total batch, as single-process). SyncBatchNorm has no CPU kernel:
    on CPU each rank normalises with its own batch's statistics."""
    if not dist.active():
        return model
    if sync_bn and device.type == "cuda":
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def load_labels(args: argparse.Namespace, ds: DatasetSpec, ids: list[str]) -> dict[str, np.ndarray]:
    """Image-level labels {id: float32 (C,)} of the run, checked to cover ``ids``."""
    path = meta_dir(args) / "cls_labels.json"
    labels = load_cls_labels(path, ds.num_classes)
    missing = [i for i in ids if i not in labels]
    if missing:
        raise UserError(f"{path}: no image-level label for id {missing[0]} ({len(missing)} ids); "
                        "the id list and the dataset do not match")
    return labels


def load_checkpoint(model: torch.nn.Module, path: Path, drop: tuple[str, ...] = ()) -> None:
    """Load a state_dict file into ``model`` with strict key checking; mismatches are one clear line.
    Keys starting with a prefix in ``drop`` (non-weight buffers of legacy checkpoints) are ignored."""
    if not path.is_file():
        raise UserError(f"{path}: checkpoint not found; run the training step first or fix the weights flag")
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for a bad file
        raise UserError(f"{path}: not a loadable state_dict ({e})") from None
    sd = {k: v for k, v in sd.items() if not k.startswith(drop)} if drop else sd
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
    with atomic_path(path) as tmp:
        torch.save(model.state_dict(), tmp)
    print(f"{what} -> {path}")


class EpochResume:
    """Epoch-level resume state of a training step, in ``<weights>.resume`` beside the final weights: the
    model, optimiser and scheduler state after the last finished epoch, that epoch count, and the flags of
    the run. Rank 0 writes it atomically after every epoch and removes it once the final weights are saved.
    A restarted run with the same flags continues from it (sample order and augmentation are seeded per
    epoch and item, so the result equals an uninterrupted run's); with other flags it starts over."""

    _VOLATILE = ("num_workers", "crf_num_workers", "device", "overwrite", "work_dir")

    def __init__(self, args: argparse.Namespace, weights: Path):
        self.path = weights.with_name(weights.name + ".resume")
        flags = {k: v for k, v in vars(args).items() if k not in self._VOLATILE and not k.endswith("_pass")}
        self.flags = json.loads(json.dumps(flags, default=str))

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
            changed = sorted(k for k in set(self.flags) | set(state.get("flags", {}))
                             if self.flags.get(k) != state.get("flags", {}).get(k))
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
            with atomic_path(self.path) as tmp:
                torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(),
                            "scheduler": sched.state_dict(), "epoch": epoch, "flags": self.flags}, tmp)

    def clear(self) -> None:
        """Remove the resume state (rank 0), once the final weights are written."""
        if dist.is_main():
            self.path.unlink(missing_ok=True)


def bucketed_loader(ds: DatasetSpec, data: Dataset, ids: list[str], batch_images: int, collate: Callable,
                    num_workers: int, device: torch.device) -> DataLoader:
    """A DataLoader over ``data`` (item i = image ids[i]) whose batches hold up to ``batch_images`` images of
    one size (misc.data.SizeBucketSampler), collated by ``collate``. Under torchrun rank r takes batches
    r, r + W, ... of that list: every id once, in the batches a single process forms (batch composition
    changes CPU kernels' rounding, so outputs stay bit-identical to a single-process run)."""
    sampler = SizeBucketSampler([image_size(ds.image_path(i)) for i in ids], batch_images)
    sampler.batches = sampler.batches[dist.rank()::dist.world_size()]
    return DataLoader(data, batch_sampler=sampler, collate_fn=collate, num_workers=num_workers,
                      pin_memory=device.type == "cuda")


class PerImageGT(Dataset):
    """Base of the streaming evaluators: item i = ``score(id, gt)`` of image ids[i], with gt its checked
    uint8 GT mask (H, W); subclasses define ``score`` (returning an array to be summed over images)."""

    def __init__(self, ds: DatasetSpec, ids: list[str]):
        self.ds, self.ids = ds, list(ids)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> np.ndarray:
        return self.score(self.ids[i], self.ds.read_gt(self.ids[i]))

    def score(self, img_id: str, gt: np.ndarray) -> np.ndarray:
        raise NotImplementedError


def git_revision() -> str:
    """The checkout's commit hash (with '+dirty' for uncommitted changes), or 'unknown'."""
    here = Path(__file__).resolve().parent
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    if rev.returncode != 0:
        return "unknown"
    return rev.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def record_config(args: argparse.Namespace, name: str) -> None:
    """Write the resolved flags, the git revision, the command line and the number of processes to
    ``<work_dir>/config.<name>.json`` (rank 0)."""
    if not dist.is_main():
        return
    cfg = {k: v for k, v in vars(args).items()}
    save_json(Path(args.work_dir) / f"config.{name}.json",
              {"git_revision": git_revision(), "argv": sys.argv, "time": time.strftime("%Y-%m-%d %H:%M:%S"),
               "world_size": dist.world_size(), "args": cfg})


def step_main(name: str, run: Callable[[argparse.Namespace], object]) -> None:
    """``python -m step.<name>`` (also under torchrun): parse run_sample's flags, join the process group,
    record them, run the step; UserError -> one line."""
    from misc.cli import guarded

    def go() -> None:
        import run_sample  # the flags and their defaults live in run_sample.py, at the top of the tree

        args = run_sample.parse_args(sys.argv[1:])
        dist.init(pick_device(args.device))
        record_config(args, name)
        run(args)
        dist.destroy()

    guarded(go)


def accumulate(data: Dataset, desc: str, num_workers: int) -> np.ndarray:
    """Sum the arrays a Dataset returns per item, computed in ``num_workers`` loader processes (streaming:
    one item in memory per worker). Under torchrun each rank sums items rank, rank + W, ... and the ranks'
    sums are added (``dist.sum_over_ranks``; exact for counts). Returns the sum over all items, on every rank."""
    total = None
    mine = Subset(data, range(dist.rank(), len(data), dist.world_size()))
    loader = DataLoader(mine, batch_size=None, num_workers=num_workers)
    for h in progress(loader, desc=desc, total=len(mine)):
        h = np.asarray(h)
        total = h.copy() if total is None else total + h
    return dist.sum_over_ranks(total)


def report(names: tuple[str, ...], columns: dict[str, np.ndarray]) -> None:
    """Print a per-class IoU table (percent) with one column per entry of ``columns`` and a mIoU row."""
    w = max(len(n) for n in names) + 2
    print("".join([f"{'class':<{w}}"] + [f"{c:>16}" for c in columns]))
    for i, n in enumerate(names):
        print("".join([f"{n:<{w}}"] + [f"{100 * v[i]:>16.2f}" if np.isfinite(v[i]) else f"{'-':>16}"
                                         for v in columns.values()]))
    print("".join([f"{'mIoU':<{w}}"] + [f"{100 * np.nanmean(v):>16.2f}" for v in columns.values()]))
