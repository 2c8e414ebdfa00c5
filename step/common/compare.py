"""``run_sample.py --compare M1 M2 ...``: every method's pipeline to the end, then one table.

For each method named (any key of the pipelines, so methods added later join by themselves) on the dataset
and flags of the rest of the command line: its pipeline with the segmentation stage (``--seg True`` unless
typed otherwise), in one work folder, so methods share what they share (IRN and RIB the classifier) and
every output already there is reused: make-steps skip the ids they have written, and a training step whose
final weights were written under the same training flags is not trained again (``step.common.training.fit``;
``--overwrite True`` recomputes and retrains everything). Then the table: seeds (eval_cam's best background
threshold and its mIoU), pseudo labels (eval_sem_seg), the segmentation network's mIoU without and with the
CRF (eval_seg), and each method's wall time in this run; printed, and written to ``<work_dir>/compare.json``
and ``compare.md``. A stage a method lacks shows '-'.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Sequence

from misc import dist
from misc.config import Config
from misc.errors import UserError
from misc.io import atomic_path, save_json
from step.common.data import out_path
from step.common.entry import run_steps


def split_argv(argv: Sequence[str], methods: Sequence[str]) -> tuple[list[str], list[str]]:
    """(the methods after ``--compare``, the other flags); UserError for no or unknown methods or --method."""
    argv = list(argv)
    i = argv.index("--compare")
    j = i + 1
    while j < len(argv) and not argv[j].startswith("--"):
        j += 1
    names, rest = argv[i + 1:j], argv[:i] + argv[j:]
    if not names:
        raise UserError(f"--compare: name one or more methods ({', '.join(methods)})")
    unknown = [m for m in names if m not in methods]
    if unknown:
        raise UserError(f"--compare {unknown[0]}: not a method; pick among {', '.join(methods)}")
    if "--method" in rest:
        raise UserError("--method: --compare runs every method it names; drop --method")
    return list(dict.fromkeys(names)), rest


def _read(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def method_row(method: str, args: argparse.Namespace, seconds: float) -> dict:
    """The table row of one method, from the evaluation JSONs of its run (None where a stage is absent).
    mIoUs are fractions."""
    ev = out_path(args, args.eval_out_dir)
    cam, sem, seg = _read(ev / "eval_cam.json"), _read(ev / "eval_sem_seg.json"), _read(ev / "eval_seg.json")
    return {"method": method,
            "seeds_miou": cam["best"]["miou"] if cam else None,
            "seeds_threshold": cam["best"]["threshold"] if cam else None,
            "pseudo_miou": sem["miou"] if sem else None,
            "seg_miou": seg["no_crf"]["miou"] if seg else None,
            "seg_crf_miou": seg["crf"]["miou"] if seg and seg["crf"] else None,
            "seconds": seconds}


def table(rows: list[dict], eval_list: str, seg_list: str) -> str:
    """The comparison as a markdown table (mIoU in percent)."""
    def pct(v: float | None) -> str:
        return "-" if v is None else f"{100 * v:.1f}"

    lines = [f"| method | seeds, {eval_list} (best thr) | pseudo labels, {eval_list} | segmentation, {seg_list} | "
             f"+ CRF | wall time (s) |", "|---|---|---|---|---|---|"]
    for r in rows:
        thr = "" if r["seeds_threshold"] is None else f" ({r['seeds_threshold']:.2f})"
        lines.append(f"| {r['method']} | {pct(r['seeds_miou'])}{thr} | {pct(r['pseudo_miou'])} | {pct(r['seg_miou'])} "
                     f"| {pct(r['seg_crf_miou'])} | {r['seconds']:.0f} |")
    return "\n".join(lines)


def compare(config: Config, argv: Sequence[str]) -> list[dict]:
    """Run the pipeline of every method after ``--compare`` (module doc), print and write the table. Every
    method's flags are parsed and checked before any step runs. Returns the rows."""
    methods, rest = split_argv(argv, tuple(config.pipelines))
    parsed = [config.parse(["--method", m, "--seg", "True", *rest]) for m in methods]
    rows = []
    for m, args in zip(methods, parsed):
        steps = [s for s in config.pipelines[m] if getattr(args, f"{s}_pass")]
        t = time.time()
        run_steps(args, steps, f"compare_{m}", True)
        rows.append(method_row(m, args, time.time() - t))
    first = parsed[0]
    text = table(rows, first.eval_list, first.seg_eval_list)
    if dist.is_main():
        print(text)
        work = Path(first.work_dir)
        save_json(work / "compare.json", {"dataset": first.dataset, "eval_list": first.eval_list,
                                          "seg_eval_list": first.seg_eval_list, "rows": rows})
        with atomic_path(work / "compare.md") as tmp:
            tmp.write_text(text + "\n")
    return rows
