"""Unit tests of the single-stage pieces (ToCo/PUFS): the dense bilateral filter and CRF-loss gradient, the EMA
teacher and its schedules, block masking, ViT weight loading and the loss schedules."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from misc.errors import UserError
from misc.optim import cosine_momentum, teacher_temperature, warmup_multiplier
from net.crf_loss import bilateral_filter, dense_crf_loss
from net.pufs import PUFSConfig, PUFSNet, block_mask, ema_update, uncertain_blocks
from net.toco import ToCoConfig, ToCoNet
from net.vit import ViT, load_imagenet_vit

TINY = {"patch_size": 16, "embed_dim": 32, "depth": 3, "num_heads": 2}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: these small tensors run several times faster than with threads fighting over the
    shared CPU cores."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def dense_kernel(image: torch.Tensor, sigma_rgb: float, sigma_xy: float) -> torch.Tensor:
    """(3, H, W) -> the (HW, HW) float64 Gaussian bilateral kernel, by brute force."""
    _, h, w = image.shape
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    p = torch.stack([xs, ys], -1).reshape(-1, 2).double()
    c = image.reshape(3, -1).t().double()
    d = ((p[:, None] - p[None]) ** 2).sum(-1) / sigma_xy ** 2 + ((c[:, None] - c[None]) ** 2).sum(-1) / sigma_rgb ** 2
    return torch.exp(-0.5 * d)


@pytest.mark.parametrize("size,chunk", [((9, 7), 16), ((14, 12), 50)])
def test_bilateral_filter_equals_dense(size, chunk):
    g = torch.Generator().manual_seed(0)
    img = torch.rand(2, 3, *size, generator=g) * 255
    val = torch.rand(2, 4, *size, generator=g)
    out = bilateral_filter(img, val, sigma_rgb=15.0, sigma_xy=5.0, chunk=chunk)
    for n in range(2):
        ref = (dense_kernel(img[n], 15.0, 5.0) @ val[n].reshape(4, -1).t().double()).t().reshape(4, *size)
        # float32 distances and exp: relative error a few 1e-7 per weight
        np.testing.assert_allclose(out[n].double().numpy(), ref.numpy(), rtol=1e-5)


def test_crf_loss_gradient_is_the_published_hand_written_one():
    g = torch.Generator().manual_seed(1)
    img = torch.rand(2, 3, 8, 10, generator=g) * 255
    probs = torch.softmax(3 * torch.randn(2, 3, 8, 10, generator=g), 1).requires_grad_()
    roi = torch.ones(2, 8, 10)
    roi[1, :, 7:] = 0
    labels = torch.zeros(2, 8, 10, dtype=torch.long)
    labels[0, :2] = 255
    loss = dense_crf_loss(img, probs, roi, labels, weight=1.0, sigma_rgb=15.0, sigma_xy=6.0, scale_factor=1.0)
    loss.backward()
    s = (probs * roi[:, None]).detach().double()
    gate = (roi - probs.detach().max(1)[0]).masked_fill(labels == 255, 1).clamp(min=0).double()
    energy, hand, exact = 0.0, [], []
    for n in range(2):
        k = dense_kernel(img[n], 15.0, 6.0)
        v = s[n].reshape(3, -1)
        ws = (v @ k) * gate[n].reshape(1, -1)
        energy -= (v * ws).sum() / 2
        hand.append(-2 * ws / 2 * roi[n].reshape(1, -1))
        exact.append(-(ws + (v * gate[n].reshape(1, -1)) @ k) / 2 * roi[n].reshape(1, -1))
    np.testing.assert_allclose(loss.item(), energy.item(), rtol=1e-5)
    hand = torch.stack(hand).reshape(probs.shape)
    np.testing.assert_allclose(probs.grad.double().numpy(), hand.numpy(), rtol=1e-5, atol=1e-9)
    # ... which is not the gradient of the energy (the gate varies over the image)
    assert not torch.allclose(hand, torch.stack(exact).reshape(probs.shape), rtol=1e-2)


def test_ema_update_and_momentum_temperature_schedules():
    t, s = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    t0 = [p.clone() for p in t.parameters()]
    ema_update(t, s, 0.9)
    for p0, pt, ps in zip(t0, t.parameters(), s.parameters()):
        torch.testing.assert_close(pt, 0.9 * p0 + 0.1 * ps)
    assert cosine_momentum(0, 20000) == 0.9995
    assert cosine_momentum(10000, 20000) == pytest.approx(0.99975, abs=1e-15)
    assert 0.9995 < cosine_momentum(19999, 20000) < 1.0
    assert cosine_momentum(20000, 20000) == 1.0
    assert teacher_temperature(0, 20000) == 0.04
    assert teacher_temperature(1249, 20000) == pytest.approx(0.04 + 0.03 * 1249 / 2499)
    assert teacher_temperature(2499, 20000) == pytest.approx(0.07)
    assert teacher_temperature(2500, 20000) == teacher_temperature(19999, 20000) == 0.07
    assert teacher_temperature(9998, 80000) < 0.07 == teacher_temperature(9999, 80000)


def test_warmup_multipliers():
    assert warmup_multiplier(0, 1500, 20000, 1e-6, "poly") == pytest.approx(1e-6)
    assert warmup_multiplier(750, 1500, 20000, 0.1, "cosine") == pytest.approx(0.55)
    assert warmup_multiplier(1500, 1500, 20000, 1e-6, "poly") == pytest.approx((1 - 1500 / 20000) ** 0.9)
    assert warmup_multiplier(1500, 1500, 20000, 0.1, "cosine") == 1.0
    assert warmup_multiplier(10750, 1500, 20000, 0.1, "cosine") == pytest.approx(0.5)


def test_block_mask_ratio_and_uncertain_first():
    g = torch.Generator().manual_seed(0)
    m = block_mask(3, (7, 7), 0.4, 4, generator=g)
    assert m.shape == (3, 28, 28)
    assert (m.sum((1, 2)) == 20 * 16).all()  # ceil(0.4 * 49) = 20 blocks of 4 x 4 tokens
    blocks = m[:, ::4, ::4]
    assert torch.equal(blocks.repeat_interleave(4, 1).repeat_interleave(4, 2), m)
    unc = torch.zeros(3, 49, dtype=torch.bool)
    unc[0, :7] = True  # fewer uncertain blocks than masked: all of them masked, 13 certain ones at random
    unc[1, 10:40] = True  # more: only uncertain blocks masked
    m = block_mask(3, (7, 7), 0.4, 4, unc, generator=g)[:, ::4, ::4].flatten(1)
    assert m[0, :7].all() and m[0, 7:].sum() == 13
    assert m[1, 10:40].sum() == 20 and not m[1, :10].any() and not m[1, 40:].any()
    assert m[2].sum() == 20


def test_uncertain_blocks_read_the_block_corner():
    cam = torch.zeros(1, 2, 128, 128)
    cam[0, 0, 0, 64] = 0.5  # top-left pixel of block (0, 1): uncertain
    cam[0, 1, 64, 0] = 0.5  # class 1 is absent: not counted
    cam[0, 0, 70, 70] = 0.5  # not a block corner
    unc = uncertain_blocks(cam, torch.tensor([[1.0, 0.0]]), (2, 2))
    assert unc.tolist() == [[False, True, False, False]]


def test_class_attention_masking_option():
    torch.manual_seed(0)
    vit = ViT(img_size=64, cls_mode="aggregate", mask_token=True, num_classes=0, **TINY).eval()
    x = torch.randn(1, 3, 64, 64)
    mask = torch.zeros(1, 4, 4, dtype=torch.bool)
    mask[0, :2] = True
    x2 = x.clone()
    x2[..., :16, :] += 1  # changes the first token row, which is masked
    on = [vit(im, mask, attn_mask_cls=True)[0] for im in (x, x2)]
    off = vit(x, mask)[0]
    torch.testing.assert_close(on[0], on[1])  # masked patches do not reach the class token (first release)
    assert not torch.allclose(on[0], off)  # HEAD: they do, through the mask token and attention


def test_vit_loads_imagenet_layouts(tmp_path):
    torch.manual_seed(0)
    src = ViT(img_size=32, num_classes=10, **TINY)
    sd = src.state_dict()
    sd["patch_embed.proj.weight"] = sd["patch_embed.proj.weight"].flatten(1)  # old linear patch embedding
    torch.save(sd, tmp_path / "jx.pth")
    torch.save({"model": src.state_dict()}, tmp_path / "deit.pth")
    toco = ViT(img_size=32, num_classes=10, freeze_pos_embed=True, **TINY)
    load_imagenet_vit(toco, tmp_path / "jx.pth")
    torch.testing.assert_close(toco.state_dict(), src.state_dict())
    pufs = ViT(img_size=64, cls_mode="aggregate", mask_token=True, num_classes=0, **TINY)
    load_imagenet_vit(pufs, tmp_path / "deit.pth")
    assert pufs.pos_embed.shape == (1, 17, 32)  # resized from 2 x 2 to 4 x 4 patches
    torch.testing.assert_close(pufs.blocks[1].mlp.fc2.weight, src.blocks[1].mlp.fc2.weight)
    with pytest.raises(UserError, match="missing.pth: ImageNet ViT-B/16 weights not found"):
        load_imagenet_vit(toco, tmp_path / "missing.pth")
    torch.save(ViT(img_size=32, num_classes=10, patch_size=16, embed_dim=48, depth=3, num_heads=2).state_dict(),
               tmp_path / "other.pth")
    with pytest.raises(UserError, match="other.pth: not a ViT-B/16 state_dict matching this model"):
        load_imagenet_vit(toco, tmp_path / "other.pth")
    (tmp_path / "junk.pth").write_text("junk")
    with pytest.raises(UserError, match="junk.pth: not a loadable"):
        load_imagenet_vit(toco, tmp_path / "junk.pth")


def test_loss_schedules_at_named_steps():
    voc = ToCoConfig()
    assert voc.weights(2000)["seg"] == 0 and voc.weights(2001)["seg"] == 0.1 and voc.weights(0)["ctc"] == 0.5
    coco = ToCoConfig.coco()
    assert coco.weights(8000) == {"ptc": 0, "ctc": 0, "seg": 0, "reg": 0, "aux": True}
    assert coco.weights(8001) == {"ptc": 0, "ctc": 0, "seg": 0.1, "reg": 0.05, "aux": True}
    assert coco.weights(12001) == {"ptc": 0.2, "ctc": 0.5, "seg": 0.1, "reg": 0.05, "aux": False}
    p = PUFSConfig()
    assert p.weights(1999)["seg"] == 0 and p.weights(1998)["reg"] == 0 and p.weights(1999)["class"] == 0.1
    assert p.mask_strategy(3999) == "random" and p.mask_strategy(4000) == "uncertain"
    pc = PUFSConfig.coco()
    assert pc.weights(7999)["seg"] == 0 and pc.weights(8000)["seg"] == 0.1 and pc.weights(11999)["aff"] == 0
    assert pc.weights(12000)["aff"] == 0.2 and pc.mask_strategy(15999) == "random"
    assert PUFSConfig(fsr_iters=100).weights(100)["patch"] == 0


def test_param_groups():
    toco = ToCoNet(21, vit=dict(img_size=32, **TINY), ctc_dim=16)
    groups = toco.param_groups()
    ids = [{id(p) for p in g["params"]} for g in groups]
    assert id(toco.encoder.pos_embed) not in set().union(*ids)  # frozen in ToCo
    assert id(toco.encoder.blocks[0].norm1.weight) in ids[1] and [g["lr_mult"] for g in groups] == [1, 1, 10, 10]
    pufs = PUFSNet(21, vit=dict(img_size=32, **TINY), out_dim=16)
    g = pufs.param_groups()
    ids = [{id(p) for p in x["params"]} for x in g]
    for p in (pufs.encoder.pos_embed, pufs.encoder.cls_token, pufs.encoder.mask_token, pufs.encoder.norm.weight,
              pufs.encoder.blocks[0].attn.qkv.bias):
        assert id(p) in ids[0]
    assert id(pufs.encoder.blocks[0].attn.qkv.weight) in ids[1]
    assert id(pufs.decoder.conv6.weight) in ids[3] and id(pufs.projector.mlp[0].bias) in ids[2]
    assert id(pufs.projector.last_layer.weight_g) not in set().union(*ids)
    assert [x["decay"] for x in g] == [False, True, False, True]
    n = sum(p.numel() for p in pufs.parameters() if p.requires_grad)
    assert sum(p.numel() for x in g for p in x["params"]) == n
    assert math.isclose(cosine_momentum(0, 1), 0.9995)


def test_iteration_sampler_is_rank_invariant_and_continues_over_epochs(monkeypatch):
    from step.common.parallel import IterationSampler

    def keys(world: int, rank: int, epoch: int) -> list[tuple[int, int, int]]:
        monkeypatch.setenv("WORLD_SIZE", str(world))
        monkeypatch.setenv("RANK", str(rank))
        s = IterationSampler(n=10, total_batch=4, steps=3, seed=7)
        s.set_epoch(epoch)
        assert len(s) == 3 * 4 // world
        return list(s)

    single = keys(1, 0, 0) + keys(1, 0, 1)  # 6 batches of 4 = 24 positions: 2.4 passes over 10 items
    assert [k[1] for k in single] == [p // 10 for p in range(24)]  # passes follow each other, none dropped
    for p in (0, 1):
        assert sorted(k[2] for k in single if k[1] == p) == list(range(10))  # each pass a permutation
    assert [k[2] for k in single[:10]] != [k[2] for k in single[10:20]]  # reshuffled per pass
    for epoch in (0, 1):
        r0, r1 = keys(2, 0, epoch), keys(2, 1, epoch)
        two = [k for b in range(3) for k in r0[2 * b:2 * b + 2] + r1[2 * b:2 * b + 2]]
        assert two == single[12 * epoch:12 * (epoch + 1)]  # batch k over the ranks = single-process batch k


def test_flip_sum_scale_max_is_flip_equivariant_and_fuses_by_max():
    from misc.segmentation import flip_sum_scale_max

    conv = torch.nn.Conv2d(3, 4, 3, padding=1)
    x = torch.randn(2, 3, 16, 20)
    out = flip_sum_scale_max(conv, x, (1.0, 1.5))
    torch.testing.assert_close(flip_sum_scale_max(conv, x.flip(-1), (1.0, 1.5)), out.flip(-1), rtol=1e-5, atol=1e-5)
    one = flip_sum_scale_max(conv, x, (1.0,))
    with torch.no_grad():
        torch.testing.assert_close(one, conv(x) + conv(x.flip(-1)).flip(-1))
    assert torch.all(out >= one - 1e-6) and not torch.allclose(out, one)


def _args(method: str, tmp_path, **kw):
    import run_sample

    argv = ["--method", method, "--work_dir", str(tmp_path), "--ss_patch_size", "16", "--ss_embed_dim", "64",
            "--ss_depth", "4", "--ss_num_heads", "4", "--ss_img_size", "64", "--ss_head_hidden", "2048"]
    for k, v in kw.items():
        argv += [f"--{k}", str(v)]
    return run_sample.parse_args(argv)


def test_published_toco_checkpoint_loads_strictly_through_the_step_loader(tmp_path):
    from step.common.single_stage import build_network, load_trained
    from tests.parity.util import load_keys, random_state_dict

    shapes = load_keys("toco_tiny_keys")  # the published model_seg_neg.network at the tiny size, DDP-saved
    args = _args("toco", tmp_path, toco_ctc_dim=shapes["proj_head.last_layer.weight_v"][0])
    torch.save({f"module.{k}": v for k, v in random_state_dict(shapes, seed=0).items()}, tmp_path / "toco.pth")
    net = build_network(args, 20, train=False)
    load_trained(args, net, tmp_path / "toco.pth")
    torch.testing.assert_close(net.state_dict()["decoder.conv6.weight"], random_state_dict(shapes, 0)[
        "decoder.conv6.weight"])
    torch.save({k: v for k, v in random_state_dict(shapes, 0).items() if k != "classifier.weight"}, tmp_path / "x.pth")
    with pytest.raises(UserError, match=r"x.pth: checkpoint does not fit the model \(missing \['classifier.weight'\]"):
        load_trained(args, net, tmp_path / "x.pth")


@pytest.mark.parametrize("which", ["student", "teacher"])
def test_pufs_loader_picks_student_or_teacher_and_takes_published_files(tmp_path, which):
    from net.pufs import StudentTeacher
    from step.common.single_stage import build_network, load_trained
    from tests.parity.util import load_keys, random_state_dict

    args = _args("pufs", tmp_path, pufs_out_dim=256, pufs_eval_model=which)
    pair = StudentTeacher(build_network(args, 20, train=True), 256)
    with torch.no_grad():
        pair.teacher.decoder.conv8.weight.add_(1.0)
    torch.save(pair.state_dict(), tmp_path / "ours.pth")
    net = build_network(args, 20, train=False)
    load_trained(args, net, tmp_path / "ours.pth")
    torch.testing.assert_close(net.decoder.conv8.weight, getattr(pair, which).decoder.conv8.weight)
    shapes = load_keys("pufs_tiny_keys")  # a published student.pth / teacher.pth
    args = _args("pufs", tmp_path, ss_img_size=96, pufs_out_dim=shapes["projector.last_layer.weight_v"][0])
    net = build_network(args, 20, train=False)
    torch.save(random_state_dict(shapes, seed=1), tmp_path / "student.pth")
    load_trained(args, net, tmp_path / "student.pth")
