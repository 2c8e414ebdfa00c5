"""ToCo (Ru et al., "Token Contrast for Weakly-Supervised Semantic Segmentation", CVPR 2023): network, class-token
contrast (CTC) with its uncertain-region local crops, and the loss of one training step.

``ToCoNet``'s state_dict has the keys and shapes of the published ``model_seg_neg.network`` (encoder with the
1000-class ImageNet head, ``proj_head``, ``proj_head_t``, ``decoder.conv6/7/8``, ``classifier``,
``aux_classifier``), so published checkpoints load strictly (after dropping a DDP ``module.`` prefix).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from misc.seeds import IGNORE
from net.crf_loss import dense_crf_loss
from net.heads import DINOHead, LargeFOV, cam, gmp_logits, tokens_to_map
from net.par import PAR
from net.single_stage import (
    box_mask,
    cam_to_label,
    denormalize,
    image_generator,
    multi_scale_cam,
    ptc_loss,
    refine_cams_with_bkg,
    scale_box,
    seg_loss_bg_fg,
)
from net.vit import ViT


class ToCoNet(nn.Module):
    """ViT encoder (class token through the blocks, frozen position embedding resized at every forward),
    CAM classifier and aux classifier (bias-free 1x1 convs, global max pooling), LargeFOV decoder, and the CTC
    projection head (DINO head to ``ctc_dim``) with its EMA teacher copy ``proj_head_t`` (not trained).

    vit: keyword arguments of ``ViT`` (architecture, aux_layer, drop_path_rate, img_size for the stored
    position-embedding grid; ToCo uses 224). The encoder's ImageNet ``head`` is kept for strict checkpoint
    loading and frozen (it gets no gradient in the published run either), so DDP needs no unused-parameter search.
    head_hidden: hidden width of the CTC head's MLP (published 2048; smaller only for CPU-sized toys).
    """

    def __init__(self, num_classes: int = 21, vit: dict | None = None, ctc_dim: int = 1024, head_hidden: int = 2048):
        super().__init__()
        self.num_classes = num_classes
        self.encoder = ViT(**{"num_classes": 1000, **(vit or {}), "cls_mode": "token", "freeze_pos_embed": True})
        self.encoder.head.requires_grad_(False)  # ImageNet head: in the checkpoints, never used
        d = self.encoder.embed_dim
        self.proj_head = DINOHead(d, ctc_dim, hidden_dim=head_hidden)
        self.proj_head_t = DINOHead(d, ctc_dim, hidden_dim=head_hidden)
        self.proj_head_t.load_state_dict(self.proj_head.state_dict())
        self.proj_head_t.requires_grad_(False)
        self.decoder = LargeFOV(d, num_classes)
        self.classifier = nn.Conv2d(d, num_classes - 1, 1, bias=False)
        self.aux_classifier = nn.Conv2d(d, num_classes - 1, 1, bias=False)

    def feature_maps(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, 3, H, W) -> (class token (B, D), final map (B, D, H/p, W/p), aux map (B, D, H/p, W/p))."""
        p = self.encoder.patch_size
        cls, patches, aux = self.encoder(x)
        h, w = x.shape[-2] // p, x.shape[-1] // p
        return cls, tokens_to_map(patches, h, w), tokens_to_map(aux, h, w)

    def cams(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 3, H, W) -> raw (CAM, aux CAM), each (B, C-1, H/p, W/p), no ReLU."""
        _, fmap, aux = self.feature_maps(x)
        return cam(fmap, self.classifier), cam(aux, self.aux_classifier)

    def segment(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> segmentation logits (B, C, H/p, W/p) (the decoder alone, for inference)."""
        return self.decoder(self.feature_maps(x)[1])

    @torch.no_grad()
    def ema_update_head(self, momentum: float) -> None:
        """proj_head_t <- momentum * proj_head_t + (1 - momentum) * proj_head (parameters)."""
        for pt, ps in zip(self.proj_head_t.parameters(), self.proj_head.parameters()):
            pt.mul_(momentum).add_(ps.detach(), alpha=1.0 - momentum)

    def forward(self, x: torch.Tensor, crops: list[torch.Tensor] | None = None, momentum: float = 0.9) -> dict:
        """x: (B, 3, H, W). Returns {'cls', 'cls_aux'} logits (B, C-1), 'seg' logits (B, C, H/p, W/p), 'fmap'
        (B, D, H/p, W/p); with ``crops`` (the 2 global views, then the local crops, each (B, 3, h_i, w_i)) also
        'proj_t' (2B, ctc_dim): the teacher head (first EMA-updated with ``momentum``, as every training
        forward does) on the detached class tokens of the global views, and 'proj_s' (len(crops)*B, ctc_dim):
        the student head on all views' class tokens, view-major.

        The student's global-view pass is the one the teacher reads (detached): the published code runs the
        encoder twice on the same views; with no dropout or drop path (ToCo's setting) the values are equal.
        """
        _, fmap, aux = self.feature_maps(x)
        out = {"cls": gmp_logits(fmap, self.classifier), "cls_aux": gmp_logits(aux, self.aux_classifier),
               "seg": self.decoder(fmap), "fmap": fmap}
        if crops is not None:
            self.ema_update_head(momentum)
            glob = self.encoder(torch.cat(crops[:2]))[0]
            local = [self.encoder(torch.cat(crops[2:]))[0]] if len(crops) > 2 else []
            with torch.no_grad():
                out["proj_t"] = self.proj_head_t(glob.detach())
            out["proj_s"] = self.proj_head(torch.cat([glob] + local))
        return out

    def param_groups(self) -> list[dict]:
        """ToCo's optimiser groups (trainable parameters only): encoder without / with 'norm' in the name (lr
        1x), classifiers + CTC head (10x), decoder (10x), weight decay on all: groups for
        ``misc.optim.warmup_adamw`` ({'params', 'lr_mult', 'decay'})."""
        enc = [(n, p) for n, p in self.encoder.named_parameters() if p.requires_grad]
        heads = [self.classifier.weight, self.aux_classifier.weight] + list(self.proj_head.parameters())
        groups = [[p for n, p in enc if "norm" not in n], [p for n, p in enc if "norm" in n],
                  [p for p in heads if p.requires_grad], list(self.decoder.parameters())]
        return [{"params": g, "lr_mult": m, "decay": True} for g, m in zip(groups, (1, 1, 10, 10))]


