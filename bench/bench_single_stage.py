"""Training throughput of ToCo and PUFS (one whole step: losses, backward, AdamW step, PUFS's EMA update), the
dense CRF loss's share of it, and the projected hours of the published VOC schedule (20,000 iterations).

    python -m bench.bench_single_stage [--size toy|vitb] [--methods toco pufs] [--device auto] [--steps 3]
                                       [--amp off|bf16]

toy: the toy recipe's network (run_sample.SINGLE_STAGE_TOY: ViT patch 8, width 96, 4 blocks, 128 crops, 2 local
crops) at the toy batch; vitb: ViT-B/16 at 448 crops with the published per-GPU batch 2, 8 local 96-px crops
(ToCo) and the 4096-d projector (PUFS), meant for a GPU. Inputs are random; the step is timed after one
warm-up step, in the loss phase where every term is on (after the seg/CRF start). The CRF loss is timed on
its own at the step's sizes (forward + backward). The projection multiplies the step time by 20,000 / (total
batch 4 (ToCo) or 8 (PUFS) / the per-device batch), i.e. one device doing the whole total batch.
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from misc.optim import warmup_adamw
from misc.torchutils import autocast, pick_device
from net.crf_loss import dense_crf_loss
from net.par import PAR
from net.pufs import PUFSConfig, PUFSNet, StudentTeacher, ema_update, pufs_losses
from net.toco import ToCoConfig, ToCoNet, toco_losses
from run_sample import SINGLE_STAGE_TOY as TOY

SIZES = {
    "toy": dict(vit={"patch_size": TOY["ss_patch_size"], "embed_dim": TOY["ss_embed_dim"], "depth": TOY["ss_depth"],
                     "num_heads": TOY["ss_num_heads"], "img_size": TOY["ss_img_size"]},
                crop=TOY["ss_crop_size"], batch=TOY["ss_batch_size"], hidden=TOY["ss_head_hidden"],
                crop_num=TOY["toco_crop_num"], local=TOY["toco_local_crop_size"], ctc_dim=TOY["toco_ctc_dim"],
                out_dim=TOY["pufs_out_dim"], block=TOY["pufs_block_size"], crf_scale=TOY["ss_crf_loss_scale"],
                cam_scales=TOY["ss_cam_scales"], par_iters=TOY["ss_par_iters"]),
    "vitb": dict(vit={"patch_size": 16, "embed_dim": 768, "depth": 12, "num_heads": 12}, crop=448, batch=2,
                 hidden=2048, crop_num=8, local=96, ctc_dim=1024, out_dim=4096, block=64, crf_scale=0.5,
                 cam_scales=(1.0, 0.5, 1.5), par_iters=10),
}
TOTAL_BATCH = {"toco": 4, "pufs": 8}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def step_seconds(method: str, size: dict, device: torch.device, steps: int, amp: str) -> float:
    """Best seconds of one whole training step of ``method`` on random inputs (after one warm-up step)."""
    g = torch.Generator().manual_seed(0)
    b, s = size["batch"], size["crop"]
    labels = (torch.rand(b, 20, generator=g) < 0.15).float()
    labels[:, 0] = 1
    images = [torch.randn(b, 3, s, s, generator=g).to(device) for _ in range(3)]
    common = dict(cam_scales=tuple(size["cam_scales"]), crf_scale=size["crf_scale"], seg_start=0)
    par = PAR(num_iter=size["par_iters"]).to(device)
    if method == "toco":
        net = ToCoNet(21, vit=size["vit"], ctc_dim=size["ctc_dim"], head_hidden=size["hidden"]).to(device)
        cfg = ToCoConfig(**common, crop_num=size["crop_num"], local_crop_size=size["local"])
        batch = {"image": images[0], "global2": images[1], "local_src": images[2], "cls_labels": labels.to(device),
                 "img_box": torch.tensor([[0, s, 0, s]] * b, device=device)}
        groups, model = net.param_groups(), net
    else:
        net = PUFSNet(21, vit={**size["vit"], "img_size": s}, out_dim=size["out_dim"],
                      head_hidden=size["hidden"]).to(device)
        model = StudentTeacher(net, size["out_dim"]).to(device)
        cfg = PUFSConfig(**common, block_size=size["block"], max_iters=20000)
        batch = {"view1": images[0], "view2": images[1], "cls_labels": labels.to(device)}
        groups = net.param_groups()
    opt, sched = warmup_adamw(groups, 6e-5, 0.01, 20000, 1500, 1e-6, "poly")
    best = float("inf")
    for i in range(steps + 1):
        _sync(device)
        t = time.perf_counter()
        with autocast(device, amp):
            out = (toco_losses(model, batch, 5000, cfg, par) if method == "toco"
                   else pufs_losses(model.student, model.teacher, model.fsr, batch, 5000, cfg, par))
        opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        opt.step()
        sched.step()
        if method == "pufs":
            ema_update(model.teacher, model.student, 0.9995)
        _sync(device)
        if i:
            best = min(best, time.perf_counter() - t)
    return best


def crf_seconds(size: dict, device: torch.device) -> float:
    """Seconds of the dense CRF loss (forward + backward) on one step's batch at its crop and scale."""
    g = torch.Generator().manual_seed(1)
    b, s = size["batch"], size["crop"]
    img = (torch.rand(b, 3, s, s, generator=g) * 255).to(device)
    logits = torch.randn(b, 21, s, s, generator=g).to(device).requires_grad_()
    roi = torch.ones(b, s, s, device=device)
    lab = torch.zeros(b, s, s, dtype=torch.long, device=device)
    _sync(device)
    t = time.perf_counter()
    dense_crf_loss(img, F.softmax(logits, 1), roi, lab, scale_factor=size["crf_scale"]).backward()
    _sync(device)
    return time.perf_counter() - t


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", choices=tuple(SIZES), default="toy")
    p.add_argument("--methods", nargs="+", choices=("toco", "pufs"), default=["toco", "pufs"])
    p.add_argument("--device", default="auto")
    p.add_argument("--steps", type=int, default=3, help="timed steps (best reported), after one warm-up step")
    p.add_argument("--amp", choices=("off", "bf16"), default="off")
    a = p.parse_args()
    device, size = pick_device(a.device), SIZES[a.size]
    print(f"single-stage training step, {a.size} ({size['crop']} crops, batch {size['batch']}), {device} "
          f"({torch.get_num_threads()} CPU threads), amp {a.amp}")
    crf = crf_seconds(size, device)
    print(f"{'method':>6}{'s/step':>9}{'steps/s':>9}{'CRF loss s':>12}{'CRF share':>11}{'VOC 20k h':>11}")
    for m in a.methods:
        t = step_seconds(m, size, device, a.steps, a.amp)
        per_iter = t * TOTAL_BATCH[m] / size["batch"]
        print(f"{m:>6}{t:>9.3f}{1 / t:>9.2f}{crf:>12.3f}{100 * crf / t:>10.0f}%{20000 * per_iter / 3600:>11.1f}")


if __name__ == "__main__":
    main()
