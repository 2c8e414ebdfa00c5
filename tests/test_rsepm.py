"""Unit tests of RS+EPM's library pieces on hand-made inputs: PAMR, SCG, the seed format, the network."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from misc import rsepm_infer as ri
from misc.errors import UserError
from misc.pamr import pamr
from misc.scg import max_norm, scg
from net.rsepm import RSEPM, load_imagenet_trunk


def _ramp_masks(h: int = 9, w: int = 11) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64),
                            indexing="ij")
    return torch.stack([0.1 * xx + 0.05 * yy, 1 - 0.03 * yy])[None]


def test_pamr_keeps_a_constant_mask_for_any_image():
    image = torch.rand(2, 3, 12, 10, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    masks = torch.full((2, 3, 12, 10), 0.4, dtype=torch.float64)
    torch.testing.assert_close(pamr(image, masks, 10, (1, 2, 4)), masks)


def test_pamr_on_a_constant_image_averages_the_8_neighbours():
    """A constant image gives every neighbour the same weight: one iteration is the 8-neighbour mean, which
    leaves a linear ramp unchanged away from the replicated border (PAMR does not leave every mask unchanged
    on a constant image, only masks that equal their neighbours' mean)."""
    masks = _ramp_masks()
    image = torch.full((1, 3, 9, 11), 0.7, dtype=torch.float64)
    out = pamr(image, masks)
    torch.testing.assert_close(out[..., 1:-1, 1:-1], masks[..., 1:-1, 1:-1])
    assert not torch.allclose(out[..., 0, :], masks[..., 0, :])  # the replicated border does move
    noise = torch.rand(masks.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    box = torch.nn.functional.avg_pool2d(torch.nn.functional.pad(noise, [1] * 4, mode="replicate"), 3, 1)
    torch.testing.assert_close(pamr(image, noise), (9 * box - noise) / 8)


def test_pamr_does_not_cross_a_strong_edge():
    image = torch.zeros(1, 3, 8, 12, dtype=torch.float64)
    image[..., 6:] = 1.0
    image += 1e-3 * torch.rand(image.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    mask = torch.zeros(1, 1, 8, 12, dtype=torch.float64)
    mask[..., :6] = 1.0
    out = pamr(image, mask, 10, (1, 2))
    assert out[..., :6].min() > 0.999 and out[..., 6:].max() < 1e-3


def test_pamr_and_scg_are_batched():
    g = torch.Generator().manual_seed(3)
    image, masks = torch.rand(3, 3, 10, 9, generator=g), torch.rand(3, 2, 10, 9, generator=g)
    whole = pamr(image, masks, 3, (1, 2))
    for i in range(3):
        torch.testing.assert_close(pamr(image[i:i + 1], masks[i:i + 1], 3, (1, 2)), whole[i:i + 1])
    feats = [torch.rand(3, c, 5, 6, generator=g) for c in (4, 8)]
    cams = torch.rand(3, 2, 5, 6, generator=g)
    whole = scg(cams, feats)
    for i in range(3):
        torch.testing.assert_close(scg(cams[i:i + 1], [f[i:i + 1] for f in feats]), whole[i:i + 1])


def test_scg_spreads_a_seed_only_to_correlated_positions():
    """Three groups of positions: A and B have orthogonal features, C's feature has cosine 0.4 with A's
    (below the 0.50 first-order threshold). One A position is a foreground anchor (>= 0.30), the other A and
    all C positions are neither anchor kind (0.15), B is background (<= 0.05): the class map covers all of A
    and nothing of B or C."""
    h, w = 4, 6
    group = torch.zeros(h, w, dtype=torch.long)
    group[:, 2:4] = 1
    group[:, 4:] = 2
    protos = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.4, 0.0, (1 - 0.16) ** 0.5]])
    feat = protos[group].permute(2, 0, 1)[None]
    cam = torch.where(group == 1, 0.0, 0.15)[None, None]
    cam[0, 0, 1, 1] = 0.9
    out = scg(cam, [feat, 2 * feat])[0, 0]
    assert torch.all(out[group == 0] > 0.8)  # the anchor itself peaks at 1 (second order favours it)
    assert torch.all(out[group != 0] == 0)
    # with a threshold below 0.4, C joins A's correlation and A's seed reaches C's positions
    assert scg(cam, [feat], first_th=0.3)[0, 0][group == 2].min() > 0


