"""Unit tests of the DRS library pieces: the DRS module, the VGG-16-D1 networks and their ImageNet loading, the
lr groups, the localization map, the refinement target and fusion, and the saliency pseudo-label rules."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from misc.errors import UserError
from misc.saliency import binarize_saliency, saliency_pseudo_label
from net.vgg16 import VGG16D1, load_imagenet_weights
from net.vgg16_drs import DRS, DRSClassifier, localization_map, multiscale_cams
from net.vgg16_refine import RefineNet, fuse_refined, refined_map, refinement_target, seed_to_square

X = torch.tensor([[[[-1.0, 2.0], [4.0, 1.0]], [[-3.0, -1.0], [-2.0, -5.0]], [[1.0, 3.0], [2.0, 6.0]]]])


def test_fixed_drs_clips_each_channel_at_delta_times_its_max():
    y = DRS(3, delta=0.5)(X)
    expected = torch.tensor([[[[0.0, 2.0], [2.0, 1.0]], [[0.0, 0.0], [0.0, 0.0]], [[1.0, 3.0], [2.0, 3.0]]]])
    torch.testing.assert_close(y, expected, rtol=0, atol=0)
    torch.testing.assert_close(DRS(3, delta=1.0)(X), X.relu(), rtol=0, atol=0)


def test_learnable_drs_gate_is_sigmoid_of_w_times_gap():
    drs = DRS(3)
    assert drs.fc[0].bias is None and drs.fc[0].weight.shape == (3, 3)
    w = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, -0.5]])
    with torch.no_grad():
        drs.fc[0].weight.copy_(w)
    # GAP(ReLU X) = (7/4, 0, 3); gates: sigmoid(7/4), 0.5, sigmoid(-3/2); maxima 4, 0, 6
    g0, g2 = 1 / (1 + math.exp(-1.75)), 1 / (1 + math.exp(1.5))
    expected = torch.stack([X[0, 0].relu().clamp(max=4 * g0), torch.zeros(2, 2), X[0, 2].clamp(max=6 * g2)])[None]
    torch.testing.assert_close(drs(X), expected)


def test_learnable_drs_init_and_gradient_through_the_gate():
    torch.manual_seed(0)
    assert DRS(256).fc[0].weight.std().item() == pytest.approx(0.01, rel=0.05)
    drs = DRS(4).double()
    x = torch.randn(2, 4, 5, 6, dtype=torch.float64)
    w0 = torch.randn(4, 4, dtype=torch.float64)

    def f(w: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(drs, {"fc.0.weight": w}, (x,)).sum()

    w = w0.clone().requires_grad_()
    f(w).backward()
    assert w.grad.abs().sum() > 0
    assert torch.autograd.gradcheck(f, (w0.clone().requires_grad_(),))


def test_drs_rejects_nonpositive_delta():
    with pytest.raises(ValueError):
        DRS(4, delta=0.0)


def test_trunk_layout_and_output_stride():
    t = VGG16D1()
    convs = [i for i, m in enumerate(t.features) if isinstance(m, torch.nn.Conv2d)]
    assert convs == [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]
    assert t.features[23].stride == 1 and t.features[23].kernel_size == 3 and t.features[23].padding == 1
    assert [t.features[i].dilation for i in (21, 24, 26, 28)] == [(1, 1), (2, 2), (2, 2), (2, 2)]
    assert t.layer5_conv3 is t.features[28] and t.layer4_maxpool is t.features[23]
    assert t.trunk(torch.zeros(1, 3, 64, 80)).shape == (1, 512, 8, 10)


@pytest.mark.parametrize("num_classes", [20, 80])
def test_classifier_shapes_logits_are_cam_means_and_head_init(num_classes):
    torch.manual_seed(0)
    m = DRSClassifier(num_classes, width=8)
    logits, cam = m(torch.randn(2, 3, 48, 64))
    assert cam.shape == (2, num_classes, 6, 8)
    torch.testing.assert_close(logits, cam.mean((2, 3)))
    assert sum(isinstance(x, DRS) for x in m.modules()) == 16
    big = DRSClassifier(num_classes)
    assert big.extra_conv4.weight.std().item() == pytest.approx(math.sqrt(2 / num_classes), rel=0.05)
    assert big.extra_conv1.weight.std().item() == pytest.approx(math.sqrt(2 / (9 * 512)), rel=0.05)
    assert not big.extra_conv4.bias.any()
    controllers = sum(p.numel() for n, p in big.named_parameters() if ".fc." in n)
    assert controllers == 2 * 64**2 + 2 * 128**2 + 3 * 256**2 + 9 * 512**2


def test_refine_net_output_size_and_head_init():
    torch.manual_seed(0)
    r = RefineNet(80)
    assert r.extra_conv4.weight.std().item() == pytest.approx(0.01, rel=0.05)
    assert r.extra_conv4.out_channels == 80
    small = RefineNet(20, width=8)
    x = torch.randn(1, 3, 40, 56)
    assert small(x).shape == (1, 20, 40, 56) and small(x, (10, 12)).shape == (1, 20, 10, 12)
    assert small.raw(x).shape == (1, 20, 5, 7)


@pytest.mark.parametrize("delta", [None, 0.55])
def test_lr_groups(delta):
    m = DRSClassifier(20, delta=delta)
    groups = m.lr_groups(0.1)
    assert [g["lr"] for g in groups] == pytest.approx([0.1, 0.2, 1.0, 2.0])
    ids = [{id(p) for p in g["params"]} for g in groups]
    assert ids[0] == {id(c.weight) for c in m.features if isinstance(c, torch.nn.Conv2d)}
    assert ids[1] == {id(c.bias) for c in m.features if isinstance(c, torch.nn.Conv2d)}
    controllers = {id(d.fc[0].weight) for d in m.modules() if isinstance(d, DRS) and d.delta is None}
    assert len(controllers) == (16 if delta is None else 0) and controllers <= ids[2]
    assert ids[2] - controllers == {id(getattr(m, f"extra_conv{j}").weight) for j in (1, 2, 3, 4)}
    assert ids[3] == {id(getattr(m, f"extra_conv{j}").bias) for j in (1, 2, 3, 4)}
    assert sum(map(len, ids)) == len(list(m.parameters()))


def torchvision_vgg16_file(path, bad_key: str | None = None) -> None:
    """A file with torchvision vgg16's feature keys and shapes (from the meta-device model) and small fc tensors."""
    import torchvision

    with torch.device("meta"):
        tv = torchvision.models.vgg16()
    sd = {k: torch.randn(v.shape) if k.startswith("features.") else torch.zeros(2) for k, v in tv.state_dict().items()}
    if bad_key:
        sd[bad_key] = sd.pop("features.0.weight")
    torch.save(sd, path)


