"""PUFS / PFSR (He et al., "Progressive Feature Self-Reinforcement for Weakly Supervised Semantic Segmentation",
AAAI 2024): ToCo's single-stage network with a class-attention aggregator, a full-network EMA teacher, block
masking of uncertain regions and the two feature self-reinforcement (FSR) losses.

``PUFSNet``'s state_dict has the keys and shapes of the published ``models.network.WSSSNetwork`` built by
``build_model`` (``encoder`` with ``mask_token`` and ``cls_blocks``, ``decoder``, ``projector``,
``top_classifier``, ``aux_classifier``), so its student.pth / teacher.pth load strictly.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from misc.optim import teacher_temperature
from misc.seeds import IGNORE
from net.crf_loss import dense_crf_loss
from net.heads import DINOHead, LargeFOV, cam, gmp_logits, tokens_to_map
from net.par import PAR
from net.single_stage import (
    cam_to_label,
    denormalize,
    multi_scale_cam,
    ptc_loss,
    refine_cams_with_bkg,
    seg_loss_bg_fg,
)
from net.vit import ViT


class PUFSNet(nn.Module):
    """ViT encoder (no class token in the blocks; ``cls_depth`` class-attention blocks build it; mask token;
    trainable position embedding stored at img_size / 16 = 28 for 448 crops), LargeFOV decoder (kaiming init),
    DINO projector to ``out_dim`` applied to every token, CAM classifier and aux classifier.

    vit: keyword arguments of ``ViT`` (architecture, aux_layer, drop_path_rate (PUFS: 0.1 in training, 0 at
    inference), img_size). mask_class_attention: leave masked patches out of the class attention (PUFS's first
    release) instead of letting them take part (its final code). head_hidden: hidden width of the projector's
    MLP (published 2048; smaller only for CPU-sized toys).
    """

    def __init__(self, num_classes: int = 21, vit: dict | None = None, out_dim: int = 4096, cls_depth: int = 2,
                 mask_class_attention: bool = False, head_hidden: int = 2048):
        super().__init__()
        self.num_classes = num_classes
        self.mask_class_attention = mask_class_attention
        kw = {"img_size": 448, "drop_path_rate": 0.1, **(vit or {})}
        self.encoder = ViT(**{**kw, "cls_mode": "aggregate", "cls_depth": cls_depth, "mask_token": True,
                              "num_classes": 0})
        d = self.encoder.embed_dim
        self.decoder = LargeFOV(d, num_classes, init="kaiming")
        self.projector = DINOHead(d, out_dim, hidden_dim=head_hidden)
        self.top_classifier = nn.Conv2d(d, num_classes - 1, 1, bias=False)
        self.aux_classifier = nn.Conv2d(d, num_classes - 1, 1, bias=False)

    def tokens(self, x: torch.Tensor, mask: torch.Tensor | None = None
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, 3, H, W), optional (B, H/p, W/p) mask -> (all final tokens (B, 1+N, D), final map (B, D, h, w),
        aux map (B, D, h, w))."""
        p = self.encoder.patch_size
        cls, patches, aux = self.encoder(x, mask=mask, attn_mask_cls=self.mask_class_attention)
        h, w = x.shape[-2] // p, x.shape[-1] // p
        return torch.cat([cls[:, None], patches], 1), tokens_to_map(patches, h, w), tokens_to_map(aux, h, w)

    def cams(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 3, H, W) -> (CAM, aux CAM), each (B, C-1, H/p, W/p), ReLU'd: PUFS rectifies before the
        multi-scale CAM resizes them (ToCo after), which changes the fused maps."""
        _, fmap, aux = self.tokens(x)
        return F.relu(cam(fmap, self.top_classifier)), F.relu(cam(aux, self.aux_classifier))

    def segment(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> segmentation logits (B, C, H/p, W/p) (the decoder alone, for inference)."""
        return self.decoder(self.tokens(x)[1])

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> projector outputs of the class token and every patch token, (B, 1+N, out_dim)."""
        return self.projector(self.tokens(x)[0])

    def forward(self, views: torch.Tensor, mask: torch.Tensor | None = None) -> dict:
        """views: (2B, 3, H, W), view 1 of the batch then view 2; mask: optional (2B, H/p, W/p) bool.
        Returns 'proj' (2B, 1+N, out_dim) for both views, and for view 1 only: 'cls', 'cls_aux' logits
        (B, C-1), 'seg' logits (B, C, H/p, W/p), 'fmap' (B, D, H/p, W/p)."""
        toks, fmap, aux = self.tokens(views, mask)
        b = views.shape[0] // 2
        fmap, aux = fmap[:b], aux[:b]
        return {"proj": self.projector(toks), "cls": gmp_logits(fmap, self.top_classifier),
                "cls_aux": gmp_logits(aux, self.aux_classifier), "seg": self.decoder(fmap), "fmap": fmap}

    def param_groups(self, lr_scale: float = 10.0) -> list[dict]:
        """PUFS's optimiser groups (trainable parameters only) for ``misc.optim.warmup_adamw``: encoder
        without decay (biases, 1-D, pos_embed, cls_token, mask_token) and with (lr 1x); decoder + projector
        without and with decay, plus both classifiers with decay (lr x lr_scale)."""
        skip = self.encoder.no_weight_decay()

        def no_decay(name: str, p: torch.Tensor, skip_names: set[str]) -> bool:
            return p.ndim == 1 or name.endswith(".bias") or name in skip_names

        groups = [[], [], [], []]
        for name, p in self.encoder.named_parameters():
            if p.requires_grad:
                groups[1 - no_decay(name, p, skip)].append(p)
        for mod in (self.decoder, self.projector):
            for name, p in mod.named_parameters():
                if p.requires_grad:
                    groups[3 - no_decay(name, p, set())].append(p)
        groups[3] += [self.top_classifier.weight, self.aux_classifier.weight]
        return [{"params": g, "lr_mult": m, "decay": d}
                for g, m, d in zip(groups, (1, 1, lr_scale, lr_scale), (False, True, False, True))]


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """teacher <- momentum * teacher + (1 - momentum) * student, over the parameters (buffers untouched).
    ``student`` may be a DDP wrapper."""
    student = getattr(student, "module", student)
    for pt, ps in zip(teacher.parameters(), student.parameters()):
        pt.mul_(momentum).add_(ps.detach(), alpha=1.0 - momentum)


class StudentTeacher(nn.Module):
    """What PUFS trains and checkpoints: the ``student`` PUFSNet, its EMA copy ``teacher`` (no gradients) and the
    FSR centres ``fsr`` (an FSRLoss), so one state_dict holds them all (keys ``student.*``, ``teacher.*``,
    ``fsr.*``; each network's part has the published keys). forward is the student's. With ``teacher_eval`` the
    teacher stays in eval mode (no drop path) whatever ``train()`` asks; PUFS keeps it in train mode."""

    def __init__(self, student: PUFSNet, out_dim: int, teacher_eval: bool = False):
        super().__init__()
        self.student = student
        self.teacher = copy.deepcopy(student).requires_grad_(False)
        self.fsr = FSRLoss(out_dim)
        self.teacher_eval = teacher_eval

    def train(self, mode: bool = True) -> StudentTeacher:
        super().train(mode)
        if self.teacher_eval:
            self.teacher.eval()
        return self

    def forward(self, views: torch.Tensor, mask: torch.Tensor | None = None) -> dict:
        """The student's forward (``PUFSNet.forward``)."""
        return self.student(views, mask)


def uncertain_blocks(aux_cam: torch.Tensor, cls_labels: torch.Tensor, grid: tuple[int, int], low: float = 0.2,
                     high: float = 0.7, mode: str = "nearest") -> torch.Tensor:
    """Blocks to mask first: the max over the image's classes of the normalised aux CAM (B, C-1, H, W), marked
    uncertain where low < v < high, resized to the block grid with ``mode`` (nearest: the block's top-left
    pixel), nonzero = uncertain. Returns (B, gh*gw) bool, row-major."""
    v = (aux_cam * cls_labels[:, :, None, None]).max(dim=1)[0]
    unc = ((v > low) & (v < high)).float()[:, None]
    return F.interpolate(unc, size=grid, mode=mode).flatten(1) > 0


def block_mask(batch: int, grid: tuple[int, int], ratio: float, scale: int, uncertain: torch.Tensor | None = None,
               noise: torch.Tensor | None = None, generator: torch.Generator | list[torch.Generator] | None = None
               ) -> torch.Tensor:
    """PUFS's block mask: each of the gh*gw blocks gets noise U[0, 1) (drawn on the CPU with ``generator``, or row n
    with ``generator[n]`` of a per-image list, unless ``noise`` (B, gh*gw) is given), +1 where ``uncertain``; the
    ceil(ratio * gh*gw) blocks with the highest noise are masked, so uncertain blocks go first in random order and
    random certain blocks fill the rest. Each block covers scale x scale tokens. Returns (B, gh*scale, gw*scale) bool,
    True = masked, on the device of ``uncertain`` (CPU when None)."""
    n = grid[0] * grid[1]
    if noise is None:
        noise = (torch.stack([torch.rand(n, generator=g) for g in generator]) if isinstance(generator, list)
                 else torch.rand(batch, n, generator=generator))
    if uncertain is not None:
        noise = noise.to(uncertain.device) + uncertain.float()
    order = noise.argsort(dim=1)
    masked = torch.zeros(batch, n, dtype=torch.bool, device=noise.device)
    masked.scatter_(1, order[:, n - math.ceil(n * ratio):], True)
    masked = masked.view(batch, *grid)
    return masked.repeat_interleave(scale, dim=1).repeat_interleave(scale, dim=2)


def _all_reduce_mean(x: torch.Tensor, count: int) -> torch.Tensor:
    """Sum of x over processes (when distributed) divided by count * world size."""
    world = 1
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(x)
        world = dist.get_world_size()
    return x / (count * world)


class FSRLoss(nn.Module):
    """The two feature self-reinforcement losses, DINO-style cross-entropies between centred, sharpened teacher
    distributions and student distributions (temperature 0.1), with one centre per loss (buffers, updated
    after each call: c <- 0.9 c + 0.1 mean over the global batch of the teacher outputs; for patches the
    per-image token mean first)."""

    def __init__(self, out_dim: int, student_temp: float = 0.1, center_momentum: float = 0.9):
        super().__init__()
        self.student_temp = student_temp
        self.center_momentum = center_momentum
        self.register_buffer("class_center", torch.zeros(1, out_dim))
        self.register_buffer("patch_center", torch.zeros(1, 1, out_dim))

    def forward(self, teacher_proj: torch.Tensor, student_proj: torch.Tensor, mask2: torch.Tensor | None,
                teacher_temp: float) -> tuple[torch.Tensor, torch.Tensor]:
        """teacher_proj, student_proj: (2B, 1+N, D) projector outputs of (view 1; view 2), the teacher's from
        unmasked views, the student's with view 2 masked by mask2 (B, h, w) bool (None: no masking).

        FSR-class: mean over images of H(P_t(class token, view 1), P_s(class token, view 2));
        FSR-patch: mean over images of sum over masked tokens i of H(P_t(patch i, view 2), P_s(patch i, view 2))
        / max(#masked, 1); 0 without a mask. P_t = softmax((g - c) / teacher_temp), P_s = softmax(g / 0.1),
        H(p, q) = -sum p log q. Returns (class loss, patch loss) and updates the centres.
        """
        b = teacher_proj.shape[0] // 2
        with torch.no_grad():
            t_cls = teacher_proj[:b, 0]
            p_cls = F.softmax((t_cls - self.class_center) / teacher_temp, dim=-1)
        s_cls = F.log_softmax(student_proj[b:, 0] / self.student_temp, dim=-1)
        cls_loss = -(p_cls * s_cls).sum(-1).mean()
        self._update("class_center", _all_reduce_mean(t_cls.sum(0, keepdim=True), b))
        if mask2 is None:
            return cls_loss, student_proj.new_zeros(())
        with torch.no_grad():
            t_pat = teacher_proj[b:, 1:]
            p_pat = F.softmax((t_pat - self.patch_center) / teacher_temp, dim=-1)
        s_pat = F.log_softmax(student_proj[b:, 1:] / self.student_temp, dim=-1)
        m = mask2.flatten(1).float()
        pat_loss = ((-(p_pat * s_pat).sum(-1) * m).sum(-1) / m.sum(-1).clamp(min=1.0)).mean()
        self._update("patch_center", _all_reduce_mean(t_pat.mean(1, keepdim=True).sum(0, keepdim=True), b))
        return cls_loss, pat_loss

    @torch.no_grad()
    def _update(self, name: str, batch_center: torch.Tensor) -> None:
        setattr(self, name, getattr(self, name) * self.center_momentum + batch_center * (1 - self.center_momentum))


@dataclass
class PUFSConfig:
    """Constants of one PUFS training step (defaults: the published VOC recipe; ``coco()`` gives COCO's)."""
    num_classes: int = 21
    high_thre: float = 0.7
    low_thre: float = 0.25
    bkg_thre: float = 0.5
    cam_scales: tuple[float, ...] = (1.0, 0.5, 1.5)
    max_iters: int = 20000
    fsr_iters: int = 20000
    use_mim: bool = True
    block_size: int = 64
    mask_ratio: float = 0.4
    mask_low: float = 0.2
    mask_high: float = 0.7
    interpolate_mode: str = "nearest"
    w_class: float = 0.1
    w_patch: float = 0.1
    w_aff: float = 0.2
    w_seg: float = 0.1
    w_reg: float = 0.05
    crf_scale: float = 0.5  # the CRF loss's downscale of the crop (published 0.5)
    schedule: str = "voc"  # 'voc': seg/reg on after seg_start; 'coco': aff/seg/reg off to 8000, aff off to 12000
    seg_start: int = 2000
    ignore_index: int = IGNORE

    @classmethod
    def coco(cls, **kw) -> PUFSConfig:
        """The published COCO constants (81 classes, thresholds 0.65/0.25/0.45, 80k iterations, 3 phases)."""
        return cls(**{"num_classes": 81, "high_thre": 0.65, "bkg_thre": 0.45, "max_iters": 80000,
                      "fsr_iters": 80000, "schedule": "coco", **kw})

    def weights(self, n_iter: int) -> dict[str, float]:
        """Loss weights at 0-based iteration n_iter."""
        fsr = n_iter < self.fsr_iters
        w = {"class": self.w_class * fsr, "patch": self.w_patch * fsr}
        if self.schedule == "voc":
            on = n_iter + 1 > self.seg_start
            return {**w, "aff": self.w_aff, "seg": self.w_seg * on, "reg": self.w_reg * on}
        if self.schedule != "coco":
            raise ValueError(f"unknown schedule {self.schedule!r} (voc or coco)")
        step = n_iter + 1
        return {**w, "aff": self.w_aff * (step > 12000), "seg": self.w_seg * (step > 8000),
                "reg": self.w_reg * (step > 8000)}

    def mask_strategy(self, n_iter: int) -> str:
        """'random' for the first fifth of the run (n_iter + 1 <= max_iters // 5), then 'uncertain'."""
        return "random" if n_iter + 1 <= self.max_iters // 5 else "uncertain"


def pufs_losses(student: nn.Module, teacher: PUFSNet, fsr: FSRLoss, batch: dict, n_iter: int, cfg: PUFSConfig,
                par: PAR, generator: torch.Generator | list[torch.Generator] | None = None
                ) -> dict[str, torch.Tensor]:
    """The losses of one PUFS training step (the published ``train_voc.py`` / ``train_coco.py`` loop body, before
    the optimiser step and ``ema_update``).

    student: a PUFSNet or a DDP wrapper of one (its forward is the only call that builds the graph); teacher:
    the EMA PUFSNet (run without a mask, under no_grad). batch: 'view1', 'view2' (B, 3, H, W) normalised views,
    'cls_labels' (B, C-1) float. generator: CPU generator of the mask noise, or one per image (None: torch's
    global one).

    The CAMs, pseudo labels, PTC and CRF loss use view 1; view 2's aux CAM chooses the masked blocks. Every
    term is computed and weighted (zero-weighted ones too). Returns {'cls', 'cls_aux', 'fsr_cls', 'fsr_pat',
    'aff', 'seg', 'reg', 'loss', 'pseudo_label' (B, H, W), 'cam', 'cam_aux' (view 1's multi-scale CAMs,
    (B, C-1, H, W)), 'mask' (B, H/p, W/p) when masking}.
    """
    net = getattr(student, "module", student)
    v1, v2, cls_labels = batch["view1"], batch["view2"], batch["cls_labels"]
    ig = cfg.ignore_index
    w = cfg.weights(n_iter)
    mask = mask2 = None
    if cfg.use_mim:
        p = net.encoder.patch_size
        grid = (v2.shape[2] // cfg.block_size, v2.shape[3] // cfg.block_size)
        unc = None
        if cfg.mask_strategy(n_iter) == "uncertain":
            _, aux2 = multi_scale_cam(net.cams, v2, cfg.cam_scales)
            unc = uncertain_blocks(aux2, cls_labels, grid, cfg.mask_low, cfg.mask_high, cfg.interpolate_mode)
        mask2 = block_mask(v2.shape[0], grid, cfg.mask_ratio, cfg.block_size // p, unc, generator=generator)
        mask2 = mask2.to(v2.device)
        mask = torch.cat([torch.zeros_like(mask2), mask2])
    views = torch.cat([v1, v2])
    out = student(views, mask=mask)
    with torch.no_grad():
        t_proj = teacher.project(views)
    losses = {"cls": F.multilabel_soft_margin_loss(out["cls"], cls_labels),
              "cls_aux": F.multilabel_soft_margin_loss(out["cls_aux"], cls_labels)}
    cam1, aux1 = multi_scale_cam(net.cams, v1, cfg.cam_scales)
    thr = {"bkg_thre": cfg.bkg_thre, "high_thre": cfg.high_thre, "low_thre": cfg.low_thre, "ignore_index": ig}
    valid_cam, _ = cam_to_label(cam1, cls_labels, ignore_mid=True, **thr)
    pseudo = refine_cams_with_bkg(par, denormalize(v1, quantize=True) / 255.0, valid_cam, cls_labels, cfg.high_thre,
                                  cfg.low_thre, None, ig)
    seg = F.interpolate(out["seg"], size=pseudo.shape[1:], mode="bilinear", align_corners=False)
    losses["seg"] = seg_loss_bg_fg(seg, pseudo, ig)
    roi = torch.ones(pseudo.shape, device=pseudo.device)
    losses["reg"] = dense_crf_loss(denormalize(v1), F.softmax(seg, dim=1), roi, pseudo, ignore_index=ig,
                                   scale_factor=cfg.crf_scale)
    fmap = out["fmap"]
    aux_small = F.interpolate(aux1, size=fmap.shape[2:], mode="bilinear", align_corners=False)
    _, token_labels = cam_to_label(aux_small, cls_labels, ignore_mid=True, **thr)
    losses["aff"] = ptc_loss(fmap, token_labels, ig)
    losses["fsr_cls"], losses["fsr_pat"] = fsr(t_proj, out["proj"], mask2, teacher_temperature(n_iter, cfg.max_iters))
    losses["loss"] = (losses["cls"] + losses["cls_aux"] + w["class"] * losses["fsr_cls"]
                      + w["patch"] * losses["fsr_pat"] + w["aff"] * losses["aff"] + w["seg"] * losses["seg"]
                      + w["reg"] * losses["reg"])
    losses.update(pseudo_label=pseudo, cam=cam1, cam_aux=aux1)
    if mask2 is not None:
        losses["mask"] = mask2
    return losses
