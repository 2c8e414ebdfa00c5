"""The segmentation networks of the last stage: DeepLab-v2 and DeepLab-v3+, both on ResNet-101.

``DeepLabV2`` has the parameter layout of kazuto1011/deeplab-pytorch's ``DeepLabV2_ResNet101_MSC`` (the code
IRN, RIB and DRS trained their DeepLab-v2 with): a caffe-style dilated ResNet (``base.layer1`` stem,
``base.layer2..5`` with ``blockN.reduce/conv3x3/increase/shortcut``, each a ``conv``+``bn`` pair), an ASPP of
four biased 3x3 convolutions (rates 6/12/18/24) whose class maps are summed, output stride 8, wrapped in the
multi-scale-input module (``base.``: the 1.0 input plus 0.5x and 0.75x copies, fused by a pixel-wise max).
``DeepLabV3Plus`` has the layout of VainF/DeepLabV3Plus-Pytorch's ``deeplabv3plus_resnet101`` (DRS's V3+ row):
torchvision's ResNet key names under ``backbone.``, torchvision's ASPP and a 48-channel low-level projection
under ``classifier.``, output stride 16 or 8, logits upsampled to the input size.

Released checkpoints and initialisation files of those layouts load with strict key checking; ``width`` and
``blocks`` shrink both into CPU-sized networks (same stages, strides and key names) for the toy dataset.
"""
from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.models.resnet import Bottleneck
from torchvision.models.segmentation.deeplabv3 import ASPP

from misc.errors import UserError
from net.resnet50 import FixedBatchNorm

RESNET101_BLOCKS = (3, 4, 23, 3)


def _norm_layer(frozen: bool, momentum: float = 0.1) -> Callable[[int], nn.BatchNorm2d]:
    """A BatchNorm constructor: frozen -> running statistics only (``FixedBatchNorm``), else ordinary BN."""
    if frozen:
        return FixedBatchNorm
    return partial(nn.BatchNorm2d, momentum=momentum)  # a partial, not a lambda: the model stays picklable


def _freeze_bn_affine(module: nn.Module) -> None:
    """Stop training the affine parameters of every ``FixedBatchNorm`` in ``module``."""
    for m in module.modules():
        if isinstance(m, FixedBatchNorm):
            m.requires_grad_(False)


# ---------------------------------------------------------------------------------------------- DeepLab-v2

