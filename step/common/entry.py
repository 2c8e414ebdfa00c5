"""The command-line entry point of run_sample.py and of ``python -m step.<name>``: parse the flags, join the
process group, record the resolved config, run the steps; a UserError becomes one line."""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

from misc import dist
from misc.cli import guarded
from misc.io import save_json
from misc.torchutils import pick_device


def git_revision() -> str:
    """The checkout's commit hash (with '+dirty' for uncommitted changes), or 'unknown'."""
    here = Path(__file__).resolve().parent
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    if rev.returncode != 0:
        return "unknown"
    return rev.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def record_config(args: argparse.Namespace, name: str) -> None:
    """Write the resolved flags, the git revision, the command line and the number of processes to
    ``<work_dir>/config.<name>.json`` (rank 0)."""
    if not dist.is_main():
        return
    cfg = {k: v for k, v in vars(args).items()}
    save_json(Path(args.work_dir) / f"config.{name}.json",
              {"git_revision": git_revision(), "argv": sys.argv, "time": time.strftime("%Y-%m-%d %H:%M:%S"),
               "world_size": dist.world_size(), "args": cfg})


def step_main(name: str, run: Callable[[argparse.Namespace], object]) -> None:
    """``python -m step.<name>`` (also under torchrun): parse run_sample's flags, join the process group,
    record them, run the step; UserError -> one line."""

    def go() -> None:
        import run_sample  # the flags and their defaults live in run_sample.py, at the top of the tree

        args = run_sample.parse_args(sys.argv[1:])
        dist.init(pick_device(args.device))
        record_config(args, name)
        run(args)
        dist.destroy()

    guarded(go)
