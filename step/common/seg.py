"""The segmentation stage's pieces that train_seg and make_seg share: the DeepLab network of the --seg flags,
its description file (network, input style) beside the weights, batched multi-scale inference over an id
list, and the val mIoU of a model (the --seg_select val rule)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import Dataset

from misc import dist
from misc.dataset_spec import DatasetSpec
from misc.errors import UserError
from misc.imutils import read_image
from misc.io import save_json
from misc.metrics import confusion_matrix, iou_from_confusion
from misc.segmentation import multiscale_probs, normalize_image
from net.deeplab import (
    DeepLabV2,
    DeepLabV3Plus,
    build_deeplab_v2,
    deeplab_v2_from_resnet,
    load_checkpoint,
    load_imagenet_resnet101,
    load_resnet_trunk,
)
from step.common.data import out_path
from step.common.models import trained_classifier
from step.common.parallel import bucketed_loader, progress


def _kwargs(args: argparse.Namespace, network: str) -> dict:
    """The constructor arguments of ``network`` from the --seg flags (shape, BN, multi-scale inputs)."""
    shape = dict(blocks=tuple(args.seg_blocks), width=args.seg_width, frozen_bn=args.seg_frozen_bn)
    if network == "deeplab_v2":
        return dict(shape, scales=tuple(s for s in args.seg_msc_scales if s != 1.0))
    return dict(shape, output_stride=args.seg_output_stride, head_channels=args.seg_head_channels,
                low_channels=max(1, args.seg_head_channels * 48 // 256))


def classifier_trunk(args: argparse.Namespace, num_classes: int) -> dict[str, torch.Tensor]:
    """The ResNet trunk of the trained --cam_network classifier (--cam_weights_name) as a torchvision-layout
    state_dict (the --seg_init cam initialisation: the toy's stand-in for ImageNet weights)."""
    model = trained_classifier(args, num_classes)
    if not isinstance(getattr(model, "resnet50", None), torch.nn.Module):
        raise UserError(f"--seg_init cam: --cam_network {args.cam_network} has no ResNet trunk; pass an "
                        "initialisation file or none")
    return model.resnet50.state_dict()


def segmentation_network(args: argparse.Namespace, num_classes: int) -> tuple[torch.nn.Module, dict]:
    """A fresh --seg_network for ``num_classes`` classes + background, initialised from --seg_init (v2: a
    kazuto1011-layout or torchvision ResNet-101 file; v3+: torchvision's resnet101; either: ``cam``, the trained
    classifier's ResNet trunk, of the same width and depth; none: random), on the CPU.
    Returns (model, description {'network', 'style', 'stride_in_1x1'}: what make_seg needs to rebuild it and
    feed it; style as ``misc.segmentation.normalize_image``)."""
    n = num_classes + 1
    kw = _kwargs(args, args.seg_network)
    init = None if args.seg_init in (None, "none") else args.seg_init
    if init == "cam":
        trunk, source = classifier_trunk(args, num_classes), out_path(args, args.cam_weights_name)
        if args.seg_network == "deeplab_v2":
            model = deeplab_v2_from_resnet(n, trunk, source, **kw)
        else:
            model = DeepLabV3Plus(n, **kw)
            load_resnet_trunk(model, trunk, source)
        return model, {"network": args.seg_network, "style": "torchvision", "stride_in_1x1": False}
    if args.seg_network == "deeplab_v2":
        model, style = build_deeplab_v2(n, init, **kw)
        return model, {"network": "deeplab_v2", "style": style, "stride_in_1x1": model.stride_in_1x1}
    model = DeepLabV3Plus(n, **kw)
    if init is not None:
        load_imagenet_resnet101(model, init)
    return model, {"network": "deeplab_v3plus", "style": "torchvision", "stride_in_1x1": False}


def description_path(weights: Path) -> Path:
    """The description file beside the weights (``sess/deeplab.pth`` -> ``sess/deeplab.json``)."""
    return weights.with_suffix(".json")


def save_description(weights: Path, desc: dict) -> None:
    """Write the network description next to ``weights`` (rank 0, atomic)."""
    if dist.is_main():
        save_json(description_path(weights), desc)


def trained_segmentation_network(args: argparse.Namespace, num_classes: int) -> tuple[torch.nn.Module, str]:
    """The network train_seg wrote to --seg_weights_name, rebuilt from its description file (or, for a released
    checkpoint without one, --seg_network with its published input: v2 caffe, v3+ torchvision) and loaded
    strictly, in eval mode on the CPU. Returns (model, input style)."""
    weights = out_path(args, args.seg_weights_name)
    path = description_path(weights)
    if path.is_file():
        desc = json.loads(path.read_text())
    else:
        v2 = args.seg_network == "deeplab_v2"
        desc = {"network": args.seg_network, "style": "caffe" if v2 else "torchvision", "stride_in_1x1": v2}
    kw = _kwargs(args, desc["network"])
    if desc["network"] == "deeplab_v2":
        model = DeepLabV2(num_classes + 1, stride_in_1x1=desc["stride_in_1x1"], **kw)
    else:
        model = DeepLabV3Plus(num_classes + 1, **kw)
    load_checkpoint(model, weights)
    return model.eval(), desc["style"]


class SegInput(Dataset):
    """Inference images: item = {'name', 'size': (H, W), 'img': float32 (3, H, W) in ``style``, 'raw': uint8
    (H, W, 3)} (the raw image feeds the CRF)."""

    def __init__(self, ds: DatasetSpec, ids: list[str], style: str):
        self.ds, self.ids, self.style = ds, list(ids), style

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict:
        raw = read_image(self.ds.image_path(self.ids[i]))
        return {"name": self.ids[i], "size": raw.shape[:2], "img": torch.from_numpy(normalize_image(raw, self.style)),
                "raw": raw}


def _collate(items: list[dict]) -> dict:
    return {"name": [it["name"] for it in items], "img": torch.stack([it["img"] for it in items]),
            "raw": [it["raw"] for it in items]}


def predict(model: torch.nn.Module, ds: DatasetSpec, ids: list[str], style: str, scales: tuple[float, ...],
            flip: bool, batch_images: int, num_workers: int, device: torch.device, desc: str
            ) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    """Class probabilities of this rank's share of ``ids`` (same-size batches of ``batch_images``, under
    torchrun batch r, r + W, ...): ``multiscale_probs`` over ``scales`` (and flips), the model in eval mode.
    Yields (id, probabilities float32 (C+1, H, W), image uint8 (H, W, 3))."""
    model.eval()
    loader = bucketed_loader(ds, SegInput(ds, ids, style), ids, batch_images, _collate, num_workers, device)
    with torch.no_grad(), progress(total=sum(map(len, loader.batch_sampler)), desc=desc, leave=False) as bar:
        for b in loader:
            probs = multiscale_probs(model, b["img"].to(device, non_blocking=True), scales, flip).cpu().numpy()
            for name, p, raw in zip(b["name"], probs, b["raw"]):
                yield name, p, raw
            bar.update(len(b["name"]))


def val_miou(model: torch.nn.Module, ds: DatasetSpec, ids: list[str], style: str, batch_images: int,
             num_workers: int, device: torch.device) -> float:
    """mIoU (fraction) of the argmax of ``model`` on ``ids`` against their GT masks: single scale, no flip, no
    CRF (the --seg_select val check); under torchrun each rank labels its share and the confusion matrices
    are summed. Leaves the model in train mode."""
    n = ds.num_classes + 1
    conf = np.zeros((n, n), np.int64)
    for name, p, _ in predict(model, ds, ids, style, (1.0,), False, batch_images, num_workers, device, "val check"):
        conf += confusion_matrix(ds.read_gt(name), p.argmax(0).astype(np.uint8), n)
    model.train()
    return float(np.nanmean(iou_from_confusion(dist.sum_over_ranks(conf))))
