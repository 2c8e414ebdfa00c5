"""What the DRS steps share: the square-image inference loader, the VGG-16 trunk initialisation, the
saliency pseudo-label score against GT masks and the published best-epoch selection built on it."""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch.utils.data import DataLoader

from misc import dist
from misc.dataset_spec import DatasetSpec
from misc.errors import UserError
from misc.io import atomic_path
from misc.metrics import confusion_matrix, iou_from_confusion
from misc.saliency import binarize_saliency, saliency_pseudo_label
from misc.samples import SquareDataset, collate_squares
from net.vgg16 import VGG16D1, load_imagenet_weights, square_views
from net.vgg16_drs import DRSClassifier, localization_map, multiscale_cams
from net.vgg16_refine import RefineNet, fuse_raw
from step.common.data import load_labels, load_list
from step.common.parallel import say, shard

# scores(batch) -> per image of the batch its class scores (C, H, W) at the image's own size, 0 for absent classes
ScoreFn = Callable[[dict], list[torch.Tensor]]
# fuse(per-scale maps (1, C, h_s, w_s), labels (1, C), size) -> (1, C, *size): localization_map or fuse_raw
FuseFn = Callable[[list[torch.Tensor], torch.Tensor, tuple[int, int]], torch.Tensor]


def image_maps(fuse: FuseFn, maps: list[torch.Tensor], labels: torch.Tensor, sizes: list[tuple[int, int]]
               ) -> list[torch.Tensor]:
    """Per image j of a batch: ``fuse`` of its slice of every scale's maps (B, C, h_s, w_s) and of ``labels``
    (B, C) at ``sizes[j]``. Returns [(C, *sizes[j])]."""
    return [fuse([m[j:j + 1] for m in maps], labels[j:j + 1], size)[0] for j, size in enumerate(sizes)]


def localization_scores(model: DRSClassifier, device: torch.device, scales: tuple[int, ...]) -> ScoreFn:
    """ScoreFn of the DRS classifier: its localization maps (``net.vgg16_drs.localization_map``)."""
    return lambda b: image_maps(localization_map, multiscale_cams(model, b["img"].to(device), scales),
                                b["label"].to(device), b["size"])


def refined_scores(model: RefineNet, device: torch.device, scales: tuple[int, ...]) -> ScoreFn:
    """ScoreFn of the refinement network: its fused refined maps (``net.vgg16_refine.fuse_raw``)."""
    return lambda b: image_maps(fuse_raw, [model.raw(v) for v in square_views(b["img"].to(device), scales)],
                                b["label"].to(device), b["size"])


def square_loader(ds: DatasetSpec, ids: list[str], labels: dict[str, np.ndarray], args: argparse.Namespace,
                  device: torch.device) -> DataLoader:
    """Inference batches of --drs_batch_images images of ``ids`` squashed to --drs_side (``collate_squares``:
    'img' (B, 3, side, side), 'label' (B, C), 'name' and 'size' lists), in list order."""
    return DataLoader(SquareDataset(ds.image_path, ids, labels, args.drs_side), args.drs_batch_images,
                      shuffle=False, collate_fn=collate_squares, num_workers=args.num_workers,
                      pin_memory=device.type == "cuda")


def drs_classifier(args: argparse.Namespace, num_classes: int) -> DRSClassifier:
    """A fresh DRS classifier of the run's --drs_width, --drs_convs, --drs_norm and --drs_delta, on the CPU."""
    return DRSClassifier(num_classes, delta=args.drs_delta, width=args.drs_width, convs=args.drs_convs,
                         norm=args.drs_norm)


def refine_net(args: argparse.Namespace, num_classes: int) -> RefineNet:
    """A fresh refinement network of the run's --drs_width, --drs_convs and --drs_norm, on the CPU."""
    return RefineNet(num_classes, width=args.drs_width, convs=args.drs_convs, norm=args.drs_norm)


def init_trunk(model: VGG16D1, args: argparse.Namespace) -> VGG16D1:
    """``model`` with ImageNet VGG-16 convs (--drs_init imagenet: --drs_pretrained_weights, strict) or as
    initialised (scratch). UserError when imagenet has no weights file. Returns ``model``."""
    if args.drs_init == "imagenet":
        if not args.drs_pretrained_weights:
            raise UserError("--drs_init imagenet starts from ImageNet weights: pass --drs_pretrained_weights "
                            "<torchvision vgg16 IMAGENET1K_V1 .pth> (or --drs_init scratch)")
        load_imagenet_weights(model, args.drs_pretrained_weights)
    return model


