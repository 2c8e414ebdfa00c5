"""Regenerate the ToCo parity fixtures by running the published code (rulixiang/ToCo) on CPU. Not run by CI.

    python -m tests.parity.make_fixtures_toco --published /work/published/ToCo

Writes tests/parity/fixtures/toco_keys.json (the published ViT-B network's state_dict keys and shapes),
toco_tiny_keys.json (the same network with the tiny ViT), toco_par.npz, toco_labels.npz, toco_losses.npz and
toco_step.npz. The published code is imported from the checkout and patched at run time only: ``.cuda()`` is a
no-op, the rloss extension is replaced by the exact dense filter (tests/parity/toco_pufs_common.py), and a tiny
ViT constructor (published VisionTransformer class, TINY sizes) is added to its backbone module.
"""
from __future__ import annotations

import argparse
import sys
from functools import partial

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from tests.parity.toco_pufs_common import (
    STEP_SIZE,
    TINY,
    normalize,
    patch_for_cpu,
    shapes_of,
    smooth_maps,
    synthetic_images,
)
from tests.parity.util import random_state_dict, save_fixture, save_keys

COMMIT = "e13514d9a89a6c0b4131392a465fcf368a562b4e"
META = {"repo": "rulixiang/ToCo", "commit": COMMIT}
# Parameters whose gradients and optimiser-step changes the whole-step fixture records.
STEP_PARAMS = ("classifier.weight", "aux_classifier.weight", "encoder.blocks.0.norm1.weight",
               "encoder.blocks.3.mlp.fc2.bias", "encoder.cls_token", "encoder.patch_embed.proj.bias",
               "proj_head.mlp.4.bias", "decoder.conv8.weight")
THR = {"bkg_thre": 0.5, "high_thre": 0.7, "low_thre": 0.25, "ignore_index": 255}


def load_published(path: str):
    """Import the published modules after the CPU patches; register the tiny backbone."""
    patch_for_cpu()
    sys.path.insert(0, path)
    from model import backbone, losses
    from model.backbone.vit import VisionTransformer
    from model.model_seg_neg import network
    from model.PAR import PAR
    from utils import camutils, imutils, optimizer

    backbone.toco_tiny = lambda pretrained=False, **kw: VisionTransformer(
        img_size=64, mlp_ratio=4, qkv_bias=True, norm_layer=partial(nn.LayerNorm, eps=1e-6), **TINY, **kw)
    return {"network": network, "PAR": PAR, "losses": losses, "camutils": camutils, "imutils": imutils,
            "optimizer": optimizer}


def keys(pub) -> None:
    vit = pub["network"]("vit_base_patch16_224", num_classes=21, pretrained=False, init_momentum=0.9, aux_layer=-3)
    deit = pub["network"]("deit_base_patch16_224", num_classes=21, pretrained=False, init_momentum=0.9, aux_layer=-3)
    assert shapes_of(vit) == shapes_of(deit)
    save_keys("toco_keys", {**META, "model": "model_seg_neg.network(vit_base_patch16_224, num_classes=21)"},
              shapes_of(vit))
    tiny = pub["network"]("toco_tiny", num_classes=21, pretrained=False, init_momentum=0.9, aux_layer=-3)
    save_keys("toco_tiny_keys", {**META, "model": "model_seg_neg.network(VisionTransformer(img_size=64, TINY))"},
              shapes_of(tiny))


def par_and_labels(pub) -> None:
    rng = np.random.RandomState(1)
    par = pub["PAR"](num_iter=10, dilations=[1, 2, 4, 8, 12, 24])
    u8 = synthetic_images(rng, 2, 40, 48)
    image = torch.from_numpy(u8.transpose(0, 3, 1, 2).copy()).float() / 255
    masks = torch.softmax(3 * torch.from_numpy(rng.randn(2, 4, 20, 24).astype(np.float32)), dim=1)
    save_fixture("toco_par", META, image_u8=u8, masks=masks.numpy(), out=par(image, masks).numpy())

    cu = pub["camutils"]
    u8 = synthetic_images(rng, 2, 48, 56)
    cam_low = (rng.rand(2, 20, 6, 7) ** 3).astype(np.float32)
    cam = smooth_maps(cam_low, (48, 56))
    cls_label = torch.zeros(2, 20)
    cls_label[0, [3, 11]] = 1
    cls_label[1, [0, 7, 14]] = 1
    img_box = torch.tensor([[0, 40, 5, 56], [8, 48, 0, 50]])
    valid_cam, train_label = cu.cam_to_label(cam, cls_label, img_box=img_box, ignore_mid=True, **THR)
    val_label = cu.cam_to_label(cam, cls_label, **THR)
    roi = cu.cam_to_roi_mask2(cam, cls_label, hig_thre=0.7, low_thre=0.25)
    images01 = pub["imutils"].denormalize_img2(normalize(u8))
    refined = cu.refine_cams_with_bkg_v2(par, images01, valid_cam, cls_label, high_thre=0.7, low_thre=0.25,
                                          ignore_index=255, img_box=img_box)
    save_fixture("toco_labels", META, image_u8=u8, cam_low=cam_low, cls_label=cls_label.numpy(),
                 img_box=img_box.numpy(), train_label=train_label.numpy().astype(np.uint8),
                 val_label=val_label.numpy().astype(np.uint8), roi=roi.numpy().astype(np.uint8),
                 refined=refined.numpy().astype(np.uint8))


