"""Regenerate the PUFS parity fixtures by running the published code (Jessie459/feature-self-reinforcement) on
CPU. Not run by CI.

    python -m tests.parity.make_fixtures_pufs --published /work/published/PUFS

Writes tests/parity/fixtures/pufs_keys.json (the published ViT-B network built by ``build_model``),
pufs_tiny_keys.json (the same network with the tiny ViT), pufs_mask.npz (the mask generator), pufs_fsr.npz
(FSR losses, centres and the schedules) and pufs_step.npz (two whole training steps with the optimiser step
and the teacher update between them). Run-time patches only: ``.cuda()`` is a no-op, the rloss extension is
replaced by the exact dense filter, stub modules stand in for texttable/matplotlib.
"""
from __future__ import annotations

import argparse
import sys
from functools import partial
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from tests.parity.toco_pufs_common import STEP_SIZE, TINY, normalize, patch_for_cpu, shapes_of, synthetic_images
from tests.parity.util import random_state_dict, save_fixture, save_keys

COMMIT = "7f75f1c585427d5aff600415b0ee67d83714eb06"
META = {"repo": "Jessie459/feature-self-reinforcement", "commit": COMMIT}
OUT_DIM = 512  # tiny projector output (published default 4096)
STEP_PARAMS = ("top_classifier.weight", "aux_classifier.weight", "encoder.blocks.0.norm1.weight",
               "encoder.blocks.3.mlp.fc2.bias", "encoder.cls_token", "encoder.mask_token", "encoder.pos_embed",
               "encoder.cls_blocks.1.attn.q.bias", "projector.mlp.4.bias")
STEPS = (100, 4500)  # 0-based iterations of the two recorded steps: random mask / warm-up temperature / no seg,
# then uncertain mask / final temperature / seg on
THR = {"high_thre": 0.7, "low_thre": 0.25, "ignore_index": 255}


def load_published(path: str) -> dict:
    patch_for_cpu()
    sys.path.insert(0, path)
    import losses as fsr_losses
    from models import losses
    from models.decoder import LargeFOV
    from models.network import WSSSNetwork, build_model
    from models.PAR import PAR
    from models.projector import DINOHead
    from models.vit import VisionTransformer
    from utils import camutils, imutils, masking, optim, pyutils

    return {"fsr": fsr_losses, "losses": losses, "LargeFOV": LargeFOV, "WSSSNetwork": WSSSNetwork,
            "build_model": build_model,
                "PAR": PAR, "DINOHead": DINOHead, "VisionTransformer": VisionTransformer, "camutils": camutils,
                "imutils": imutils, "masking": masking, "optim": optim, "pyutils": pyutils}


def tiny_network(pub):
    """The published WSSSNetwork with the tiny ViT (img_size 96, drop path 0) and a 512-d projector."""
    enc = pub["VisionTransformer"](img_size=STEP_SIZE, mlp_ratio=4, qkv_bias=True,
                                   norm_layer=partial(nn.LayerNorm, eps=1e-6), cls_depth=2, drop_path_rate=0.0, **TINY)
    return pub["WSSSNetwork"](enc, pub["LargeFOV"](enc.embed_dim, 21), pub["DINOHead"](enc.embed_dim, OUT_DIM),
                              num_classes=21)


def keys(pub) -> None:
    args = SimpleNamespace(input_size=448, cls_depth=2, drop_path_rate=0.1, out_dim=4096, num_classes=21)
    save_keys("pufs_keys", {**META, "model": "models.network.build_model(input_size=448, cls_depth=2, "
                            "out_dim=4096, num_classes=21)"}, shapes_of(pub["build_model"](args, pretrained=False)))
    save_keys("pufs_tiny_keys", {**META, "model": "WSSSNetwork(VisionTransformer(img_size=96, TINY), LargeFOV, "
                                 "DINOHead(out_dim=512))"}, shapes_of(tiny_network(pub)))


def mask(pub) -> None:
    """MaskGenerator at the published size (448 crops, 64-px blocks, ratio 0.4) on a blocky aux CAM."""
    rng = np.random.RandomState(4)
    cam_low = rng.randint(0, 256, size=(2, 3, 14, 14)).astype(np.uint8)
    cam = F.interpolate(torch.from_numpy(cam_low).float() / 255, size=(448, 448), mode="nearest")
    cls_label = torch.tensor([[1.0, 0, 1], [0, 1, 0]])
    gen = pub["masking"].MaskGenerator(input_size=448, patch_size=16, block_size=64, mask_ratio=0.4, mode="nearest")
    torch.manual_seed(21)
    random = gen(cam, cls_label, 0.2, 0.7, "random")
    uncertain = gen(cam, cls_label, 0.2, 0.7, "uncertain")
    save_fixture("pufs_mask", {**META, "seed": 21}, cam_low=cam_low, cls_label=cls_label.numpy(),
                 random=random.numpy(), uncertain=uncertain.numpy())


