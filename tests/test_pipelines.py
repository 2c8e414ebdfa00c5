"""Every method's toy pipeline runs end to end on CPU and writes the common artifacts its steps make: seeds in
the seed format, IR labels and IRNet (pipelines with the IRN stage), pseudo labels / segmentations, the
evaluation JSONs and pictures. A pipeline check; test_end_to_end holds IRN's toy numbers, and for the methods in
BEATS the seeds (best threshold of eval_cam) must beat the all-background and the whole-image baselines on the
evaluated ids by the given mIoU margins (measured numbers in their docs/methods pages).

A method joins by adding one line to REUSED: the method whose toy run (in this session) lends it its shared
outputs (meta/ and sess/, IRNet's weights left out), and the steps whose outputs it takes from there instead
of recomputing them (the classifier, for the methods that share one). The checks of IR labels and IRNet
apply to the pipelines that have those steps; pseudo labels may hold 255 (ignore) unless they come from
the random walk, and a segmentation network may predict any class."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import run_sample
from misc.imutils import read_label_png
from misc.io import load_cam, load_cls_labels, read_id_list
from misc.metrics import confusion_matrix, iou_from_confusion
from voc12.dataloader import VOC12

REUSED = {
    "irn": None,  # the session's toy run itself (conftest.toy_run)
    "rib": ("irn", ("train_cam",)),
    "drs": ("irn", ()),  # its own networks; the IRN run lends the labels and lists
    "drs_irn": ("drs", ("train_drs_cls",)),  # DRS's classifier; IRN's toy classifier is IRNet's backbone (toy)
    "toco": ("irn", ()),  # single-stage: only the labels and lists are shared
    "pufs": ("irn", ()),
    "rsepm": ("irn", ()),  # its own network; the IRN run lends the labels and lists
    "rsepm_irn": ("rsepm", ("train_rsepm",)),  # RS+EPM's trained network, seeds through the IRN stage
}
_RUNS: dict[tuple[Path, str], list[str]] = {}  # (toy run, method) -> flags of its finished run

# mIoU margins (fractions) by which a method's toy seeds must beat the baselines (all background, whole image).
# Measured with the toy recipe (docs/methods/toco_pufs.md): ToCo 0.153, PUFS 0.171 against 0.040 and 0.122
# (0.162 and 0.200 with the per-image crop / mask generators of the torchrun-parity change).
BEATS = {"toco": (0.08, 0.01), "pufs": (0.08, 0.01)}
# RS+EPM (docs/methods/rsepm.md): seeds 0.338 (seed 0; 0.285-0.392 over seeds 0-2) against 0.040 and 0.120;
# rsepm_irn writes the same seeds
BEATS["rsepm"] = BEATS["rsepm_irn"] = (0.25, 0.15)
# the toy ViT's small tensors: one intra-op thread is faster on 2 shared cores (RS+EPM: its measured numbers)
SINGLE_THREAD = {"toco", "pufs", "rsepm", "rsepm_irn"}


def baselines(root: Path, ids: list[str], labels: dict[str, np.ndarray]) -> dict[str, float]:
    """mIoU of the all-background prediction and of the whole-image one (every pixel the image's first class)."""
    ds = VOC12(root)
    n = ds.num_classes + 1
    conf = {"background": np.zeros((n, n), np.int64), "whole image": np.zeros((n, n), np.int64)}
    for i in ids:
        gt = ds.read_gt(i)
        conf["background"] += confusion_matrix(gt, np.zeros_like(gt), n)
        conf["whole image"] += confusion_matrix(gt, np.full_like(gt, np.flatnonzero(labels[i])[0] + 1), n)
    return {k: float(np.nanmean(iou_from_confusion(c))) for k, c in conf.items()}


def test_every_method_has_a_line():
    assert set(REUSED) == set(run_sample.PIPELINES)


def run_method(toy_run: Path, tmp_path_factory, method: str) -> list[str]:
    """The toy pipeline of ``method`` (run once per session) in a fresh work folder holding the shared outputs of
    its REUSED source's run (itself run first when needed). Returns its flags."""
    if REUSED[method] is None:
        return ["--work_dir", str(toy_run), "--toy_root", str(toy_run.parent / "toy_voc"), "--draw_num", "3"]
    if (toy_run, method) not in _RUNS:
        source, skipped = REUSED[method]
        src = Path(run_sample.parse_args(run_method(toy_run, tmp_path_factory, source)).work_dir)
        work = tmp_path_factory.mktemp(method) / "work"
        shutil.copytree(src / "meta", work / "meta")
        shutil.copytree(src / "sess", work / "sess", ignore=lambda d, names: [n for n in names if "irn" in n])
        argv = ["--method", method, "--work_dir", str(work), "--toy_root", str(toy_run.parent / "toy_voc"),
                "--draw_num", "2"] + [a for s in skipped for a in (f"--{s}_pass", "False")]
        threads = torch.get_num_threads()
        if method in SINGLE_THREAD:
            torch.set_num_threads(1)
        try:
            run_sample.main(argv)
        finally:
            torch.set_num_threads(threads)
        _RUNS[toy_run, method] = argv
    return _RUNS[toy_run, method]


@pytest.mark.parametrize("method", list(REUSED))
def test_toy_pipeline(toy_run, tmp_path_factory, method):
    argv = run_method(toy_run, tmp_path_factory, method)
    args = run_sample.parse_args(argv)
    steps = run_sample.PIPELINES[method]
    work = Path(args.work_dir)
    out = {k: work / getattr(args, k) for k in ("cam_out_dir", "ir_label_out_dir", "irn_weights_name",
                                                 "sem_seg_out_dir", "eval_out_dir", "draw_out_dir")}
    labels = load_cls_labels(work / "meta" / "cls_labels.json", 20)
    single_stage = "infer_single_stage" in steps  # seeds and segmentation of --infer_list from one network
    seeded = read_id_list(work / "meta" / f"{args.infer_list if single_stage else args.train_list}.txt")
    infer = read_id_list(work / "meta" / f"{args.infer_list}.txt")
    assert {p.stem for p in out["cam_out_dir"].glob("*.npz")} == set(seeded)
    for i in seeded[:20]:  # the common seed format
        seed = load_cam(out["cam_out_dir"], i)
        np.testing.assert_array_equal(seed["keys"], np.flatnonzero(labels[i]))
        (h, w), k = seed["high_res"].shape[1:], len(seed["keys"])
        assert seed["cam"].shape == (k, (h - 1) // 4 + 1, (w - 1) // 4 + 1) and seed["cam"].dtype == np.float32
        peak = seed["high_res"].max((1, 2))  # 0: a class whose map is nowhere positive (ReLU'd CAMs)
        assert np.all(peak <= 1)
        # RS+EPM's seeds are softmax maps divided by max + 1e-5 (released): a class of peak ~1e-3 stays below 0.99
        assert method.startswith("rsepm") or np.all((peak > 0.99) | (peak == 0))
        if "cam_to_ir_label" in steps:
            ir = read_label_png(out["ir_label_out_dir"] / f"{i}.png")
            assert ir.shape == (h, w) and set(np.unique(ir)) <= {0, 255} | set(seed["keys"] + 1)
    assert out["irn_weights_name"].is_file() == ("train_irn" in steps)
    assert {p.stem for p in out["sem_seg_out_dir"].glob("*.png")} == set(infer)
    for i in infer[:20]:
        present = {0} | set(np.flatnonzero(labels[i]) + 1)
        allowed = (set(range(21)) if single_stage else present if "make_sem_seg_labels" in steps
                   else present | {255})
        assert set(np.unique(read_label_png(out["sem_seg_out_dir"] / f"{i}.png"))) <= allowed
    for name in ("eval_cam", "eval_sem_seg") + (("eval_ir_label",) if "cam_to_ir_label" in steps else ()):
        assert (out["eval_out_dir"] / f"{name}.json").is_file()
    evaluated = read_id_list(work / "meta" / f"{args.eval_list}.txt")
    sem = json.loads((out["eval_out_dir"] / "eval_sem_seg.json").read_text())
    assert sem["num_images"] == len(evaluated) and 0 < sem["miou"] <= 1
    cam = json.loads((out["eval_out_dir"] / "eval_cam.json").read_text())
    assert cam["num_images"] == len(evaluated) and 0 < cam["best"]["miou"] <= 1
    if method in BEATS:
        base = baselines(Path(args.toy_root), evaluated, labels)
        print(f"{method} toy: segmentation mIoU {sem['miou']:.4f}, seeds best {cam['best']['miou']:.4f}, "
              f"baselines {base}")
        bg, whole = BEATS[method]
        assert cam["best"]["miou"] > base["background"] + bg, (cam["best"], base)
        assert cam["best"]["miou"] > base["whole image"] + whole, (cam["best"], base)
        # the toy segmentation is at the all-background level (measured 0.0403 / 0.0398): not garbage below it.
        # Why not above: the toy ViT does not learn the classes (docs/methods/toco_pufs.md, measured)
        assert sem["miou"] >= base["background"] - 0.005, (sem["miou"], base)
    assert len(list(out["draw_out_dir"].glob("*.png"))) == args.draw_num


def test_drs_toy_seeds_and_saliency_pseudo_labels_beat_baselines(toy_run, tmp_path_factory):
    args = run_sample.parse_args(run_method(toy_run, tmp_path_factory, "drs"))
    work = Path(args.work_dir)
    cam = json.loads((work / args.eval_out_dir / "eval_cam.json").read_text())["best"]["miou"]
    sem = json.loads((work / args.eval_out_dir / "eval_sem_seg.json").read_text())["miou"]
    evaluated = read_id_list(work / "meta" / f"{args.eval_list}.txt")
    base = baselines(Path(args.toy_root), evaluated, load_cls_labels(work / "meta" / "cls_labels.json", 20))
    print(f"drs toy: seeds {cam:.4f}, pseudo labels {sem:.4f}, baselines {base}")
    # measured (docs/methods/drs.md, Toy results): seeds 0.219 / 0.205, pseudo labels 0.227 / 0.176 (one / two
    # intra-op threads; the previous recipe: 0.190 / 0.189 and 0.201 / 0.180), baselines 0.040 and 0.120. The toy
    # refinement net underfits its target and does not reliably lift the pseudo labels above the seeds (diagnosis
    # on the docs page), so only the baselines are asserted for them.
    assert cam > base["background"] + 0.1 and cam > base["whole image"] + 0.04, (cam, base)
    assert sem > base["background"] + 0.1 and sem > base["whole image"] + 0.04, (sem, base)