def test_imagenet_weights_load_strictly(tmp_path):
    torchvision_vgg16_file(tmp_path / "vgg16.pth")
    m = DRSClassifier(20)
    load_imagenet_weights(m, tmp_path / "vgg16.pth")
    sd = torch.load(tmp_path / "vgg16.pth", weights_only=True)
    torch.testing.assert_close(m.layer3_conv2.weight, sd["features.12.weight"], rtol=0, atol=0)
    torch.testing.assert_close(m.layer5_conv1.bias, sd["features.24.bias"], rtol=0, atol=0)


def test_imagenet_weights_errors_name_the_file(tmp_path):
    with pytest.raises(UserError, match="missing.pth"):
        load_imagenet_weights(VGG16D1(), tmp_path / "missing.pth")
    torchvision_vgg16_file(tmp_path / "renamed.pth", bad_key="features.99.weight")
    with pytest.raises(UserError, match="renamed.pth.*not a torchvision vgg16"):
        load_imagenet_weights(VGG16D1(), tmp_path / "renamed.pth")
    torch.save({"features.0.weight": torch.zeros(64, 3, 7, 7)}, tmp_path / "shape.pth")
    with pytest.raises(UserError, match="shape.pth"):
        load_imagenet_weights(VGG16D1(), tmp_path / "shape.pth")
    torchvision_vgg16_file(tmp_path / "vgg16.pth")
    with pytest.raises(UserError, match="width"):
        load_imagenet_weights(VGG16D1(width=8), tmp_path / "vgg16.pth")