def test_max_norm():
    cams = torch.tensor([[[[-1.0, 2.0], [4.0, 0.0]]]])
    torch.testing.assert_close(max_norm(cams), torch.tensor([[[[0.0, 0.5], [1.0, 0.0]]]]) * 4 / (4 + 1e-5))


def test_common_seed_format_and_label():
    probs = torch.softmax(torch.randn(1, 4, 9, 14, generator=torch.Generator().manual_seed(4)), 1)
    seed = ri.seed_maps(probs)[0]
    rec = ri.common_seed(seed, torch.tensor([False, True, True]))
    assert rec["keys"].dtype == np.int64 and rec["keys"].tolist() == [1, 2]
    assert rec["high_res"].shape == (2, 9, 14) and rec["cam"].shape == (2, 3, 4)
    assert rec["high_res"].dtype == rec["cam"].dtype == np.float32
    np.testing.assert_allclose(rec["high_res"].max((1, 2)), 1, atol=1e-4)
    high = rec["high_res"]
    means = np.array([[[high[k, 4 * i:4 * i + 4, 4 * j:4 * j + 4].mean() for j in range(4)] for i in range(3)]
                      for k in range(2)])  # the last row and column cells are partial (9 = 4 + 4 + 1, 14 = 3 * 4 + 2)
    np.testing.assert_allclose(rec["cam"], means / (means.max((1, 2), keepdims=True) + 1e-5), rtol=1e-5)
    image = np.zeros((9, 14, 3), np.uint8)
    label = ri.seed_to_label(image, rec["high_res"], rec["keys"])
    assert label.dtype == np.uint8 and set(np.unique(label)) <= {0, 2, 3}
    assert not ri.seed_to_label(image, rec["high_res"][:0], rec["keys"][:0]).any()
    # a class map of 1 everywhere leaves no background: (1 - 1)^2 = 0
    assert (ri.seed_to_label(image, np.ones((1, 9, 14), np.float32), np.array([5])) == 6).all()


def test_select_classes():
    p = torch.tensor([[0.2, 0.339, 0.34, 0.9]])
    assert ri.select_classes(p).tolist() == [[False, False, True, True]]  # released --conf_th 0.34
    assert ri.select_classes(p, torch.tensor([[1.0, 0.0, 0.0, 0.0]])).tolist() == [[True, False, False, False]]


def test_small_network_shapes_and_groups():
    net = RSEPM(num_classes=5, width=8, blocks=(1, 1, 1, 1), feature_size=16).train()
    out = net(torch.randn(2, 3, 50, 66))
    assert out.cams.shape == (2, 5, 4, 5) and out.logits.shape == (2, 5) and out.seg.shape == (2, 6, 13, 17)
    torch.testing.assert_close(out.logits, out.cams.mean((2, 3)))
    assert net(torch.randn(2, 3, 32, 32), with_seg=False).seg is None
    groups = net.parameter_groups()
    assert sum(len(g) for g in groups) == len(list(net.parameters()))
    assert {id(p) for p in groups[0] + groups[1]} == {id(p) for p in net.model.parameters()}
    assert all(p.dim() == 1 for p in groups[1] + groups[3])


def test_imagenet_trunk_loading(tmp_path):
    import torchvision

    with torch.device("meta"):  # skip the random initialisations: only keys, shapes and one tensor matter
        net = RSEPM(num_classes=3)
        tv = torchvision.models.resnet50().state_dict()
    net = net.to_empty(device="cpu")
    with pytest.raises(UserError, match="missing.pth"):
        load_imagenet_trunk(net, tmp_path / "missing.pth")
    # torchvision's files: every trunk key and fc, no num_batches_tracked
    sd = {k: torch.zeros(v.shape) for k, v in tv.items() if not k.endswith("num_batches_tracked")}
    sd["layer3.5.conv2.weight"] = torch.randn(sd["layer3.5.conv2.weight"].shape)
    good = tmp_path / "resnet50.pth"
    torch.save(sd, good)
    load_imagenet_trunk(net, good)
    torch.testing.assert_close(net.model.layer3[5].conv2.weight, sd["layer3.5.conv2.weight"])
    with torch.device("meta"):
        deep = RSEPM(num_classes=3, depth=101)
    with pytest.raises(UserError, match="resnet101"):
        load_imagenet_trunk(deep, good)
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="bad.pth"):
        load_imagenet_trunk(net, bad)
