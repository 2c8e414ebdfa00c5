"""The ViT backbone of the single-stage methods (ToCo, PUFS): timm's ``VisionTransformer`` with what they add.

``ViT`` subclasses timm's model (pinned ``timm==1.0.31``), so its blocks, attention, MLP, LayerNorm (eps 1e-6)
and drop path are timm's and its parameter names are timm's (``cls_token``, ``pos_embed``,
``patch_embed.proj``, ``blocks.<i>.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}``, ``norm``, ``head``), which
are also the names in ToCo's and PUFS's checkpoints. Added on top:

- the learned patch position embedding resized bicubically (align_corners False) to the input's token grid
  at every forward, so any input size works (the stored grid is ``img_size // patch_size``);
- the patch tokens of an auxiliary block (``aux_layer``, default -3: the 10th of 12), without final norm;
- an optional ``mask_token`` that replaces masked patch embeddings before the position embedding (PUFS);
- the class token either prepended and run through the blocks with its own position embedding
  (``cls_mode='token'``, ToCo) or built after the blocks by ``cls_depth`` class-attention blocks that read
  the final patch tokens (``cls_mode='aggregate'``, PUFS; key names ``cls_blocks.<i>.{norm1,attn.q,attn.k,
  attn.v,attn.proj,norm2,mlp.fc1,mlp.fc2}``). In aggregate mode the class entry of ``pos_embed`` is unused.

Nothing is downloaded: ImageNet weights come from a local file through ``load_imagenet_vit``.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import LayerNorm, Mlp
from timm.models.vision_transformer import VisionTransformer

from misc.errors import UserError

# Architectures of the two ImageNet weight sets the methods use (same shapes; different training).
ARCHS = {
    "vit_base_patch16_224": {"patch_size": 16, "embed_dim": 768, "depth": 12, "num_heads": 12},
    "deit_base_patch16_224": {"patch_size": 16, "embed_dim": 768, "depth": 12, "num_heads": 12},
}


class ClassAttention(nn.Module):
    """Multi-head attention of one query (the class token) over the patch tokens only."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, 1+N, D) normalised [class; patches]; key_mask: optional (B, N) bool, True = left out of the
        attention. Returns the attention output for the class token, (B, 1, D)."""
        b, n1, d = x.shape
        h = self.num_heads
        q = self.q(x[:, :1]).reshape(b, 1, h, d // h).transpose(1, 2)
        k = self.k(x[:, 1:]).reshape(b, n1 - 1, h, d // h).transpose(1, 2)
        v = self.v(x[:, 1:]).reshape(b, n1 - 1, h, d // h).transpose(1, 2)
        attend = None if key_mask is None else ~key_mask[:, None, None, :]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attend)
        return self.proj(out.transpose(1, 2).reshape(b, 1, d))


class ClassAttentionBlock(nn.Module):
    """Pre-norm class-attention block: cls += CA(LN([cls; x])); cls += MLP(LN(cls)). No layer scale, no drop path."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1 = LayerNorm(dim)
        self.attn = ClassAttention(dim, num_heads)
        self.norm2 = LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, cls: torch.Tensor, x: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        """cls: (B, 1, D); x: (B, N, D) patch tokens. Returns the updated class token (B, 1, D)."""
        cls = cls + self.attn(self.norm1(torch.cat([cls, x], dim=1)), key_mask)
        return cls + self.mlp(self.norm2(cls))


