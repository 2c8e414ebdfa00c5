"""One process per device under torchrun: the process group, rank queries, barriers and reductions, and the
rank-invariant training sampler.

Without torchrun (no WORLD_SIZE, or 1) nothing here creates a process group and every helper is a no-op,
so the same code runs single-process on CPU. Under ``torchrun --nproc_per_node N`` (env RANK, WORLD_SIZE,
LOCAL_RANK, MASTER_ADDR/PORT set by torchrun; multi-node works the same way) ``init`` joins the group:
NCCL for CUDA tensors plus gloo for CPU tensors on a CUDA device, gloo alone on CPU.
"""
from __future__ import annotations

import os
import random
from contextlib import contextmanager
from typing import Iterator

import numpy as np
import torch
import torch.distributed as td
from torch.utils.data import Dataset, DistributedSampler


def world_size() -> int:
    """Number of processes (env WORLD_SIZE; 1 without torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    """This process's global rank (env RANK; 0 without torchrun)."""
    return int(os.environ.get("RANK", "0"))


def is_main() -> bool:
    """True on rank 0, the process that writes shared files (checkpoints, JSON, configs) and prints summaries."""
    return rank() == 0


def init(device: torch.device) -> None:
    """Join the torchrun process group once (no-op without torchrun or when already joined). ``device`` is
    this rank's device (see misc.torchutils.pick_device): CUDA selects NCCL (with gloo for CPU tensors)."""
    if world_size() == 1 or td.is_initialized():
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
        td.init_process_group("cpu:gloo,cuda:nccl", device_id=device)
    else:
        td.init_process_group("gloo")


def active() -> bool:
    """True when a process group of more than one process is running."""
    return world_size() > 1 and td.is_initialized()


def barrier() -> None:
    """Wait until every rank gets here (no-op single-process)."""
    if active():
        td.barrier()


@contextmanager
def main_first() -> Iterator[None]:
    """Run the block on rank 0 first, then on the other ranks (e.g. preparing files every rank reads)."""
    if not is_main():
        barrier()
    yield
    if is_main():
        barrier()


def all_reduce_(t: torch.Tensor) -> torch.Tensor:
    """Sum ``t`` over ranks, in place; returns it (unchanged single-process)."""
    if active():
        td.all_reduce(t)
    return t


def share_of_total(count: torch.Tensor) -> torch.Tensor:
    """A count over this rank's share of a batch, summed over the ranks and divided by their number (``count``
    itself single-process), as a detached float. A rank's sum divided by it, averaged over the ranks (as DDP
    averages gradients), is the sum over the total batch divided by the total count: count-normalised losses
    then give the single-process value whatever the number of processes."""
    count = count.detach().float().clone()
    return all_reduce_(count) / world_size() if active() else count


def sum_over_ranks(x: np.ndarray | None) -> np.ndarray | None:
    """The elementwise sum over ranks of a NumPy array (e.g. a confusion matrix), exact for integers; a rank
    with nothing to add passes None. One all_gather of the pickled arrays (small: histograms, counts).
    Returns the sum on every rank (None when every rank passed None); ``x`` itself single-process."""
    if not active():
        return x
    parts: list[np.ndarray | None] = [None] * world_size()
    td.all_gather_object(parts, x)
    parts = [p for p in parts if p is not None]
    return sum(parts[1:], parts[0].copy()) if parts else None


def destroy() -> None:
    """Leave the process group (no-op when none)."""
    if td.is_initialized():
        td.destroy_process_group()


def reseed_globals(seed: int, n_iter: int) -> None:
    """Seed torch's global generators (dropout, drop path draw from them) for one training iteration on this
    rank from (seed, iteration, rank), so that a run resumed after an interruption draws what the straight run
    drew (the resume state does not hold the generators' states)."""
    torch.manual_seed(int(np.random.SeedSequence([seed, n_iter, rank(), 1]).generate_state(1)[0]))


def iteration_generator(seed: int, n_iter: int) -> torch.Generator:
    """A CPU generator for one training iteration's random choices on this rank, seeded by (seed, iteration,
    rank), so a resumed run draws the same."""
    state = np.random.SeedSequence([seed, n_iter, rank()]).generate_state(1)[0]
    return torch.Generator().manual_seed(int(state))


class RankShuffle(DistributedSampler):
    """The training order of every world size: each epoch a permutation of the dataset from (seed, epoch),
    rank r taking its positions r, r + W, ... (DistributedSampler with drop_last). Batched per rank by
    total_batch / W, the union over ranks of the ranks' k-th batches is the k-th batch of the
    single-process order (the same permutation cut into total_batch pieces), and every rank takes
    floor(N / total_batch) batches, so the optimiser steps and the poly schedule do not depend on W.

    Yields keys ``(seed, epoch, index)`` for ``PerItemSeed``; call ``set_epoch`` before each epoch.
    """

    def __init__(self, n: int, seed: int):
        super().__init__(range(n), num_replicas=world_size(), rank=rank(), shuffle=True, seed=seed, drop_last=True)

    def __iter__(self) -> Iterator[tuple[int, int, int]]:
        for i in super().__iter__():
            yield self.seed, self.epoch, i


class PerItemSeed(Dataset):
    """Wraps a Dataset whose augmentation draws from NumPy's and Python's global generators: item
    ``(*salt, i)`` is ``data[i]`` drawn right after seeding both from ``(*salt, i)``. Augmentation then
    depends only on the key (e.g. seed, epoch, index), not on the loader worker or the rank that draws it."""

    def __init__(self, data: Dataset):
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, key: tuple[int, ...]) -> object:
        state = np.random.SeedSequence([int(k) for k in key]).generate_state(2)
        np.random.seed(state[0])
        random.seed(int(state[1]))
        return self.data[key[-1]]
