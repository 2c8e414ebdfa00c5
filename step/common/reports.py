"""Warnings about degenerate output, printed by the steps so a run cannot fail silently: seeds that are
empty (``EmptySeeds``, for every seed maker), classes an evaluation never predicts (``say_never_predicted``)
and classes with fewer than a handful of training images (``warn_rare_classes``)."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from misc import dist
from step.common.parallel import say

EMPTY_PEAK = 1e-3  # a normalised class map whose peak is below this is all zero (raw max < 1e-8)
FEW_IMAGES = 5  # a class with fewer training images than this gets a warning


class EmptySeeds:
    """Counts the empty class maps of a seed step: ``add(maps)`` per image written, ``report(step)`` once
    at the end (on every rank: the counts are summed over ranks, rank 0 prints one line)."""

    def __init__(self) -> None:
        self.counts = np.zeros(4, np.int64)  # class maps, empty maps, images with a class, images with an empty one

    def add(self, maps: torch.Tensor | np.ndarray) -> None:
        """One image's seed: (K, ...) max-normalised class maps (K = 0: background only, not counted)."""
        if len(maps) == 0:
            return
        if isinstance(maps, torch.Tensor):
            peaks = maps.detach().flatten(1).amax(1).float().cpu().numpy()
        else:
            peaks = np.asarray(maps).reshape(len(maps), -1).max(1)
        empty = int((peaks < EMPTY_PEAK).sum())
        self.counts += (len(peaks), empty, 1, empty > 0)

    def report(self, step: str) -> int:
        """Say how many seed maps are empty (a warning when any is). Returns that number, over all ranks."""
        maps, empty, images, bad = (int(v) for v in dist.sum_over_ranks(self.counts))
        if empty:
            say(f"{step}: warning: {empty} of {maps} class seed maps are empty (all zero), in {bad} of {images} "
                "images; the classifier finds nothing of those classes there (over-fitted or under-trained: check "
                "its training, the data and the labels before using these seeds)")
        else:
            say(f"{step}: no empty seed ({maps} class maps in {images} images)")
        return empty


def say_never_predicted(step: str, names: Sequence[str], classes: Sequence[int], where: str = "") -> list[str]:
    """Warn about ``classes`` (indices into ``names``), present in the GT and never predicted
    (``misc.metrics.never_predicted``); ``where`` qualifies the line (e.g. ' at threshold 0.15'). Returns
    their names."""
    missed = [names[c] for c in classes]
    if missed:
        say(f"{step}: warning: {len(missed)} classes present in the GT are never predicted{where}: "
            f"{', '.join(missed)}")
    return missed


def warn_rare_classes(step: str, names: Sequence[str], labels: dict[str, np.ndarray], ids: Sequence[str],
                      list_name: str) -> dict[str, int]:
    """Warn about the classes with fewer than FEW_IMAGES images among ``ids`` (labels: {id: (C,) multi-hot},
    ``list_name`` names the list). Returns {class name: image count} of those classes."""
    counts = np.sum([labels[i] > 0 for i in ids], 0) if ids else np.zeros(len(names), np.int64)
    rare = {names[c]: int(n) for c, n in enumerate(counts) if n < FEW_IMAGES}
    if rare:
        say(f"{step}: warning: {len(rare)} classes have fewer than {FEW_IMAGES} training images in --train_list "
            f"{list_name}: " + ", ".join(f"{k} {v}" for k, v in rare.items())
            + "; their seeds and labels will be unreliable")
    return rare
