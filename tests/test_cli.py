"""Flags are typed, toy defaults resolve, and user errors end in one line naming the file."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import run_sample
from misc.errors import UserError
from net.resnet50_cam import Net
from step.common.checkpoints import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]


def test_pass_flags_are_real_booleans():
    a = run_sample.parse_args(["--train_cam_pass", "False", "--make_cam_pass", "true"])
    assert a.train_cam_pass is False and a.make_cam_pass is True and a.eval_cam_pass is True
    with pytest.raises(SystemExit):
        run_sample.parse_args(["--train_cam_pass", "maybe"])


def test_toy_recipe_applies_only_to_flags_not_given():
    a = run_sample.parse_args(["--cam_num_epoches", "3"])
    assert a.toy and a.recipe == "scratch" and a.cam_num_epoches == 3
    assert a.backbone_width == run_sample.TOY_RECIPE["backbone_width"]
    b = run_sample.parse_args(["--voc12_root", "x", "--cam_eval_thres", "0.2"])
    assert not b.toy and b.recipe == "irn" and b.cam_batch_size == 16 and b.cam_eval_thres == 0.2
    assert b.work_dir == "runs/voc12" and tuple(b.cam_scales) == (1.0, 0.5, 1.5, 2.0)


def _run(*argv: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "TQDM_DISABLE": "1"}  # progress bars also go to stderr
    return subprocess.run([sys.executable, *argv], cwd=ROOT, capture_output=True, text=True, timeout=120, env=env)


def test_missing_root_is_one_line(tmp_path):
    r = _run("run_sample.py", "--voc12_root", str(tmp_path / "nope"), "--work_dir", str(tmp_path / "w"))
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and str(tmp_path / "nope") in lines[0] and "Traceback" not in r.stderr


def test_step_module_missing_checkpoint_is_one_line(mini_voc, tmp_path):
    r = _run("-m", "step.make_cam", "--voc12_root", str(mini_voc), "--work_dir", str(tmp_path / "w"),
             "--recipe", "scratch")
    assert r.returncode == 2 and "res50_cam.pth" in r.stderr and len(r.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("step,needle", [("step.eval_sem_seg", "sem_seg/"), ("step.train_irn", "cam_to_ir_label"),
                                         ("step.make_sem_seg_labels", "res50_irn.pth")])
def test_irn_steps_missing_inputs_are_one_line(mini_voc, tmp_path, step, needle):
    """Also when the error is raised in a DataLoader worker (eval_sem_seg reads in 2 workers)."""
    r = _run("-m", step, "--voc12_root", str(mini_voc), "--work_dir", str(tmp_path / "w"), "--num_workers", "2")
    assert r.returncode == 2 and needle in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr


def test_irn_recipe_without_weights_asks_for_them(mini_voc, tmp_path):
    r = _run("-m", "step.train_cam", "--voc12_root", str(mini_voc), "--work_dir", str(tmp_path / "w"))
    assert r.returncode == 2 and "--pretrained_weights" in r.stderr


def test_checkpoint_key_mismatch_names_the_file(tmp_path):
    small = Net(num_classes=20, recipe="scratch", width=8, blocks=(1, 1, 1, 1))
    path = tmp_path / "ck.pth"
    torch.save(small.state_dict(), path)
    with pytest.raises(UserError, match="ck.pth.*does not fit"):
        load_checkpoint(Net(num_classes=20, recipe="scratch", width=16, blocks=(1, 1, 1, 1)), path)
    with pytest.raises(UserError, match="ck.pth.*does not fit"):
        load_checkpoint(Net(num_classes=20, recipe="scratch", width=8, blocks=(2, 1, 1, 1)), path)
    load_checkpoint(Net(num_classes=20, recipe="irn", width=8, blocks=(1, 1, 1, 1)), path)  # same keys


def test_imagenet_weights_load_strictly(tmp_path):
    import torchvision

    from net.resnet50 import ResNet50, load_imagenet_weights

    tv = torchvision.models.resnet50()
    torch.save(tv.state_dict(), tmp_path / "r50.pth")
    trunk = ResNet50()
    load_imagenet_weights(trunk, tmp_path / "r50.pth")
    assert torch.equal(trunk.layer3[2].conv2.weight, tv.layer3[2].conv2.weight)
    with pytest.raises(UserError, match="missing.pth"):
        load_imagenet_weights(trunk, tmp_path / "missing.pth")