def losses(pub) -> None:
    rng = np.random.RandomState(2)
    ls = pub["losses"]
    fmap = torch.from_numpy(rng.randn(2, 16, 6, 7).astype(np.float32))
    tok = torch.from_numpy(rng.choice([0, 1, 2, 3, 255], size=(2, 6, 7), p=[.3, .2, .2, .1, .2]))
    ptc = ls.get_masked_ptc_loss(fmap, pub["camutils"].label_to_aff_mask(tok))

    s = torch.from_numpy(0.3 * rng.randn(20, 32).astype(np.float32))
    t = torch.from_numpy(0.3 * rng.randn(4, 32).astype(np.float32))
    flags = torch.ones(2, 10)
    flags[0, [3, 5, 6, 9]] = 0
    ctc = ls.CTCLoss_neg(ncrops=10, temp=0.5)(s, t, flags)
    ctc_t1 = ls.CTCLoss_neg(ncrops=10, temp=1.0)(s, t, flags)

    logits = torch.from_numpy(rng.randn(2, 6, 24, 28).astype(np.float32))
    seg_label = torch.from_numpy(rng.choice([0, 0, 2, 5, 255], size=(2, 24, 28)))
    seg = ls.get_seg_loss(logits, seg_label, ignore_index=255)

    u8 = synthetic_images(rng, 2, 32, 40)
    crf_logits = torch.from_numpy(2 * rng.randn(2, 5, 32, 40).astype(np.float32)).requires_grad_()
    crf_label = torch.from_numpy(rng.choice([0, 3, 255], size=(2, 32, 40), p=[.5, .3, .2]))
    crf_box = torch.tensor([[0, 32, 0, 40], [4, 30, 6, 40]])
    layer = ls.DenseEnergyLoss(weight=1e-7, sigma_rgb=15, sigma_xy=100, scale_factor=0.5)
    reg = ls.get_energy_loss(img=normalize(u8), logit=crf_logits, label=crf_label, img_box=crf_box, loss_layer=layer)
    reg.sum().backward()

    p = nn.Parameter(torch.zeros(1))
    steps = [0, 1, 750, 1499, 1500, 1501, 10000, 19999]
    opt = pub["optimizer"].PolyWarmupAdamW([{"params": [p], "lr": 6e-5}, {"params": [], "lr": 6e-4}], lr=6e-5,
                                           weight_decay=0.01, betas=(0.9, 0.999), warmup_iter=1500, max_iter=20000,
                                           warmup_ratio=1e-6, power=0.9)
    lrs = []
    for st in steps:
        opt.global_step = st
        p.grad = torch.ones(1)
        opt.step()
        lrs.append([g["lr"] for g in opt.param_groups])
    save_fixture("toco_losses", META, fmap=fmap.numpy(), tok=tok.numpy(), ptc=ptc.detach().numpy(),
                 ctc_s=s.numpy(), ctc_t=t.numpy(), ctc_flags=flags.numpy(), ctc=ctc.numpy(), ctc_t1=ctc_t1.numpy(),
                 seg_logits=logits.numpy(), seg_label=seg_label.numpy(), seg=seg.numpy(),
                 crf_u8=u8, crf_logits=crf_logits.detach().numpy(), crf_label=crf_label.numpy(),
                 crf_box=crf_box.numpy(), crf=reg.detach().numpy().reshape(()), crf_grad=crf_logits.grad.numpy(),
                 poly_steps=np.array(steps), poly_lr=np.array(lrs))