def fsr_and_schedules(pub) -> None:
    rng = np.random.RandomState(5)
    loss = pub["fsr"].FSRLoss(out_dim=32, warmup_teacher_temp=0.04, teacher_temp=0.07, student_temp=0.1,
                              warmup_epochs=int(20000 / 8), epochs=20000, num_gcrops=2, num_lcrops=0)
    calls = []
    for epoch in (10, 3000):
        t = torch.from_numpy(rng.randn(4, 17, 32).astype(np.float32))
        s = torch.from_numpy(rng.randn(4, 17, 32).astype(np.float32))
        m = torch.from_numpy(rng.rand(4, 4, 4) < 0.4)
        m[:2] = False
        m[3] = False  # an image with no masked token
        cls_l, pat_l = loss(teacher_output=t, student_output=s, student_output2=None, student_mask=m, epoch=epoch)
        calls.append((t, s, m, cls_l, pat_l, loss.class_center.clone(), loss.patch_center.clone()))
    steps = np.array([0, 1, 1250, 2498, 2499, 2500, 19999])
    momentum = pub["pyutils"].cosine_scheduler(0.9995, 1.0, 20000)[steps]
    temps = loss.teacher_temp[steps]
    p = nn.Parameter(torch.zeros(1))
    opt = pub["optim"].CosWarmupAdamW([{"params": [p], "lr": 6e-5}, {"params": [], "lr": 6e-4}], lr=6e-5,
                                      weight_decay=0.05, betas=(0.9, 0.999), warmup_iters=1500, max_iters=20000,
                                      warmup_ratio=0.1)
    opt_steps = [0, 1, 750, 1499, 1500, 1501, 10000, 19999]
    lrs = []
    for st in opt_steps:
        opt.global_step = st
        p.grad = torch.ones(1)
        opt.step()
        lrs.append([g["lr"] for g in opt.param_groups])
    arrays = {}
    for i, (t, s, m, cl, pl, cc, pc) in enumerate(calls):
        arrays.update({f"t{i}": t.numpy(), f"s{i}": s.numpy(), f"mask{i}": m.numpy(), f"cls{i}": cl.numpy(),
                       f"pat{i}": pl.numpy(), f"class_center{i}": cc.numpy(), f"patch_center{i}": pc.numpy()})
    save_fixture("pufs_fsr", {**META, "epochs": [10, 3000]}, steps=steps, momentum=momentum, temps=temps,
                 opt_steps=np.array(opt_steps), cos_lr=np.array(lrs), **arrays)


def one_step(pub, student, teacher, par, fsr, mask_gen, images, cls_labels, n_iter: int) -> dict:
    """The loop body of train_voc.py up to the loss (view-2 CAMs/pseudo labels, used only for TensorBoard, left
    out: with drop path 0 they draw no random numbers)."""
    cu, ls = pub["camutils"], pub["losses"]
    strategy = "random" if (n_iter + 1) <= 20000 // 5 else "uncertain"
    _, aux2 = cu.multi_scale_cam(student, images[1], scales=(1.0, 0.5, 1.5))
    mask2 = mask_gen(aux2, cls_labels, 0.2, 0.7, strategy)
    mask = torch.cat([torch.zeros_like(mask2), mask2], dim=0)
    out = student(images, mask=mask)
    with torch.no_grad():
        t_out = teacher(images[:2])
    cls_loss = F.multilabel_soft_margin_loss(out["top_cls_out"], cls_labels)
    aux_loss = F.multilabel_soft_margin_loss(out["aux_cls_out"], cls_labels)
    with torch.no_grad():
        cam1, aux1 = cu.multi_scale_cam(student, images[0], scales=(1.0, 0.5, 1.5))
        valid_cam1, _ = cu.cam_to_label(cam1, cls_labels, img_box=None, ignore_mid=True, **THR)
        pseudo = cu.refine_cams_with_bkg_v2(par, pub["imutils"].denormalize_img2(images[0].clone()), cams=valid_cam1,
                                            cls_labels=cls_labels, img_box=None, **THR)
    seg_pred = F.interpolate(out["seg_out"], size=pseudo.shape[-2:], mode="bilinear", align_corners=False)
    seg_loss = ls.get_seg_loss(seg_pred, pseudo.long(), ignore_index=255)
    layer = ls.DenseEnergyLoss(weight=1e-7, sigma_rgb=15, sigma_xy=100, scale_factor=0.5)
    reg_loss = ls.get_energy_loss(img=images[0], logit=seg_pred, label=pseudo, img_box=None, loss_layer=layer).sum()
    fmap = out["top_fmap"]
    aux_small = F.interpolate(aux1, size=fmap.shape[-2:], mode="bilinear", align_corners=False)
    _, tok = cu.cam_to_label(aux_small.detach(), cls_labels, img_box=None, ignore_mid=True, **THR)
    aff_loss = ls.get_masked_ptc_loss(fmap, cu.label_to_aff_mask(tok))
    fsr_cls, fsr_pat = fsr(teacher_output=t_out["project_out"], student_output=out["project_out"],
                           student_output2=out["project_out2"], student_mask=mask, epoch=n_iter)
    on = float((n_iter + 1) > 2000)
    loss = (cls_loss + aux_loss + 0.1 * fsr_cls + 0.1 * fsr_pat + 0.2 * aff_loss + 0.1 * on * seg_loss
            + 0.05 * on * reg_loss)
    return {"cls": cls_loss, "cls_aux": aux_loss, "fsr_cls": fsr_cls, "fsr_pat": fsr_pat, "aff": aff_loss,
            "seg": seg_loss, "reg": reg_loss, "loss": loss, "mask2": mask2, "pseudo": pseudo,
            "cam_sum": cam1.sum((2, 3))}


