"""Training steps resume after an interruption: a run stopped after its first epoch and restarted ends with
the weights of an uninterrupted run; changed flags start over. Uses the session's toy run (labels, IR
labels, the toy classifier) with a 16-image list and small crops."""
from __future__ import annotations

import pytest
import torch

import run_sample
from misc.io import read_id_list, write_id_list
from step import train_cam, train_irn, train_rsepm, train_single_stage
from step.common import checkpoints


class _Stop(Exception):
    pass


def _interrupt_after_first_epoch(monkeypatch) -> None:
    """Make EpochResume.save raise once it has written the state of epoch 1 (a crash between epochs)."""
    save = checkpoints.EpochResume.save

    def save_then_stop(self, model, opt, sched, epoch):
        save(self, model, opt, sched, epoch)
        if epoch == 1:
            raise _Stop

    monkeypatch.setattr(checkpoints.EpochResume, "save", save_then_stop)


def _argv(toy_run, tmp_path) -> list[str]:
    ids = tmp_path / "ids.txt"
    write_id_list(ids, read_id_list(toy_run / "meta" / "train.txt")[:16])
    return ["--work_dir", str(toy_run), "--toy_root", str(toy_run.parent / "toy_voc"), "--train_list", str(ids),
            "--val_list", str(ids), "--infer_list", str(ids), "--num_workers", "0"]


def _load(path):
    return torch.load(path, weights_only=True)


def _assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k].float(), b[k].float(), atol=1e-6), k


def _straight_then_resumed(step, base: list[str], weights_flag: str, tmp_path, monkeypatch, capsys
                           ) -> tuple[dict, dict, dict]:
    """Train ``step`` straight, then again stopped after epoch 1 and restarted (which must say it resumes).
    Returns the state_dicts (straight, resumed, after epoch 1)."""
    step.run(run_sample.parse_args(base + [weights_flag, str(tmp_path / "straight.pth")]))
    resumed = tmp_path / "resumed.pth"
    args = run_sample.parse_args(base + [weights_flag, str(resumed)])
    with monkeypatch.context() as m:
        _interrupt_after_first_epoch(m)
        with pytest.raises(_Stop):
            step.run(args)
    assert not resumed.exists() and (tmp_path / "resumed.pth.resume").is_file()
    after_one = _load(tmp_path / "resumed.pth.resume")["model"]
    capsys.readouterr()
    step.run(args)
    assert "resuming after epoch 1" in capsys.readouterr().out
    assert not (tmp_path / "resumed.pth.resume").exists()
    return _load(tmp_path / "straight.pth"), _load(resumed), after_one


def _moved(a: dict, b: dict) -> dict[str, float]:
    """Max |a - b| of every floating-point entry."""
    return {k: (a[k].float() - b[k].float()).abs().max().item() for k in a if a[k].is_floating_point()}


@pytest.mark.parametrize("step,flags,weights_flag", [
    (train_cam, ["--cam_num_epoches", "2", "--cam_batch_size", "8", "--cam_crop_size", "64",
                 "--cam_resize_long", "56", "80"], "--cam_weights_name"),
    (train_irn, ["--irn_num_epoches", "2", "--irn_batch_size", "8", "--irn_crop_size", "64"], "--irn_weights_name"),
])
def test_interrupted_training_resumes_to_the_same_weights(toy_run, tmp_path, monkeypatch, capsys, step, flags,
                                                          weights_flag):
    straight, resumed, after_one = _straight_then_resumed(step, _argv(toy_run, tmp_path) + flags, weights_flag,
                                                          tmp_path, monkeypatch, capsys)
    assert not (tmp_path / "straight.pth.resume").exists()
    _assert_same(resumed, straight)
    assert max(_moved(straight, after_one).values()) > 1e-4  # the second epoch trained: the equality is not vacuous


