"""The command-line entry point of run_sample.py and of ``python -m step.<name>``: parse the flags, join the
process group, record the resolved config, run the steps; a UserError becomes one line."""
from __future__ import annotations

import argparse
import importlib
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Sequence

from misc import dist
from misc.cli import guarded
from misc.config import Config
from misc.errors import UserError
from misc.io import save_json
from misc.torchutils import pick_device
from step.common.parallel import say


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


def check_work_dir(work_dir: str) -> None:
    """UserError naming --work_dir when the folder cannot be created or written (rank 0; before any step)."""
    if not dist.is_main():
        return
    try:
        Path(work_dir).mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=work_dir):
            pass
    except OSError as e:
        raise UserError(f"--work_dir {work_dir}: cannot write there ({e.strerror or e}); pass a folder you can "
                        "write to") from None


def record_config(args: argparse.Namespace, name: str) -> None:
    """Write the resolved flags, the git revision, the command line and the number of processes to
    ``<work_dir>/config.<name>.json`` (rank 0)."""
    if not dist.is_main():
        return
    cfg = dict(vars(args))
    save_json(Path(args.work_dir) / f"config.{name}.json",
              {"git_revision": git_revision(), "argv": sys.argv, "time": time.strftime("%Y-%m-%d %H:%M:%S"),
               "world_size": dist.world_size(), "args": cfg})


def run_steps(args: argparse.Namespace, steps: Sequence[str], name: str, announce: bool) -> None:
    """Join the process group, record the config as ``config.<name>.json``, run ``steps`` (module names under
    step/) in order, leave the group. With ``announce`` (a pipeline) each step is timed and followed by a
    barrier under torchrun, so no step reads a file another rank is still writing."""
    dist.init(pick_device(args.device))
    check_work_dir(args.work_dir)
    record_config(args, name)
    for s in steps:
        t = time.time()
        if announce:
            say(f"== step.{s}")
        importlib.import_module(f"step.{s}").run(args)
        if announce:
            dist.barrier()
            say(f"== step.{s} done in {time.time() - t:.1f} s")
    dist.destroy()


def run_pipeline(config: Config, argv: Sequence[str] | None = None) -> None:
    """run_sample.py: the enabled steps of --method's pipeline (``--<step>_pass``), in order."""
    args = config.parse(argv)
    run_steps(args, [s for s in config.pipelines[args.method] if getattr(args, f"{s}_pass")], "run_sample", True)


def step_main(name: str) -> None:
    """``python -m step.<name>`` (also under torchrun): the flags of run_sample.py (the config file at the top of
    the tree, read here; the steps never import it) parsed for this step alone, then the step; a UserError
    ends in one line."""

    def go() -> None:
        config = importlib.import_module("run_sample").CONFIG
        run_steps(config.parse(sys.argv[1:], steps=(name,)), (name,), name, False)

    guarded(go)
