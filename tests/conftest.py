"""Shared fixtures: a small generated VOC-format folder and run_sample flags pointing at temp dirs."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TQDM_DISABLE", "1")


@pytest.fixture(scope="session")
def mini_voc(tmp_path_factory) -> Path:
    """A 40-image toy VOC folder (train_aug 30 of which train 10, val 10), long side 96."""
    from voc12.toy import write_toy_voc

    return write_toy_voc(tmp_path_factory.mktemp("voc") / "VOC2012", seed=3, n_train_aug=30, n_train=10,
                         n_val=10, size=96)


@pytest.fixture(scope="session")
def toy_run(tmp_path_factory) -> Path:
    """The whole default toy pipeline (run_sample.py with no dataset flags), run once per session.

    Returns its work_dir. Takes about two minutes on 2 CPU cores.
    """
    import run_sample

    tmp = tmp_path_factory.mktemp("toy_run")
    run_sample.main(["--work_dir", str(tmp / "work"), "--toy_root", str(tmp / "toy_voc"), "--draw_num", "3"])
    return tmp / "work"


# A tiny single-stage ViT (ToCo / PUFS; 3 blocks, the fewest the aux CAM allows) on the mini VOC: 4 iterations of
# batch 4 in 2 epochs of 2, the segmentation and CRF losses on from the third (0-based iteration 2).
SINGLE_STAGE_TINY = ["--ss_scratch", "True", "--ss_patch_size", "8", "--ss_embed_dim", "32", "--ss_depth", "3",
                     "--ss_num_heads", "2", "--ss_img_size", "32", "--ss_head_hidden", "32", "--ss_crop_size", "32",
                     "--ss_scale_range", "0.45", "0.55", "--ss_batch_size", "4", "--ss_max_iters", "4",
                     "--ss_epoch_iters", "2", "--ss_warmup_iters", "1", "--ss_seg_start", "1", "--ss_cam_scales", "1.0",
                     "--ss_par_iters", "1", "--ss_crf_loss_scale", "0.5", "--toco_crop_num", "2",
                     "--toco_local_crop_size", "16", "--toco_ctc_dim", "32", "--pufs_out_dim", "32",
                     "--pufs_block_size", "8", "--num_workers", "0"]


@pytest.fixture
def single_stage_tiny(mini_voc, tmp_path) -> list[str]:
    """run_sample flags of SINGLE_STAGE_TINY on the mini VOC with the work folder in tmp_path (no --method)."""
    return ["--voc12_root", str(mini_voc), "--work_dir", str(tmp_path / "work"), *SINGLE_STAGE_TINY]
