"""torchrun pieces the steps share: id shards and make-step resume, rank-0 output, per-rank batches,
device placement and DDP wrapping, and the loaders of training and bucketed inference. Single-process
(no torchrun) every helper degrades to the plain behaviour."""
from __future__ import annotations

from typing import Callable, Iterator

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm import tqdm

from misc import dist
from misc.dataset_spec import DatasetSpec
from misc.dist import PerItemSeed, RankShuffle
from misc.errors import UserError
from misc.imutils import image_size
from misc.samples import SizeBucketSampler
from misc.torchutils import worker_init_fn


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


def train_loader(data: Dataset, total_batch: int, batch_flag: str, list_name: str, seed: int, num_workers: int,
                 device: torch.device) -> DataLoader:
    """The training loader of a training step: this rank's 1/W of every total batch of ``total_batch``
    (``batch_flag`` names it in errors) in the single-process order (``misc.dist.RankShuffle``, call
    ``loader.sampler.set_epoch`` per epoch; ``fit`` does) and each item's augmentation seeded by its key
    (``misc.dist.PerItemSeed``); the last incomplete batch is dropped. UserError when ``data`` (the ids of
    --train_list ``list_name``) holds fewer items than one batch (recipes counted in iterations:
    ``iteration_loader``)."""
    if len(data) < total_batch:
        raise UserError(f"--train_list {list_name}: {len(data)} ids, fewer than {batch_flag} {total_batch}")
    batch = rank_batch(total_batch, batch_flag)
    return DataLoader(PerItemSeed(data), batch, sampler=RankShuffle(len(data), seed), drop_last=True,
                      num_workers=num_workers, pin_memory=device.type == "cuda", worker_init_fn=worker_init_fn,
                      persistent_workers=num_workers > 0)


class IterationSampler(Sampler):
    """The sample keys of a schedule counted in iterations (ToCo, PUFS, DeepLab) cut into epochs of ``steps``
    batches, so that ``fit`` resumes at epoch boundaries.

    The single-process stream is the concatenation of passes over the ``n`` items, pass p a permutation seeded
    by (seed, p); global batch k is stream positions k*B .. (k+1)*B - 1 (B = ``total_batch``; a batch may span
    two passes, nothing is dropped). Epoch e holds batches e*steps .. (e+1)*steps - 1, and rank r of W takes
    the r-th 1/W slice of each, so the union over ranks of their k-th batches is the k-th global batch
    whatever W. Yields keys ``(seed, pass, index)`` for ``misc.dist.PerItemSeed``; call ``set_epoch``
    (``fit`` does)."""

    def __init__(self, n: int, total_batch: int, steps: int, seed: int):
        self.n, self.total, self.steps, self.seed = n, total_batch, steps, seed
        self.per, self.rank = total_batch // dist.world_size(), dist.rank()
        self.epoch = 0
        self._perm: tuple[int, torch.Tensor] | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.steps * self.per

    def _item(self, p: int, i: int) -> int:
        if self._perm is None or self._perm[0] != p:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + p)
            self._perm = (p, torch.randperm(self.n, generator=g))
        return int(self._perm[1][i])

    def __iter__(self) -> Iterator[tuple[int, int, int]]:
        for k in range(self.epoch * self.steps, (self.epoch + 1) * self.steps):
            start = k * self.total + self.rank * self.per
            for pos in range(start, start + self.per):
                p, i = divmod(pos, self.n)
                yield self.seed, p, self._item(p, i)


def iteration_loader(data: Dataset, total_batch: int, batch_flag: str, steps: int, seed: int, num_workers: int,
                     device: torch.device, collate: Callable | None = None) -> DataLoader:
    """The training loader of an iteration-counted schedule: ``steps`` batches per epoch, this rank's 1/W of
    every total batch of ``total_batch`` (``batch_flag`` names it in errors), in the single-process order
    (``IterationSampler``), each item's augmentation seeded by its key (``misc.dist.PerItemSeed``). The
    schedule runs epochs * steps iterations; step the learning-rate schedule per iteration."""
    batch = rank_batch(total_batch, batch_flag)
    return DataLoader(PerItemSeed(data), batch, sampler=IterationSampler(len(data), total_batch, steps, seed),
                      num_workers=num_workers, pin_memory=device.type == "cuda", worker_init_fn=worker_init_fn,
                      persistent_workers=num_workers > 0, collate_fn=collate)


def bucketed_loader(ds: DatasetSpec, data: Dataset, ids: list[str], batch_images: int, collate: Callable,
                    num_workers: int, device: torch.device) -> DataLoader:
    """A DataLoader over ``data`` (item i = image ids[i]) whose batches hold up to ``batch_images`` images of
    one size (misc.samples.SizeBucketSampler), collated by ``collate``. Under torchrun rank r takes batches
    r, r + W, ... of that list: every id once, in the batches a single process forms (batch composition
    changes CPU kernels' rounding, so outputs stay bit-identical to a single-process run)."""
    sampler = SizeBucketSampler([image_size(ds.image_path(i)) for i in ids], batch_images)
    sampler.batches = sampler.batches[dist.rank()::dist.world_size()]
    return DataLoader(data, batch_sampler=sampler, collate_fn=collate, num_workers=num_workers,
                      pin_memory=device.type == "cuda")