def cam_to_roi_mask(cam: torch.Tensor, cls_labels: torch.Tensor, high_thre: float = 0.7, low_thre: float = 0.25
                    ) -> torch.Tensor:
    """(B, C-1, H, W) normalised CAMs -> (B, H, W) int16 region map of the max over the image's classes:
    0 where <= low_thre, 2 where >= high_thre, 1 (uncertain) in between."""
    value = (cam * cls_labels[:, :, None, None]).max(dim=1)[0]
    roi = torch.ones_like(value, dtype=torch.int16)
    roi[value <= low_thre] = 0
    roi[value >= high_thre] = 2
    return roi


def crop_from_roi(images: torch.Tensor, roi: torch.Tensor, crop_num: int = 8, crop_size: int = 96,
                  neg_ratio: float = 0.2, generator: torch.Generator | list[torch.Generator] | None = None
                  ) -> tuple[list[torch.Tensor], torch.Tensor]:
    """ToCo's local crops: per image, ``crop_num`` top-left corners drawn without replacement (torch.randperm
    on the CPU generator, or image n's of a per-image list) among the pixels of roi[m:H-m, m:W-m]
    (m = crop_size // 2) whose region is <= 1 (not confident foreground), or among all of them when fewer than
    crop_num qualify; the crop is images[y:y+s, x:x+s] at that (y, x). A crop is negative (flag 0) when the sum
    of the region values inside it, divided by s^2, is <= neg_ratio. Returns (crop_num tensors (B, 3, s, s),
    flags (B, crop_num + 2) float, the first two (the global views) always 1)."""
    b, _, h, w = images.shape
    m = crop_size // 2
    crops = images.new_zeros(b, crop_num, images.shape[1], crop_size, crop_size)
    flags = images.new_ones(b, crop_num + 2)
    for n in range(b):
        inner = roi[n, m:h - m, m:w - m]
        idx = (inner <= 1).nonzero()
        if idx.shape[0] < crop_num:
            idx = (inner >= 0).nonzero()
        idx = idx[torch.randperm(idx.shape[0], generator=image_generator(generator, n))[:crop_num].to(idx.device)]
        for i, (y, x) in enumerate(idx.tolist()):
            crops[n, i] = images[n, :, y:y + crop_size, x:x + crop_size]
            if roi[n, y:y + crop_size, x:x + crop_size].sum() / crop_size ** 2 <= neg_ratio:
                flags[n, i + 2] = 0
    return list(crops.unbind(1)), flags


