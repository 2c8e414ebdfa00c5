"""Parity of the toolkit's PUFS pieces with the published code (Jessie459/feature-self-reinforcement 7f75f1c), on
the fixtures written by make_fixtures_pufs.py.

Tolerances as in test_parity_toco.py: float32 results differing only in summation order agree to ~1e-6
relative (losses 2e-5 after a whole step); masks, pseudo labels and schedules must be identical (schedules to
float64 rounding).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from misc.optim import cosine_momentum, teacher_temperature, warmup_adamw, warmup_multiplier
from net.par import PAR
from net.pufs import FSRLoss, PUFSConfig, PUFSNet, block_mask, ema_update, pufs_losses, uncertain_blocks
from net.vit import ARCHS
from tests.parity.toco_pufs_common import STEP_SIZE, TINY, normalize, shapes_of
from tests.parity.util import load_fixture, load_keys, random_state_dict


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: these small tensors run several times faster than with threads fighting over the
    shared CPU cores."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def close(a, b, rtol: float, atol: float = 0.0) -> None:
    np.testing.assert_allclose(np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64), rtol=rtol, atol=atol)


def test_published_checkpoint_loads_strictly():
    shapes = load_keys("pufs_keys")
    with torch.device("meta"):
        model = PUFSNet(21, vit=ARCHS["vit_base_patch16_224"])
        sd = {k: torch.empty(s) for k, s in shapes.items()}
    model.load_state_dict(sd, strict=True, assign=True)
    assert shapes_of(model) == shapes


def test_mask_generator_given_the_noise():
    f, meta = load_fixture("pufs_mask")
    assert meta["commit"].startswith("7f75f1c")
    cam = F.interpolate(torch.from_numpy(f["cam_low"]).float() / 255, size=(448, 448), mode="nearest")
    labels = torch.from_numpy(f["cls_label"])
    gen = torch.Generator().manual_seed(meta["seed"])
    random = block_mask(2, (7, 7), 0.4, 4, generator=gen)
    unc = uncertain_blocks(cam, labels, (7, 7), 0.2, 0.7)
    uncertain = block_mask(2, (7, 7), 0.4, 4, unc, generator=gen)
    assert np.array_equal(random.numpy(), f["random"])
    assert np.array_equal(uncertain.numpy(), f["uncertain"])


def test_fsr_losses_and_centres():
    f, meta = load_fixture("pufs_fsr")
    loss = FSRLoss(32)
    for i, epoch in enumerate(meta["epochs"]):
        t, s, m = (torch.from_numpy(f[f"{k}{i}"]) for k in ("t", "s", "mask"))
        cls_l, pat_l = loss(t, s, m[2:], teacher_temperature(epoch, 20000))
        close(cls_l, f[f"cls{i}"], rtol=1e-6)
        close(pat_l, f[f"pat{i}"], rtol=1e-6)
        close(loss.class_center, f[f"class_center{i}"], rtol=1e-6, atol=1e-8)
        close(loss.patch_center, f[f"patch_center{i}"], rtol=1e-6, atol=1e-8)


def test_schedules_at_named_steps():
    f, _ = load_fixture("pufs_fsr")
    close([cosine_momentum(int(s), 20000) for s in f["steps"]], f["momentum"], rtol=1e-15)
    close([teacher_temperature(int(s), 20000) for s in f["steps"]], f["temps"], rtol=1e-15)
    for st, lrs in zip(f["opt_steps"], f["cos_lr"]):
        m = warmup_multiplier(int(st), 1500, 20000, 0.1, "cosine")
        close([6e-5 * m, 6e-4 * m], lrs, rtol=1e-12)


@pytest.fixture(scope="module")
def steps_run(one_thread):
    """Two training steps with the optimiser step (lr at steps 1600, 1601) and the EMA update after each."""
    f, meta = load_fixture("pufs_step")
    shapes = load_keys("pufs_tiny_keys")
    vit = dict(img_size=STEP_SIZE, drop_path_rate=0.0, **TINY)
    student, teacher = PUFSNet(21, vit=vit, out_dim=meta["out_dim"]), PUFSNet(21, vit=vit, out_dim=meta["out_dim"])
    assert shapes_of(student) == shapes
    student.load_state_dict(random_state_dict(shapes, seed=meta["student_seed"]))
    teacher.load_state_dict(random_state_dict(shapes, seed=meta["teacher_seed"]))
    teacher.requires_grad_(False)
    u8 = f["image_u8"]
    batch = {"view1": normalize(u8[:2]), "view2": normalize(u8[2:]), "cls_labels": torch.from_numpy(f["cls_label"])}
    cfg = PUFSConfig(block_size=meta["block_size"])
    fsr, par = FSRLoss(meta["out_dim"]), PAR()
    opt, _ = warmup_adamw(student.param_groups(), lr=6e-5, weight_decay=0.05, max_iters=20000, warmup_iters=1500,
                              warmup_ratio=0.1, schedule="cosine")
    gen = torch.Generator().manual_seed(meta["rng_seed"])
    results = []
    for i, n_iter in enumerate(meta["steps"]):
        for g in opt.param_groups:
            g["lr"] = g["initial_lr"] * warmup_multiplier(meta["optimizer_step"] + i, 1500, 20000, 0.1, "cosine")
        s_before = {k: v.clone() for k, v in student.state_dict().items()}
        t_before = {k: v.clone() for k, v in teacher.state_dict().items()}
        out = pufs_losses(student, teacher, fsr, batch, n_iter, cfg, par, generator=gen)
        opt.zero_grad(set_to_none=False)
        out["loss"].backward()
        grads = {k: p.grad.clone() for k, p in student.named_parameters() if p.grad is not None}
        opt.step()
        ema_update(teacher, student, cosine_momentum(n_iter, cfg.fsr_iters))
        s_after, t_after = student.state_dict(), teacher.state_dict()
        results.append({"out": out, "grads": grads, "centres": (fsr.class_center.clone(), fsr.patch_center.clone()),
                            "delta": {k: s_after[k] - s_before[k] for k in s_after},
                            "tdelta": {k: t_after[k] - t_before[k] for k in t_after}})
    return f, results


def test_step_masks_and_pseudo_labels(steps_run):
    f, results = steps_run
    for i, r in enumerate(results):
        assert np.array_equal(r["out"]["mask"].numpy(), f[f"s{i}_mask2"])
        assert np.array_equal(r["out"]["pseudo_label"].numpy(), f[f"s{i}_pseudo"])
        close(r["out"]["cam"].sum((2, 3)), f[f"s{i}_cam_sum"], rtol=1e-5)


def test_step_losses_and_centres(steps_run):
    f, results = steps_run
    for i, r in enumerate(results):
        for k in ("cls", "cls_aux", "fsr_cls", "fsr_pat", "aff", "seg", "reg", "loss"):
            close(r["out"][k].detach(), f[f"s{i}_loss_{k}"], rtol=2e-5)
        close(r["centres"][0], f[f"s{i}_class_center"], rtol=0, atol=1e-6 * np.abs(f[f"s{i}_class_center"]).max())
        close(r["centres"][1], f[f"s{i}_patch_center"], rtol=0, atol=1e-6 * np.abs(f[f"s{i}_patch_center"]).max())


def test_step_gradients_optimizer_and_teacher(steps_run):
    f, results = steps_run
    for i, r in enumerate(results):
        for name, store in (("grad", r["grads"]), ("delta", r["delta"]), ("tdelta", r["tdelta"])):
            prefix = f"s{i}_{name}_"
            for key in [k[len(prefix):] for k in f if k.startswith(prefix)]:
                ref = f[prefix + key]
                tol = 1e-4 if name == "grad" else 1e-3  # Adam's first steps divide by sqrt(v): ~sign(grad)
                close(store[key], ref, rtol=0, atol=tol * np.abs(ref).max() + 1e-12)