def test_localization_map_normalises_masks_and_takes_the_max_over_scales():
    a = torch.tensor([[[[0.0, 2.0], [-1.0, 4.0]], [[1.0, 1.0], [1.0, 1.0]], [[-1.0, -2.0], [-3.0, -1.0]]]])
    b = torch.tensor([[[[4.0, 0.0], [0.0, 0.0]], [[9.0, 9.0], [9.0, 9.0]], [[1.0, 1.0], [1.0, 1.0]]]])
    labels = torch.tensor([[1.0, 0.0, 1.0]])
    m = localization_map([a, b], labels, (3, 3))
    # class 0 upsampled: scale a row 0 = [0, 1, 2], max 4; scale b row 0 = [4, 2, 0], max 4
    torch.testing.assert_close(m[0, 0, 0], torch.tensor([4.0, 2.0, 2.0]) / (4 + 1e-5))
    torch.testing.assert_close(m[0, 0, 2, 2], torch.tensor(4 / (4 + 1e-5)))
    assert not m[0, 1].any()                                            # absent class
    torch.testing.assert_close(m[0, 2], torch.full((3, 3), 1 / (1 + 1e-5)))  # all-negative at scale a, flat at b


def test_refinement_target_keeps_argmax_and_ties():
    x = torch.tensor([[[0.2, 0.5, 0.0]], [[0.7, 0.5, 0.0]], [[0.1, 0.3, 0.0]]])
    expected = torch.tensor([[[0.0, 0.5, 0.0]], [[0.7, 0.5, 0.0]], [[0.0, 0.0, 0.0]]])
    torch.testing.assert_close(refinement_target(x), expected, rtol=0, atol=0)
    torch.testing.assert_close(refinement_target(x[None])[0], expected, rtol=0, atol=0)


def test_fuse_refined_masks_labels_clips_negatives_and_keeps_values_above_one():
    a = torch.tensor([[[[-0.5, 1.4]], [[3.0, 3.0]]]])
    b = torch.tensor([[[[-0.2, 0.1]], [[5.0, 5.0]]]])
    f = fuse_refined([a, b], torch.tensor([[1.0, 0.0]]))
    torch.testing.assert_close(f, torch.tensor([[[[0.0, 1.4]], [[0.0, 0.0]]]]))


def test_seed_to_square_places_classes_and_keeps_corners():
    high = torch.tensor([[[0.0, 1.0, 0.0], [0.5, 0.0, 0.25]]])
    sq = seed_to_square(torch.tensor([2]), high, 4, 5)
    assert sq.shape == (4, 5, 5) and not sq[[0, 1, 3]].any()
    assert sq[2, 0, 0] == 0 and sq[2, 4, 0] == 0.5 and sq[2, 4, 4] == 0.25 and sq[2, 0, 2] == 1.0
    assert not seed_to_square(torch.zeros(0, dtype=torch.long), torch.zeros(0, 2, 3), 4, 5).any()


def test_multiscale_helpers_run_each_side_and_fuse():
    torch.manual_seed(0)
    image, labels = torch.randn(1, 3, 40, 40), torch.tensor([[0.0, 1.0, 1.0]])
    cams = multiscale_cams(DRSClassifier(3, width=4).eval(), image, (32, 40, 48))
    assert [c.shape[-1] for c in cams] == [4, 5, 6]
    r = RefineNet(3, width=4).eval()
    with torch.no_grad():
        fused = refined_map(r, image, labels, (7, 9), (32, 48))
        manual = fuse_refined([r(F.interpolate(image, (s, s), mode="bilinear"), (7, 9)) for s in (32, 48)], labels)
    torch.testing.assert_close(fused, manual, rtol=0, atol=0)


def test_binarize_saliency_is_strictly_above_50():
    assert binarize_saliency(torch.tensor([0, 50, 51, 255], dtype=torch.uint8)).tolist() == [False, False, True, True]


def pseudo_case() -> tuple[torch.Tensor, torch.Tensor]:
    """Two classes on a 1 x 8 strip, with the saliency mask; each pixel exercises one rule (see the test)."""
    c0 = [0.95, 0.95, 0.95, 0.10, 0.50, 1.00, 1.20, 0.00]
    c1 = [0.95, 0.95, 0.00, 0.15, 0.30, 0.00, 0.00, 0.00]
    salient = [False, True, False, True, True, False, False, True]
    return torch.tensor([[c0], [c1]]), torch.tensor([salient])


