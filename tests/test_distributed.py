"""torchrun with 2 CPU processes (gloo) against one process on the same inputs: make-step outputs are
identical, one DDP optimiser step gives the single-process weights, eval reduces to the same confusion.

IRN's recipe (frozen BatchNorm; IRNet's branches use GroupNorm) on a full-size ResNet-50 with random
"ImageNet" weights and tiny images, so DDP parity is exact up to float summation order.
"""
from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def _flags(mini_voc: Path, weights: Path, work: Path, val: Path) -> list[str]:
    return ["--voc12_root", str(mini_voc), "--work_dir", str(work), "--pretrained_weights", str(weights),
            "--train_list", "train", "--infer_list", "train", "--eval_list", "train", "--val_list", str(val),
            "--cam_crop_size", "64", "--cam_resize_long", "64", "96", "--cam_batch_size", "8",
            "--cam_num_epoches", "1", "--cam_scales", "1.0", "0.5",
            "--cam_batch_images", "3", "--irn_crop_size", "96", "--irn_batch_size", "8", "--irn_num_epoches", "1",
            "--sem_seg_batch_images", "3", "--crf_iters", "2",
            "--crf_num_workers", "1", "--draw_pass", "False"]


def _torchrun(*argv: str) -> None:
    env = {**os.environ, "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                        *argv], cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]


@pytest.fixture(scope="module")
def runs(mini_voc, tmp_path_factory) -> tuple[list[str], Path, Path]:
    """The whole pipeline under torchrun with 2 processes (work 'two'), then each step once more in this
    single process (work 'one', one thread like each torchrun process) on the two-process run's inputs:
    its classifier, seeds, IR labels, IRNet, pseudo labels. Returns (flags of 'two', one, two)."""
    import run_sample
    from misc.io import write_id_list
    from net.resnet50 import ResNet50

    tmp = tmp_path_factory.mktemp("ddp")
    torch.manual_seed(0)
    trunk = ResNet50()
    for name, p in trunk.named_parameters():  # tame the un-normalised random trunk (frozen BN = identity)
        if ".bn" in name and name.endswith("weight") or "downsample.1.weight" in name:
            p.data.fill_(0.5)
    torch.save(trunk.state_dict(), tmp / "imagenet.pth")
    write_id_list(tmp / "val.txt", [f"toy_{i:06d}" for i in range(30, 34)])
    one, two = tmp / "one", tmp / "two"
    flags = _flags(mini_voc, tmp / "imagenet.pth", two, tmp / "val.txt")
    _torchrun("run_sample.py", *flags, "--num_workers", "1")
    single = _flags(mini_voc, tmp / "imagenet.pth", one, tmp / "val.txt") + ["--num_workers", "0"]
    inputs = {"train_cam": [],
              "make_cam": ["--cam_weights_name", str(two / "sess" / "res50_cam.pth")],
              "eval_cam": ["--cam_out_dir", str(two / "cam")],
              "cam_to_ir_label": ["--cam_out_dir", str(two / "cam")],
              "train_irn": ["--ir_label_out_dir", str(two / "ir_label")],
              "make_sem_seg_labels": ["--cam_out_dir", str(two / "cam"),
                                      "--irn_weights_name", str(two / "sess" / "res50_irn.pth")],
              "eval_sem_seg": ["--sem_seg_out_dir", str(two / "sem_seg")]}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the torchrun processes run one thread each: same kernels, same rounding
    try:
        for step, extra in inputs.items():
            importlib.import_module(f"step.{step}").run(run_sample.parse_args(single + extra))
    finally:
        torch.set_num_threads(threads)
    return flags, one, two


def _assert_same_weights(a: Path, b: Path) -> dict[str, torch.Tensor]:
    """The two state_dicts agree to float summation order; returns b's."""
    sa, sb = torch.load(a, weights_only=True), torch.load(b, weights_only=True)
    assert sa.keys() == sb.keys()
    for k in sa:
        torch.testing.assert_close(sb[k], sa[k], rtol=1e-5, atol=1e-6, msg=k)
    return sb


def test_ddp_train_cam_step_equals_single_process(runs):
    import run_sample
    from misc.torchutils import seed_everything
    from step.common.models import classifier

    flags, one, two = runs
    trained = _assert_same_weights(one / "sess" / "res50_cam.pth", two / "sess" / "res50_cam.pth")
    seed_everything(0)  # train_cam builds the classifier right after seeding
    start = classifier(run_sample.parse_args(flags), 20).state_dict()
    # the step moved it 100x the tolerance
    assert (trained["classifier.weight"] - start["classifier.weight"]).abs().max() > 1e-4
    imagenet = torch.load(Path(flags[flags.index("--pretrained_weights") + 1]), weights_only=True)
    assert torch.equal(trained["resnet50.layer1.0.conv1.weight"], imagenet["layer1.0.conv1.weight"])  # frozen stage


def test_ddp_train_irn_step_and_mean_shift_equal_single_process(runs):
    _, one, two = runs
    trained = _assert_same_weights(one / "sess" / "res50_irn.pth", two / "sess" / "res50_irn.pth")
    assert trained["mean_shift.running_mean"].abs().max() > 0  # calibrated over both ranks' shares


@pytest.mark.parametrize("folder", ["cam", "ir_label", "sem_seg"])
def test_make_steps_identical_to_single_process(runs, folder):
    from misc.imutils import read_label_png
    from misc.io import read_id_list

    _, one, two = runs
    ids = read_id_list(one / "meta" / "train.txt")
    files = sorted((two / folder).iterdir())
    assert [p.stem for p in files] == sorted(ids)  # no gap, no extra file, no temporary left
    for p in files:
        if p.suffix == ".npz":
            a, b = np.load(one / folder / p.name), np.load(p)
            for k in ("keys", "cam", "high_res"):
                np.testing.assert_array_equal(b[k], a[k])
        else:
            np.testing.assert_array_equal(read_label_png(p), read_label_png(one / folder / p.name))


@pytest.mark.parametrize("name", ["eval_cam.json", "eval_ir_label.json", "eval_sem_seg.json"])
def test_eval_over_two_ranks_equals_single_process(runs, name):
    _, one, two = runs
    assert json.loads((two / "eval" / name).read_text()) == json.loads((one / "eval" / name).read_text())
    assert json.loads((two / "config.run_sample.json").read_text())["world_size"] == 2


def test_step_module_under_torchrun_resumes_per_rank(runs):
    """python -m step.make_cam under torchrun: delete two seeds (one in each rank's share); the rerun
    writes exactly those."""
    flags, _, two = runs
    files = sorted((two / "cam").glob("*.npz"))
    before = {p: p.stat().st_mtime_ns for p in files}
    for p in files[:2]:
        p.unlink()
    _torchrun("-m", "step.make_cam", *flags)
    after = {p: p.stat().st_mtime_ns for p in (two / "cam").glob("*.npz")}
    assert after.keys() == before.keys()
    assert [p for p in files if after[p] != before[p]] == files[:2]


def test_total_batch_must_divide_by_world(monkeypatch):
    from misc.errors import UserError
    from step.common.parallel import rank_batch

    monkeypatch.setenv("WORLD_SIZE", "2")
    assert rank_batch(8, "--irn_batch_size") == 4
    with pytest.raises(UserError, match="--irn_batch_size 7: not divisible by the 2 torchrun processes"):
        rank_batch(7, "--irn_batch_size")


@pytest.mark.parametrize("method", ["toco", "pufs"])
def test_ddp_single_stage_training_equals_single_process(single_stage_tiny, tmp_path, method):
    """train_single_stage under torchrun with 2 processes (total batch 4, 2 per process; conftest's tiny ViT, the
    seg and CRF losses on from the third iteration) ends with the single-process weights: each image's crop
    positions or mask noise do not depend on the process, the split seg loss and the patch-token contrast count
    pixels and pairs over the total batch, PUFS's FSR centres are all-reduced. Drop path off (drawn per
    process)."""
    import run_sample
    from misc.torchutils import seed_everything
    from step import train_single_stage
    from step.common.single_stage import build_network

    flags = single_stage_tiny + ["--method", method, "--ss_drop_path", "0"]
    _torchrun("-m", "step.train_single_stage", *flags, "--ss_weights_name", str(tmp_path / "two.pth"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train_single_stage.run(run_sample.parse_args(flags + ["--ss_weights_name", str(tmp_path / "one.pth")]))
    finally:
        torch.set_num_threads(threads)
    trained = _assert_same_weights(tmp_path / "one.pth", tmp_path / "two.pth")
    seed_everything(0)  # train_single_stage builds the network right after seeding
    start = build_network(run_sample.parse_args(flags), 20, train=True).state_dict()
    prefix = "" if method == "toco" else "student."
    for key in ("decoder.conv8.weight", "encoder.blocks.0.attn.qkv.weight"):  # moved 10x the tolerance
        assert (trained[prefix + key] - start[key]).abs().max() > 1e-5, key
