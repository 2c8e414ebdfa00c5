"""The default toy pipeline on CPU: the seeds must beat two label-only baselines by a clear margin."""
import json

import numpy as np

from misc.imutils import read_label_png
from misc.io import load_cls_labels, read_id_list
from misc.metrics import confusion_matrix, iou_from_confusion


def _miou(conf) -> float:
    return float(np.nanmean(iou_from_confusion(conf)))


def _baselines(work, root) -> tuple[float, float]:
    """mIoU of 'all background' and of 'every pixel is the image's (first) GT class' on the eval list."""
    ids = read_id_list(work / "meta" / "train.txt")
    labels = load_cls_labels(work / "meta" / "cls_labels.json", 20)
    bg = img = 0
    for i in ids:
        gt = read_label_png(root / "SegmentationClass" / f"{i}.png")
        bg = bg + confusion_matrix(gt, np.zeros_like(gt), 21)
        img = img + confusion_matrix(gt, np.full_like(gt, np.flatnonzero(labels[i])[0] + 1), 21)
    return _miou(bg), _miou(img)


def test_toy_cam_beats_baselines(toy_run):
    result = json.loads((toy_run / "eval" / "eval_cam.json").read_text())
    all_bg, image_class = _baselines(toy_run, toy_run.parent / "toy_voc")
    best = result["best"]["miou"]
    # measured on this machine: best ~0.47, baselines 0.04 and 0.12 (docs/results.md)
    assert best > all_bg + 0.25 and best > image_class + 0.2, (best, all_bg, image_class)
    assert result["fixed"]["threshold"] == 0.15 and len(result["sweep"]) >= 50
    assert max(s["miou"] for s in result["sweep"]) == best


def test_toy_artifacts(toy_run):
    ids = read_id_list(toy_run / "meta" / "train_aug.txt")
    labels = load_cls_labels(toy_run / "meta" / "cls_labels.json", 20)
    assert len(list((toy_run / "cam").glob("*.npz"))) == len(ids) == 400
    z = np.load(toy_run / "cam" / f"{ids[0]}.npz")
    np.testing.assert_array_equal(z["keys"], np.flatnonzero(labels[ids[0]]))
    h, w = z["high_res"].shape[1:]
    assert z["cam"].shape[1:] == ((h - 1) // 4 + 1, (w - 1) // 4 + 1)
    assert np.all(z["high_res"].max((1, 2)) < 1) and np.all(z["high_res"].max((1, 2)) > 0.99)
    assert len(list((toy_run / "draw").glob("*.png"))) == 3
    cfg = json.loads((toy_run / "config.run_sample.json").read_text())
    assert cfg["args"]["recipe"] == "scratch" and cfg["git_revision"]


def _assert_resumes(toy_run, folder: str, pattern: str, step, message: str, capsys) -> None:
    """Delete one output of a make-step, rerun the step: only that file is written again."""
    import run_sample

    before = {p: p.stat().st_mtime_ns for p in (toy_run / folder).glob(pattern)}
    victim = sorted(before)[5]
    victim.unlink()
    capsys.readouterr()
    step.run(run_sample.parse_args(["--work_dir", str(toy_run), "--toy_root", str(toy_run.parent / "toy_voc")]))
    assert message in capsys.readouterr().out
    after = {p: p.stat().st_mtime_ns for p in (toy_run / folder).glob(pattern)}
    assert victim in after and all(after[p] == t for p, t in before.items() if p != victim)


def test_make_cam_resumes(toy_run, capsys):
    from step import make_cam

    _assert_resumes(toy_run, "cam", "*.npz", make_cam, "1 seeds", capsys)


def test_toy_ir_labels(toy_run):
    from misc.imutils import read_label_png

    labels = load_cls_labels(toy_run / "meta" / "cls_labels.json", 20)
    ids = read_id_list(toy_run / "meta" / "train_aug.txt")
    for i in ids[:50]:
        lab = read_label_png(toy_run / "ir_label" / f"{i}.png")
        assert set(np.unique(lab)) <= {0, 255} | set(np.flatnonzero(labels[i]) + 1)
    q = json.loads((toy_run / "eval" / "eval_ir_label.json").read_text())
    # measured: fg precision 0.916, bg precision 0.987 (docs/results.md)
    assert q["fg_precision"] > 0.7 and q["bg_precision"] > 0.95 and 0.02 < q["unsure"] < 0.5


def test_toy_pseudo_labels_beat_the_seeds(toy_run):
    cam = json.loads((toy_run / "eval" / "eval_cam.json").read_text())
    sem = json.loads((toy_run / "eval" / "eval_sem_seg.json").read_text())
    # measured on this machine: pseudo labels 0.600 at IRN's 0.25 vs the seeds' best-threshold 0.472
    assert sem["miou"] > cam["best"]["miou"] + 0.04, (sem["miou"], cam["best"]["miou"])
    assert sem["num_images"] == 100 and len(sem["iou"]) == 21


def test_toy_irn_artifacts_and_resume(toy_run, capsys):
    import torch

    from step import make_sem_seg_labels

    sd = torch.load(toy_run / "sess" / "res50_irn.pth", weights_only=True)
    assert not any(k.startswith(("path_ind", "disp_target")) for k in sd)
    assert torch.isfinite(sd["mean_shift.running_mean"]).all()
    ids = read_id_list(toy_run / "meta" / "train.txt")
    labels = load_cls_labels(toy_run / "meta" / "cls_labels.json", 20)
    for i in ids[:30]:
        lab = read_label_png(toy_run / "sem_seg" / f"{i}.png")
        gt = read_label_png(toy_run.parent / "toy_voc" / "SegmentationClass" / f"{i}.png")
        assert lab.shape == gt.shape and set(np.unique(lab)) <= {0} | set(np.flatnonzero(labels[i]) + 1)
    _assert_resumes(toy_run, "sem_seg", "*.png", make_sem_seg_labels, "1 pseudo labels", capsys)


def test_make_rib_cam_on_the_toy_classifier(toy_run, tmp_path, capsys):
    import run_sample
    from misc.io import load_cam, write_id_list
    from step import make_rib_cam

    ids = read_id_list(toy_run / "meta" / "train.txt")[:4]
    write_id_list(tmp_path / "four.txt", ids)
    argv = ["--work_dir", str(toy_run), "--toy_root", str(toy_run.parent / "toy_voc"), "--method", "rib",
            "--train_list", str(tmp_path / "four.txt"), "--cam_out_dir", str(tmp_path / "rib"),
            "--rib_iters", "2", "--rib_aux_batch", "3", "--num_workers", "0"]
    args = run_sample.parse_args(argv)
    assert args.make_rib_cam_pass and not args.make_cam_pass and args.sem_seg_power == 1.3
    make_rib_cam.run(args)
    labels = load_cls_labels(toy_run / "meta" / "cls_labels.json", 20)
    for i in ids:
        seed, base = load_cam(tmp_path / "rib", i), load_cam(toy_run / "cam", i)
        np.testing.assert_array_equal(seed["keys"], np.flatnonzero(labels[i]))
        assert seed["high_res"].shape == base["high_res"].shape and seed["cam"].shape == base["cam"].shape
        peak = seed["high_res"].max((1, 2))  # max + 1e-5 rounds to max for large sums in float32
        assert np.all(peak > 0.99) and np.all(peak <= 1)
    capsys.readouterr()
    make_rib_cam.run(args)
    assert "all 4 seeds exist" in capsys.readouterr().out
