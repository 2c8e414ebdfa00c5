"""Golden facts of IRN's recipe: strided sizes, poly schedule, CAM normalisation, palette, key layout."""
import pytest
import torch

from misc.imutils import color_palette, strided_size, strided_up_size
from misc.seeds import normalise_keep
from misc.torchutils import poly_multiplier, poly_optimizer


def test_strided_size():
    assert strided_size((500, 375), 4) == (125, 94)
    assert strided_size((375, 500), 4) == (94, 125)
    assert strided_size((4, 5), 4) == (1, 2)
    assert strided_up_size((500, 375), 16) == (512, 384)


def test_poly_multipliers_match_irn_log():
    assert poly_multiplier(100, 3305) == pytest.approx(0.9727, abs=5e-5)
    assert poly_multiplier(600, 3305) == pytest.approx(0.8350, abs=5e-5)
    assert poly_multiplier(3305, 3305) == 0.0
    assert 10582 // 16 * 5 == 3305 and 10582 // 32 * 3 == 990


def test_poly_optimizer_applies_schedule_and_explicit_momentum():
    w = torch.nn.Parameter(torch.zeros(1))
    opt, sched = poly_optimizer("sgd", [{"params": [w], "lr": 0.1, "weight_decay": 0.0}], 3305, momentum=1e-4)
    assert opt.param_groups[0]["momentum"] == 1e-4
    used = []
    for _ in range(601):
        used.append(opt.param_groups[0]["lr"])
        w.grad = torch.ones(1)
        opt.step()
        sched.step()
    assert used[0] == pytest.approx(0.1)
    assert used[100] == pytest.approx(0.09727, abs=5e-6) and used[600] == pytest.approx(0.08350, abs=5e-6)
    assert w.item() == pytest.approx(-sum(used), rel=1e-3)  # momentum 1e-4 is (almost) no momentum


def test_cam_normalisation_peaks_just_under_one():
    cam = torch.rand(20, 30, 40) * 7
    keys = torch.tensor([3, 11])
    out = normalise_keep(cam, keys)
    assert out.shape == (2, 30, 40)
    peak = out.flatten(1).amax(1)
    assert torch.all(peak < 1) and torch.all(peak > 1 - 1e-5)
    assert torch.allclose(out[1], cam[11] / (cam[11].max() + 1e-5))


def test_voc_palette():
    pal = color_palette()
    assert pal[0].tolist() == [0, 0, 0] and pal[1].tolist() == [128, 0, 0]
    assert pal[15].tolist() == [192, 128, 128] and pal[255].tolist() == [224, 224, 192]


def test_classifier_keys_match_irn_res50_cam_layout():
    """IRN's Net registers the trunk as resnet50.*, the stages as stage1..4 (stage1 = conv1, bn1, relu,
    maxpool, layer1), backbone.0..3 and newly_added.0 = classifier. Build that key set from torchvision's
    own resnet50 and compare."""
    import torchvision

    from net.resnet50_cam import Net

    tv = [k for k in torchvision.models.resnet50().state_dict() if not k.startswith("fc.")]
    stage_of = {"conv1": "stage1.0", "bn1": "stage1.1", "layer1": "stage1.4", "layer2": "stage2.0",
                "layer3": "stage3.0", "layer4": "stage4.0"}
    expected = {"resnet50." + k for k in tv} | {"classifier.weight", "newly_added.0.weight"}
    for k in tv:
        head, rest = k.split(".", 1)
        stage = stage_of[head]
        expected.add(f"{stage}.{rest}")
        expected.add(f"backbone.{int(stage[5]) - 1}.{stage.split('.', 1)[1]}.{rest}")
    sd = Net(num_classes=20).state_dict()
    assert set(sd) == expected
    assert sd["classifier.weight"].shape == (20, 2048, 1, 1)
