"""Regenerate the DeepLab parity fixtures from the published DeepLab code (not run by CI).

    python -m tests.parity.make_fixtures_deeplab --published /work/published/DRS [--rsepm /work/published/RSEPM]

``--published`` is a checkout of qjadud1994/DRS, which vendors kazuto1011/deeplab-pytorch
(``DeepLab-V2-PyTorch``: the DeepLab-v2 code IRN, RIB and DRS trained with) and VainF/DeepLabV3Plus-Pytorch
(``DeepLabV3Plus-Pytorch``: DRS's V3+ row). ``--rsepm`` (default: ``RSEPM`` beside it) is a checkout of
RecurSeed_and_EdgePredictMix, whose ``infer_seg`` multi-scale + flip fusion is pinned. Everything runs on CPU;
the published modules are imported as they are, with a stand-in for ``torchvision.models.utils`` (gone from
torchvision) and for the training script's unused dependencies (addict, scikit-learn).

Writes ``tests/parity/fixtures/deeplab_*``: the key lists of the published DeepLab-v2 (MSC, = the layout of the
released ``deeplabv2_resnet101_msc-vocaug-20000.pth``), of the DeepLab-v1 container that
``deeplabv1_resnet101-coco.pth`` loads into, and of VainF's ``deeplabv3plus_resnet101``; forward outputs of
both networks on ``random_state_dict`` weights; the published SGD groups, label resizing, CRF and poly schedules;
RS+EPM's multi-scale probabilities of a small fixed network.
"""
from __future__ import annotations

import argparse
import importlib.machinery
import importlib.util
import sys
import types
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from tests.parity.util import random_state_dict, save_fixture, save_keys

SEED = 0
INPUT_SEED = 1
UPSTREAM = {
    "kazuto1011/deeplab-pytorch": "4219467fa5de07985f834f1bd8c04c186dc8f6d8 (2020-08-02): deeplabv2.py, msc.py, "
                                  "crf.py identical to the vendored copy; resnet.py differs only in the BN momentum "
                                  "(0.999 vendored, 1-0.999 upstream; unused with frozen BN) and nn.Identity for the "
                                  "identity shortcut (no parameters)",
    "VainF/DeepLabV3Plus-Pytorch": "4e1087de98bc49d55b9239ae92810ef7368660db (2022-10-11): _deeplab.py identical; "
                                   "modeling.py/utils.py add HRNet/Xception only; backbone/resnet.py differs in the "
                                   "load_state_dict_from_url import only",
}


def commit_of(checkout: Path) -> str:
    """The commit of a published checkout, from ``COMMITS.txt`` beside it (``name commit`` lines) or ``unknown``."""
    listing = checkout.parent / "COMMITS.txt"
    if listing.is_file():
        for line in listing.read_text().splitlines():
            name, _, commit = line.partition(" ")
            if name == checkout.name:
                return commit.strip()
    return "unknown"


def load_file_module(name: str, path: Path) -> types.ModuleType:
    """Import one published file by path (without importing its package)."""
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def stub(name: str, **attrs) -> types.ModuleType:
    """An importable stand-in module (with a spec, so importlib.util.find_spec accepts it)."""
    mod = types.ModuleType(name)
    mod.__spec__ = importlib.machinery.ModuleSpec(name, None)
    mod.__dict__.update(attrs)
    return mod


def stub_modules() -> None:
    """Stand-ins for imports the published files make but the fixtures do not use."""
    sys.modules["torchvision.models.utils"] = stub("torchvision.models.utils",
                                                   load_state_dict_from_url=torch.hub.load_state_dict_from_url)
    sys.modules.setdefault("addict", stub("addict", Dict=dict))
    if importlib.util.find_spec("sklearn") is None:
        skm = stub("sklearn.metrics", confusion_matrix=None)
        sys.modules["sklearn"], sys.modules["sklearn.metrics"] = stub("sklearn", metrics=skm), skm