def ctc_loss(proj_s: torch.Tensor, proj_t: torch.Tensor, flags: torch.Tensor, temp: float = 0.5) -> torch.Tensor:
    """Class-token contrast. proj_s: (V*B, D) student outputs of V views (view-major); proj_t: (2B, D) teacher
    outputs of the 2 global views; flags: (B, V), 1 = positive view. With l(a, j) = <t_a, s_j> / temp, per image:
    [sum_{j pos} sum_a -log(e^l(a,j) / (e^l(a,j) + sum_{k neg} e^l(a,k) + 1e-4))
     + sum_a -log(1 / (1 + sum_{k neg} e^l(a,k) + 1e-4))] / (2 (|pos| + 1e-4)), averaged over the batch.
    The second sum is the published code's extra term (a for-else). Computed as softplus(log(sum_neg e^l +
    1e-4) - l) with log-sum-exp, so it stays finite where the published exp() overflows and keeps its relative
    precision where the terms are tiny (no negatives), where the published float32 form loses it. Returns a
    scalar."""
    b, v = flags.shape
    s = proj_s.reshape(v, b, -1).transpose(0, 1)
    t = proj_t.reshape(2, b, -1).transpose(0, 1)
    logits = torch.matmul(t, s.transpose(1, 2)) / temp  # (B, 2, V)
    pos = flags > 0
    neg_lse = torch.logsumexp(logits.masked_fill(pos[:, None], float("-inf")), dim=2, keepdim=True)
    log_rest = torch.logaddexp(neg_lse, torch.full_like(neg_lse, math.log(1e-4)))  # log(sum_neg + 1e-4)
    pos_terms = (F.softplus(log_rest - logits) * pos[:, None]).sum((1, 2))
    extra = F.softplus(log_rest).sum((1, 2))
    return ((pos_terms + extra) / 2 / (pos.sum(1) + 1e-4)).mean()


@dataclass
class ToCoConfig:
    """Constants of one ToCo training step (defaults: the published VOC recipe; ``coco()`` gives COCO's)."""
    num_classes: int = 21
    high_thre: float = 0.7
    low_thre: float = 0.25
    bkg_thre: float = 0.5
    cam_scales: tuple[float, ...] = (1.0, 0.5, 1.5)
    crop_num: int = 8
    local_crop_size: int = 96
    temp: float = 0.5
    momentum: float = 0.9
    w_ptc: float = 0.2
    w_ctc: float = 0.5
    w_seg: float = 0.1
    w_reg: float = 0.05
    crf_scale: float = 0.5  # the CRF loss's downscale of the crop (published 0.5)
    schedule: str = "voc"  # 'voc': seg/reg on after seg_start; 'coco': cls only to 8000, seg/reg from aux CAM to 12000
    seg_start: int = 2000
    ptc_box: str = "pixel"  # 'pixel': the published quirk (pixel box applied to the token grid); 'token': scaled
    ignore_index: int = IGNORE

    @classmethod
    def coco(cls, **kw) -> ToCoConfig:
        """The published COCO constants (81 classes, thresholds 0.65/0.25/0.45, CTC temperature 1.0, 3 phases)."""
        return cls(**{"num_classes": 81, "high_thre": 0.65, "bkg_thre": 0.45, "temp": 1.0, "schedule": "coco", **kw})

    def weights(self, n_iter: int) -> dict[str, float]:
        """Loss weights at 0-based iteration n_iter, and whether the seg pseudo labels use the aux CAM."""
        if self.schedule == "voc":
            on = n_iter > self.seg_start
            return {"ptc": self.w_ptc, "ctc": self.w_ctc, "seg": self.w_seg * on, "reg": self.w_reg * on, "aux": False}
        if self.schedule != "coco":
            raise ValueError(f"unknown schedule {self.schedule!r} (voc or coco)")
        if n_iter <= 8000:
            return {"ptc": 0.0, "ctc": 0.0, "seg": 0.0, "reg": 0.0, "aux": True}
        late = n_iter > 12000
        return {"ptc": self.w_ptc * late, "ctc": self.w_ctc * late, "seg": self.w_seg, "reg": self.w_reg,
                "aux": not late}