def step(pub) -> None:
    """Two training steps (STEPS) on the tiny network, each followed by the optimiser step (global step 1600,
    then 1601) and the teacher's EMA update."""
    rng = np.random.RandomState(6)
    student, teacher = tiny_network(pub), tiny_network(pub)
    shapes = shapes_of(student)
    student.load_state_dict(random_state_dict(shapes, seed=7))
    teacher.load_state_dict(random_state_dict(shapes, seed=8))
    for p in teacher.parameters():
        p.requires_grad = False
    student.train()
    teacher.train()
    u8 = synthetic_images(rng, 4, STEP_SIZE, STEP_SIZE)
    images = [normalize(u8[:2]), normalize(u8[2:])]
    cls_labels = torch.zeros(2, 20)
    cls_labels[0, [4, 11]] = 1
    cls_labels[1, [6]] = 1
    par = pub["PAR"](num_iter=10, dilations=[1, 2, 4, 8, 12, 24])
    fsr = pub["fsr"].FSRLoss(out_dim=OUT_DIM, warmup_teacher_temp=0.04, teacher_temp=0.07, student_temp=0.1,
                             warmup_epochs=int(20000 / 8), epochs=20000, num_gcrops=2, num_lcrops=0)
    mask_gen = pub["masking"].MaskGenerator(input_size=STEP_SIZE, patch_size=16, block_size=32, mask_ratio=0.4,
                                            mode="nearest")
    g = student.get_param_groups()
    opt = pub["optim"].CosWarmupAdamW(
        [{"params": g[0], "lr": 6e-5, "weight_decay": 0}, {"params": g[1], "lr": 6e-5, "weight_decay": 0.05},
         {"params": g[2], "lr": 6e-4, "weight_decay": 0}, {"params": g[3], "lr": 6e-4, "weight_decay": 0.05}],
        lr=6e-5, weight_decay=0.05, betas=(0.9, 0.999), max_iters=20000, warmup_iters=1500, warmup_ratio=0.1)
    opt.global_step = 1600
    momentum = pub["pyutils"].cosine_scheduler(0.9995, 1.0, 20000)
    arrays = {}
    torch.manual_seed(31)
    for i, n_iter in enumerate(STEPS):
        s_before = {k: v.clone() for k, v in student.state_dict().items()}
        t_before = {k: v.clone() for k, v in teacher.state_dict().items()}
        out = one_step(pub, student, teacher, par, fsr, mask_gen, images, cls_labels, n_iter)
        opt.zero_grad(set_to_none=False)  # torch 1.10, the published pin, kept zeroed gradients
        out["loss"].backward()
        named = dict(student.named_parameters())
        opt.step()
        with torch.no_grad():
            m = momentum[n_iter]
            for ps, pt in zip(student.parameters(), teacher.parameters()):
                pt.data.mul_(m).add_((1.0 - m) * ps.detach().data)
        s_after, t_after = student.state_dict(), teacher.state_dict()
        for k in STEP_PARAMS:
            arrays[f"s{i}_grad_{k}"] = named[k].grad.numpy().copy()
            arrays[f"s{i}_delta_{k}"] = (s_after[k] - s_before[k]).numpy()
            arrays[f"s{i}_tdelta_{k}"] = (t_after[k] - t_before[k]).numpy()
        for k in ("cls", "cls_aux", "fsr_cls", "fsr_pat", "aff", "seg", "reg", "loss"):
            arrays[f"s{i}_loss_{k}"] = out[k].detach().numpy().reshape(())
        arrays[f"s{i}_mask2"] = out["mask2"].numpy()
        arrays[f"s{i}_pseudo"] = out["pseudo"].numpy().astype(np.uint8)
        arrays[f"s{i}_cam_sum"] = out["cam_sum"].numpy()
        arrays[f"s{i}_class_center"] = fsr.class_center.numpy()
        arrays[f"s{i}_patch_center"] = fsr.patch_center.numpy()
    save_fixture("pufs_step", {**META, "steps": list(STEPS), "student_seed": 7, "teacher_seed": 8, "rng_seed": 31,
                               "optimizer_step": 1600, "block_size": 32, "out_dim": OUT_DIM},
                 image_u8=u8, cls_label=cls_labels.numpy(), **arrays)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--published", required=True,
                    help="checkout of Jessie459/feature-self-reinforcement at " + COMMIT[:8])
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    pub = load_published(args.published)
    keys(pub)
    mask(pub)
    fsr_and_schedules(pub)
    step(pub)


if __name__ == "__main__":
    main()
