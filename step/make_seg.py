"""Label images with the trained segmentation network: multi-scale + flip inference, optional dense CRF.

    python -m step.make_seg [flags of run_sample.py]      # or run_sample.py --seg True

For every id of --seg_eval_list (default val): the softmax averaged over --seg_test_scales (and their flips
with --seg_test_flip; v2's 0.5/0.75 max fusion is inside the network), upsampled to the image; its argmax
goes to ``<seg_out_dir>/<id>.png`` and, with --seg_crf, the argmax of DeepLab's dense CRF on those
probabilities (10 mean-field iterations, Gaussian 3/1, bilateral 4/67/3; no image-level labels are used) to
``<seg_crf_out_dir>/<id>.png``, both palette PNGs of class ids (0 background). The CRF runs in a process pool
of --crf_num_workers. The ids of --seg_test_list (VOC test) go to
``<seg_out_dir>_server/results/VOC2012/Segmentation/comp6_test_cls/<id>.png`` (and the same under
``<seg_crf_out_dir>_server``): tar ``results/`` for the VOC evaluation server (comp6: trained with data
beyond VOC, here the ImageNet initialisation). Ids whose outputs exist are skipped unless --overwrite.
Under torchrun each rank labels its share of the same-size batches.
"""
from __future__ import annotations

import argparse
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch

from misc.dataset_spec import DatasetSpec
from misc.io import AsyncWriter, save_png
from misc.segmentation import DEEPLAB_CRF, dense_crf
from misc.torchutils import pick_device
from step.common.data import get_dataset, load_list, out_path
from step.common.entry import step_main
from step.common.parallel import pending, place, say
from step.common.seg import predict, trained_segmentation_network

SECTIONS = ("run", "data", "toy", "ir_label", "seg")  # the flag sections it reads

SERVER_DIR = Path("results/VOC2012/Segmentation/comp6_test_cls")  # the VOC evaluation server's layout


def crf_label(img: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """The argmax of DeepLab's dense CRF (``misc.segmentation.DEEPLAB_CRF``) on ``probs`` (C, H, W) for the
    uint8 (H, W, 3) image. Returns uint8 (H, W) class ids."""
    return dense_crf(img, probs, **DEEPLAB_CRF).argmax(0).astype(np.uint8)


def _crf_png(path: Path, img: np.ndarray, probs: np.ndarray, palette: np.ndarray) -> None:
    save_png(path, crf_label(img, probs), palette)


def label_folders(args: argparse.Namespace) -> list[tuple[str, Path, Path | None]]:
    """(id list, argmax folder, CRF folder or None) of every list make_seg labels: --seg_eval_list into
    --seg_out_dir / --seg_crf_out_dir, and --seg_test_list into their ``_server`` layout."""
    out, crf = out_path(args, args.seg_out_dir), out_path(args, args.seg_crf_out_dir)
    folders = [(args.seg_eval_list, out, crf if args.seg_crf else None)]
    if args.seg_test_list is not None:
        server = [p.with_name(p.name + "_server") / SERVER_DIR for p in (out, crf)]
        folders.append((args.seg_test_list, server[0], server[1] if args.seg_crf else None))
    return folders


def _started(workers: int) -> ProcessPoolExecutor:
    """A process pool whose ``workers`` processes are all started now: forked before this process runs the
    network, its loader and its writer threads (a fork of a process with threads holding locks can hang)."""
    pool = ProcessPoolExecutor(workers)
    for f in [pool.submit(int, 0) for _ in range(workers)]:
        f.result()
    return pool


def run(args: argparse.Namespace) -> None:
    """Write the labels of every id of the lists that has none yet."""
    pool = _started(args.crf_num_workers) if args.seg_crf and args.crf_num_workers > 1 else None
    device = pick_device(args.device)
    ds = get_dataset(args)
    model, style = trained_segmentation_network(args, ds.num_classes)
    model = place(model, device, False)
    try:
        for list_name, out_dir, crf_dir in label_folders(args):
            _label(args, ds, model, style, device, list_name, out_dir, crf_dir, pool)
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)


def _label(args: argparse.Namespace, ds: DatasetSpec, model: torch.nn.Module, style: str, device: torch.device,
           list_name: str, out_dir: Path, crf_dir: Path | None, pool: ProcessPoolExecutor | None) -> None:
    """Label the ids of ``list_name`` that are not done into ``out_dir`` (and the CRF labels into ``crf_dir``,
    in ``pool`` when given)."""
    ids = load_list(args, list_name)
    todo = pending(ids, lambda i: (out_dir / f"{i}.png").is_file()
                   and (crf_dir is None or (crf_dir / f"{i}.png").is_file()), args.overwrite)
    running: list[Future] = []
    with AsyncWriter() as writer:
        for name, probs, img in predict(model, ds, todo, style, tuple(args.seg_test_scales), args.seg_test_flip,
                                        args.seg_batch_images, args.num_workers, device, "make_seg"):
            writer.submit(save_png, out_dir / f"{name}.png", probs.argmax(0).astype(np.uint8), ds.palette)
            if crf_dir is None:
                continue
            if pool is None:
                _crf_png(crf_dir / f"{name}.png", img, probs, ds.palette)
                continue
            running.append(pool.submit(_crf_png, crf_dir / f"{name}.png", img, probs, ds.palette))
            if len(running) >= 2 * args.crf_num_workers:  # bound the probabilities in flight
                running.pop(0).result()
    for f in running:
        f.result()
    say(f"make_seg: {len(todo)} images of {list_name} ({len(ids) - len(todo)} existed) -> {out_dir}"
        + (f" and {crf_dir}" if crf_dir is not None else ""))


if __name__ == "__main__":
    step_main("make_seg")
