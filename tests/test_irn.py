"""IRNet: key layout, frozen backbone, on-device pair labels, the loss, inference wrapper, mean shift,
and the pseudo-label post-processing."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from misc.imutils import downsample_label, pil_rescale
from misc.indexing import PathIndex
from net.resnet50_irn import EdgeDisplacement, Net, affinity_displacement_loss, pair_displacement, pair_labels

TINY = dict(width=16, blocks=(1, 1, 1, 1))


def test_key_layout_matches_irn():
    sd = Net().state_dict()
    heads = {k.split(".")[0] for k in sd}
    assert heads == ({"resnet50", "stage1", "stage2", "stage3", "stage4", "stage5", "backbone", "edge_layers",
                      "dp_layers", "mean_shift"} | {f"fc_edge{i}" for i in range(1, 7)}
                     | {f"fc_dp{i}" for i in range(1, 8)})
    assert sd["fc_edge1.0.weight"].shape == (32, 64, 1, 1) and sd["fc_edge5.0.weight"].shape == (32, 2048, 1, 1)
    assert sd["fc_edge6.weight"].shape == (1, 160, 1, 1) and "fc_edge6.bias" in sd
    assert sd["fc_dp6.0.weight"].shape == (256, 768, 1, 1) and sd["fc_dp7.3.weight"].shape == (2, 256, 1, 1)
    assert sd["fc_dp7.4.running_mean"].shape == (2,) and "mean_shift.running_mean" in sd
    assert not any("path_ind" in k or "disp_target" in k for k in sd)


def test_backbone_frozen_and_branches_train():
    torch.manual_seed(0)
    m = Net(**TINY).train()
    assert not m.backbone.training and m.fc_edge1.training
    edge, dp = m(torch.randn(2, 3, 64, 64))
    assert edge.shape == (2, 1, 16, 16) and dp.shape == (2, 2, 16, 16)
    (edge.sum() + dp.sum()).backward()
    assert all(p.grad is None for p in m.backbone.parameters())
    edge_p, dp_p = m.trainable_parameters()
    assert all(p.grad is not None for p in edge_p + dp_p)
    assert len(edge_p) + len(dp_p) == sum(1 for p in m.parameters() if p.requires_grad)


def test_checkpoint_loads_strictly_and_drops_legacy_buffers(tmp_path):
    from misc.errors import UserError
    from net.resnet50_irn import LEGACY_BUFFER_PREFIXES
    from step.common.checkpoints import load_checkpoint

    a, b = Net(**TINY), Net(**TINY)
    a.mean_shift.running_mean.fill_(3.0)
    sd = a.state_dict()
    sd["path_indices_0"] = torch.zeros(3, 2, 5, dtype=torch.long)  # as IRN's own checkpoints carry
    torch.save(sd, tmp_path / "irn.pth")
    load_checkpoint(b, tmp_path / "irn.pth", drop=LEGACY_BUFFER_PREFIXES)
    assert torch.equal(b.fc_edge6.weight, a.fc_edge6.weight) and b.mean_shift.running_mean[0] == 3.0
    with pytest.raises(UserError, match="does not fit"):
        load_checkpoint(Net(width=32, blocks=(1, 1, 1, 1)), tmp_path / "irn.pth", drop=LEGACY_BUFFER_PREFIXES)


def test_downsample_label_is_pil_nearest():
    rng = np.random.default_rng(0)
    lab = rng.integers(0, 21, (128, 96)).astype(np.uint8)
    np.testing.assert_array_equal(downsample_label(lab, 4), pil_rescale(lab, 0.25, 0))


def test_pair_labels_match_a_loop():
    torch.manual_seed(1)
    index = PathIndex(4, (12, 11))
    label = torch.randint(0, 4, (2, 12, 11))
    label[0, :3] = 255
    label[1, 5] = 7  # beyond num_classes = 3: unsure like 255
    bg, fg, neg = pair_labels(label, index, num_classes=3)
    assert bg.shape == (2, len(index.offsets), index.n_src)
    flat = label.flatten(1)
    for b in range(2):
        for k in range(len(index.offsets)):
            for s in range(0, index.n_src, 7):
                u, v = int(flat[b, index.src_indices[s]]), int(flat[b, index.dst_indices[k, s]])
                valid = u <= 3 and v <= 3
                assert bool(bg[b, k, s]) == (valid and u == v == 0)
                assert bool(fg[b, k, s]) == (valid and u == v and u > 0)
                assert bool(neg[b, k, s]) == (valid and u != v)


def test_displacement_loss_zero_for_centroid_field():
    """D(x) = c - x inside the object and 0 outside: the target of both displacement terms."""
    index = PathIndex(5, (20, 24))
    label = torch.zeros(1, 20, 24, dtype=torch.long)
    label[0, 4:15, 6:20] = 2
    ys, xs = torch.meshgrid(torch.arange(20.0), torch.arange(24.0), indexing="ij")
    inside = label[0] == 2
    disp = torch.stack([torch.where(inside, 9.0 - ys, 0.0), torch.where(inside, 12.5 - xs, 0.0)])[None]
    edge = torch.zeros(1, 1, 20, 24)
    losses = affinity_displacement_loss(edge, disp, label, index, num_classes=20)
    assert losses["dp_fg"].item() < 1e-6 and losses["dp_bg"].item() < 1e-6
    losses = affinity_displacement_loss(edge, disp + torch.randn_like(disp), label, index, num_classes=20)
    assert losses["dp_fg"].item() > 0.1 and losses["dp_bg"].item() > 0.1
    pd = pair_displacement(disp, index)
    k = index.offsets.tolist().index([1, 2])
    s = int(((index.src_indices // 24 == 5) & (index.src_indices % 24 == 8)).nonzero())
    assert pd[0, :, k, s].tolist() == [1.0, 2.0]  # D(i) - D(i + δ) = δ inside the object


def test_affinity_loss_falls_when_boundaries_match_label_edges():
    index = PathIndex(10, (32, 32))
    label = torch.zeros(2, 32, 32, dtype=torch.long)
    label[0, 8:24, 6:20] = 3
    label[1, :, 16:] = 5
    label[1, 20:, :] = 255
    inner = label.clone()
    inner[inner == 255] = 0
    edge_map = torch.zeros(2, 1, 32, 32, dtype=torch.bool)
    edge_map[:, :, 1:] |= (inner[:, 1:] != inner[:, :-1])[:, None]
    edge_map[:, :, :, 1:] |= (inner[:, :, 1:] != inner[:, :, :-1])[:, None]
    disp = torch.zeros(2, 2, 32, 32)

    def aff_loss(logits):
        L = affinity_displacement_loss(logits, disp, label, index, num_classes=20)
        return (L["pos_aff"] + L["neg_aff"]).item()

    matched = torch.where(edge_map, 6.0, -6.0)
    flat = torch.zeros(2, 1, 32, 32)
    shifted = torch.roll(matched, 5, dims=3)
    # measured: matched 0.85, flat 1.39 (a = 0.5 everywhere), shifted by 5 px 5.38
    assert aff_loss(matched) < 0.7 * aff_loss(flat) and aff_loss(matched) < 0.5 * aff_loss(shifted)


def test_edge_displacement_any_size_and_flip_symmetry():
    torch.manual_seed(2)
    m = EdgeDisplacement(**TINY, canvas=64).eval()
    img = torch.randn(1, 3, 70, 90)  # larger than the canvas: padded to 80 x 96, nothing cropped
    views = torch.stack([img, img.flip(-1)], 1)
    with torch.no_grad():
        b, dp = m(views)
        b_flip, _ = m(views.flip(1))
    assert b.shape == (1, 1, 18, 23) and dp.shape == (1, 2, 18, 23)
    assert ((b > 0) & (b < 1)).all()
    torch.testing.assert_close(b_flip, b.flip(-1), atol=1e-6, rtol=1e-5)


def test_mean_shift_calibration_uses_every_image():
    from step.train_irn import calibrate_mean_shift

    torch.manual_seed(3)
    m = Net(**TINY)
    imgs = torch.randn(5, 3, 32, 32)
    loader = DataLoader([{"img": x} for x in imgs], batch_size=2)  # 2 + 2 + 1: nothing dropped
    mean = calibrate_mean_shift(m, loader, torch.device("cpu"))
    m.mean_shift.running_mean.zero_()
    with torch.no_grad():
        want = torch.stack([m(x[None])[1].mean((0, 2, 3)) for x in imgs]).mean(0)
    torch.testing.assert_close(mean, want, atol=1e-5, rtol=1e-5)
    m.mean_shift.running_mean.copy_(mean)
    with torch.no_grad():
        centred = m.eval()(imgs)[1].mean((0, 2, 3))
        raw = m.train()(imgs)[1].mean((0, 2, 3))
    torch.testing.assert_close(centred, torch.zeros(2), atol=1e-5, rtol=0)
    torch.testing.assert_close(raw, want, atol=1e-5, rtol=1e-5)


def test_walk_scores_and_labels():
    from misc.seeds import label_from_scores, walk_scores

    torch.manual_seed(4)
    boundary = torch.rand(2, 1, 9, 11) * 0.3
    cams = [torch.rand(2, 9, 11), torch.zeros(0, 9, 11)]
    out = walk_scores(cams, boundary, (33, 41), power=1.3, radius=5, beta=10, exp_times=3)
    (s0, f0), (s1, f1) = out
    assert s0.shape == (2, 9, 11) and f0.shape == (2, 33, 41) and f1.shape == (0, 33, 41)
    assert abs(f0.max().item() - 1) < 1e-6 and f0.min() >= 0
    lab = label_from_scores(f0, np.array([4, 11]), bg_thres=0.25)
    assert set(np.unique(lab)) <= {0, 5, 12}
    want = np.where(f0.max(0).values.numpy() > 0.25, np.array([5, 12])[f0.argmax(0).numpy()], 0)
    np.testing.assert_array_equal(lab, want)
    assert not label_from_scores(f1, np.zeros(0, np.int64), 0.25).any()
    # a single image walked alone gives the same scores as inside the batch
    alone = walk_scores(cams[:1], boundary[:1], (33, 41), power=1.3, radius=5, beta=10, exp_times=3)[0][1]
    torch.testing.assert_close(alone, f0, atol=1e-6, rtol=1e-5)


def test_eval_sem_seg_counts_255_as_background_and_sweeps_saved_scores(mini_voc, tmp_path):
    import run_sample
    from misc.imutils import read_label_png
    from misc.io import read_id_list, save_cam, save_png
    from step import eval_sem_seg

    work = tmp_path / "w"
    args = run_sample.parse_args(["--voc12_root", str(mini_voc), "--work_dir", str(work), "--num_workers", "0",
                                  "--sem_seg_eval_sweep", "0.1", "0.9", "0.1"])
    from step.common.data import get_dataset
    ds = get_dataset(args)
    ids = read_id_list(work / "meta" / "train.txt")
    for i in ids:
        gt = read_label_png(ds.gt_path(i))
        pred = gt.copy()
        pred[(gt == 0) & (np.arange(gt.shape[1]) % 3 == 0)] = 255  # unsure in a prediction = background
        save_png(work / "sem_seg" / f"{i}.png", pred)
        keys = np.unique(gt[(gt > 0) & (gt < 255)]).astype(np.int64) - 1
        # scores: 0.6 on each class's GT pixels, else 0 -> perfect for thresholds below 0.6 only
        full = np.stack([np.where(gt == k + 1, 0.6, 0.0) for k in keys]).astype(np.float32)
        save_cam(work / "sem_seg_scores" / f"{i}.npz", keys, full[:, ::4, ::4], full)
    result = eval_sem_seg.run(args)
    assert result["miou"] == 1.0 and result["background_fp"] == 0 and result["foreground_fn"] == 0
    sweep = {round(s["threshold"], 2): s["miou"] for s in result["scores"]["sweep"]}
    assert sweep[0.5] == 1.0 and sweep[0.6] < 1.0 and result["scores"]["fixed"]["threshold"] == 0.25
    (work / "sem_seg" / f"{ids[0]}.png").unlink()
    from misc.errors import UserError
    with pytest.raises(UserError, match=ids[0]):
        eval_sem_seg.run(args)
