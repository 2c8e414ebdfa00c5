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