def test_pseudo_label_rules_on_a_hand_made_strip():
    scores, salient = pseudo_case()
    y = saliency_pseudo_label(scores, salient)
    # 0: bg 1 and both classes > 0.9: three confident channels -> conflict 255
    # 1: salient (bg 0), two classes > 0.9: only two confident -> class 0 wins the tie -> 1
    # 2: not salient: bg 1 beats 0.95 -> background; 3: salient, classes below alpha -> background -> uncovered 255
    # 4: salient, 0.5 > 0.3 -> 1; 5: not salient, class 1.0 ties with bg 1.0 -> background (first index)
    # 6: not salient, class 1.2 > bg 1 -> 1; 7: salient with no class -> 255
    assert y.dtype == torch.uint8
    assert y.tolist() == [[255, 1, 0, 255, 1, 0, 1, 255]]
    assert saliency_pseudo_label(scores, salient, ignore=False).tolist() == [[0, 1, 0, 0, 1, 0, 1, 0]]
    assert saliency_pseudo_label(scores, salient, alpha=0.6).tolist() == [[255, 1, 0, 255, 255, 0, 1, 255]]


def test_pseudo_label_batches():
    scores, salient = pseudo_case()
    y = saliency_pseudo_label(torch.stack([scores, scores.flip(-1)]), torch.stack([salient, salient.flip(-1)]))
    assert y[1].tolist() == [y[0, 0].flip(-1).tolist()]


# ----- phase 2: the pieces the DRS steps use


def test_step_decay_drops_at_the_start_of_the_listed_epochs():
    from misc.torchutils import step_decay

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = step_decay(opt, iters_per_epoch=3, decay_epochs=(4, 9))
    lrs = []
    for _ in range(36):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[:12] == [1.0] * 12 and lrs[12:27] == pytest.approx([0.1] * 15) and lrs[27:] == pytest.approx([0.01] * 9)


def test_color_jitter_follows_numpy_seed_and_zero_is_identity():
    import numpy as np

    from misc.imutils import color_jitter

    x = (np.random.default_rng(0).random((12, 16, 3)) * 255).astype(np.uint8)
    np.testing.assert_array_equal(color_jitter(x, 0, 0, 0, 0), x)
    np.random.seed(3)
    a = color_jitter(x, 0.3, 0.3, 0.3, 0.1)
    np.random.seed(3)
    b = color_jitter(x, 0.3, 0.3, 0.3, 0.1)
    np.random.seed(4)
    c = color_jitter(x, 0.3, 0.3, 0.3, 0.1)
    np.testing.assert_array_equal(a, b)
    assert a.shape == x.shape and a.dtype == np.uint8 and not np.array_equal(a, c)


def test_toy_saliency_marks_objects_not_background(mini_voc):
    import numpy as np

    from misc.imutils import read_grey, read_label_png
    from voc12.dataloader import VOC12

    ds = VOC12(mini_voc)
    ids = (mini_voc / "ImageSets" / "Segmentation" / "train.txt").read_text().split()
    assert ds.check_saliency(None, ids) == mini_voc / "saliency_map"
    obj = bg = n_obj = n_bg = 0
    for i in ids:
        gt, sal = read_label_png(ds.gt_path(i)), ds.read_saliency(mini_voc / "saliency_map", i) > 50
        assert sal.shape == gt.shape and read_grey(mini_voc / "saliency_map" / f"{i}.png").dtype == np.uint8
        obj, n_obj = obj + (sal & (gt > 0) & (gt < 255)).sum(), n_obj + ((gt > 0) & (gt < 255)).sum()
        bg, n_bg = bg + (sal & (gt == 0)).sum(), n_bg + (gt == 0).sum()
    assert obj / n_obj > 0.85 and bg / n_bg < 0.15, (obj / n_obj, bg / n_bg)


