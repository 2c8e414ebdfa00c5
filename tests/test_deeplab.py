"""Unit tests of the segmentation stage's networks (toy sizes), losses, multi-scale inference, CRF and schedule."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image
from torchvision.models.resnet import Bottleneck, ResNet

from misc.errors import UserError
from misc.imutils import normalize
from misc.segmentation import dense_crf, multiscale_probs, normalize_image, poly_lr
from net.deeplab import (
    DeepLabV2,
    DeepLabV3Plus,
    ResNetTrunk,
    build_deeplab_v2,
    deeplab_v2_from_resnet,
    deeplab_v2_param_groups,
    deeplab_v3plus_param_groups,
    load_imagenet_resnet101,
)
from net.resnet50 import ResNet50
from net.seg_loss import balanced_ce, resize_labels, seg_loss, self_training_ce

TOY_V2 = {"blocks": (1, 1, 1, 1), "width": 8}
TOY_V3 = {"blocks": (1, 1, 1, 1), "width": 8, "head_channels": 16, "low_channels": 8}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One intra-op thread: these small CPU passes gain nothing from more, and lose a lot on a shared machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def param_names(model: nn.Module, groups: list[dict]) -> list[list[str]]:
    names = {id(p): n for n, p in model.named_parameters()}
    return [[names[id(p)] for p in g["params"]] for g in groups]


# ------------------------------------------------------------------------------------------------ networks

def test_v2_toy_outputs_and_eval_fusion():
    torch.manual_seed(0)
    model = DeepLabV2(5, frozen_bn=True, **TOY_V2)
    x = torch.randn(2, 3, 128, 128)
    with torch.no_grad():
        outs = model.train()(x)
        fused = model.eval()(x)
    assert [tuple(o.shape) for o in outs] == [(2, 5, 17, 17), (2, 5, 9, 9), (2, 5, 13, 13), (2, 5, 17, 17)]
    assert torch.equal(fused, outs[3])
    up = [F.interpolate(o, size=(17, 17), mode="bilinear", align_corners=False) for o in outs[1:3]]
    assert torch.equal(outs[3], torch.maximum(outs[0], torch.maximum(*up)))
    single = DeepLabV2(5, scales=(), **TOY_V2)
    assert isinstance(single.train()(x), list) and single.eval()(x).shape == (2, 5, 17, 17)


@pytest.mark.parametrize("frozen", [True, False])
def test_v2_param_groups_cover_trainable_parameters(frozen):
    model = DeepLabV2(5, frozen_bn=frozen, **TOY_V2)
    groups = deeplab_v2_param_groups(model, 1e-3, 5e-4)
    names = param_names(model, groups)
    flat = sum(names, [])
    assert sorted(flat) == sorted(n for n, p in model.named_parameters() if p.requires_grad)
    assert len(flat) == len(set(flat))
    assert all(n.startswith("base.aspp.") and n.endswith("weight") for n in names[1])
    assert all(n.startswith("base.aspp.") and n.endswith("bias") for n in names[2])
    assert [(g["lr"], g["weight_decay"]) for g in groups] == [(1e-3, 5e-4), (1e-2, 5e-4), (2e-2, 0.0)]
    assert any(".bn." in n for n in names[0]) != frozen  # frozen BN: not trained, as published


def test_v2_trains_a_step():
    torch.manual_seed(0)
    model = DeepLabV2(5, frozen_bn=False, **TOY_V2).train()
    opt = torch.optim.SGD(deeplab_v2_param_groups(model, 1e-3, 5e-4), momentum=0.9)
    x, y = torch.randn(2, 3, 64, 64), torch.randint(0, 5, (2, 64, 64))
    loss = seg_loss(model(x), y, "balanced")
    loss.backward()
    opt.step()
    assert torch.isfinite(loss) and model.base.aspp.c0.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("os_", [16, 8])
def test_v3plus_toy_output_size(os_):
    model = DeepLabV3Plus(5, output_stride=os_, **TOY_V3)
    x = torch.randn(2, 3, 97, 129)
    assert model.train()(x).shape == (2, 5, 97, 129)
    low, deep = model.backbone(x)
    assert low.shape[2:] == (25, 33) and deep.shape[2] == -(-97 // os_)


def test_v3plus_groups_and_frozen_bn():
    model = DeepLabV3Plus(5, frozen_bn=True, **TOY_V3)
    groups = deeplab_v3plus_param_groups(model, 0.05, 1e-4)
    assert [g["lr"] for g in groups] == [0.05 * 0.1, 0.05]
    names = param_names(model, groups)
    assert not any(n.startswith("backbone.") and "bn" in n for n in names[0])  # frozen backbone BN
    assert any("classifier.project.1" in n for n in names[1])  # the head's BN trains
    trained = DeepLabV3Plus(5, frozen_bn=False, **TOY_V3)
    assert trained.backbone.bn1.momentum == 0.01 and trained.classifier.project[1].momentum == 0.1
    backbone_group = deeplab_v3plus_param_groups(trained, 0.05, 1e-4)[0]["params"]
    assert len(backbone_group) == len(list(trained.backbone.parameters()))


@pytest.mark.parametrize("os_", [16, 8])
def test_trunk_equals_torchvision_resnet(os_):
    """The v3+ backbone is torchvision's ResNet with replace_stride_with_dilation (blocks shrunk, same rules)."""
    torch.manual_seed(0)
    tv = ResNet(Bottleneck, [2, 1, 2, 2], replace_stride_with_dilation=[False, os_ == 8, True]).eval()
    trunk = ResNetTrunk((2, 1, 2, 2), 64, os_).eval()
    trunk.load_state_dict({k: v for k, v in tv.state_dict().items() if not k.startswith("fc.")}, strict=True)
    x = torch.randn(1, 3, 49, 49)
    with torch.no_grad():
        low = tv.layer1(tv.maxpool(tv.relu(tv.bn1(tv.conv1(x)))))
        deep = tv.layer4(tv.layer3(tv.layer2(low)))
        ours = trunk(x)
    assert torch.equal(ours[0], low) and torch.equal(ours[1], deep)