class ViT(VisionTransformer):
    """timm ViT (qkv bias, LayerNorm eps 1e-6) returning (class token, patch tokens, aux patch tokens).

    img_size: sets the stored position-embedding grid (img_size // patch_size); inputs may be any size.
    cls_mode: 'token' (class token through the blocks) or 'aggregate' (class-attention blocks after them).
    num_classes: size of timm's ImageNet ``head`` (kept only so checkpoints that carry it load strictly;
    it is not used); 0 for none. mask_token: add the learnable (1, D) mask embedding.
    freeze_pos_embed: position embedding not trained (ToCo). aux_layer: block index (negative from the end)
    whose output patch tokens are returned as the auxiliary tokens.
    """

    def __init__(self, img_size: int = 224, patch_size: int = 16, embed_dim: int = 768, depth: int = 12,
                 num_heads: int = 12, mlp_ratio: float = 4.0, drop_path_rate: float = 0.0, aux_layer: int = -3,
                 cls_mode: str = "token", cls_depth: int = 2, mask_token: bool = False, num_classes: int = 1000,
                 freeze_pos_embed: bool = False):
        if cls_mode not in ("token", "aggregate"):
            raise ValueError(f"unknown cls_mode {cls_mode!r} (token or aggregate)")
        super().__init__(img_size=img_size, patch_size=patch_size, num_classes=num_classes, embed_dim=embed_dim,
                         depth=depth, num_heads=num_heads, mlp_ratio=mlp_ratio, qkv_bias=True,
                         drop_path_rate=drop_path_rate, dynamic_img_size=True)
        self.patch_size = patch_size
        self.cls_mode = cls_mode
        self.aux_index = aux_layer % depth
        self.mask_token = nn.Parameter(torch.zeros(1, embed_dim)) if mask_token else None
        if mask_token:
            nn.init.trunc_normal_(self.mask_token, std=0.02)
        self.cls_blocks = (nn.ModuleList(ClassAttentionBlock(embed_dim, num_heads, mlp_ratio) for _ in range(cls_depth))
                           if cls_mode == "aggregate" else None)
        if freeze_pos_embed:
            self.pos_embed.requires_grad_(False)

    def no_weight_decay(self) -> set[str]:
        """Names of the token parameters kept out of weight decay (with biases and norms)."""
        return {"pos_embed", "cls_token", "mask_token"}

    def patch_pos_embed(self, h: int, w: int) -> torch.Tensor:
        """The patch position embedding for an h x w token grid, (1, h*w, D): the stored square grid, resized
        bicubically (align_corners False) when the grid differs."""
        pe = self.pos_embed[:, 1:]
        g = math.isqrt(pe.shape[1])
        if (h, w) == (g, g):
            return pe
        pe = pe.reshape(1, g, g, -1).permute(0, 3, 1, 2)
        pe = F.interpolate(pe, size=(h, w), mode="bicubic", align_corners=False)
        return pe.flatten(2).transpose(1, 2)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, attn_mask_cls: bool = False
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x: (B, 3, H, W) normalised images; mask: optional (B, H/p, W/p) bool, True where the patch embedding
        is replaced by ``mask_token``; attn_mask_cls: in aggregate mode, also leave the masked patches out of
        the class attention (PUFS's first release; its final code does not).

        Returns (cls (B, D) after the final norm, patches (B, N, D) after the final norm, aux (B, N, D) the
        patch tokens output by block ``aux_layer``, not normalised), N = (H/p)(W/p) in row-major order.
        """
        b = x.shape[0]
        x = self.patch_embed(x)  # (B, h, w, D)
        if mask is not None:
            x = torch.where(mask[..., None], self.mask_token.to(x.dtype), x)
        h, w = x.shape[1:3]
        x = x.reshape(b, h * w, -1) + self.patch_pos_embed(h, w)
        if self.cls_mode == "token":
            cls = self.cls_token.expand(b, -1, -1) + self.pos_embed[:, :1]
            x = torch.cat([cls, x], dim=1)
        x = self.pos_drop(x)
        aux = x
        for i, blk in enumerate(self.blocks):
            x = blk(x)
            if i == self.aux_index:
                aux = x
        if self.cls_mode == "token":
            x = self.norm(x)
            return x[:, 0], x[:, 1:], aux[:, 1:]
        key_mask = mask.reshape(b, -1) if (attn_mask_cls and mask is not None) else None
        cls = self.cls_token.expand(b, -1, -1)
        for blk in self.cls_blocks:
            cls = blk(cls, x, key_mask)
        x = self.norm(torch.cat([cls, x], dim=1))
        return x[:, 0], x[:, 1:], aux


def resize_pos_embed(pos_embed: torch.Tensor, grid: int) -> torch.Tensor:
    """(1, 1+g*g, D) class + square patch position embedding -> (1, 1+grid*grid, D), the patch part resized
    bicubically (align_corners False); unchanged when g == grid."""
    g = math.isqrt(pos_embed.shape[1] - 1)
    if g == grid:
        return pos_embed
    pe = pos_embed[:, 1:].reshape(1, g, g, -1).permute(0, 3, 1, 2)
    pe = F.interpolate(pe, size=(grid, grid), mode="bicubic", align_corners=False).flatten(2).transpose(1, 2)
    return torch.cat([pos_embed[:, :1], pe], dim=1)


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a .pth/.pt/.bin (optionally under 'model' or 'state_dict', optionally 'module.'-prefixed)
    or .safetensors file."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(path))
        else:
            sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 -- torch and safetensors raise several types for a bad file
        raise UserError(f"{path}: not a loadable torch/safetensors state_dict ({e})") from None
    for key in ("model", "state_dict"):
        if isinstance(sd, dict) and isinstance(sd.get(key), dict):
            sd = sd[key]
    if not isinstance(sd, dict):
        raise UserError(f"{path}: holds a {type(sd).__name__}, not a state_dict")
    return {k.removeprefix("module."): v for k, v in sd.items() if isinstance(v, torch.Tensor)}


def load_imagenet_vit(model: ViT, path: str | Path) -> None:
    """Load ImageNet ViT-B/16 weights from a local file into ``model`` (the layout of timm's
    ``vit_base_patch16_224`` "jx" file jx_vit_base_p16_224-80ecf9dd.pth / ``.orig_in21k_ft_in1k``, or of
    DeiT's deit_base_patch16_224-b5f2ef4d.pth; .pth or .safetensors).

    The position embedding is resized to the model's stored grid; a patch embedding stored as a linear layer
    (old timm files) is reshaped to the conv; the ImageNet head is loaded when the model has one of the same
    shape and dropped otherwise. The class-attention blocks and the mask token (PUFS) are not in ImageNet
    files and keep their initialisation. Any other missing, unexpected or mis-shaped key is a UserError.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: ImageNet ViT-B/16 weights not found; download timm's vit_base_patch16_224 "
                        "(jx_vit_base_p16_224-80ecf9dd.pth) or DeiT's deit_base_patch16_224-b5f2ef4d.pth on a "
                        "machine with internet and pass the file with --pretrained_weights")
    sd = _read_state_dict(path)
    own = model.state_dict()
    w = sd.get("patch_embed.proj.weight")
    if w is not None and w.ndim == 2:
        p = model.patch_size
        sd["patch_embed.proj.weight"] = w.reshape(w.shape[0], -1, p, p)
    if "pos_embed" in sd and sd["pos_embed"].ndim == 3 and sd["pos_embed"].shape[-1] == own["pos_embed"].shape[-1]:
        sd["pos_embed"] = resize_pos_embed(sd["pos_embed"], math.isqrt(own["pos_embed"].shape[1] - 1))
    if "head.weight" not in own or sd.get("head.weight", torch.empty(0)).shape != own["head.weight"].shape:
        sd = {k: v for k, v in sd.items() if not k.startswith("head.")}
    optional = ("cls_blocks.", "mask_token", "head.")
    missing = [k for k in own if k not in sd and not k.startswith(optional)]
    unexpected = [k for k in sd if k not in own]
    shapes = [f"{k} {tuple(sd[k].shape)} vs {tuple(own[k].shape)}"
              for k in own if k in sd and sd[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        raise UserError(f"{path}: not a ViT-B/16 state_dict matching this model (missing {missing[:3]}, "
                        f"unexpected {unexpected[:3]}, shape mismatch {shapes[:2]}); pass the timm "
                        "vit_base_patch16_224 or deit_base_patch16_224 ImageNet file")
    model.load_state_dict(sd, strict=False)