@pytest.mark.parametrize("method", ["toco", "pufs"])
def test_single_stage_training_resumes_to_the_same_weights(single_stage_tiny, tmp_path, monkeypatch, capsys,
                                                           method):
    """train_single_stage (a tiny ViT, 2 epochs of 2 iterations, the seg and CRF losses on in the second): the
    resume state holds the optimiser, the schedule, ToCo's EMA projection head and PUFS's teacher and FSR
    centres, and the crop positions / mask noise repeat, so the restarted run ends where the straight one does."""
    straight, resumed, after_one = _straight_then_resumed(train_single_stage, single_stage_tiny + ["--method", method],
                                                          "--ss_weights_name", tmp_path, monkeypatch, capsys)
    _assert_same(resumed, straight)
    moved = _moved(straight, after_one)
    assert max(v for k, v in moved.items() if "decoder" in k or "seg" in k) > 1e-4  # the seg losses trained
    if method == "pufs":
        assert moved["fsr.class_center"] > 0 and max(v for k, v in moved.items() if k.startswith("teacher.")) > 0


def test_changed_flags_start_over(toy_run, tmp_path, monkeypatch, capsys):
    base = _argv(toy_run, tmp_path) + ["--cam_num_epoches", "2", "--cam_batch_size", "8", "--cam_crop_size", "64",
                                       "--cam_resize_long", "56", "80", "--cam_weights_name", str(tmp_path / "w.pth")]
    with monkeypatch.context() as m:
        _interrupt_after_first_epoch(m)
        with pytest.raises(_Stop):
            train_cam.run(run_sample.parse_args(base))
    capsys.readouterr()
    train_cam.run(run_sample.parse_args(base + ["--cam_learning_rate", "5e-4"]))
    out = capsys.readouterr().out
    assert "flags changed since the interrupted run (cam_learning_rate); starting over" in out
    assert "train_cam epoch 1:" in out and not (tmp_path / "w.pth.resume").exists()


@pytest.mark.parametrize("other", [["--method", "rib"], ["--draw_num", "3", "--rib_iters", "1", "--num_workers", "1"]])
def test_flags_outside_the_classifier_keep_the_resume(toy_run, tmp_path, monkeypatch, capsys, other):
    """IRN and RIB share the classifier: --method rib (or another step's flag) after an interrupted IRN
    train_cam resumes it."""
    base = _argv(toy_run, tmp_path) + ["--cam_num_epoches", "2", "--cam_batch_size", "8", "--cam_crop_size", "64",
                                       "--cam_resize_long", "56", "80", "--cam_weights_name", str(tmp_path / "w.pth")]
    with monkeypatch.context() as m:
        _interrupt_after_first_epoch(m)
        with pytest.raises(_Stop):
            train_cam.run(run_sample.parse_args(base))
    capsys.readouterr()
    train_cam.run(run_sample.parse_args(base + other))
    out = capsys.readouterr().out
    assert "resuming after epoch 1" in out and "train_cam epoch 1:" not in out
    assert (tmp_path / "w.pth").is_file() and not (tmp_path / "w.pth.resume").exists()


def test_rsepm_training_resumes_to_the_same_weights(mini_voc, tmp_path, monkeypatch, capsys):
    """train_rsepm (a tiny from-scratch RS+EPM, 2 epochs, EdgePredictMix in the second): the restarted run ends
    with the straight run's weights (the optimiser, the schedule, the mix's class choice and the decoder's
    dropout repeat)."""
    base = ["--voc12_root", str(mini_voc), "--work_dir", str(tmp_path / "work"), "--method", "rsepm",
            "--rsepm_scratch", "True", "--rsepm_width", "8", "--rsepm_blocks", "1", "1", "1", "1",
            "--rsepm_feature_size", "16", "--rsepm_crop_size", "48", "--rsepm_resize_long", "48", "64",
            "--rsepm_batch_size", "4", "--rsepm_epochs", "2", "--rsepm_epm_start", "1", "--rsepm_optimizer", "adam",
            "--rsepm_lr", "1e-3", "--num_workers", "0"]
    straight, resumed, after_one = _straight_then_resumed(train_rsepm, base, "--rsepm_weights_name", tmp_path,
                                                          monkeypatch, capsys)
    _assert_same(resumed, straight)
    assert max(_moved(straight, after_one).values()) > 1e-4  # the second epoch trained: the equality is not vacuous
