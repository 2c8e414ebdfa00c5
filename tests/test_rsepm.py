"""Unit tests of RS+EPM's library pieces on hand-made inputs: PAMR, SCG, the seed format, the network."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from misc import rsepm_infer as ri
from misc.errors import UserError
from misc.pamr import pamr
from misc.scg import max_norm, scg
from misc.seeds import IGNORE
from net import rsepm_losses as rl
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
    none = ri.common_seed(seed, torch.zeros(3, dtype=torch.bool))  # an image without classes (toy COCO has them)
    assert none["keys"].shape == (0,) and none["cam"].shape == (0, 3, 4) and none["high_res"].shape == (0, 9, 14)
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


# --- the reconstructed training (net/rsepm_losses.py) ---

def test_edge_map_on_a_hand_made_map():
    """Two classes split at column 3 (crisp: distance 1), a soft step of 0.3 at row 4 in the right half."""
    p = torch.zeros(1, 2, 6, 6)
    p[0, 0, :, :3] = 1
    p[0, 1, :, 3:] = 1
    p[0, :, 4:, 3:] = torch.tensor([0.3, 0.7])[:, None, None]
    e = rl.edge_map(p)[0]
    assert torch.all(e[:4, 2:4] == 1) and e[4, 2] == 1  # both sides of the crisp edge
    torch.testing.assert_close(e[[4, 5, 5], [3, 2, 3]], torch.full((3,), 0.7))  # [1, 0] next to [0.3, 0.7]
    assert torch.all(e[:, :2] == 0)  # two columns away: no neighbour differs
    torch.testing.assert_close(e[2:6, 5], torch.tensor([0.0, 0.3, 0.3, 0.0]))  # the soft step, both sides


def test_edge_predict_ignores_uncertain_edges_and_low_confidence():
    seg = torch.full((1, 4, 8, 8), -10.0)
    seg[0, 0, :, :4] = 10  # background left
    seg[0, 2, :, 4:] = 10  # class 1 (label 2) right
    seg[0, 3, :2] = 20  # class 2 is the strongest on top, but it is not among the image's classes
    seg[0, :, 6:, 6:] = 0  # bottom-right corner: background and class 1 tie (0.5 each)
    labels = torch.tensor([[0.0, 1.0, 0.0]])
    image = torch.zeros(1, 3, 32, 32)
    image[..., 16:] = 1  # PAMR keeps the decoder's edge where the image has one
    image[..., 24:, 24:] = 2
    mep = rl.edge_predict(seg, image, labels, rl.RSEPMConfig(ep_edge=0.5, ep_conf=0.55))[0]
    assert torch.all(mep[:, 3:5] == IGNORE)  # the edge between background and the class, both sides
    assert torch.all(mep[:6, :3] == 0) and torch.all(mep[:5, 5] == 2)
    assert torch.all(mep[7:, 7:] == IGNORE)  # top probability 0.5 < 0.55
    assert not (mep == 3).any()  # absent classes never appear


def test_certainty_filter():
    mrs = torch.tensor([[[[0.9, 0.3, 0.05]], [[0.2, 0.5, 0.09]]]])  # (1, 2, 1, 3)
    assert rl.certainty_filter(mrs, 0.55, 0.10).tolist() == [[[1, IGNORE, 0]]]


def _mix_inputs():
    """Two 4x4 (stride-4) label maps and their 16x16 images whose pixels encode (image, label): A (image 0)
    holds class 0 (label 1) at rows 0-1 with an ignored band at row 2, class 3 (label 4) at column 3 and
    background elsewhere; B (image 1) is all class 5 (label 6)."""
    mep = torch.zeros(2, 4, 4, dtype=torch.long)
    mep[0, :2, :3] = 1
    mep[0, 2, :3] = IGNORE
    mep[0, :, 3] = 4
    mep[1] = 6
    mseg = mep.clone()
    mseg[0, 2, :3] = 0
    images = (torch.arange(2)[:, None, None, None] * 100 + mep.repeat_interleave(4, 1).repeat_interleave(4, 2)
              [:, None]).float().expand(2, 3, 16, 16)
    labels = torch.zeros(2, 6)
    labels[0, [0, 3]] = 1
    labels[1, 5] = 1
    mrs = torch.stack([torch.full((6, 4, 4), 0.1), torch.full((6, 4, 4), 0.7)])
    return images, mep, mseg, mrs, labels


def test_mix_keeps_labels_consistent_with_pixels_and_brings_the_ignored_band():
    images, mep, mseg, mrs, labels = _mix_inputs()
    chosen = torch.zeros(2, 6, dtype=torch.bool)
    chosen[0, 0] = True  # A pastes class 0 only
    chosen[1, 5] = True
    mixed, label, rs, classes = rl.edge_mix(images, mep, mseg, mrs, labels, chosen, band=1)
    a_into_b, b_into_a = 0, 1  # mixed image 0: image 0 pasted onto image 1; mixed image 1: 1 onto 0
    pix = mixed[a_into_b, 0, ::4, ::4]  # one pixel per stride-4 cell (cells are constant)
    expected = torch.full((4, 4), 106.0)  # B's class 5 pixels ...
    expected[:2, :3] = 1  # ... except A's class-0 pixels
    expected[2, :3] = IGNORE  # and A's uncertain band next to them
    torch.testing.assert_close(pix, expected)
    lab = label[a_into_b]
    assert torch.all(lab[:2, :3] == 1) and torch.all(lab[2, :3] == IGNORE)  # the band is not a class
    assert torch.all(lab[3] == 6) and torch.all(lab[:, 3] == 6)  # B's labels where B's pixels remain
    assert torch.equal(lab[pix == 106], torch.full_like(lab[pix == 106], 6))  # labels follow the pixels
    assert torch.all(rs[a_into_b][:, :3, :3] == 0.1) and torch.all(rs[a_into_b][:, 3] == 0.7)
    assert classes[a_into_b].tolist() == [True, False, False, False, False, True]  # A's class 3 was not pasted
    # B (all class 5) pasted onto A covers it entirely: every label is B's
    assert torch.all(label[b_into_a] == 6) and torch.all(mixed[b_into_a] == 106)


def test_mix_band_grows_only_into_ignored_pixels():
    _, mep, _, _, _ = _mix_inputs()
    chosen = torch.zeros(2, 6, dtype=torch.bool)
    chosen[0, 3] = True  # class 3 (column 3) touches the band at (2, 2) diagonally
    region = rl.paste_region(mep, chosen, band=3)[0]
    assert torch.all(region[:, 3]) and region[2, :3].all()  # the band is reached, and grows along itself
    assert not region[:2, :3].any() and not region[3, :3].any()  # other labels are never taken
    assert not rl.paste_region(mep, chosen, band=0)[0][2, :3].any()


def test_mix_choice_takes_half_of_the_classes_at_least_one():
    labels = torch.tensor([[1.0, 1, 1, 1, 0], [0, 0, 1, 0, 0], [0, 0, 0, 0, 0]])
    chosen = rl.mix_choice(labels, torch.Generator().manual_seed(0))
    assert chosen.sum(1).tolist() == [2, 1, 0] and not (chosen & ~labels.bool()).any()


def test_recur_seed_and_losses_on_a_small_network():
    net = RSEPM(num_classes=3, width=8, blocks=(1, 1, 1, 1), feature_size=16).train()
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    labels = torch.tensor([[1.0, 0, 1], [0, 1, 0]])
    out = net(images)
    cam_only = rl.recur_seed(out, images, labels, rl.RSEPMConfig(refine=False))
    mrs = rl.recur_seed(out, images, labels, rl.RSEPMConfig())
    for m in (cam_only, mrs):
        assert m.shape == (2, 3, 16, 16) and not m.requires_grad and m.min() >= 0 and m.max() <= 1
        assert torch.all(m[0, 1] == 0) and torch.all(m[1, [0, 2]] == 0)  # zero off the image's classes
    expected = F.interpolate(max_norm(F.interpolate(out.cams, size=(8, 8), mode="bilinear")), size=(16, 16),
                             mode="bilinear") * labels[:, :, None, None]
    torch.testing.assert_close(cam_only, expected.detach())
    losses = rl.rsepm_losses(net, images, labels, rl.RSEPMConfig(), True, torch.Generator().manual_seed(0))
    assert set(losses) == {"loss", "cls", "rec", "seg", "seg_mix", "rec_mix"}
    assert all(torch.isfinite(v) for v in losses.values()) and losses["seg_mix"] > 0
    losses["loss"].backward()
    assert net.classifier.weight.grad.abs().sum() > 0 and net.decoder.classifier[4].weight.grad.abs().sum() > 0
    no_rec = rl.rsepm_losses(net, images, labels, rl.RSEPMConfig(w_rec=0), False, torch.Generator())
    torch.testing.assert_close(no_rec["loss"], no_rec["cls"] + no_rec["seg"])
