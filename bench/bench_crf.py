"""cam_to_ir_label throughput against the process-pool size (--crf_num_workers), same inputs.

    python -m bench.bench_crf [--n_images 24] [--pools 1 2 4] [--size 500x375]

Inputs: toy scenes rendered at --size (VOC-sized by default) with two synthetic seed maps each (smooth
blobs, max-normalised). Each pool size runs the whole confident_labels work (two dense CRF passes with
IRN's settings) over the same images; the table gives images/s and the speed-up over one process.
"""
from __future__ import annotations

import argparse
import os
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np

from misc.crf import confident_labels
from misc.toy import render_scene


def _inputs(n: int, h: int, w: int) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """n (image uint8 (h, w, 3), seeds float32 (2, h, w), keys (2,)) triples, deterministic."""
    rng = np.random.default_rng(0)
    ys, xs = np.mgrid[:h, :w]
    out = []
    for i in range(n):
        img = render_scene(rng, 20, (h, w))[0]
        seeds = []
        for _ in range(2):
            cy, cx, r = rng.uniform(0.2, 0.8) * h, rng.uniform(0.2, 0.8) * w, rng.uniform(0.1, 0.3) * min(h, w)
            seeds.append(np.exp(-((ys - cy) ** 2 + (xs - cx) ** 2) / (2 * r * r)))
        out.append((img, np.stack(seeds).astype(np.float32), np.array([i % 20, (i + 7) % 20])))
    return out


def _one(item: tuple[np.ndarray, np.ndarray, np.ndarray]) -> int:
    img, seeds, keys = item
    return int(confident_labels(img, seeds, keys, 0.30, 0.05).sum())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n_images", type=int, default=24)
    p.add_argument("--pools", type=int, nargs="+", default=sorted({1, 2, os.cpu_count() or 1}))
    p.add_argument("--size", type=str, default="500x375", help="WxH of the images")
    a = p.parse_args()
    w, h = (int(v) for v in a.size.lower().split("x"))
    items = _inputs(a.n_images, h, w)
    print(f"{a.n_images} images of {w}x{h}, {os.cpu_count()} CPU cores, two dense CRF passes per image")
    print(f"{'pool':>6}{'images/s':>11}{'speed-up':>10}")
    base, reference = None, None
    for pool in a.pools:
        t = time.perf_counter()
        if pool == 1:
            sums = [_one(it) for it in items]
        else:
            with ProcessPoolExecutor(pool) as ex:
                sums = list(ex.map(_one, items, chunksize=2))
        rate = a.n_images / (time.perf_counter() - t)
        base, reference = base or rate, reference or sums
        if sums != reference:
            raise RuntimeError(f"pool {pool} gave other labels than pool {a.pools[0]}")
        print(f"{pool:>6}{rate:>11.2f}{rate / base:>10.2f}")


if __name__ == "__main__":
    main()
