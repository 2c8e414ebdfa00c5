"""Pieces shared by the single-stage methods (ToCo, PUFS; reusable by RS+EPM): the multi-scale CAM used inside
training, the online pseudo-label rule with its two-variant background refinement by PAR, the split
background/foreground segmentation loss and the patch-token contrast (PTC) loss.

Conventions: ``cls_labels`` are (B, C-1) multi-hot over the foreground classes; labels are long maps with 0
background, 1..C-1 classes and ``ignore_index`` (255) ignored; ``img_box`` is (B, 4) (h0, h1, w0, w1), the
valid (unpadded) area of each crop, or None for no padding.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from misc.dist import share_of_total, world_size
from misc.seeds import IGNORE
from net.par import PAR

# ImageNet mean and std on the 0-255 scale, the constants ToCo and PUFS de-normalise with.
MEAN_255 = (123.675, 116.28, 103.53)
STD_255 = (58.395, 57.12, 57.375)


def denormalize(images: torch.Tensor, quantize: bool = False) -> torch.Tensor:
    """ImageNet-normalised (B, 3, H, W) -> 0-255 floats. With ``quantize`` the values are truncated to integers
    (clamped to 0..255), as ToCo and PUFS do before PAR (a cast to uint8 that truncates, not rounds)."""
    mean = images.new_tensor(MEAN_255).view(1, 3, 1, 1)
    std = images.new_tensor(STD_255).view(1, 3, 1, 1)
    out = images * std + mean
    return out.clamp(0, 255).trunc() if quantize else out


def box_mask(img_box: torch.Tensor | None, b: int, h: int, w: int, device: torch.device) -> torch.Tensor:
    """(B, H, W) bool, True inside each image's box (everywhere when img_box is None)."""
    if img_box is None:
        return torch.ones(b, h, w, dtype=torch.bool, device=device)
    ys = torch.arange(h, device=device).view(1, h, 1)
    xs = torch.arange(w, device=device).view(1, 1, w)
    bx = img_box.to(device).long().view(b, 4, 1, 1)
    return (ys >= bx[:, 0]) & (ys < bx[:, 1]) & (xs >= bx[:, 2]) & (xs < bx[:, 3])


def scale_box(img_box: torch.Tensor, src_hw: tuple[int, int], dst_hw: tuple[int, int]) -> torch.Tensor:
    """(B, 4) box (h0, h1, w0, w1) on a src_hw grid -> the box of the dst_hw cells it overlaps (floor of the
    start, ceiling of the end)."""
    fy, fx = dst_hw[0] / src_hw[0], dst_hw[1] / src_hw[1]
    f = img_box.new_tensor([fy, fy, fx, fx], dtype=torch.float64)
    box = img_box.double() * f
    return torch.stack([box[:, 0].floor(), box[:, 1].ceil(), box[:, 2].floor(), box[:, 3].ceil()], 1).long()


@torch.no_grad()
def multi_scale_cam(cam_fn: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]], images: torch.Tensor,
                    scales: tuple[float, ...] = (1.0, 0.5, 1.5)) -> tuple[torch.Tensor, torch.Tensor]:
    """Multi-scale, flip-fused CAMs and aux CAMs, each normalised per image and class to [0, 1].

    cam_fn: (N, 3, h, w) -> (CAM, aux CAM), each (N, C-1, h', w'), raw (ToCo) or already ReLU'd (PUFS; not
    the same after the bilinear resize). Scale 1.0 runs first, then the other
    scales (input resized bilinearly to int(s*H) x int(s*W)); each pass runs the batch with its horizontal flip,
    maps are resized bilinearly to H x W, the flip pair is fused by max, then ReLU. The scales are summed and
    normalised: (cam - min) / (max - min + 1e-5) over each map. Returns (cam, aux_cam), (B, C-1, H, W).
    """
    b, _, h, w = images.shape
    cams, auxs = [], []
    for s in (1.0,) + tuple(s for s in scales if s != 1.0):
        x = images if s == 1.0 else F.interpolate(images, size=(int(s * h), int(s * w)), mode="bilinear",
                                                  align_corners=False)
        for out, maps in zip(cam_fn(torch.cat([x, x.flip(-1)])), (cams, auxs)):
            out = F.interpolate(out, size=(h, w), mode="bilinear", align_corners=False)
            maps.append(F.relu(torch.max(out[:b], out[b:].flip(-1))))
    result = []
    for maps in (cams, auxs):
        m = torch.stack(maps).sum(0)
        m = m + F.adaptive_max_pool2d(-m, (1, 1))
        result.append(m / (F.adaptive_max_pool2d(m, (1, 1)) + 1e-5))
    return result[0], result[1]


def cam_to_label(cam: torch.Tensor, cls_labels: torch.Tensor, bkg_thre: float = 0.5, high_thre: float = 0.7,
                 low_thre: float = 0.25, ignore_mid: bool = False, img_box: torch.Tensor | None = None,
                 ignore_index: int = IGNORE) -> tuple[torch.Tensor, torch.Tensor]:
    """Pseudo labels from normalised CAMs (B, C-1, H, W): with v = max over the image's classes of the CAM and
    c its argmax, label = c + 1 where v > bkg_thre else 0; with ``ignore_mid`` instead c + 1 where v > high_thre,
    ignore_index where low_thre < v <= high_thre, 0 where v <= low_thre (ToCo also applies bkg_thre first, which
    changes nothing as long as bkg_thre <= high_thre). Outside img_box: ignore_index (img_box is in the
    map's own pixel units). Returns (cam * labels, label (B, H, W) long)."""
    valid = cam * cls_labels[:, :, None, None]
    value, idx = valid.max(dim=1)
    label = idx + 1
    if ignore_mid:
        label[value <= high_thre] = ignore_index
        label[value <= low_thre] = 0
    else:
        label[value <= bkg_thre] = 0
    if img_box is not None:
        label[~box_mask(img_box, *label.shape, label.device)] = ignore_index
    return valid, label