def step(pub) -> None:
    """One whole training step (the loop body of scripts/dist_train_voc_seg_neg.py) on the tiny network."""
    rng = np.random.RandomState(3)
    cu, ls = pub["camutils"], pub["losses"]
    net = pub["network"]("toco_tiny", num_classes=21, pretrained=False, init_momentum=0.9, aux_layer=-3)
    net.load_state_dict(random_state_dict(shapes_of(net), seed=10))
    net.train()
    u8 = synthetic_images(rng, 6, STEP_SIZE, STEP_SIZE)
    inputs, global2, local_src = normalize(u8[:2]), normalize(u8[2:4]), normalize(u8[4:])
    cls_label = torch.zeros(2, 20)
    cls_label[0, [2, 14]] = 1
    cls_label[1, [8]] = 1
    img_box = torch.tensor([[0, 96, 0, 80], [10, 90, 0, 96]])
    n_iter = 2500
    par = pub["PAR"](num_iter=10, dilations=[1, 2, 4, 8, 12, 24])
    before = {k: v.clone() for k, v in net.state_dict().items()}

    torch.manual_seed(11)
    cams, cams_aux = cu.multi_scale_cam2(net, inputs=inputs, scales=(1.0, 0.5, 1.5))
    roi = cu.cam_to_roi_mask2(cams_aux, cls_label=cls_label, low_thre=0.25, hig_thre=0.7)
    local, flags = cu.crop_from_roi_neg(images=local_src, roi_mask=roi, crop_num=8, crop_size=32)
    cls, segs, fmap, cls_aux, out_t, out_s = net(inputs, crops=[inputs, global2] + local, n_iter=n_iter)
    cls_loss = F.multilabel_soft_margin_loss(cls, cls_label)
    cls_loss_aux = F.multilabel_soft_margin_loss(cls_aux, cls_label)
    ctc_loss = ls.CTCLoss_neg(ncrops=10, temp=0.5)(out_s, out_t, flags)
    valid_cam, _ = cu.cam_to_label(cams, cls_label=cls_label, img_box=img_box, ignore_mid=True, **THR)
    pseudo = cu.refine_cams_with_bkg_v2(par, pub["imutils"].denormalize_img2(inputs.clone()), cams=valid_cam,
                                        cls_labels=cls_label, high_thre=0.7, low_thre=0.25, ignore_index=255,
                                        img_box=img_box)
    segs = F.interpolate(segs, size=pseudo.shape[1:], mode="bilinear", align_corners=False)
    seg_loss = ls.get_seg_loss(segs, pseudo.long(), ignore_index=255)
    layer = ls.DenseEnergyLoss(weight=1e-7, sigma_rgb=15, sigma_xy=100, scale_factor=0.5)
    reg_loss = ls.get_energy_loss(img=inputs, logit=segs, label=pseudo, img_box=img_box, loss_layer=layer)
    aux_small = F.interpolate(cams_aux, size=fmap.shape[2:], mode="bilinear", align_corners=False)
    _, tok = cu.cam_to_label(aux_small, cls_label=cls_label, img_box=img_box, ignore_mid=True, **THR)
    ptc_loss = ls.get_masked_ptc_loss(fmap, cu.label_to_aff_mask(tok))
    loss = cls_loss + cls_loss_aux + 0.2 * ptc_loss + 0.5 * ctc_loss + 0.1 * seg_loss + 0.05 * reg_loss
    loss = loss.sum()  # the published CRF term is shape (1,)
    loss.backward()

    named = dict(net.named_parameters())
    grads = {f"grad_{k}": named[k].grad.numpy() for k in STEP_PARAMS}
    groups = net.get_param_groups()
    opt = pub["optimizer"].PolyWarmupAdamW(
        [{"params": g, "lr": lr, "weight_decay": 0.01} for g, lr in zip(groups, (6e-5, 6e-5, 6e-4, 6e-4))],
        lr=6e-5, weight_decay=0.01, betas=(0.9, 0.999), warmup_iter=1500, max_iter=20000, warmup_ratio=1e-6, power=0.9)
    opt.global_step = 1600
    opt.step()
    after = net.state_dict()
    deltas = {f"delta_{k}": (after[k] - before[k]).numpy() for k in STEP_PARAMS + ("proj_head_t.mlp.4.bias",)}
    terms = {"cls": cls_loss, "cls_aux": cls_loss_aux, "ptc": ptc_loss, "ctc": ctc_loss, "seg": seg_loss,
             "reg": reg_loss.sum(), "loss": loss}
    save_fixture("toco_step", {**META, "n_iter": n_iter, "weights_seed": 10, "rng_seed": 11, "optimizer_step": 1600},
                 image_u8=u8, cls_label=cls_label.numpy(), img_box=img_box.numpy(),
                 cams_sub=cams[..., ::8, ::8].numpy(), cams_aux_sub=cams_aux[..., ::8, ::8].numpy(),
                 cams_sum=cams.sum((2, 3)).numpy(), cams_aux_sum=cams_aux.sum((2, 3)).numpy(),
                 flags=flags.numpy(), pseudo=pseudo.numpy().astype(np.uint8),
                 **{f"loss_{k}": v.detach().numpy().reshape(()) for k, v in terms.items()}, **grads, **deltas)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--published", required=True, help="checkout of rulixiang/ToCo at " + COMMIT[:8])
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    pub = load_published(args.published)
    keys(pub)
    par_and_labels(pub)
    losses(pub)
    step(pub)


if __name__ == "__main__":
    main()
