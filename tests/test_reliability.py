"""Reliability on real use (issue 16): meta keyed by the dataset's content, finished trainings skipped on a
rerun, the dataset scanned when labels are derived, degenerate output reported, file modes, byte-identical
checkpoints, one-line errors for a full disk and a foreign ImageNet file. Tiny datasets in tmp_path."""
from __future__ import annotations

import errno
import json
import os
import shutil
import stat
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import run_sample
from misc.errors import UserError
from misc.io import read_id_list, save_json, save_png, save_torch
from misc.metrics import never_predicted
from step import make_cam
from step.common.checkpoints import save_checkpoint
from step.common.data import get_dataset
from step.common.reports import EmptySeeds, warn_rare_classes
from voc12.toy import write_toy_voc

# a pipeline small enough for seconds on 2 cores: 16 + 8 toy images of 64 pixels, one tiny epoch
TINY = ["--toy_n_train_aug", "16", "--toy_n_train", "8", "--toy_n_val", "8", "--toy_size", "64", "--num_workers", "0",
        "--cam_num_epoches", "1", "--cam_batch_size", "8", "--cam_crop_size", "64", "--cam_resize_long", "56", "80",
        "--crf_num_workers", "0"]


def _voc(path: Path, seed: int = 3) -> Path:
    return write_toy_voc(path, seed=seed, n_train_aug=12, n_train=6, n_val=6, size=48)


def _args(root: Path, work: Path, *more: str):
    return run_sample.parse_args(["--voc12_root", str(root), "--work_dir", str(work), *more])


# ----- 1. stale meta


@pytest.mark.parametrize("dataset", ["voc12", "coco14"])
def test_a_dataset_regenerated_in_place_is_refused_then_derived_again(tmp_path, dataset):
    from coco14.toy import write_toy_coco

    def make(seed: int) -> Path:
        if dataset == "voc12":
            return _voc(tmp_path / "data", seed)
        return write_toy_coco(tmp_path / "data", seed=seed, n_train=6, n_val=4, size=48)

    def args(work: Path, *more: str):
        return run_sample.parse_args([f"--{dataset}_root", str(tmp_path / "data"), "--work_dir", str(work), *more])

    make(3)
    work = tmp_path / "work"
    get_dataset(args(work))
    before = json.loads((work / "meta" / "cls_labels.json").read_text())
    get_dataset(args(work))  # unchanged: accepted as is
    shutil.rmtree(tmp_path / "data")
    make(4)  # same path, other content
    with pytest.raises(UserError, match=r"data: changed since .*meta was derived from it \(.*changed.*\); .*may be "
                                        r"stale: rerun with --overwrite True"):
        get_dataset(args(work))
    get_dataset(args(work, "--overwrite", "True"))
    after = json.loads((work / "meta" / "cls_labels.json").read_text())
    get_dataset(args(tmp_path / "fresh"))
    assert after == json.loads((tmp_path / "fresh" / "meta" / "cls_labels.json").read_text()) and after != before
    get_dataset(args(work))  # the new record is accepted
    shutil.move(tmp_path / "data", tmp_path / "moved")
    get_dataset(run_sample.parse_args([f"--{dataset}_root", str(tmp_path / "moved"), "--work_dir", str(work)]))


def test_segmentation_class_aug_added_later_changes_train_aug(tmp_path):
    root, work = _voc(tmp_path / "voc"), tmp_path / "work"
    shutil.move(root / "SegmentationClassAug", tmp_path / "aug")
    get_dataset(_args(root, work))
    assert len(read_id_list(work / "meta" / "train_aug.txt")) == 12  # every labelled id but val
    (root / "SegmentationClassAug").mkdir()
    kept = sorted(p.name for p in (tmp_path / "aug").glob("*.png"))[:5]
    for name in kept:
        shutil.copy(tmp_path / "aug" / name, root / "SegmentationClassAug" / name)
    with pytest.raises(UserError, match=r"SegmentationClassAug added"):
        get_dataset(_args(root, work))
    get_dataset(_args(root, work, "--overwrite", "True"))
    assert read_id_list(work / "meta" / "train_aug.txt") == [n[:-4] for n in kept]


# ----- 3. the dataset scan when labels are derived