def test_v2_from_torchvision_file(tmp_path):
    """A torchvision ResNet file initialises the v2 backbone with the stride on the 3x3 conv, key by key."""
    torch.manual_seed(0)
    tv = ResNet(Bottleneck, [1, 1, 1, 1]).eval()
    torch.save(tv.state_dict(), tmp_path / "resnet.pth")
    model, style = build_deeplab_v2(5, tmp_path / "resnet.pth", blocks=(1, 1, 1, 1))
    assert style == "torchvision" and not model.stride_in_1x1
    assert torch.equal(model.base.layer2.block1.reduce.conv.weight, tv.layer1[0].conv1.weight)
    assert torch.equal(model.base.layer3.block1.shortcut.bn.running_var, tv.layer2[0].downsample[1].running_var)
    x = torch.randn(1, 3, 65, 65)  # odd size: the v2 stem's ceil max-pool rounds like torchvision's here
    with torch.no_grad():
        ref = tv.layer2(tv.layer1(tv.maxpool(tv.relu(tv.bn1(tv.conv1(x))))))
        ours = model.eval().base.layer3(model.base.layer2(model.base.layer1(x)))
    assert torch.allclose(ours, ref, atol=1e-5)
    with pytest.raises(UserError, match="resnet.pth"):
        build_deeplab_v2(5, tmp_path / "resnet.pth", blocks=(1, 1, 1, 1), width=8)


def test_v2_from_the_toolkit_classifier_trunk():
    """--seg_init cam: the classifier's ResNet trunk (torchvision layout, any width and depth) becomes the v2
    backbone key by key; a trunk of another width is one UserError line naming its source."""
    trunk = ResNet50(width=8, frozen_bn=False, blocks=(1, 1, 1, 1))
    model = deeplab_v2_from_resnet(5, trunk.state_dict(), "res50_cam.pth", **TOY_V2, frozen_bn=True)
    assert not model.stride_in_1x1
    assert torch.equal(model.base.layer1.conv1.conv.weight, trunk.conv1.weight)
    assert torch.equal(model.base.layer5.block1.increase.bn.running_mean, trunk.layer4[0].bn3.running_mean)
    with pytest.raises(UserError, match="res50_cam.pth"):
        deeplab_v2_from_resnet(5, trunk.state_dict(), "res50_cam.pth", blocks=(1, 1, 1, 1), width=16)