def toco_losses(model: nn.Module, batch: dict, n_iter: int, cfg: ToCoConfig, par: PAR,
                generator: torch.Generator | list[torch.Generator] | None = None) -> dict[str, torch.Tensor]:
    """The losses of one ToCo training step (the published ``dist_train_*_seg_neg.py`` loop body).

    model: a ToCoNet, or a DDP wrapper of one (its forward is the only call that builds the graph).
    batch: 'image' (B, 3, H, W) normalised main view, 'global2' (B, 3, H, W) the second global view,
    'local_src' (B, 3, H, W) the image the local crops are cut from, 'cls_labels' (B, C-1) float,
    'img_box' (B, 4) long (h0, h1, w0, w1) or None. n_iter: 0-based iteration. generator: CPU generator of the
    crop positions, or one per image (None: torch's global one, as published).

    Every term is computed and weighted (zero-weighted ones too, so their parameters get zero gradients and
    weight decay exactly as in the published run). Returns {'cls', 'cls_aux', 'ptc', 'ctc', 'seg', 'reg',
    'loss' (the weighted total), 'pseudo_label' (B, H, W), 'flags' (B, 2+crop_num), 'cam', 'cam_aux' (the
    multi-scale CAMs, (B, C-1, H, W))}.
    """
    net = getattr(model, "module", model)
    x, cls_labels, img_box = batch["image"], batch["cls_labels"], batch.get("img_box")
    ig = cfg.ignore_index
    w = cfg.weights(n_iter)
    cams, cams_aux = multi_scale_cam(net.cams, x, cfg.cam_scales)
    roi = cam_to_roi_mask(cams_aux, cls_labels, cfg.high_thre, cfg.low_thre)
    local, flags = crop_from_roi(batch["local_src"], roi, cfg.crop_num, cfg.local_crop_size, generator=generator)
    out = model(x, crops=[x, batch["global2"]] + local, momentum=cfg.momentum)
    losses = {"cls": F.multilabel_soft_margin_loss(out["cls"], cls_labels),
              "cls_aux": F.multilabel_soft_margin_loss(out["cls_aux"], cls_labels),
              "ctc": ctc_loss(out["proj_s"], out["proj_t"], flags, cfg.temp)}
    thr = {"bkg_thre": cfg.bkg_thre, "high_thre": cfg.high_thre, "low_thre": cfg.low_thre, "ignore_index": ig}
    valid_cam, _ = cam_to_label(cams_aux if w["aux"] else cams, cls_labels, ignore_mid=True, img_box=img_box, **thr)
    pseudo = refine_cams_with_bkg(par, denormalize(x, quantize=True) / 255.0, valid_cam, cls_labels, cfg.high_thre,
                                  cfg.low_thre, img_box, ig)
    seg = F.interpolate(out["seg"], size=pseudo.shape[1:], mode="bilinear", align_corners=False)
    losses["seg"] = seg_loss_bg_fg(seg, pseudo, ig)
    roi_mask = box_mask(img_box, *pseudo.shape, pseudo.device).float()
    losses["reg"] = dense_crf_loss(denormalize(x), F.softmax(seg, dim=1), roi_mask, pseudo, ignore_index=ig,
                                   scale_factor=cfg.crf_scale)
    fmap = out["fmap"]
    aux_small = F.interpolate(cams_aux, size=fmap.shape[2:], mode="bilinear", align_corners=False)
    if cfg.ptc_box not in ("pixel", "token"):
        raise ValueError(f"unknown ptc_box {cfg.ptc_box!r} (pixel or token)")
    token_box = img_box
    if img_box is not None and cfg.ptc_box == "token":
        token_box = scale_box(img_box, x.shape[2:], fmap.shape[2:])
    _, token_labels = cam_to_label(aux_small, cls_labels, ignore_mid=True, img_box=token_box, **thr)
    losses["ptc"] = ptc_loss(fmap, token_labels, ig)
    losses["loss"] = (losses["cls"] + losses["cls_aux"] + w["ptc"] * losses["ptc"] + w["ctc"] * losses["ctc"]
                      + w["seg"] * losses["seg"] + w["reg"] * losses["reg"])
    losses.update(pseudo_label=pseudo, flags=flags, cam=cams, cam_aux=cams_aux)
    return losses