def test_scan_finds_bad_masks_and_missing_images_before_any_step(tmp_path):
    root, work = _voc(tmp_path / "voc"), tmp_path / "work"
    ids = read_id_list(root / "ImageSets" / "Segmentation" / "val.txt")
    bad = root / "SegmentationClass" / f"{ids[2]}.png"
    mask = np.array(Image.open(bad))
    save_png(bad, np.where(mask == 0, 37, mask).astype(np.uint8))
    with pytest.raises(UserError, match=rf"{ids[2]}.png: label value 37 outside 0..20 and 255.*convert it"):
        get_dataset(_args(root, work))
    save_png(bad, mask[:-3])
    with pytest.raises(UserError, match=rf"{ids[2]}.png: mask is \d+x\d+ pixels but its image .*{ids[2]}.jpg is "
                                        r"\d+x\d+.*replace the mask"):
        get_dataset(_args(root, tmp_path / "work2"))
    save_png(bad, mask)
    (root / "JPEGImages" / f"{ids[0]}.jpg").unlink()
    with pytest.raises(UserError, match=rf"val.txt: id {ids[0]} has no image .*\(1 of its 6 ids\)"):
        get_dataset(_args(root, tmp_path / "work3"))
    assert not (work / "meta" / "cls_labels.json").exists()  # refused before anything was derived


# ----- 2. a rerun does not train a finished training again


class _Stop(Exception):
    pass


def test_rerun_after_an_interrupted_pipeline_skips_the_finished_training(tmp_path, monkeypatch, capsys):
    argv = ["--work_dir", str(tmp_path / "work"), "--toy_root", str(tmp_path / "toy"), *TINY]
    weights = tmp_path / "work" / "sess" / "res50_cam.pth"

    def stop(args):
        raise _Stop  # the pipeline is killed in make_cam, after train_cam finished

    monkeypatch.setattr(make_cam, "run", stop)
    with pytest.raises(_Stop):
        run_sample.main(argv)
    assert "train_cam epoch 1:" in capsys.readouterr().out
    record = json.loads(weights.with_name("res50_cam.pth.json").read_text())
    assert record["flags"]["cam_num_epoches"] == 1 and len(record["sha256"]) == 64
    trained = weights.read_bytes()
    with pytest.raises(_Stop):
        run_sample.main(argv)  # the same command again
    out = capsys.readouterr().out
    assert "train_cam epoch" not in out and "trained under the same flags; skipped" in out
    assert weights.read_bytes() == trained
    with pytest.raises(_Stop):
        run_sample.main(argv + ["--cam_learning_rate", "5e-4"])  # other training flags: trains again
    out = capsys.readouterr().out
    assert "trained under other flags (cam_learning_rate); training again" in out and "train_cam epoch 1:" in out
    with pytest.raises(_Stop):
        run_sample.main(argv + ["--cam_learning_rate", "5e-4", "--overwrite", "True"])
    assert "train_cam epoch 1:" in capsys.readouterr().out


# ----- 4. one line for a full disk and for another network's ImageNet file


