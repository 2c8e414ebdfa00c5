"""Random walk: the 69-point stencil (misc.randomwalk.random_walk) vs IRN's dense n x n transition matrix
squared 8 times (dense_random_walk), same inputs: K=3 random class maps and a random boundary map.

    python -m bench.bench_random_walk [--device auto] [--sizes 32x40 64x80 ...] [--dense_max_pixels 6000]

Prints per size: n = h·w, both times (ms) and their ratio ('ratio' = dense / stencil), memory, and
errors: 'st-dn' is the max difference of the two walks relative to the dense result's max; 'st err' and
'dn err' are each walk's error against a float64 stencil walk (the tests tie that one to the float64
dense walk within 1e-10), relative the same way. Memory: 'n×n MB' is one float32 n x n matrix, computed
(the dense walk holds at least two while squaring); 'stencil MB' is the stencil's fp32 working set,
computed (68 weight planes + padded buffer + 2 temporaries); on CUDA both walks' peaks are also measured
with torch.cuda.max_memory_allocated. Sizes with more than --dense_max_pixels pixels run the stencil only
(dense columns show '-').
"""
from __future__ import annotations

import argparse
import time
from typing import Callable

import torch

from misc.randomwalk import dense_random_walk, random_walk
from misc.torchutils import pick_device

DEFAULT_SIZES = ("16x20", "24x32", "32x40", "48x60", "64x80", "94x125")


def _timed(fn: Callable[[], torch.Tensor], device: torch.device) -> tuple[torch.Tensor, float, float]:
    """Run fn once. Returns (output, milliseconds, peak CUDA MB above the starting allocation; nan on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    t = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    ms = (time.perf_counter() - t) * 1e3
    peak = (torch.cuda.max_memory_allocated(device) - base) / 2**20 if device.type == "cuda" else float("nan")
    return out, ms, peak


def _rel(a: torch.Tensor, ref: torch.Tensor) -> float:
    """max |a - ref| / max |ref|, in float64."""
    a, ref = a.double(), ref.double()
    return ((a - ref).abs().max() / ref.abs().max()).item()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", type=str, default="auto")
    p.add_argument("--sizes", nargs="+", default=list(DEFAULT_SIZES), help="HxW sizes of the boundary map")
    p.add_argument("--classes", type=int, default=3)
    p.add_argument("--dense_max_pixels", type=int, default=6000)
    a = p.parse_args()
    device = pick_device(a.device)
    gen = torch.Generator().manual_seed(0)
    warm = torch.rand(1, 4, 4, device=device), torch.rand(4, 4, device=device)
    random_walk(*warm), dense_random_walk(*warm)  # warm-up (kernels, allocator)
    print(f"device: {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'}, "
          f"{torch.get_num_threads()} threads, K={a.classes}, radius 5, beta 10, t=256, float32")
    cuda = device.type == "cuda"
    head = f"{'size':>8}{'n':>7}{'stencil ms':>12}{'dense ms':>11}{'ratio':>8}{'n×n MB':>9}{'stencil MB':>12}"
    peaks = f"{'peak st MB':>12}{'peak dn MB':>12}" if cuda else ""
    print(head + peaks + f"{'st-dn':>10}{'st err':>10}{'dn err':>10}")
    for size in a.sizes:
        h, w = (int(v) for v in size.lower().split("x"))
        n = h * w
        x = torch.rand(a.classes, h, w, generator=gen).to(device)
        edge = torch.rand(h, w, generator=gen).pow(2).to(device)
        st, st_ms, st_peak = _timed(lambda: random_walk(x, edge), device)
        exact = random_walk(x.double(), edge.double())
        st_mb = 4 * (68 * n + a.classes * (h + 8) * (w + 8) + 2 * a.classes * n) / 2**20
        if n <= a.dense_max_pixels:
            dn, dn_ms, dn_peak = _timed(lambda: dense_random_walk(x, edge), device)
            dense_cols = f"{dn_ms:>11.1f}{dn_ms / st_ms:>8.2f}"
            tail = ((f"{st_peak:>12.1f}{dn_peak:>12.1f}" if cuda else "")
                    + f"{_rel(st, dn):>10.1e}{_rel(st, exact):>10.1e}{_rel(dn, exact):>10.1e}")
        else:
            dense_cols = f"{'-':>11}{'-':>8}"
            tail = (f"{st_peak:>12.1f}{'-':>12}" if cuda else "") + f"{'-':>10}{_rel(st, exact):>10.1e}{'-':>10}"
        print(f"{size:>8}{n:>7}{st_ms:>12.1f}{dense_cols}{4 * n * n / 2**20:>9.1f}{st_mb:>12.2f}{tail}")


if __name__ == "__main__":
    main()