class ConvBN(nn.Sequential):
    """conv (no bias) -> BatchNorm [-> ReLU]; children named ``conv``, ``bn``, ``relu`` as in the v2 layout."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, padding: int, dilation: int, norm,
                 relu: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride, padding, dilation, bias=False)
        self.bn = norm(cout)
        if relu:
            self.relu = nn.ReLU()


class V2Bottleneck(nn.Module):
    """Caffe/MSRA bottleneck: 1x1 ``reduce`` -> 3x3 ``conv3x3`` (dilated) -> 1x1 ``increase`` (+ ``shortcut``).

    ``stride_in_1x1``: where the block's stride sits. True is the caffe ResNet the published DeepLab-v2
    files were trained with (stride on ``reduce``); False puts it on the 3x3 conv, as in torchvision's
    ResNet, for a backbone initialised from a torchvision file.
    """

    def __init__(self, cin: int, cout: int, stride: int, dilation: int, project: bool, norm, stride_in_1x1: bool):
        super().__init__()
        mid = cout // 4
        s1, s3 = (stride, 1) if stride_in_1x1 else (1, stride)
        self.reduce = ConvBN(cin, mid, 1, s1, 0, 1, norm)
        self.conv3x3 = ConvBN(mid, mid, 3, s3, dilation, dilation, norm)
        self.increase = ConvBN(mid, cout, 1, 1, 0, 1, norm, relu=False)
        self.shortcut = ConvBN(cin, cout, 1, stride, 0, 1, norm, relu=False) if project else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.increase(self.conv3x3(self.reduce(x)))
        return F.relu(h + (x if self.shortcut is None else self.shortcut(x)))


class V2ResLayer(nn.Sequential):
    """``n`` bottlenecks named block1..blockN; the first one projects the shortcut and carries the stride."""

    def __init__(self, n: int, cin: int, cout: int, stride: int, dilation: int, norm, stride_in_1x1: bool):
        super().__init__()
        for i in range(n):
            self.add_module(f"block{i + 1}", V2Bottleneck(cin if i == 0 else cout, cout, stride if i == 0 else 1,
                                                          dilation, i == 0, norm, stride_in_1x1))


class V2Stem(nn.Sequential):
    """7x7/2 conv + BN + ReLU (``conv1``), then a 3x3/2 max-pool with ceil rounding (``pool``)."""

    def __init__(self, cout: int, norm):
        super().__init__()
        self.conv1 = ConvBN(3, cout, 7, 2, 3, 1, norm)
        self.pool = nn.MaxPool2d(3, 2, 1, ceil_mode=True)


class V2ASPP(nn.Module):
    """Four parallel 3x3 convolutions (with bias) straight to class maps, one per rate, summed."""

    def __init__(self, cin: int, num_classes: int, rates: Sequence[int]):
        super().__init__()
        for i, r in enumerate(rates):
            conv = nn.Conv2d(cin, num_classes, 3, 1, padding=r, dilation=r, bias=True)
            nn.init.normal_(conv.weight, 0.0, 0.01)
            nn.init.zeros_(conv.bias)
            self.add_module(f"c{i}", conv)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return sum(conv(x) for conv in self.children())


class DeepLabV2Base(nn.Sequential):
    """Dilated ResNet (output stride 8: layer4 dilation 2, layer5 dilation 4) + ASPP. (B, 3, H, W) -> class
    logits (B, num_classes, h, w), h ~ H/8 rounded up at each halving (65 -> 9, 321 -> 41, 513 -> 65)."""

    def __init__(self, num_classes: int, blocks: Sequence[int], width: int, rates: Sequence[int], norm,
                 stride_in_1x1: bool):
        super().__init__()
        ch = [width * 2 ** p for p in range(6)]
        self.layer1 = V2Stem(ch[0], norm)
        self.layer2 = V2ResLayer(blocks[0], ch[0], ch[2], 1, 1, norm, stride_in_1x1)
        self.layer3 = V2ResLayer(blocks[1], ch[2], ch[3], 2, 1, norm, stride_in_1x1)
        self.layer4 = V2ResLayer(blocks[2], ch[3], ch[4], 1, 2, norm, stride_in_1x1)
        self.layer5 = V2ResLayer(blocks[3], ch[4], ch[5], 1, 4, norm, stride_in_1x1)
        self.aspp = V2ASPP(ch[5], num_classes, rates)


class DeepLabV2(nn.Module):
    """DeepLab-v2 with multi-scale inputs (kazuto1011's ``DeepLabV2_ResNet101_MSC`` layout: every key under ``base.``).

    The input and its bilinear copies at ``scales`` (scale factors, align_corners False) go through the same
    ``base``; the scaled logits are resized (bilinear) to the full-scale logits' size and fused by a pixel-wise
    max. Training mode returns the list [full, one per scale (at their own size), fused] that the published
    recipe puts a loss on each of; eval mode returns the fused logits (B, num_classes, ~H/8, ~W/8). With
    ``scales=()`` training returns [logits] and eval the logits.

    ``frozen_bn``: BatchNorm uses its running statistics and its affine parameters are not trained (the
    published recipe: BN in eval mode, left out of the optimiser); False gives ordinary BN (toy, from scratch).
    ``stride_in_1x1``: see ``V2Bottleneck``; ``build_deeplab_v2`` picks it from the initialisation file.
    ``width``/``blocks``: 64 and (3, 4, 23, 3) are ResNet-101; smaller values give the toy network.
    """

    def __init__(self, num_classes: int, blocks: Sequence[int] = RESNET101_BLOCKS, width: int = 64,
                 rates: Sequence[int] = (6, 12, 18, 24), scales: Sequence[float] = (0.5, 0.75),
                 frozen_bn: bool = True, stride_in_1x1: bool = True):
        super().__init__()
        self.scales = tuple(scales)
        self.stride_in_1x1 = stride_in_1x1
        self.base = DeepLabV2Base(num_classes, blocks, width, rates, _norm_layer(frozen_bn), stride_in_1x1)
        for name, m in self.base.named_modules():
            if isinstance(m, nn.Conv2d) and not name.startswith("aspp"):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        _freeze_bn_affine(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        full = self.base(x)
        if not self.scales:
            return [full] if self.training else full
        scaled = [self.base(F.interpolate(x, scale_factor=s, mode="bilinear", align_corners=False))
                  for s in self.scales]
        size = full.shape[2:]
        fused = torch.stack([full] + [F.interpolate(o, size=size, mode="bilinear", align_corners=False)
                                      for o in scaled]).amax(0)
        return [full, *scaled, fused] if self.training else fused


def deeplab_v2_param_groups(model: DeepLabV2, lr: float, weight_decay: float) -> list[dict]:
    """The published DeepLab-v2 SGD groups: every trainable backbone parameter at 1x lr (with frozen BN that is
    exactly the conv weights, as kazuto1011's ``get_params``), ASPP weights at 10x, ASPP biases at 20x with no
    weight decay. Returns three dicts {params, lr, weight_decay, name}; base lrs, before any schedule."""
    backbone = [p for n, p in model.base.named_parameters() if not n.startswith("aspp.") and p.requires_grad]
    aspp = model.base.aspp
    return [
        {"params": backbone, "lr": lr, "weight_decay": weight_decay, "name": "1x"},
        {"params": [c.weight for c in aspp.children()], "lr": 10 * lr, "weight_decay": weight_decay, "name": "10x"},
        {"params": [c.bias for c in aspp.children()], "lr": 20 * lr, "weight_decay": 0.0, "name": "20x"},
    ]


# --------------------------------------------------------------------------------------------- DeepLab-v3+

class ResNetTrunk(nn.Module):
    """torchvision's ResNet (v1.5 bottleneck, torchvision key names, no fc) with strides replaced by dilation
    for output stride 16 or 8, as ``torchvision.models.resnet101(replace_stride_with_dilation=...)`` builds it.

    ``width``: channels of the stem (64 for ResNet-101; stage outputs are 4, 8, 16, 32 times it).
    ``forward`` returns (layer1 output at stride 4, layer4 output at ``output_stride``).
    """

    def __init__(self, blocks: Sequence[int] = RESNET101_BLOCKS, width: int = 64, output_stride: int = 16,
                 norm=nn.BatchNorm2d):
        super().__init__()
        if output_stride not in (8, 16):
            raise ValueError(f"output_stride must be 8 or 16, got {output_stride}")
        dilate = (False, output_stride == 8, True)
        self.norm = norm
        self.inplanes, self.dilation = width, 1
        self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
        self.bn1 = norm(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = self._make_layer(width, blocks[0], 1, False)
        self.layer2 = self._make_layer(width * 2, blocks[1], 2, dilate[0])
        self.layer3 = self._make_layer(width * 4, blocks[2], 2, dilate[1])
        self.layer4 = self._make_layer(width * 8, blocks[3], 2, dilate[2])
        self.low_channels, self.out_channels = width * 4, width * 32
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def _make_layer(self, planes: int, n: int, stride: int, dilate: bool) -> nn.Sequential:
        # torchvision's rule: a dilated stage keeps the previous dilation in its first block.
        first_dilation = self.dilation
        if dilate:
            self.dilation *= stride
            stride = 1
        down = None
        if stride != 1 or self.inplanes != planes * 4:
            down = nn.Sequential(nn.Conv2d(self.inplanes, planes * 4, 1, stride, bias=False), self.norm(planes * 4))
        layers = [Bottleneck(self.inplanes, planes, stride, down, dilation=first_dilation, norm_layer=self.norm)]
        self.inplanes = planes * 4
        layers += [Bottleneck(self.inplanes, planes, dilation=self.dilation, norm_layer=self.norm) for _ in range(1, n)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        low = self.layer1(self.maxpool(self.relu(self.bn1(self.conv1(x)))))
        return low, self.layer4(self.layer3(self.layer2(low)))


class V3PlusHead(nn.Module):
    """VainF's DeepLab-v3+ decoder: ``aspp`` (torchvision's ASPP, its dropout 0.1 as VainF's) on the deep
    features, ``project`` (1x1 conv to ``low_channels`` + BN + ReLU) on the stride-4 features, the ASPP output
    upsampled (bilinear) and concatenated with it, then ``classifier`` (3x3 conv + BN + ReLU, 1x1 conv to
    classes). Returns stride-4 logits."""

    def __init__(self, in_channels: int, low_in: int, num_classes: int, rates: Sequence[int],
                 channels: int = 256, low_channels: int = 48):
        super().__init__()
        self.project = nn.Sequential(nn.Conv2d(low_in, low_channels, 1, bias=False), nn.BatchNorm2d(low_channels),
                                     nn.ReLU(inplace=True))
        self.aspp = ASPP(in_channels, rates, channels)
        self.aspp.project[3].p = 0.1
        self.classifier = nn.Sequential(nn.Conv2d(channels + low_channels, channels, 3, padding=1, bias=False),
                                        nn.BatchNorm2d(channels), nn.ReLU(inplace=True),
                                        nn.Conv2d(channels, num_classes, 1))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, low: torch.Tensor, deep: torch.Tensor) -> torch.Tensor:
        low = self.project(low)
        deep = F.interpolate(self.aspp(deep), size=low.shape[2:], mode="bilinear", align_corners=False)
        return self.classifier(torch.cat([low, deep], 1))


class DeepLabV3Plus(nn.Module):
    """DeepLab-v3+ in VainF's ``deeplabv3plus_resnet101`` layout (``backbone.*`` = torchvision ResNet keys,
    ``classifier.*`` = the head). (B, 3, H, W) -> logits (B, num_classes, H, W), upsampled bilinearly from
    stride 4, in training and eval mode alike.

    ``output_stride`` 16 (ASPP rates 6/12/18) or 8 (12/24/36). ``frozen_bn``: the backbone's BN uses running
    statistics and is not trained; False (VainF's recipe) trains it, with ``bn_momentum`` (VainF sets 0.01 on
    the backbone; the head's BN keeps PyTorch's 0.1). ``width``/``blocks``/``head_channels``/``low_channels``
    (64, (3, 4, 23, 3), 256, 48 published) shrink it for the toy.
    """

    def __init__(self, num_classes: int, output_stride: int = 16, blocks: Sequence[int] = RESNET101_BLOCKS,
                 width: int = 64, frozen_bn: bool = False, bn_momentum: float = 0.01, head_channels: int = 256,
                 low_channels: int = 48):
        super().__init__()
        rates = {16: (6, 12, 18), 8: (12, 24, 36)}.get(output_stride)
        self.backbone = ResNetTrunk(blocks, width, output_stride, _norm_layer(frozen_bn, bn_momentum))
        self.classifier = V3PlusHead(self.backbone.out_channels, self.backbone.low_channels, num_classes, rates,
                                     head_channels, low_channels)
        _freeze_bn_affine(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.classifier(*self.backbone(x))
        return F.interpolate(logits, size=x.shape[2:], mode="bilinear", align_corners=False)


def deeplab_v3plus_param_groups(model: DeepLabV3Plus, lr: float, weight_decay: float,
                                backbone_mult: float = 0.1) -> list[dict]:
    """VainF's SGD groups: the trainable backbone parameters at ``backbone_mult`` x lr, the head at lr, one
    weight decay for all (BN and biases included). Returns two dicts {params, lr, weight_decay, name}."""
    return [
        {"params": [p for p in model.backbone.parameters() if p.requires_grad], "lr": backbone_mult * lr,
         "weight_decay": weight_decay, "name": "backbone"},
        {"params": list(model.classifier.parameters()), "lr": lr, "weight_decay": weight_decay, "name": "head"},
    ]


# ------------------------------------------------------------------------------------- initialisation files

def _read_state_dict(path: Path, what: str) -> dict[str, torch.Tensor]:
    """torch.load a state_dict file (a bare dict, or one under 'state_dict'/'model'), 'module.' prefixes stripped."""
    if not path.is_file():
        raise UserError(f"{path}: {what} not found; download it on a machine with internet and pass its path")
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for a bad file
        raise UserError(f"{path}: not a loadable torch state_dict ({e})") from None
    for k in ("state_dict", "model", "model_state"):
        if isinstance(sd, dict) and isinstance(sd.get(k), dict):
            sd = sd[k]
    if not isinstance(sd, dict):
        raise UserError(f"{path}: expected a state_dict (a dict of tensors), got {type(sd).__name__}")
    return {k.removeprefix("module."): v for k, v in sd.items()}


def _load_checked(module: nn.Module, sd: dict[str, torch.Tensor], path: str | Path, what: str,
                  optional: tuple[str, ...] = ()) -> None:
    """Load ``sd`` into ``module``: every key of ``module`` must be given except keys starting with one of
    ``optional`` and BN ``num_batches_tracked`` counters; extra keys and shape mismatches are errors."""
    own = module.state_dict()
    missing = [k for k in own if k not in sd and not k.startswith(optional) and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in sd if k not in own]
    wrong = [k for k in sd if k in own and tuple(sd[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or wrong:
        raise UserError(f"{path}: not {what} for this network (missing {missing[:3]}, unexpected {unexpected[:3]}, "
                        f"wrong shape {wrong[:3]}; {len(missing)}/{len(unexpected)}/{len(wrong)} in all)")
    module.load_state_dict(sd, strict=False)


def _torchvision_to_v2(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename torchvision ResNet keys (conv1, bn1, layerN.i.convK/bnK/downsample.j) to the v2 layout."""
    parts = {"conv1": "reduce.conv", "bn1": "reduce.bn", "conv2": "conv3x3.conv", "bn2": "conv3x3.bn",
             "conv3": "increase.conv", "bn3": "increase.bn", "downsample.0": "shortcut.conv",
             "downsample.1": "shortcut.bn"}
    out = {}
    for k, v in sd.items():
        if k.startswith("fc."):
            continue
        if k.startswith(("conv1.", "bn1.")):
            layer, rest = k.split(".", 1)
            out[f"layer1.conv1.{'conv' if layer == 'conv1' else 'bn'}.{rest}"] = v
            continue
        stage, block, rest = k.split(".", 2)
        mod, leaf = rest.rsplit(".", 1)
        out[f"layer{int(stage[5:]) + 1}.block{int(block) + 1}.{parts.get(mod, mod)}.{leaf}"] = v
    return out


def _is_torchvision_resnet(sd: dict[str, torch.Tensor]) -> bool:
    return "conv1.weight" in sd and "layer1.0.conv1.weight" in sd


def deeplab_v2_from_resnet(num_classes: int, sd: dict[str, torch.Tensor], source: str | Path, **kwargs) -> DeepLabV2:
    """A ``DeepLabV2`` (``kwargs`` as its constructor's) whose backbone is the torchvision-layout ResNet state_dict
    ``sd`` (keys ``conv1.*``, ``bn1.*``, ``layerN.i.*``; ``fc.*`` dropped), built with the stride on the 3x3
    conv as such a trunk was trained; the ASPP keeps its N(0, 0.01) init. ``source`` names ``sd`` in the
    one-line error of a trunk of another shape (``width``/``blocks`` must match it)."""
    model = DeepLabV2(num_classes, stride_in_1x1=False, **kwargs)
    _load_checked(model.base, _torchvision_to_v2(sd), source, "a torchvision-layout ResNet of this width and depth",
                  optional=("aspp.",))
    return model


def build_deeplab_v2(num_classes: int, init: str | Path | None = None, **kwargs) -> tuple[DeepLabV2, str]:
    """Build a ``DeepLabV2`` and initialise its backbone from ``init``.

    Accepted files: a kazuto1011-layout file (the COCO-pretrained ``deeplabv1_resnet101-coco.pth`` DRS used,
    the ImageNet DeepLab init RIB points to, or any DeepLab-v2 checkpoint, with or without the ``base.``
    prefix; ``fc.*`` dropped, ``aspp.*`` loaded when the class count matches, else left at its N(0, 0.01)
    init) -> the caffe stride placement; or torchvision's ``resnet101`` ImageNet file -> the torchvision stride
    placement (``stride_in_1x1=False``). ``init=None`` keeps the random initialisation. ``kwargs`` go to
    ``DeepLabV2``. Returns (model, input style: 'caffe' for kazuto1011-layout files, 'torchvision' otherwise;
    see ``misc.segmentation.normalize_image``).
    """
    if init is None:
        return DeepLabV2(num_classes, **kwargs), "torchvision"
    path = Path(init)
    sd = _read_state_dict(path, "DeepLab-v2 initialisation file")
    if _is_torchvision_resnet(sd):
        return deeplab_v2_from_resnet(num_classes, sd, path, **kwargs), "torchvision"
    sd = {k.removeprefix("base."): v for k, v in sd.items() if not k.removeprefix("base.").startswith("fc.")}
    model = DeepLabV2(num_classes, stride_in_1x1=True, **kwargs)
    own = model.base.state_dict()
    if any(k.startswith("aspp.") and k in own and v.shape != own[k].shape for k, v in sd.items()):
        sd = {k: v for k, v in sd.items() if not k.startswith("aspp.")}
    _load_checked(model.base, sd, path, "a DeepLab-v1/v2 ResNet-101 file in kazuto1011's layout",
                  optional=("aspp.",))
    return model, "caffe"


def load_imagenet_resnet101(model: DeepLabV3Plus, path: str | Path) -> None:
    """Load torchvision's ``resnet101`` ImageNet state_dict file (e.g. resnet101-5d3b4d8f.pth, the V1 weights
    VainF used, or resnet101-63fe2227.pth) into ``model.backbone``, dropping ``fc.*``, strictly otherwise."""
    path = Path(path)
    load_resnet_trunk(model, _read_state_dict(path, "ImageNet ResNet-101 weights"), path, "a torchvision resnet101 "
                      "state_dict (the backbone must be full width, 64, with blocks (3, 4, 23, 3))")


def load_resnet_trunk(model: DeepLabV3Plus, sd: dict[str, torch.Tensor], source: str | Path,
                      what: str = "a torchvision-layout ResNet of this width and depth") -> None:
    """Load the torchvision-layout ResNet state_dict ``sd`` into ``model.backbone`` (``fc.*`` dropped, strictly
    otherwise; the dilations do not change the shapes); ``source`` and ``what`` name it in the error line."""
    _load_checked(model.backbone, {k: v for k, v in sd.items() if not k.startswith("fc.")}, source, what)


def load_checkpoint(model: nn.Module, path: str | Path) -> None:
    """Load a whole-network checkpoint (this toolkit's, or a released one of the same layout such as
    kazuto1011's ``deeplabv2_resnet101_msc-vocaug-20000.pth``) with strict key and shape checking; only BN
    ``num_batches_tracked`` counters may be absent (files saved by PyTorch < 0.4.1)."""
    path = Path(path)
    _load_checked(model, _read_state_dict(path, "segmentation checkpoint"), path, "a checkpoint")