def test_full_disk_leaves_nothing_partial_and_says_so(tmp_path, monkeypatch):
    def half_then_full(self, data):
        with open(self, "wb") as f:
            f.write(bytes(data)[:len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_bytes", half_then_full)
    with pytest.raises(UserError, match=r"w.pth: not written, the disk is full; no partial file was left .*rerun the "
                                        "same command to resume"):
        save_checkpoint(torch.nn.Linear(3, 2), tmp_path / "sess" / "w.pth", "classifier")
    assert list((tmp_path / "sess").iterdir()) == []


def test_imagenet_file_of_another_network_is_one_line(tmp_path):
    import torchvision

    from net.resnet50 import ResNet50, load_imagenet_weights

    torch.save(torchvision.models.resnet18().state_dict(), tmp_path / "r18.pth")
    with pytest.raises(UserError, match=r"r18.pth: not a torchvision resnet50 state_dict \(\d+ keys missing, "
                                        r"unexpected or of another shape"):
        load_imagenet_weights(ResNet50(), tmp_path / "r18.pth")


# ----- 5. degenerate output is reported


def test_empty_seeds_never_predicted_classes_and_rare_classes_are_reported(capsys):
    empty = EmptySeeds()
    empty.add(np.stack([np.zeros((4, 4)), np.full((4, 4), 0.5)]))  # one empty map of two
    empty.add(torch.ones(1, 4, 4))
    empty.add(np.zeros((0, 4, 4)))  # background only: nothing to count
    assert empty.report("make_x") == 1
    assert "make_x: warning: 1 of 3 class seed maps are empty (all zero), in 1 of 2 images" in capsys.readouterr().out
    conf = np.array([[5, 1, 0], [2, 3, 0], [4, 0, 0]])  # class 2 is in the GT, never predicted
    assert never_predicted(conf) == [2]
    labels = {f"i{k}": np.eye(3, dtype=np.float32)[k % 2] for k in range(12)}  # class 2 never, 0 and 1 six times
    assert warn_rare_classes("train_x", ("a", "b", "c"), labels, list(labels), "mine") == {"c": 0}
    assert "fewer than 5 training images in --train_list mine: c 0" in capsys.readouterr().out


# ----- 6. modes, 7. byte-identical checkpoints


def test_written_files_get_the_mode_of_the_umask(tmp_path):
    from misc.toy import generate_once

    old = os.umask(0o027)
    try:
        save_json(tmp_path / "a.json", {})
        save_png(tmp_path / "a.png", np.zeros((2, 2), np.uint8))
        save_torch(tmp_path / "a.pth", {"w": torch.zeros(1)})
        root = generate_once(tmp_path / "toy", {"v": 1}, lambda d: None)
    finally:
        os.umask(old)
    for name in ("a.json", "a.png", "a.pth"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o640, name
    assert stat.S_IMODE(root.stat().st_mode) == 0o750


def test_equal_weights_give_equal_checkpoint_bytes(tmp_path):
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    save_checkpoint(model, tmp_path / "a" / "w.pth", "net")
    save_checkpoint(model, tmp_path / "b" / "w.pth", "net")
    save_checkpoint(model, tmp_path / "c.pth", "net")
    blobs = {(tmp_path / p).read_bytes() for p in ("a/w.pth", "b/w.pth", "c.pth")}
    assert len(blobs) == 1


# ----- 8. pictures


def test_picture_of_a_large_image_with_an_empty_seed(tmp_path):
    from misc.io import save_cam
    from misc.vis import ALERT
    from step.draw import HEIGHT, draw_one

    root = write_toy_voc(tmp_path / "voc", seed=1, n_train_aug=2, n_train=1, n_val=1, size=600)
    args = _args(root, tmp_path / "work", "--draw_out_dir", str(tmp_path / "draw"))
    ds = get_dataset(args)
    img_id = read_id_list(tmp_path / "work" / "meta" / "train.txt")[0]
    gt = np.array(Image.open(ds.gt_path(img_id)))
    keys = np.unique(gt[(gt > 0) & (gt < 255)]).astype(np.int64) - 1
    maps = np.stack([(gt == k + 1).astype(np.float32) for k in keys])
    maps[0] = 0  # the first class's seed is empty
    save_cam(tmp_path / "work" / "cam" / f"{img_id}.npz", keys, maps[:, ::4, ::4], maps)
    save_png(tmp_path / "work" / "ir_label" / f"{img_id}.png", gt)
    pic = draw_one(args, ds, img_id)
    Image.fromarray(pic).save(tmp_path / "pic.png")
    cap = HEIGHT // 16 + HEIGHT // 32  # caption strip of the default font size at HEIGHT rows
    assert pic.shape[0] >= cap + HEIGHT + cap  # panels at the common height, a legend row below
    image_w = round(gt.shape[1] * HEIGHT / gt.shape[0])
    x0 = image_w + 4  # the first CAM panel (the empty one) has a red frame
    assert (pic[cap + HEIGHT // 2, x0] == ALERT).all() and not (pic[cap + HEIGHT // 2, image_w + 4 + image_w + 4] ==
                                                                 ALERT).all()
    assert pic.shape[1] == (len(keys) + 4) * (image_w + 4) - 4  # image, its CAMs, seed label, IR label, GT


def test_retrained_input_weights_change_the_fingerprint(tmp_path):
    from step.common.checkpoints import EpochResume

    args = run_sample.parse_args(["--work_dir", str(tmp_path), "--voc12_root", str(tmp_path / "voc")])
    record = tmp_path / "sess" / "res50_cam.pth.json"
    fingerprints = []
    for sha in ("a", "b"):
        save_json(record, {"sha256": sha})
        fingerprints.append(EpochResume(args, tmp_path / "irn.pth", ("irn",), ("cam_weights_name",)).flags)
    assert fingerprints[0]["cam_weights_name sha256"] == "a" and fingerprints[1]["cam_weights_name sha256"] == "b"
