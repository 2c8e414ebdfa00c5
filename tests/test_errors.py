"""The promise "one clear line, exit 2" for the bad inputs a user meets (issue 16): each case runs the
pipeline entry point (misc.cli.guarded around run_sample.main, as `python run_sample.py` does) on a tiny toy
and checks it ends in exactly one 'error: ...' line on stderr with exit status 2. The table of docs/errors.md
is generated from what is observed here, so it cannot drift:

    WRITE_DOCS=1 python -m pytest -q tests/test_errors.py      # regenerate docs/errors.md
"""
from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
from PIL import Image

import run_sample
from misc.cli import guarded
from misc.imutils import read_label_png
from misc.io import read_id_list, save_png
from step.common.data import get_dataset
from voc12.toy import write_toy_voc

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "errors.md"
TINY = ["--num_workers", "0", "--crf_num_workers", "0", "--cam_num_epoches", "1", "--cam_batch_size", "8",
        "--cam_crop_size", "64", "--cam_resize_long", "56", "80"]
TOY = ["--toy_n_train_aug", "16", "--toy_n_train", "8", "--toy_n_val", "8", "--toy_size", "64"]


def _first_val(root: Path) -> str:
    return read_id_list(root / "ImageSets" / "Segmentation" / "val.txt")[0]


def _mask_value(root: Path) -> None:
    p = root / "SegmentationClass" / f"{_first_val(root)}.png"
    m = read_label_png(p)
    save_png(p, np.where(m == 0, 37, m).astype(np.uint8))


def _mask_size(root: Path) -> None:
    p = root / "SegmentationClass" / f"{_first_val(root)}.png"
    save_png(p, read_label_png(p)[:-3])


def _no_image(root: Path) -> None:
    (root / "JPEGImages" / f"{_first_val(root)}.jpg").unlink()


def _resnet18(tmp: Path) -> list[str]:
    import torchvision

    torch.save(torchvision.models.resnet18().state_dict(), tmp / "resnet18.pth")
    return ["--pretrained_weights", str(tmp / "resnet18.pth"), "--recipe", "irn", "--backbone_width", "64",
            "--backbone_blocks", "3", "4", "6", "3"]


def _full_disk(monkeypatch: pytest.MonkeyPatch) -> None:
    def half_then_full(self: Path, data) -> None:
        with open(self, "wb") as f:
            f.write(bytes(data)[:len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_bytes", half_then_full)


# (bad input, flags after the tiny toy flags (<tmp> = a temporary folder), dataset edit, other preparation)
CASES: list[tuple[str, list[str], Callable | None, str | None]] = [
    ("`--cam_scales 0`", ["--cam_scales", "0"], None, None),
    ("`--cam_batch_images 0`", ["--cam_batch_images", "0"], None, None),
    ("`--sem_seg_batch_images 0`", ["--sem_seg_batch_images", "0"], None, None),
    ("`--irn_crop_size` not a multiple of 16", ["--irn_crop_size", "100"], None, None),
    ("`--voc12_root` that does not exist", ["--voc12_root", "<tmp>/nowhere"], None, None),
    ("`--pretrained_weights` of a resnet18 state_dict", [], None, "resnet18"),
    ("unwritable `--work_dir` (a path below a file)", ["--work_dir", "<tmp>/file/work"], None, "file"),
    ("full disk while train_cam saves (simulated ENOSPC)", [], None, "full_disk"),
    ("GT mask with value 37", [], _mask_value, None),
    ("GT mask of another size than its image", [], _mask_size, None),
    ("id in a list without its image", [], _no_image, None),
    ("dataset regenerated in place after the labels were derived", [], None, "changed"),
]


def _observe(tmp: Path, toy: Path, flags: list[str], edit: Callable | None, prep: str | None,
             monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> tuple[list[str], str]:
    """Run one case; return (the shown flags, the one stderr line with <tmp> for the temporary folder)."""
    argv = ["--work_dir", str(tmp / "work")] + TINY
    shown = [a.replace("<tmp>", str(tmp)) for a in flags]
    if edit is not None or prep == "changed":
        shutil.copytree(toy, tmp / "voc")
        shown = ["--voc12_root", str(tmp / "voc")] + shown
        if edit is not None:
            edit(tmp / "voc")
    elif "--voc12_root" not in shown:
        argv += ["--toy_root", str(toy)] + TOY
    if prep == "resnet18":
        shown = _resnet18(tmp) + shown
    if prep == "file":
        (tmp / "file").write_text("")
    if prep == "changed":
        get_dataset(run_sample.parse_args(argv + shown))
        jpg = next((tmp / "voc" / "JPEGImages").glob("*.jpg"))
        Image.open(jpg).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(jpg)
    capsys.readouterr()
    with monkeypatch.context() as m:
        if prep == "full_disk":
            _full_disk(m)
        with pytest.raises(SystemExit) as e:
            guarded(lambda: run_sample.main(argv + shown))
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and len(err.splitlines()) == 1 and err.startswith("error: "), err
    if prep == "full_disk":
        sess = tmp / "work" / "sess"
        assert not [p for p in sess.iterdir() if p.suffix != ".json"], list(sess.iterdir())  # nothing partial
    def hide(text: str) -> str:
        return text.replace(str(tmp), "<tmp>").replace(str(toy), "<tmp>/toy")
    return [hide(a) for a in shown], hide(err)


def _page(rows: list[tuple[str, list[str], str]]) -> str:
    lines = ["# Errors a user can cause", "",
             "Every mistake below ends `python run_sample.py` (and `python -m step.<name>`) with exactly one line on "
             "stderr and exit status 2, before long work where it can be checked early. Generated by "
             "`tests/test_errors.py`, which runs each case and fails when this page differs from what it observes "
             "(regenerate: `WRITE_DOCS=1 python -m pytest -q tests/test_errors.py`). Each case runs on a tiny toy "
             "dataset; `<tmp>` stands for a temporary folder.", "",
             "| bad input | flags | the line |", "|---|---|---|"]
    for what, flags, line in rows:
        cmd = " ".join(flags) or "(the tiny toy run)"
        cell = line.replace("|", "\\|")
        lines.append(f"| {what} | `{cmd}` | `{cell}` |")
    return "\n".join(lines) + "\n"


def test_every_bad_input_is_one_line_and_the_page_lists_it(tmp_path, monkeypatch, capsys):
    toy = write_toy_voc(tmp_path / "toy", seed=0, n_train_aug=16, n_train=8, n_val=8, size=64)
    rows = []
    for n, (what, flags, edit, prep) in enumerate(CASES):
        case = tmp_path / f"case{n}"
        case.mkdir()
        shown, line = _observe(case, toy, flags, edit, prep, monkeypatch, capsys)
        rows.append((what, shown, line))
    page = _page(rows)
    if os.environ.get("WRITE_DOCS"):
        PAGE.write_text(page)
    assert PAGE.is_file() and PAGE.read_text() == page, (
        "docs/errors.md is stale: regenerate it with `WRITE_DOCS=1 python -m pytest -q tests/test_errors.py`")
