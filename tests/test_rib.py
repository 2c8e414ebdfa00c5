"""RIB: the gndp pooling, the class-disjoint sampler, θ0 restoration and the stop rules."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from net.rib import RibSettings, gndp, rib_seed
from step.make_rib_cam import DisjointBatchSampler


def test_gndp_known_value_and_gradient_mask():
    cams = torch.tensor([[[[4.0, 1.0], [-2.0, 3.0]],     # class 0 present: max 4, τ 0.5 keeps 1 and -2
                          [[1.0, 2.0], [3.0, 6.0]]]],    # class 1 absent: plain mean
                        requires_grad=True)
    z = gndp(cams, torch.tensor([[1.0, 0.0]]), tau=0.5)
    torch.testing.assert_close(z.detach(), torch.tensor([[(1.0 - 2.0) / 4, 12.0 / 4]]))
    z[0, 0].backward()
    torch.testing.assert_close(cams.grad[0, 0], torch.tensor([[0.0, 0.25], [0.25, 0.0]]))
    assert (cams.grad[0, 1] == 0).all()


def test_gndp_guards_non_positive_maximum():
    cams = torch.tensor([[[[-1.0, -3.0], [-2.0, 0.0]]]])  # present class with max 0: average pooling
    z = gndp(cams, torch.tensor([[1.0]]), tau=0.4)
    assert torch.isfinite(z).all() and z.item() == -1.5
    neg = torch.tensor([[[[-1.0, -3.0], [-2.0, -0.5]]]])
    assert gndp(neg, torch.tensor([[1.0]]), tau=0.4).item() == -6.5 / 4


def test_gndp_is_gap_with_tau_above_one():
    cams = torch.randn(3, 5, 7, 6)
    labels = (torch.rand(3, 5) > 0.5).float()
    torch.testing.assert_close(gndp(cams, labels, tau=1.01), cams.mean((2, 3)))


def test_disjoint_sampler_returns_only_disjoint_images():
    rng = np.random.default_rng(0)
    labels = (rng.random((300, 80)) < 0.04).astype(np.float32)  # 80 classes: a multi-byte bitmask
    targets = [labels[i] for i in range(0, 40)]
    sampler = DisjointBatchSampler(labels, targets, steps=3, batch=15, seed=1)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 120
    for t, target in enumerate(targets):
        want = {i for i in range(300) if not (labels[i] * target).any()}
        assert set(sampler.disjoint(t).tolist()) == want
        for b in batches[3 * t:3 * t + 3]:
            assert len(b) == 15 and len(set(b)) == 15 and set(b) <= want
    assert list(DisjointBatchSampler(labels, targets, 3, 15, seed=1)) == batches


def test_disjoint_sampler_empty_pool_gives_empty_batches():
    labels = np.ones((4, 3), np.float32)
    assert list(DisjointBatchSampler(labels, [labels[0]], steps=2, batch=2)) == [[], []]


def _args(**kw) -> RibSettings:
    base = dict(iters=3, lr=1e-3, tau=0.4, stop_logit=1e9, area_thres=0.3, area_ratio=2.0, loss_scales=(1.0, 1.5),
                weight_decay=1e-4, momentum=1e-4)
    base.update(kw)
    return RibSettings(**base)


def _model_and_views():
    from net.resnet50_cam import Net

    torch.manual_seed(0)
    model = Net(num_classes=4, recipe="scratch", width=8, blocks=(1, 1, 1, 1)).eval()
    img = torch.randn(1, 3, 48, 40)
    views = [torch.nn.functional.interpolate(img, scale_factor=s, mode="bilinear") for s in (1.0, 1.5)]
    views = [torch.stack([v, v.flip(-1)], 1) for v in views]
    return model, views


def _aux(n: int):
    g = torch.Generator().manual_seed(1)
    label = torch.tensor([[0, 1.0, 0, 0], [0, 0, 0, 1.0]])
    return iter([{"img": torch.randn(2, 3, 32, 32, generator=g), "label": label} for _ in range(n)])


def test_rib_seed_accumulates_steps_and_theta0_restores_exactly():
    from misc.seeds import multiscale_cams

    model, views = _model_and_views()
    theta0 = {k: v.clone() for k, v in model.state_dict().items()}
    label = torch.tensor([1.0, 0, 1.0, 0])
    with torch.no_grad():
        s0, h0 = multiscale_cams(lambda x: torch.relu(model.raw_cam(x)), views, (48, 40))  # θ0 CAM, as make_cam
    aux = _aux(3)
    s, h, n = rib_seed(model, views, (1.0, 1.5), label, aux, _args(), (48, 40))
    assert n == 3 and next(aux, None) is None  # every step took one auxiliary batch
    assert not torch.equal(model.classifier.weight, theta0["classifier.weight"])
    moved = {k.split(".")[0] for k, v in model.state_dict().items()
             if k.startswith("stage") and not torch.equal(v, theta0[k])}
    assert moved == {"stage3", "stage4"}  # as published, stages 1-2 stay fixed (here under the scratch recipe)
    assert (s - s0[0]).abs().max() > 1e-4  # later steps' CAMs were added
    model.load_state_dict(theta0)
    assert all(torch.equal(v, theta0[k]) for k, v in model.state_dict().items())
    s1, _, _ = rib_seed(model, views, (1.0, 1.5), label, _aux(3), _args(), (48, 40))
    torch.testing.assert_close(s1, s)  # same start, same batches: same seed
    model.load_state_dict(theta0)
    one, _, n1 = rib_seed(model, views, (1.0, 1.5), label, _aux(3), _args(iters=1), (48, 40))
    assert n1 == 1
    torch.testing.assert_close(one, s0[0])  # one step: the seed is θ0's CAM


def test_rib_stop_rules():
    model, views = _model_and_views()
    theta0 = {k: v.clone() for k, v in model.state_dict().items()}
    label = torch.tensor([0, 1.0, 0, 0])
    aux = _aux(3)
    _, _, n = rib_seed(model, views, (1.0, 1.5), label, aux, _args(stop_logit=0.0), (48, 40))
    assert n == 1 and next(aux, None) is None  # logit stop after the first update; stream kept aligned
    model.load_state_dict(theta0)
    _, _, n = rib_seed(model, views, (1.0, 1.5), label, _aux(3), _args(area_ratio=-1.0), (48, 40))
    assert n == 1  # area stop is checked from step 1 on: step 0 always updates
    model.load_state_dict(theta0)
    s, h, n = rib_seed(model, views, (1.0, 1.5), torch.zeros(4), _aux(3), _args(), (48, 40))
    assert n == 0 and s.shape == (4, 12, 10) and h.shape == (4, 48, 40) and not s.any()


def test_rib_seed_needs_a_step():
    model, views = _model_and_views()
    with pytest.raises(ValueError, match="at least one step"):
        rib_seed(model, views, (1.0, 1.5), torch.tensor([1.0, 0, 0, 0]), _aux(1), _args(iters=0), (48, 40))