def shapes_of(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def fixed_input(shape: tuple[int, ...], seed: int = INPUT_SEED) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def deeplab_v2(root: Path, meta: dict) -> None:
    """Key lists of DeepLabV2_ResNet101_MSC(21) and DeepLabV1_ResNet101(91); forward outputs; SGD groups;
    label resizing; CRF; the poly schedule."""
    sys.path.insert(0, str(root))
    from libs.models import DeepLabV1_ResNet101, DeepLabV2_ResNet101_MSC
    from libs.utils import DenseCRF, PolynomialLR
    train = load_file_module("drs_deeplab_train", root / "train.py")
    # resize_labels ends in torch.LongTensor(list of float32 arrays), which current torch rejects; give its module
    # a torch whose LongTensor does that conversion (the function uses nothing else from torch).
    train.torch = types.SimpleNamespace(LongTensor=lambda arrays: torch.from_numpy(np.stack(arrays).astype(np.int64)))

    model = DeepLabV2_ResNet101_MSC(n_classes=21)
    shapes = shapes_of(model)
    save_keys("deeplab_v2_keys", {**meta, "module": "libs.models.DeepLabV2_ResNet101_MSC(n_classes=21)",
                                  "note": "the layout of kazuto1011's released "
                                          "deeplabv2_resnet101_msc-vocaug-20000.pth and of DRS's "
                                          "Deeplabv2_pseudo_segmentation_labels.pth (the MSC module's state_dict)"},
              shapes)
    save_keys("deeplab_v1_coco_keys", {**meta, "module": "libs.models.DeepLabV1_ResNet101(n_classes=91)",
                                       "note": "the layout of deeplabv1_resnet101-coco.pth (convert.py, coco)"},
              shapes_of(DeepLabV1_ResNet101(n_classes=91)))
    model.load_state_dict(random_state_dict(shapes, SEED))

    x = fixed_input((1, 3, 65, 65))
    with torch.no_grad():
        model.eval()
        fused = model(x)
        model.train()
        model.base.freeze_bn()  # the published recipe trains with BN in eval mode
        outs = model(x)

    groups = {key: {id(p) for p in train.get_params(model, key)} for key in ("1x", "10x", "20x")}
    names = {key: np.asarray([n for n, p in model.named_parameters() if id(p) in ids]) for key, ids in groups.items()}

    labels = torch.from_numpy(np.random.default_rng(SEED).integers(0, 21, (2, 41, 41)))
    labels[:, :5] = 255
    resized = {f"labels_{h}": train.resize_labels(labels, (h, h)).numpy() for h in (41, 31, 21)}

    save_fixture("deeplab_v2", {**meta, "seed": SEED, "input_seed": INPUT_SEED,
                                "forward": "fused: eval (MSC max-fused logits); out_*: train with base.freeze_bn(), "
                                           "[1.0, 0.5, 0.75, max]"},
                 x=x.numpy(), fused=fused.numpy(), out_full=outs[0].numpy(), out_s050=outs[1].numpy(),
                 out_s075=outs[2].numpy(), out_max=outs[3].numpy(),
                 group_1x=names["1x"], group_10x=names["10x"], group_20x=names["20x"],
                 labels=labels.numpy(), **resized)

    rng = np.random.default_rng(SEED)
    img = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)
    img[:, 16:] //= 4
    logits = torch.from_numpy(rng.normal(0, 2, (5, 4, 5)).astype(np.float32))
    probs = torch.softmax(torch.nn.functional.interpolate(logits[None], size=(24, 32), mode="bilinear",
                                                          align_corners=False)[0], 0).numpy()
    crf = DenseCRF(iter_max=10, pos_w=3, pos_xy_std=1, bi_w=4, bi_xy_std=67, bi_rgb_std=3)

    sched_steps = np.asarray([0, 1, 9, 10, 11, 19, 20, 4999, 5000, 9989, 9990, 9999])
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=2.5e-4)
    sched = PolynomialLR(opt, step_size=10, iter_max=10000, power=0.9)
    used = []
    for it in range(1, 10001):  # the published loop: optimiser step at `it`, then scheduler.step(epoch=it)
        used.append(opt.param_groups[0]["lr"])
        sched.step(epoch=it)
    save_fixture("deeplab_misc", {**meta, "crf": "libs.utils.DenseCRF(10, 3, 1, 4, 67, 3) on softmax probabilities",
                                  "poly": "libs.utils.PolynomialLR(step_size=10, iter_max=10000, power=0.9), base lr "
                                          "2.5e-4; lr_used[i] = the lr of 0-based iteration sched_steps[i]"},
                 crf_img=img, crf_probs=probs, crf_q=crf(img, probs).astype(np.float32),
                 sched_steps=sched_steps, lr_used=np.asarray(used)[sched_steps])
    sys.path.remove(str(root))