def test_check_saliency_names_the_missing_or_mis_sized_file(mini_voc, tmp_path):
    import shutil

    from PIL import Image

    from voc12.dataloader import VOC12

    ds = VOC12(mini_voc)
    ids = (mini_voc / "ImageSets" / "Segmentation" / "train.txt").read_text().split()
    sal = tmp_path / "sal"
    shutil.copytree(mini_voc / "saliency_map", sal)
    (sal / f"{ids[2]}.png").unlink()
    with pytest.raises(UserError, match=f"{ids[2]}.png: saliency map not found"):
        ds.check_saliency(sal, ids)
    Image.new("L", (7, 5)).save(sal / f"{ids[2]}.png")
    with pytest.raises(UserError, match=rf"{ids[2]}.png: saliency map of size \(5, 7\)"):
        ds.check_saliency(sal, ids)
    with pytest.raises(UserError, match="saliency folder not found"):
        ds.check_saliency(tmp_path / "none", ids)


def test_best_epoch_keeps_the_best_and_ignores_another_run(tmp_path):
    from step.common.drs import BestEpoch

    model = torch.nn.Linear(2, 1)
    best = BestEpoch(tmp_path / "w.pth", {"a": 1})
    for epoch, (score, value) in enumerate([(0.2, 1.0), (0.5, 2.0), (0.4, 3.0)], 1):
        torch.nn.init.constant_(model.weight, value)
        best.update(model, epoch, score)
    assert best.best()["epoch"] == 2 and BestEpoch(tmp_path / "w.pth", {"a": 2}).best() is None
    best.restore(model, "test")
    assert torch.all(model.weight == 2.0)
    best.clear()
    assert best.best() is None and not list(tmp_path.iterdir())


def test_released_checkpoint_wrapper_is_unwrapped(tmp_path):
    from step.common.checkpoints import load_checkpoint

    src, dst = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    torch.save({"model": src.state_dict(), "epoch": 14}, tmp_path / "best.pth")
    load_checkpoint(dst, tmp_path / "best.pth")
    torch.testing.assert_close(dst.weight, src.weight, rtol=0, atol=0)


def test_square_dataset_squashes_and_crops(mini_voc):
    from misc.samples import SquareDataset, collate_squares
    from voc12.dataloader import VOC12

    ds = VOC12(mini_voc)
    ids = (mini_voc / "ImageSets" / "Segmentation" / "train.txt").read_text().split()[:3]
    labels = {i: torch.zeros(20).numpy() for i in ids}
    train = SquareDataset(ds.image_path, ids, labels, 40, crop=32, jitter=(0.3, 0.3, 0.3, 0.1), flip=True)
    infer = SquareDataset(ds.image_path, ids, labels, 40)
    b = collate_squares([infer[k] for k in range(3)])
    assert train[0]["img"].shape == (3, 32, 32) and b["img"].shape == (3, 3, 40, 40)
    assert all(len(s) == 2 and max(s) == 96 for s in b["size"])  # the image's own size travels with it


def test_gt_selection_keeps_the_best_epoch_and_says_so(mini_voc, tmp_path, capsys):
    import run_sample
    from step import train_drs_cls

    args = run_sample.parse_args([
        "--method", "drs", "--voc12_root", str(mini_voc), "--work_dir", str(tmp_path), "--train_list", "train",
        "--eval_list", "train", "--drs_init", "scratch", "--drs_width", "4", "--drs_convs", "1", "1", "1", "1", "1",
        "--drs_norm", "True", "--drs_resize", "40", "--drs_crop", "32", "--drs_side", "32", "--drs_scales", "32",
        "--drs_batch_size", "5", "--drs_num_epoches", "3", "--drs_optimizer", "adam", "--num_workers", "0",
        "--drs_select", "gt_miou", "--device", "cpu"])
    train_drs_cls.run(args)
    out = capsys.readouterr().out
    scores = [float(ln.rsplit(" ", 1)[1]) for ln in out.splitlines() if "GT mIoU of its saliency" in ln]
    kept = int(out.split("keeping epoch ")[1].split()[0])
    assert len(scores) == 3 and scores[kept - 1] == max(scores) and scores.index(max(scores)) == kept - 1
    assert (tmp_path / "sess" / "vgg16_drs.pth").is_file()
    assert not list((tmp_path / "sess").glob("*.best*")) and not list((tmp_path / "sess").glob("*.resume"))
