"""get_pseudo_gt_VOC.sh on a VOC-format folder with IRN's recipe (full-width ResNet-50, frozen BN,
ImageNet-initialised IRNet), shrunk to a few steps: every step runs and writes its artifacts."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
import torchvision

ROOT = Path(__file__).resolve().parents[1]


def test_voc_script_runs_irn_recipe(mini_voc, tmp_path):
    weights = tmp_path / "resnet50-random.pth"
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet50().state_dict(), weights)  # stands in for the ImageNet file
    work = tmp_path / "work"
    env = dict(os.environ, TQDM_DISABLE="1", PYTHONWARNINGS="ignore",
               PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    # root and weights relative to the caller's folder: the script resolves them before changing directory
    r = subprocess.run(
        ["bash", str(ROOT / "get_pseudo_gt_VOC.sh"), os.path.relpath(mini_voc, tmp_path), weights.name,
         "--work_dir", str(work),
         "--cam_crop_size", "96", "--cam_resize_long", "80", "112", "--cam_batch_size", "8", "--cam_num_epoches", "1",
         "--cam_scales", "1.0", "0.5", "--irn_crop_size", "96", "--irn_batch_size", "8", "--irn_num_epoches", "1",
         "--num_workers", "0", "--crf_num_workers", "1", "--crf_iters", "2", "--draw_num", "1"],
        capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    cfg = json.loads((work / "config.run_sample.json").read_text())["args"]
    assert cfg["recipe"] == "irn" and cfg["irn_init"] == "imagenet" and cfg["backbone_width"] == 64
    ids = (work / "meta" / "train.txt").read_text().split()
    assert len(list((work / "sem_seg").glob("*.png"))) == len(ids) == 10
    sem = json.loads((work / "eval" / "eval_sem_seg.json").read_text())
    assert sem["num_images"] == 10 and 0 <= sem["miou"] <= 1
    sd = torch.load(work / "sess" / "res50_irn.pth", weights_only=True)
    init = torch.load(weights, weights_only=True)
    # the IRNet backbone is the given file's, untouched by training (frozen)
    assert torch.equal(sd["resnet50.layer4.2.conv3.weight"], init["layer4.2.conv3.weight"])
    assert torch.equal(sd["resnet50.bn1.running_var"], init["bn1.running_var"])