def deeplab_v3plus(root: Path, meta: dict) -> None:
    """Key list of deeplabv3plus_resnet101(21); eval outputs at output stride 16 and 8; one training-mode pass
    (batch statistics, VainF's BN momentum 0.01 on the backbone, dropout off) with the updated BN statistics;
    VainF's PolyLR."""
    sys.path.insert(0, str(root))
    import network
    sched_mod = load_file_module("vainf_scheduler", root / "utils" / "scheduler.py")

    meta = {**meta, "module": "network.deeplabv3plus_resnet101(num_classes=21, output_stride=os, "
                              "pretrained_backbone=False)"}
    x = fixed_input((1, 3, 65, 65))  # the same input as deeplab_v2.npz's x (not stored twice)
    arrays = {}
    for os_ in (16, 8):
        model = network.deeplabv3plus_resnet101(num_classes=21, output_stride=os_, pretrained_backbone=False)
        shapes = shapes_of(model)
        if os_ == 16:
            save_keys("deeplab_v3plus_keys", meta, shapes)
        model.load_state_dict(random_state_dict(shapes, SEED))
        model.eval()
        with torch.no_grad():
            out = model(x)
        arrays[f"os{os_}_sub"] = out[:, :, ::4, ::4].numpy()
        arrays[f"os{os_}_mean"] = out.mean((2, 3)).numpy()
        arrays[f"os{os_}_argmax"] = out.argmax(1).numpy().astype(np.uint8)
        if os_ == 16:
            for m in model.backbone.modules():  # VainF's main.py: utils.set_bn_momentum(model.backbone, 0.01)
                if isinstance(m, nn.BatchNorm2d):
                    m.momentum = 0.01
            for m in model.modules():
                if isinstance(m, nn.Dropout):
                    m.p = 0.0
            xt = fixed_input((2, 3, 33, 33), INPUT_SEED + 1)
            model.train()
            with torch.no_grad():
                arrays["train_x"] = xt.numpy()
                arrays["train_out"] = model(xt)[:, :, ::4, ::4].numpy()
            arrays["train_bn1_mean"] = model.backbone.bn1.running_mean.numpy().copy()
            arrays["train_project_bn_mean"] = model.classifier.project[1].running_mean.numpy().copy()

    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.05)
    sched = sched_mod.PolyLR(opt, 20000, power=0.9)
    steps = np.asarray([0, 1, 2, 100, 10000, 19998, 19999])
    used = []
    for _ in range(20000):
        used.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    arrays["sched_steps"], arrays["lr_used"] = steps, np.asarray(used)[steps]
    outputs = ("input: deeplab_v2.npz's x; osN_sub = logits[:, :, ::4, ::4] of the 65x65 eval output; osN_mean = "
               "spatial means; osN_argmax = argmax map; train_* = os16, train mode, dropout 0, backbone BN momentum "
               "0.01, train_out = logits[:, :, ::4, ::4]")
    save_fixture("deeplab_v3plus", {**meta, "seed": SEED, "input_seed": INPUT_SEED, "outputs": outputs,
                                    "poly": "utils.scheduler.PolyLR(max_iters=20000, power=0.9), base lr 0.05"},
                 **arrays)
    sys.path.remove(str(root))


def rsepm_multiscale(root: Path, meta: dict) -> None:
    """RS+EPM's ``forward_with_scales`` (scales 1.0/0.5/1.5/2.0, flip; its own forward: logits resized to the
    input) around a fixed stride-4 network (4x4/4 conv, 3 -> 5 classes)."""
    sys.path.insert(0, str(root))
    from core import networks

    net = nn.Conv2d(3, 5, 4, stride=4)
    net.load_state_dict(random_state_dict(shapes_of(net), SEED))

    class Wrapped(nn.Module):
        """The published DeepLabv3_Plus.forward around ``net``: model -> (C2, C5), aspp identity, decoder = net."""

        def __init__(self):
            super().__init__()
            self.model = lambda x: (None, x, None, None, x)
            self.aspp = nn.Identity()
            self.decoder = lambda deep, low: net(deep)

        forward = networks.DeepLabv3_Plus.forward
        forward_with_scales = networks.DeepLabv3_Plus.forward_with_scales

    x = fixed_input((3, 37, 45))
    scales = [1.0, 0.5, 1.5, 2.0]
    with torch.no_grad():
        probs = Wrapped().forward_with_scales(x, (37, 45), scales=scales, hflip=True)["pred_mask"]
    save_fixture("deeplab_rsepm_ms", {**meta, "seed": SEED, "input_seed": INPUT_SEED, "scales": scales,
                                      "call": "core.networks.DeepLabv3_Plus.forward_with_scales(image, (37, 45), "
                                              "scales, hflip=True) around Conv2d(3, 5, 4, stride=4)"},
                 x=x.numpy(), probs=probs.numpy())
    sys.path.remove(str(root))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--published", required=True, type=Path, help="checkout of qjadud1994/DRS")
    ap.add_argument("--rsepm", type=Path, default=None, help="checkout of RecurSeed_and_EdgePredictMix "
                                                             "(default: RSEPM beside --published)")
    args = ap.parse_args()
    rsepm = args.rsepm or args.published.parent / "RSEPM"
    torch.set_num_threads(1)
    stub_modules()
    base = {"published": "qjadud1994/DRS", "commit": commit_of(args.published), "upstream": UPSTREAM}
    deeplab_v2(args.published / "DeepLab-V2-PyTorch", {**base, "path": "DeepLab-V2-PyTorch"})
    deeplab_v3plus(args.published / "DeepLabV3Plus-Pytorch", {**base, "path": "DeepLabV3Plus-Pytorch"})
    rsepm_multiscale(rsepm, {"published": "shjo-april/RecurSeed_and_EdgePredictMix", "commit": commit_of(rsepm),
                             "path": "core/networks.py"})


if __name__ == "__main__":
    main()