@torch.no_grad()
def refine_cams_with_bkg(par: PAR, images01: torch.Tensor, cams: torch.Tensor, cls_labels: torch.Tensor,
                         high_thre: float = 0.7, low_thre: float = 0.25, img_box: torch.Tensor | None = None,
                         ignore_index: int = IGNORE, down_scale: int = 2) -> torch.Tensor:
    """ToCo's two-variant background refinement ("refine_cams_with_bkg_v2").

    images01: (B, 3, H, W) in [0, 1]; cams: (B, C-1, H, W) (CAM * labels). For each image, two stacks
    [background constant; CAMs of its classes] with the constant high_thre and low_thre are downscaled by
    ``down_scale`` (bilinear), softmaxed over the stack, refined by PAR on the downscaled image, resized back
    (bilinear) and argmaxed into class ids, giving L_h and L_l. Label: L_h where L_h > 0; 0 where L_h = 0 and
    L_l = 0; ignore_index elsewhere and outside img_box. Returns (B, H, W) long.
    """
    b, _, h, w = images01.shape
    size = (h // down_scale, w // down_scale)
    small_img = F.interpolate(images01, size=size, mode="bilinear", align_corners=False)
    small_cams = F.interpolate(cams, size=size, mode="bilinear", align_corners=False)
    inside = box_mask(img_box, b, h, w, cams.device)
    out = torch.full((b, h, w), ignore_index, dtype=torch.long, device=cams.device)
    for n in range(b):
        keys = torch.cat([cams.new_zeros(1, dtype=torch.long), torch.nonzero(cls_labels[n])[:, 0] + 1])
        fg = small_cams[n, keys[1:] - 1]
        stacks = [torch.cat([torch.full_like(fg[:1], t), fg]).softmax(0) for t in (high_thre, low_thre)]
        refined = par(small_img[n:n + 1], torch.cat(stacks)[None])
        refined = F.interpolate(refined, size=(h, w), mode="bilinear", align_corners=False)[0]
        lab_h, lab_l = (keys[r.argmax(0)] for r in refined.split(len(keys)))
        lab = torch.where(lab_h > 0, lab_h, torch.where(lab_l == 0, 0, ignore_index))
        out[n] = torch.where(inside[n], lab, ignore_index)
    return out


def seg_loss_bg_fg(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = IGNORE) -> torch.Tensor:
    """Split segmentation loss: 0.5 * CE over background-labelled pixels + 0.5 * CE over foreground-labelled
    pixels, each the mean over its own pixels (ignore_index left out). logits (B, C, H, W), labels (B, H, W).

    A half without pixels contributes 0 (the published mean over no pixels is NaN, and NaN * 0 would poison the
    weighted total even while the segmentation weight is 0); otherwise equal to the published value. Under
    torchrun the pixel counts are those of the total batch (``misc.dist.share_of_total``; the published code
    counts each GPU's share), so the DDP step equals the single-process one."""
    out = logits.new_zeros(())
    for part in (labels.masked_fill(labels != 0, ignore_index), labels.masked_fill(labels == 0, ignore_index)):
        ce = F.cross_entropy(logits, part, ignore_index=ignore_index, reduction="sum")
        n = share_of_total((part != ignore_index).sum())
        out = out + 0.5 * ce / n.clamp(min=1e-6)  # n = 0: ce = 0
    return out


def ptc_loss(fmap: torch.Tensor, token_labels: torch.Tensor, ignore_index: int = IGNORE) -> torch.Tensor:
    """Patch-token contrast: with S = |cos| between the L2-normalised tokens of each image (B, D, h, w) and
    token labels (B, h, w), pairs i != j with both labels valid are positive when the labels agree and negative
    otherwise; loss = 0.5 (1 - sum_pos S / (N_pos + 1)) + 0.5 sum_neg S / (N_neg + 1), sums and counts over the
    whole batch (under torchrun the counts of the total batch, as in ``seg_loss_bg_fg``). Returns a scalar."""
    x = F.normalize(fmap.flatten(2), p=2, dim=1, eps=1e-8)
    sim = torch.matmul(x.transpose(1, 2), x).abs()
    lab = token_labels.flatten(1)
    valid = lab != ignore_index
    pair = valid[:, :, None] & valid[:, None, :]
    pair &= ~torch.eye(lab.shape[1], dtype=torch.bool, device=lab.device)
    same = lab[:, :, None] == lab[:, None, :]
    pos, neg = (pair & same).float(), (pair & ~same).float()
    n_pos, n_neg = (share_of_total(m.sum() + 1 / world_size()) for m in (pos, neg))
    return 0.5 * (1 - (pos * sim).sum() / n_pos) + 0.5 * (neg * sim).sum() / n_neg


def image_generator(generator: torch.Generator | list[torch.Generator] | None, n: int) -> torch.Generator | None:
    """The CPU generator of image n's random choices: ``generator[n]`` of a per-image list (the training step's,
    keyed by the image's place in the total batch, so that a choice does not depend on the number of
    processes), else ``generator`` itself (None: torch's global one)."""
    return generator[n] if isinstance(generator, list) else generator
