"""Parity of the toolkit's ToCo pieces with the published code (rulixiang/ToCo e13514d), on the fixtures written
by make_fixtures_toco.py (random weights and small synthetic inputs run through the published code on CPU).

Tolerances: float32 results that differ only in summation order (timm's fused attention vs the published
explicit softmax, neighbour sums in PAR, batched matmuls) agree to ~1e-6 relative; the CRF loss is compared
with the published formula evaluated with an exact float64 filter, while the toolkit filters in float32
(~1e-5 relative); labels and crop flags must be identical.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from misc.optim import warmup_adamw, warmup_multiplier
from net.crf_loss import dense_crf_loss
from net.par import PAR
from net.single_stage import box_mask, cam_to_label, denormalize, ptc_loss, refine_cams_with_bkg, seg_loss_bg_fg
from net.toco import ToCoConfig, ToCoNet, cam_to_roi_mask, ctc_loss, toco_losses
from net.vit import ARCHS
from tests.parity.toco_pufs_common import TINY, normalize, shapes_of, smooth_maps
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


def test_published_vit_b_checkpoint_loads_strictly():
    shapes = load_keys("toco_keys")
    with torch.device("meta"):
        model = ToCoNet(21, vit=ARCHS["vit_base_patch16_224"])
        sd = {k: torch.empty(s) for k, s in shapes.items()}
    model.load_state_dict(sd, strict=True, assign=True)
    assert shapes_of(model) == shapes


def test_par():
    f, meta = load_fixture("toco_par")
    assert meta["commit"].startswith("e13514d")
    image = torch.from_numpy(f["image_u8"].transpose(0, 3, 1, 2).copy()).float() / 255
    out = PAR()(image, torch.from_numpy(f["masks"]))
    close(out, f["out"], rtol=0, atol=2e-6)


def test_pseudo_label_rule_and_refinement():
    f, _ = load_fixture("toco_labels")
    cam = smooth_maps(f["cam_low"], (48, 56))
    cls_label, img_box = torch.from_numpy(f["cls_label"]), torch.from_numpy(f["img_box"])
    thr = {"bkg_thre": 0.5, "high_thre": 0.7, "low_thre": 0.25}
    valid, train = cam_to_label(cam, cls_label, ignore_mid=True, img_box=img_box, **thr)
    assert np.array_equal(train.numpy(), f["train_label"])
    assert np.array_equal(cam_to_label(cam, cls_label, **thr)[1].numpy(), f["val_label"])
    assert np.array_equal(cam_to_roi_mask(cam, cls_label).numpy(), f["roi"])
    images01 = denormalize(normalize(f["image_u8"]), quantize=True) / 255
    refined = refine_cams_with_bkg(PAR(), images01, valid, cls_label, 0.7, 0.25, img_box)
    assert np.array_equal(refined.numpy(), f["refined"])
    assert set(np.unique(f["refined"])) >= {0, 255} and (f["refined"] % 255 > 0).any()


def test_ptc_ctc_seg_losses():
    f, _ = load_fixture("toco_losses")
    close(ptc_loss(torch.from_numpy(f["fmap"]), torch.from_numpy(f["tok"])), f["ptc"], rtol=1e-6)
    s, t, flags = (torch.from_numpy(f[k]) for k in ("ctc_s", "ctc_t", "ctc_flags"))
    close(ctc_loss(s, t, flags, temp=0.5), f["ctc"], rtol=1e-6)
    close(ctc_loss(s, t, flags, temp=1.0), f["ctc_t1"], rtol=1e-6)
    close(seg_loss_bg_fg(torch.from_numpy(f["seg_logits"]), torch.from_numpy(f["seg_label"])), f["seg"], rtol=1e-6)


def test_crf_loss_value_and_gradient():
    f, _ = load_fixture("toco_losses")
    logits = torch.from_numpy(f["crf_logits"]).requires_grad_()
    label = torch.from_numpy(f["crf_label"])
    roi = box_mask(torch.from_numpy(f["crf_box"]), *label.shape, label.device).float()
    loss = dense_crf_loss(denormalize(normalize(f["crf_u8"])), F.softmax(logits, 1), roi, label)
    loss.backward()
    close(loss.detach(), f["crf"], rtol=2e-5)
    g = f["crf_grad"]
    close(logits.grad, g, rtol=0, atol=2e-5 * np.abs(g).max())


def test_poly_warmup_schedule():
    f, _ = load_fixture("toco_losses")
    for st, (lr_bb, lr_head) in zip(f["poly_steps"], f["poly_lr"]):
        m = warmup_multiplier(int(st), 1500, 20000, 1e-6, "poly")
        close([6e-5 * m, 6e-4 * m], [lr_bb, lr_head], rtol=1e-12)


@pytest.fixture(scope="module")
def step_run(one_thread):
    """The whole training step on the tiny network, then one optimiser step (lr at step 1600)."""
    f, meta = load_fixture("toco_step")
    model = ToCoNet(21, vit=dict(img_size=64, **TINY))
    shapes = load_keys("toco_tiny_keys")
    assert shapes_of(model) == shapes
    model.load_state_dict(random_state_dict(shapes, seed=meta["weights_seed"]))
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    u8 = f["image_u8"]
    batch = {"image": normalize(u8[:2]), "global2": normalize(u8[2:4]), "local_src": normalize(u8[4:]),
             "cls_labels": torch.from_numpy(f["cls_label"]), "img_box": torch.from_numpy(f["img_box"])}
    out = toco_losses(model, batch, meta["n_iter"], ToCoConfig(local_crop_size=32), PAR(),
                      generator=torch.Generator().manual_seed(meta["rng_seed"]))
    out["loss"].backward()
    grads = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
    opt, _ = warmup_adamw(model.param_groups(), lr=6e-5, weight_decay=0.01, max_iters=20000, warmup_iters=1500,
                          warmup_ratio=1e-6, schedule="poly")
    for g in opt.param_groups:
        g["lr"] = g["initial_lr"] * warmup_multiplier(meta["optimizer_step"], 1500, 20000, 1e-6, "poly")
    opt.step()
    after = model.state_dict()
    return f, (out["cam"], out["cam_aux"]), out, grads, {k: after[k] - before[k] for k in after}


def test_step_cams_crops_and_pseudo_labels(step_run):
    f, (cam, cam_aux), out, _, _ = step_run
    # CAMs in [0, 1] after min-max normalisation, which amplifies the encoder's ~1e-6 float differences.
    close(cam[..., ::8, ::8], f["cams_sub"], rtol=0, atol=2e-5)
    close(cam_aux[..., ::8, ::8], f["cams_aux_sub"], rtol=0, atol=2e-5)
    close(cam.sum((2, 3)), f["cams_sum"], rtol=1e-5)
    assert np.array_equal(out["flags"].numpy(), f["flags"])
    assert np.array_equal(out["pseudo_label"].numpy(), f["pseudo"])


def test_step_losses(step_run):
    f, _, out, _, _ = step_run
    for k in ("cls", "cls_aux", "ptc", "ctc", "seg", "reg", "loss"):
        close(out[k].detach(), f[f"loss_{k}"], rtol=2e-5)


def test_step_gradients_and_optimizer(step_run):
    f, _, _, grads, deltas = step_run
    for key in [k[len("grad_"):] for k in f if k.startswith("grad_")]:
        g = f["grad_" + key]
        close(grads[key], g, rtol=0, atol=1e-4 * np.abs(g).max() + 1e-12)
    for key in [k[len("delta_"):] for k in f if k.startswith("delta_")]:
        d = f["delta_" + key]
        close(deltas[key], d, rtol=0, atol=1e-3 * np.abs(d).max())
