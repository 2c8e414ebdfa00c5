"""RS+EPM's training losses as this toolkit reconstructs them (the authors released no training code; see
docs/methods/rsepm.md, "Reconstructed training"). Every choice here is **[reconstructed]** from the paper's
figures and the released pieces, and every constant is a field of ``RSEPMConfig`` (a flag of the ``rsepm``
section).

RecurSeed (``recur_seed``, ``certainty_filter``): the CAM of the training forward, max-normalised on the GT
classes at the C3 grid (stride 8), is refined by SCG on the detached C2..C5 features and by PAMR at stride 4
into Mrs, which supervises the CAM (Lrec, L1) and, through the certainty filter, the decoder (Mseg, Lseg, CE).
EdgePredictMix (``edge_predict``, ``edge_mix``): the decoder's probabilities (PAMR-refined) give a label map
Mep with uncertain pixels (large probability difference to a neighbour, or low confidence) ignored; half of
an image's classes are pasted with their uncertain border onto the next image of the batch, which trains the
decoder (Lseg^mix) and the CAM (Lrec^mix) once more.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from misc.pamr import neighbours, pamr
from misc.scg import max_norm, scg
from misc.seeds import IGNORE
from net.rsepm import RSEPMOutput


@dataclass(frozen=True)
class RSEPMConfig:
    """The reconstructed constants (flags ``--rsepm_*``)."""

    refine: bool = True  # seeds through SCG + PAMR (RecurSeed); False: the CAM itself (ablation)
    scg_from: int = 1  # first feature of (C1..C5) SCG correlates (1: C2..C5)
    pamr_iters: int = 1
    pamr_dilations: tuple[int, ...] = (1,)
    cf_fg: float = 0.55  # certainty filter: foreground at max Mrs >= cf_fg
    cf_bg: float = 0.10  # background at max Mrs < cf_bg, ignore between
    ep_edge: float = 0.5  # EP: a pixel whose probabilities differ from a neighbour's by >= this is uncertain
    ep_conf: float = 0.55  # EP: a pixel whose top probability is below this is uncertain
    mix_band: int = 2  # stride-4 pixels of A's uncertain band pasted with its objects
    w_cls: float = 1.0
    w_rec: float = 1.0
    w_seg: float = 1.0
    w_mix: float = 1.0


def _grid(x: torch.Tensor, size: tuple[int, int] | torch.Size) -> torch.Tensor:
    """Bilinear resize of (B, K, h, w) to ``size`` (align_corners False), skipped when already there."""
    if tuple(x.shape[2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


def _image_at(images: torch.Tensor, size: tuple[int, int] | torch.Size) -> torch.Tensor:
    """The (B, 3, H, W) images area-averaged to ``size`` (the stride-4 grid PAMR works on)."""
    return F.interpolate(images, size=tuple(size), mode="area")


@torch.no_grad()
def recur_seed(out: RSEPMOutput, images: torch.Tensor, labels: torch.Tensor, cfg: RSEPMConfig) -> torch.Tensor:
    """Mrs: the RecurSeed map of one training forward. out: the network's output on ``images`` (B, 3, H, W);
    labels: (B, C) multi-hot. The CAM goes to the C3 grid (bilinear), is max-normalised (``misc.scg.max_norm``)
    and kept on the GT classes; with ``cfg.refine`` SCG (C2..C5 by default, detached, bilinear to that grid)
    and PAMR (at the decoder's stride-4 grid, on the area-downscaled image) refine it, else it is only
    resized. Returns (B, C, h4, w4) in [0, 1], zero off the GT classes, without gradient."""
    present = labels[:, :, None, None].to(out.cams.dtype)
    size8, size4 = out.features[2].shape[2:], out.features[1].shape[2:]
    cam = max_norm(_grid(out.cams.detach(), size8)) * present
    if not cfg.refine:
        return _grid(cam, size4).clamp(0, 1) * present
    feats = [_grid(f.detach(), size8) for f in out.features[cfg.scg_from:]]
    m = _grid(scg(cam, feats) * present, size4)
    m = pamr(_image_at(images, size4), m, cfg.pamr_iters, cfg.pamr_dilations)
    return m.clamp(0, 1) * present


def certainty_filter(mrs: torch.Tensor, fg: float, bg: float) -> torch.Tensor:
    """Mseg of Mrs (B, C, h, w): class argmax + 1 where the top score is >= ``fg``, 0 (background) where it is
    < ``bg``, IGNORE between. Returns int64 (B, h, w)."""
    peak, arg = mrs.max(1)
    out = torch.where(peak >= fg, arg + 1, torch.full_like(arg, IGNORE))
    return torch.where(peak < bg, torch.zeros_like(arg), out)


def edge_map(probs: torch.Tensor) -> torch.Tensor:
    """(B, K, h, w) probability vectors -> (B, h, w): the largest, over the 8 neighbours (borders replicated), of
    half the L1 distance between a pixel's vector and its neighbour's (0: agree; 1: disjoint)."""
    return torch.stack([0.5 * (probs - nb).abs().sum(1) for nb in neighbours(probs, (1,))]).amax(0)


@torch.no_grad()
def edge_predict(seg: torch.Tensor, images: torch.Tensor, labels: torch.Tensor, cfg: RSEPMConfig) -> torch.Tensor:
    """Mep: seg (B, C + 1, h4, w4) decoder logits of ``images`` (B, 3, H, W); labels (B, C). The softmax over
    background and the GT classes (other classes excluded), refined by PAMR, gives the argmax label (0
    background, c + 1); pixels whose ``edge_map`` is >= ``cfg.ep_edge`` or whose top probability is below
    ``cfg.ep_conf`` are IGNORE. Returns int64 (B, h4, w4)."""
    present = torch.cat([torch.ones_like(labels[:, :1]), labels], 1).bool()[:, :, None, None]
    probs = torch.softmax(seg.detach().masked_fill(~present, float("-inf")), 1)
    probs = pamr(_image_at(images, seg.shape[2:]), probs, cfg.pamr_iters, cfg.pamr_dilations)
    conf, arg = probs.max(1)
    uncertain = (edge_map(probs) >= cfg.ep_edge) | (conf < cfg.ep_conf)
    return arg.masked_fill(uncertain, IGNORE)


def mix_choice(labels: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """For each image (labels (B, C) multi-hot), half of its classes (rounded down, at least one; none for an
    image without classes) drawn with ``gen``. Returns bool (B, C)."""
    out = torch.zeros(labels.shape, dtype=torch.bool)
    for i, row in enumerate(labels.cpu()):
        present = torch.nonzero(row).flatten()
        k = max(1, len(present) // 2) if len(present) else 0
        out[i, present[torch.randperm(len(present), generator=gen)[:k]]] = True
    return out.to(labels.device)


def paste_region(mep: torch.Tensor, chosen: torch.Tensor, band: int) -> torch.Tensor:
    """Where image A is pasted: mep (B, h, w) A's EP labels, chosen (B, C) the pasted classes. The pixels of
    the chosen classes, grown ``band`` times by one pixel (8-neighbourhood) into IGNORE pixels only, so the
    object's uncertain border comes with it. Returns bool (B, h, w)."""
    sel = torch.cat([torch.zeros_like(chosen[:, :1]), chosen], 1)  # label value -> pasted
    known = mep != IGNORE
    region = sel.gather(1, mep.masked_fill(~known, 0).flatten(1)).view_as(mep) & known
    for _ in range(band):
        grown = F.max_pool2d(region[:, None].float(), 3, 1, 1)[:, 0] > 0
        region = region | (grown & ~known)
    return region


def edge_mix(images: torch.Tensor, mep: torch.Tensor, mseg: torch.Tensor, mrs: torch.Tensor, labels: torch.Tensor,
             chosen: torch.Tensor, band: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """EdgePredictMix of a batch: image i (A) is pasted onto image i + 1 (B, cyclically) where ``paste_region``
    (A's ``chosen`` classes of Mep with their uncertain band) says; the stride-4 region goes to the image
    size by nearest x4 (any remainder by nearest resizing). images (B, 3, H, W); mep, mseg (B, h4, w4); mrs
    (B, C, h4, w4); labels, chosen (B, C). Returns (mixed images (B, 3, H, W), mixed labels int64 (B, h4, w4):
    A's Mep inside the region (IGNORE on its band), B's Mseg outside; mixed Mrs (B, C, h4, w4): A's inside,
    B's outside; the mixed images' classes bool (B, C): A's chosen ones and B's)."""
    other = torch.roll(torch.arange(images.shape[0], device=images.device), -1)
    region = paste_region(mep, chosen, band)
    big = F.interpolate(region[:, None].float(), size=images.shape[2:], mode="nearest") > 0
    mixed = torch.where(big, images, images[other])
    label = torch.where(region, mep, mseg[other])
    rs = torch.where(region[:, None], mrs, mrs[other])
    return mixed, label, rs, chosen | labels[other].bool()


def rec_loss(cams: torch.Tensor, target: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """Lrec: mean L1 between the max-normalised CAM (B, C, h16, w16) bilinearly at the target's grid and the
    target (B, C, h4, w4), over the maps of ``classes`` (B, C) bool; 0 when there are none."""
    cam = max_norm(_grid(cams, target.shape[2:]))
    mask = classes[:, :, None, None].to(cam.dtype)
    return ((cam - target).abs() * mask).sum() / (mask.sum() * target.shape[2] * target.shape[3]).clamp(min=1)


def seg_loss(seg: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Lseg: cross-entropy of the logits (B, C + 1, h, w) on the labels (B, h, w), IGNORE excluded; mean over
    the labelled pixels, 0 when there are none."""
    ce = F.cross_entropy(seg, target, ignore_index=IGNORE, reduction="sum")
    return ce / (target != IGNORE).sum().clamp(min=1)


def rsepm_losses(forward: Callable[[torch.Tensor], RSEPMOutput], images: torch.Tensor, labels: torch.Tensor,
                 cfg: RSEPMConfig, mix: bool, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """One training iteration's losses. forward: the network (under autocast, fp32 out); images (B, 3, H, W)
    normalised; labels (B, C) float multi-hot; ``mix``: EdgePredictMix on (after the warm-up epochs); ``gen``
    draws the pasted classes. Returns {'loss': the weighted sum, 'cls', 'rec', 'seg', 'seg_mix', 'rec_mix'}
    (the mixed ones 0 without ``mix``)."""
    out = forward(images)
    mrs = recur_seed(out, images, labels, cfg)
    mseg = certainty_filter(mrs, cfg.cf_fg, cfg.cf_bg)
    gt = labels.bool()
    losses = {"cls": F.multilabel_soft_margin_loss(out.logits, labels), "rec": rec_loss(out.cams, mrs, gt),
              "seg": seg_loss(out.seg, mseg)}
    zero = losses["seg"].new_zeros(())
    losses["seg_mix"], losses["rec_mix"] = zero, zero
    if mix:
        mep = edge_predict(out.seg, images, labels, cfg)
        mixed, label, rs, classes = edge_mix(images, mep, mseg, mrs, labels, mix_choice(labels, gen), cfg.mix_band)
        out_m = forward(mixed)
        losses["seg_mix"], losses["rec_mix"] = seg_loss(out_m.seg, label), rec_loss(out_m.cams, rs, classes)
    losses["loss"] = (cfg.w_cls * losses["cls"] + cfg.w_rec * (losses["rec"] + cfg.w_mix * losses["rec_mix"])
                      + cfg.w_seg * (losses["seg"] + cfg.w_mix * losses["seg_mix"]))
    return losses