def test_init_files_errors(tmp_path):
    with pytest.raises(UserError, match="not found"):
        build_deeplab_v2(5, tmp_path / "absent.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="junk.pth"):
        build_deeplab_v2(5, tmp_path / "junk.pth")
    torch.save({"x.weight": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(UserError, match="other.pth"):
        build_deeplab_v2(5, tmp_path / "other.pth", **TOY_V2)


def test_imagenet_file_into_v3plus(tmp_path):
    tv = ResNet(Bottleneck, [1, 1, 1, 1])
    torch.save(tv.state_dict(), tmp_path / "resnet101.pth")
    model = DeepLabV3Plus(5, blocks=(1, 1, 1, 1), head_channels=16, low_channels=8)
    load_imagenet_resnet101(model, tmp_path / "resnet101.pth")
    assert torch.equal(model.backbone.layer4[0].conv2.weight, tv.layer4[0].conv2.weight)
    with pytest.raises(UserError, match="resnet101.pth"):
        load_imagenet_resnet101(DeepLabV3Plus(5, **TOY_V3), tmp_path / "resnet101.pth")


# -------------------------------------------------------------------------------------------------- losses

def test_resize_labels_is_pil_nearest():
    labels = torch.from_numpy(np.random.default_rng(0).integers(0, 21, (1, 57, 100)))
    for h, w in [(8, 13), (41, 41), (120, 30), (57, 100), (19, 7)]:
        pil = np.asarray(Image.fromarray(labels[0].numpy().astype(np.float32)).resize((w, h), Image.NEAREST))
        assert np.array_equal(resize_labels(labels, (h, w))[0].numpy(), pil.astype(np.int64))


def test_balanced_ce_means_background_and_foreground_separately():
    logits = torch.randn(2, 4, 3, 5, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([[[0, 0, 0, 0, 1]] * 3, [[0, 2, 255, 3, 0]] * 3])
    ce = F.cross_entropy(logits, labels.clamp(max=3), reduction="none")
    bg, fg = labels == 0, (labels > 0) & (labels < 255)
    expected = ce[bg].mean() + ce[fg].mean()
    assert torch.allclose(balanced_ce(logits, labels), expected)
    assert not torch.allclose(balanced_ce(logits, labels), F.cross_entropy(logits, labels, ignore_index=255))
    only_bg = torch.where(labels == 255, labels, torch.zeros_like(labels))
    ce_bg = F.cross_entropy(logits, torch.zeros_like(labels), reduction="none")
    assert torch.allclose(balanced_ce(logits, only_bg), ce_bg[only_bg == 0].mean())


def test_self_training_rules():
    """The published rule (absent logits zeroed before the argmax) agrees with 'exclude' where a present class
    has a positive logit, and picks the first absent class where every present logit is negative."""
    classes = torch.tensor([[1.0, 0.0, 1.0, 0.0]])  # background and class 2 present
    logits = torch.tensor([[0.5, 3.0, 2.0, 9.0], [-1.0, 3.0, -2.0, 9.0]]).T.reshape(1, 4, 1, 2)
    zero_target, excl_target = torch.tensor([[[2, 1]]]), torch.tensor([[[2, 0]]])
    assert torch.allclose(self_training_ce(logits, classes, "zero"), F.cross_entropy(logits, zero_target))
    assert torch.allclose(self_training_ce(logits, classes, "exclude"), F.cross_entropy(logits, excl_target))
    agree = logits[..., :1]
    assert torch.equal(self_training_ce(agree, classes, "zero"), self_training_ce(agree, classes, "exclude"))


def test_seg_loss_sums_over_msc_outputs():
    g = torch.Generator().manual_seed(0)
    outs = [torch.randn(2, 4, 9, 9, generator=g), torch.randn(2, 4, 5, 5, generator=g)]
    labels = torch.randint(0, 4, (2, 33, 33), generator=g)
    classes = torch.ones(2, 4)
    expected = sum(F.cross_entropy(o, resize_labels(labels, o.shape[2:])) + self_training_ce(o, classes)
                   for o in outs)
    assert torch.allclose(seg_loss(outs, labels, "ce", classes), expected)
    assert torch.allclose(seg_loss(outs[0], labels, "balanced"),
                          balanced_ce(outs[0], resize_labels(labels, (9, 9))))


# ----------------------------------------------------------------------------------------------- inference

def pointwise_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 1), nn.ReLU(), nn.Conv2d(8, 5, 1))


def test_multiscale_of_scale_invariant_input_is_consistent():
    """A constant image through a per-pixel network looks the same at every scale and flip: the fused
    probabilities equal the single-scale ones."""
    net = pointwise_net()
    img = torch.ones(2, 3, 31, 45) * torch.tensor([0.3, -1.0, 2.0])[None, :, None, None]
    single = multiscale_probs(net, img)
    multi = multiscale_probs(net, img, scales=(1.0, 0.5, 1.5, 2.0), flip=True)
    assert single.shape == (2, 5, 31, 45)
    assert torch.allclose(multi, single, atol=1e-6)
    assert torch.allclose(single, torch.softmax(net(img), 1))
    x = torch.randn(1, 3, 31, 45)  # a per-pixel network commutes with flipping any image
    assert torch.allclose(multiscale_probs(net, x, flip=True), multiscale_probs(net, x), atol=1e-6)


def test_multiscale_averages_probabilities():
    """Each pass is turned into probabilities before the average (RS+EPM), at the image size."""
    def forward(x: torch.Tensor) -> torch.Tensor:  # logits depending only on the pass's size
        v = torch.tensor([float(x.shape[2]), 0.0, 0.0]) / 10
        return v[None, :, None, None].expand(x.shape[0], 3, 2, 2)

    img = torch.zeros(1, 3, 20, 20)
    probs = multiscale_probs(forward, img, scales=(1.0, 0.5))
    expected = (torch.softmax(torch.tensor([2.0, 0, 0]), 0) + torch.softmax(torch.tensor([1.0, 0, 0]), 0)) / 2
    assert torch.allclose(probs[0, :, 7, 3], expected)


def softmax_maps(seed: int, classes: int = 6, h: int = 24, w: int = 32) -> np.ndarray:
    logits = torch.randn(1, classes, h // 8 + 1, w // 8 + 1, generator=torch.Generator().manual_seed(seed)) * 2
    return torch.softmax(F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False)[0], 0).numpy()


def test_crf_labels_stay_among_classes_with_probability():
    """Classes with zero probability everywhere never come out of the CRF; ``classes`` restricts the output."""
    rng = np.random.default_rng(0)
    for seed in range(6):
        img = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)
        probs = softmax_maps(seed)
        probs[4:] = 0
        probs /= probs.sum(0, keepdims=True)
        out = dense_crf(img, probs).argmax(0)
        assert set(np.unique(out)) <= {0, 1, 2, 3}
        restricted = dense_crf(img, softmax_maps(seed), classes=[0, 2, 5])
        assert set(np.unique(restricted.argmax(0))) <= {0, 2, 5}
        assert np.all(restricted[[1, 3, 4]] == 0)


def test_crf_can_output_a_class_that_is_nowhere_the_argmax():
    """What does not hold: the output labels need not be among the input's argmax labels. Class 1 is second
    everywhere (0.36) and first nowhere, yet its smoothing bonus beats the 0.38/0.26 split of classes 0 and 2."""
    img = np.full((24, 32, 3), 128, np.uint8)
    probs = np.empty((3, 24, 32), np.float32)
    probs[:, :, :16] = np.array([0.38, 0.36, 0.26])[:, None, None]
    probs[:, :, 16:] = np.array([0.26, 0.36, 0.38])[:, None, None]
    assert set(np.unique(probs.argmax(0))) == {0, 2}
    assert set(np.unique(dense_crf(img, probs).argmax(0))) == {1}


def test_poly_lr_named_iterations():
    # kazuto1011's DeepLab-v2: updated every 10 iterations
    assert [poly_lr(2.5e-4, s, 10000, every=10) for s in (0, 9)] == [2.5e-4, 2.5e-4]
    assert poly_lr(2.5e-4, 10, 10000, every=10) == pytest.approx(2.5e-4 * 0.999 ** 0.9, rel=1e-12)
    assert poly_lr(2.5e-4, 5005, 10000, every=10) == pytest.approx(2.5e-4 * 0.5 ** 0.9, rel=1e-12)
    assert poly_lr(2.5e-4, 9999, 10000, every=10) == pytest.approx(2.5e-4 * 0.001 ** 0.9, rel=1e-12)
    # VainF's: every iteration, floored at 1e-6
    assert poly_lr(0.05, 10000, 20000, min_lr=1e-6) == pytest.approx(0.05 * 0.5 ** 0.9, rel=1e-12)
    assert poly_lr(0.05, 19999, 20000, min_lr=1e-6) == pytest.approx(0.05 * (1 / 20000) ** 0.9, rel=1e-12)
    assert poly_lr(0.05, 20000, 20000, min_lr=1e-6) == 1e-6


def test_normalize_image_styles():
    img = np.array([[[10, 20, 30]]], np.uint8)
    assert np.allclose(normalize_image(img, "caffe")[:, 0, 0], [30 - 104.008, 20 - 116.669, 10 - 122.675])
    assert np.allclose(normalize_image(img, "torchvision"), normalize(img).transpose(2, 0, 1))
