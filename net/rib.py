"""RIB (Lee et al., NeurIPS 2021): the gndp pooling of raw class maps, the area stop rule, and the per-image
fine-tuning of a trained classifier that produces one image's seed (no file I/O; step.make_rib_cam feeds it).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch

from misc.imutils import strided_size
from misc.seeds import resize_merged
from misc.torchutils import autocast, poly_optimizer


@dataclass(frozen=True)
class RibSettings:
    """RIB's constants for one run (the flags of the rib section, plus the classifier's weight decay,
    momentum and the --amp mode). ``loss_scales`` must be among the seed scales, which hold 1.0."""

    iters: int  # K: most fine-tuning steps per image
    lr: float  # stages 3-4; the classifier gets 10x
    tau: float  # gndp threshold, of the class map's max
    stop_logit: float  # stop once |target logit sum| exceeds this
    area_thres: float  # area stop: CAM level counted as covered
    area_ratio: float  # area stop: covered share of the image
    loss_scales: tuple[float, ...]  # scales of the target image in the loss
    weight_decay: float
    momentum: float
    amp: str = "off"


def gndp(cams: torch.Tensor, labels: torch.Tensor, tau: float) -> torch.Tensor:
    """RIB's global non-discriminative region pooling of raw class maps.

    cams: (B, C, h, w) raw (un-ReLU'd) maps; labels: (B, C) multi-hot. For a present class whose map has a
    positive max, z_c = Σ_u F_c(u)·[F_c(u)/max F_c < τ] / (h·w): a masked sum over the full area, the mask
    detached, so gradients reach only the positions below τ of the peak. Absent classes, and present
    classes whose max is ≤ 0 (where normalising would flip the sign or divide by zero), pool all positions
    (plain average pooling). Returns (B, C) logits.
    """
    with torch.no_grad():
        peak = cams.flatten(2).amax(2)
        guided = (labels > 0) & (peak > 0)
        ratio = cams / torch.where(guided, peak, torch.ones_like(peak))[..., None, None]
        mask = ~guided[..., None, None] | (ratio < tau)
    return (cams * mask).flatten(2).sum(2) / (cams.shape[2] * cams.shape[3])


def area_exploded(merged: torch.Tensor, keys: torch.Tensor, thres: float, ratio: float) -> bool:
    """RIB's area stop: merged (C, h, w) ReLU'd CAM of one image; True when the union over ``keys`` of
    (map / its max > thres) covers more than ``ratio`` of the positions."""
    x = merged[keys]
    x = x / x.flatten(1).amax(1).clamp_min(1e-12)[:, None, None]
    return (x > thres).any(0).float().mean().item() > ratio


def rib_seed(model: torch.nn.Module, views: list[torch.Tensor], scales: tuple[float, ...], label: torch.Tensor,
             aux_batches: Iterator[dict | None], s: RibSettings, size: tuple[int, int]
             ) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Run RIB on one image from the model's current weights (the caller restores θ0).

    model: a ``net.resnet50_cam.Net`` (``raw_cam``, ``freeze_early_stages``, ``trainable_parameters``);
    views: per scale (1, 2, 3, h_s, w_s) [image, flipped] on the model's device; label: (C,) multi-hot
    there; aux_batches: an iterator giving one auxiliary batch ({'img', 'label'} or None) per step, of
    which exactly ``s.iters`` are taken whatever the stops (so the stream stays aligned with the next
    target). Freezes stages 1-2 of ``model``. Each step first adds the CAMs of every scale (ReLU,
    flip-merged) to the seed; the area stop (from step 1 on, at scale 1.0, checked first) ends before
    updating; otherwise one SGD step on L = -Σ y·gndp(z) over ``s.loss_scales`` and the auxiliary batch;
    the logit stop ends after an update. Returns (strided (C, h, w), high_res (C, H, W)) seed sums over all
    classes, unnormalised, and the number of updates taken.
    """
    if s.iters < 1:
        raise ValueError(f"RIB needs at least one step per image, got iters={s.iters}")
    keys = torch.nonzero(label)[:, 0]
    taken = 0  # auxiliary batches taken from the stream
    strided = high = 0.0
    updates = 0
    if len(keys) == 0:  # nothing to localise (an image without classes): all background
        c = label.shape[0]
        strided, high = label.new_zeros((c,) + strided_size(size, 4)), label.new_zeros((c,) + tuple(size))
    else:
        model.freeze_early_stages()  # as published (stage 2's output detached), whatever recipe trained them
        bb, head = model.trainable_parameters()
        opt, sched = poly_optimizer(
            "sgd", [{"params": bb, "lr": s.lr, "weight_decay": s.weight_decay},
                    {"params": head, "lr": 10 * s.lr, "weight_decay": s.weight_decay}],
            s.iters, momentum=s.momentum)
        order = sorted(range(len(scales)), key=lambda i: scales[i] != 1.0)  # scale 1.0 first, for the area stop
        loss_scales = set(s.loss_scales)
        amp = autocast(label.device, s.amp)
        for step in range(s.iters):
            aux = next(aux_batches)
            taken += 1
            pooled, stop = [], False
            for i in order:
                need_grad = scales[i] in loss_scales
                with torch.set_grad_enabled(need_grad), amp:
                    raw = model.raw_cam(views[i][0]).float()  # (2, C, h, w)
                sm, hi = resize_merged(torch.relu(raw.detach())[None], size)
                strided, high = strided + sm[0], high + hi[0]
                if scales[i] == 1.0 and step > 0 and \
                        area_exploded(torch.relu(raw[0].detach()) + torch.relu(raw[1].detach()).flip(-1), keys,
                                      s.area_thres, s.area_ratio):
                    stop = True
                    break
                if need_grad:
                    pooled.append(gndp(raw, label.expand(2, -1), s.tau))
            if stop:
                break
            target = -(torch.cat(pooled) * label).sum()
            loss = target
            if aux is not None:
                a_img, a_lab = aux["img"].to(label.device, non_blocking=True), aux["label"].to(label.device)
                with amp:
                    a_cam = model.raw_cam(a_img).float()
                loss = loss - (gndp(a_cam, a_lab, s.tau) * a_lab).sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            updates += 1
            if abs(target.item()) > s.stop_logit:
                break
    for _ in range(taken, s.iters):  # keep the auxiliary stream aligned with the next target
        next(aux_batches)
    return strided, high, updates