def saliency_miou(scores: ScoreFn, ds: DatasetSpec, ids: list[str], labels: dict[str, np.ndarray],
                  args: argparse.Namespace, device: torch.device) -> float:
    """mIoU (fraction) against the GT masks of ``ids`` of the saliency pseudo labels of ``scores`` without the
    ignore rules (the published per-epoch validation), --drs_alpha and --drs_saliency_thres; under torchrun
    each rank scores its share and the confusion matrices are summed."""
    folder = ds.saliency_dir(args.saliency_root)
    n = ds.num_classes + 1
    conf = np.zeros((n, n), np.int64)
    with torch.no_grad():
        for b in square_loader(ds, shard(ids), labels, args, device):
            for name, m in zip(b["name"], scores(b)):
                sal = binarize_saliency(torch.from_numpy(ds.read_saliency(folder, name)), args.drs_saliency_thres)
                pred = saliency_pseudo_label(m.cpu(), sal, args.drs_alpha, ignore=False).numpy()
                conf += confusion_matrix(ds.read_gt(name), pred, n)
    return float(np.nanmean(iou_from_confusion(dist.sum_over_ranks(conf))))


class BestEpoch:
    """The published model selection (--drs_select gt_miou): the weights of the epoch with the best score so far
    in ``<weights>.best`` with its score in ``<weights>.best.json`` (rank 0, atomic), tagged with the training's
    resume fingerprint so that a resumed run keeps them and another run ignores them."""

    def __init__(self, weights: Path, fingerprint: dict):
        self.path = weights.with_name(weights.name + ".best")
        self.meta = weights.with_name(weights.name + ".best.json")
        self.fingerprint = fingerprint

    def best(self) -> dict | None:
        """{'epoch', 'score'} of the kept weights of this run, or None."""
        if not self.meta.is_file() or not self.path.is_file():
            return None
        meta = json.loads(self.meta.read_text())
        return meta if meta.get("flags") == self.fingerprint else None

    def update(self, model: torch.nn.Module, epoch: int, score: float) -> None:
        """Keep ``model``'s weights when ``score`` beats the kept one (ties keep the earlier epoch)."""
        kept = self.best()
        if kept is not None and score <= kept["score"]:
            return
        if dist.is_main():
            with atomic_path(self.path) as tmp:
                torch.save(model.state_dict(), tmp)
            with atomic_path(self.meta) as tmp:
                tmp.write_text(json.dumps({"epoch": epoch, "score": score, "flags": self.fingerprint}) + "\n")
        dist.barrier()

    def restore(self, model: torch.nn.Module, what: str) -> None:
        """Load the kept weights into ``model`` (every rank) and say which epoch they are."""
        kept = self.best()
        if kept is None:
            raise UserError(f"{self.path}: no kept epoch of this run; delete it and rerun the training")
        model.load_state_dict(torch.load(self.path, map_location="cpu", weights_only=True))
        say(f"{what}: keeping epoch {kept['epoch']} (GT mIoU {100 * kept['score']:.2f}; --drs_select gt_miou uses "
            "pixel labels)")

    def clear(self) -> None:
        """Remove the kept weights (rank 0), once the final weights are written."""
        if dist.is_main():
            self.path.unlink(missing_ok=True)
            self.meta.unlink(missing_ok=True)


def training_ids(args: argparse.Namespace, ds: DatasetSpec) -> tuple[list[str], list[str], dict[str, np.ndarray]]:
    """The ids a DRS training step reads: (--train_list, the --eval_list ids of the GT-based epoch selection
    (empty unless --drs_select gt_miou, whose saliency maps are then checked), labels of both)."""
    ids = load_list(args, args.train_list)
    eval_ids = load_list(args, args.eval_list) if args.drs_select == "gt_miou" else []
    labels = load_labels(args, ds, ids + eval_ids)
    if eval_ids:
        ds.check_saliency(args.saliency_root, eval_ids)
    return ids, eval_ids, labels
