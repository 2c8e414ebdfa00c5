"""Regenerate the RS+EPM parity fixtures by running the released code on CPU (not run by CI).

    python -m tests.parity.make_fixtures_rsepm --published /work/published/RSEPM --first /work/published/RSEPM_first

``--published`` is a checkout of shjo-april/RecurSeed_and_EdgePredictMix (df538e2: network, PAMR, the
inference and pseudo-label scripts), ``--first`` one of its first commit 4fbc05c1 (SCG, ``core/inferences.py``).
The released code is imported as is; at run time this script turns ``.cuda()`` and ``.to(cuda)`` into no-ops,
replaces the ImageNet download by an empty dict (the weights come from ``random_state_dict``), stubs the
optional ``cmapy`` import, runs ``joblib.Parallel`` sequentially and flattens the palette array the
convert script hands to Pillow (today's Pillow no longer accepts a 2-D array). The two scripts ``infer_rsepm.py`` and
``convert_seed_to_pseudo_masks.py`` run unmodified (``runpy``, their own flag defaults) on a one-image
dataset in their folder layout inside a temporary directory.

Writes ``tests/parity/fixtures/rsepm_keys.json``, ``rsepm101_keys.json`` and ``rsepm_{net,scg,pamr,pipeline}.npz``.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import pickle
import runpy
import sys
import tempfile
import types
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from PIL import Image
from torch.utils import model_zoo

from tests.parity.util import random_state_dict, save_fixture, save_keys

WEIGHT_SEED = 0
NUM_CLASSES = 20
TAGS = ("dog", "person")  # VOC classes 12 and 15 (0-based 11 and 14)
IMAGE_HW = (45, 61)
PAMR_CONFIGS = {"default": (1, [1]), "wseg": (10, [1, 2, 4, 8, 12, 24])}


def commit_of(path: Path) -> str:
    """The commit a read-only checkout was taken at, from COMMITS.txt beside it (``NAME commit`` lines)."""
    listing = path.parent / "COMMITS.txt"
    if listing.is_file():
        for line in listing.read_text().splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[0] == path.name:
                return parts[1]
    raise SystemExit(f"{path}: no commit recorded for it in {listing}")


def patch_runtime() -> None:
    """Make the released GPU code run on the CPU without downloads or optional packages."""
    torch.Tensor.cuda = lambda self, *a, **k: self
    nn.Module.cuda = lambda self, *a, **k: self
    module_to = nn.Module.to

    def to(self, *args, **kwargs):
        if args and isinstance(args[0], torch.device) and args[0].type == "cuda":
            return self
        return module_to(self, *args, **kwargs)

    nn.Module.to = to
    model_zoo.load_url = lambda *a, **k: {}
    sys.modules.setdefault("cmapy", types.ModuleType("cmapy"))
    # the released code passes a (256, 3) array, which Pillow 8.1 took and today's Pillow rejects
    putpalette = Image.Image.putpalette
    Image.Image.putpalette = lambda self, data, *a: putpalette(self, np.asarray(data).reshape(-1).tolist(), *a)
    joblib = types.ModuleType("joblib")
    joblib.delayed = lambda f: (lambda *a, **k: (f, a, k))
    joblib.Parallel = lambda **kw: (lambda jobs: [f(*a, **k) for f, a, k in jobs])
    sys.modules["joblib"] = joblib


def load_file(name: str, path: Path) -> types.ModuleType:
    """Import one released file under its own module name (the first commit's ``core`` would clash)."""
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def shapes_of(module: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def released_net(networks, backbone: str = "resnet50") -> tuple[nn.Module, dict[str, tuple[int, ...]]]:
    net = networks.RSEPM(backbone, NUM_CLASSES, class_fn="sigmoid", output_stride=16, feature_size=256)
    return net, shapes_of(net)


def make_net(networks) -> dict[str, np.ndarray]:
    net, shapes = released_net(networks)
    net.load_state_dict(random_state_dict(shapes, WEIGHT_SEED), strict=True)
    net.eval()
    x = torch.randn(2, 3, 33, 47, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = net(x, with_decoder=True)
    return dict(x=x.numpy(), cams=out["cams"].numpy(), cls_logits=out["cls_logits"].numpy(),
                seg_logits=out["seg_logits"].numpy())


def make_scg(first: Path) -> dict[str, np.ndarray]:
    """Structured inputs: 3 region types with prototype features plus noise (post-ReLU, like a trunk's), so the
    correlations straddle the 0.5 threshold; class maps with fg/bg anchors, one class without either."""
    inferences = load_file("rsepm_first_inferences", first / "core" / "inferences.py")
    rng = np.random.default_rng(2)
    b, h, w = 2, 7, 9
    region = np.zeros((b, h, w), np.int64)
    region[0, :, 4:] = 1
    region[0, 4:, 6:] = 2
    region[1, 2:6, 2:7] = 1
    region[1, :, 7:] = 2
    feats = []
    for c in (16, 24, 32, 48):
        proto = rng.normal(size=(3, c))
        f = proto[region] + 0.8 * rng.normal(size=(b, h, w, c))
        feats.append(np.maximum(f, 0).transpose(0, 3, 1, 2).astype(np.float32))
    cams = np.clip(rng.uniform(-0.05, 0.5, size=(b, 3, h, w)), 0, 1).astype(np.float32)
    cams[:, 0] *= (region == 1)
    cams[:, 0] += 0.6 * (region == 1) * rng.uniform(size=(b, h, w)) ** 3
    cams[:, 1] = 0.2 * (region != 0) + 0.01   # no fg anchor; bg anchors only in region 0
    cams[:, 2] = np.clip(cams[:, 2] + 0.1, 0, 1)  # no bg anchor
    for b_, c_ in ((0, 0), (1, 2)):  # values on and just beyond both anchor thresholds (both inclusive)
        cams[b_, c_, 0, :4] = (0.05, 0.3, 0.0501, 0.2999)
    cams = cams.astype(np.float32)
    tf = [torch.from_numpy(f) for f in feats]
    s = inferences.SCG(first_th=0.50, second_th=0.10, foreground_th=0.30, background_th=0.05)
    s.to(torch.device("cpu"))
    with torch.no_grad():
        hsc = s.generate_HSC(tf)
        scm = s(torch.from_numpy(cams), tf)
    return dict(cams=cams, f2=feats[0], f3=feats[1], f4=feats[2], f5=feats[3], hsc=hsc.numpy(), scm=scm.numpy())


def make_pamr(first: Path) -> dict[str, np.ndarray]:
    """An image with two regions, a soft edge and noise; random masks; both PAMR configurations."""
    from core.refinements import PAMR
    first_pamr = load_file("rsepm_first_pamr", first / "core" / "refinements" / "pamr.py").PAMR
    rng = np.random.default_rng(3)
    b, h, w = 2, 20, 26
    yy, xx = np.mgrid[:h, :w]
    image = np.stack([np.stack([(xx > 10 + 3 * i).astype(np.float32) * (1 + i)] * 3) for i in range(b)])
    image = (image + 0.2 * rng.normal(size=image.shape)).astype(np.float32)
    image[:, 1] += (yy / h).astype(np.float32)
    masks = rng.uniform(size=(b, 4, h, w)).astype(np.float32)
    out = dict(image=image, masks=masks)
    with torch.no_grad():
        for name, (iters, dil) in PAMR_CONFIGS.items():
            got = PAMR(num_iter=iters, dilations=dil)(torch.from_numpy(image), torch.from_numpy(masks))
            again = first_pamr(num_iter=iters, dilations=dil)(torch.from_numpy(image), torch.from_numpy(masks))
            assert torch.allclose(got, again, atol=1e-6), "the two released PAMR versions disagree"
            out[name] = got.numpy()
    return out


def toy_image() -> np.ndarray:
    """uint8 (45, 61, 3): a textured background, an ellipse and a rectangle, noise."""
    rng = np.random.default_rng(4)
    h, w = IMAGE_HW
    yy, xx = np.mgrid[:h, :w]
    img = np.stack([60 + 40 * np.sin(xx / 5), 90 + 30 * np.cos(yy / 4), 70 + 0 * xx], -1)
    img[((yy - 20) / 12) ** 2 + ((xx - 18) / 14) ** 2 < 1] = (200, 120, 60)
    img[8:40, 38:55] = (40, 60, 190)
    img = img + rng.normal(0, 8, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def write_dataset(root: Path, image: np.ndarray) -> None:
    """The released folder layout for one image id 'x' in train and validation (the PNG keeps the pixels
    exact; PIL reads it by content despite the .jpg name)."""
    h, w = image.shape[:2]
    objs = "".join(f"<object><name>{t}</name><difficult>0</difficult><bndbox><xmin>1</xmin><ymin>1</ymin>"
                   f"<xmax>{w - 2}</xmax><ymax>{h - 2}</ymax></bndbox></object>" for t in TAGS)
    xml = f"<annotation><size><width>{w}</width><height>{h}</height><depth>3</depth></size>{objs}</annotation>"
    for domain in ("train", "validation"):
        (root / domain / "image").mkdir(parents=True)
        (root / domain / "xml").mkdir()
        Image.fromarray(image).save(root / domain / "image" / "x.jpg", format="PNG")
        (root / domain / "xml" / "x.xml").write_text(xml)


@contextlib.contextmanager
def argv_cwd(argv: list[str], cwd: Path):
    old_argv, old_cwd = sys.argv, os.getcwd()
    sys.argv = argv
    os.chdir(cwd)
    try:
        yield
    finally:
        sys.argv = old_argv
        os.chdir(old_cwd)


def make_pipeline(published: Path, networks) -> dict[str, np.ndarray]:
    """Run infer_rsepm.py (train: GT classes; validation: --conf_th 0.34) and convert_seed_to_pseudo_masks.py."""
    from core import refinements
    image = toy_image()
    captured: dict[str, list] = {"ms": [], "crf": []}
    forward_with_scales = networks.RSEPM.forward_with_scales
    crf_call = refinements.DenseCRF.__call__

    def record_ms(self, **kw):
        out = forward_with_scales(self, **kw)
        captured["ms"].append(out["pred_class"].numpy().copy())
        return out

    def record_crf(self, img, probmap, *a):
        captured["crf"].append(img.copy())
        return crf_call(self, img, probmap, *a)

    networks.RSEPM.forward_with_scales = record_ms
    refinements.DenseCRF.__call__ = record_crf
    out = dict(image=image)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_dataset(tmp / "VOC2012", image)
        work = tmp / "work"
        (work / "experiments" / "models" / "T").mkdir(parents=True)
        (work / "data").symlink_to(published / "data")
        _, shapes = released_net(networks)
        torch.save(random_state_dict(shapes, WEIGHT_SEED), work / "experiments" / "models" / "T" / "last.pth")
        common = ["--root_dir", str(tmp / "VOC2012") + "/", "--tag", "T"]
        for domain, extra in (("train", []), ("validation", ["--conf_th", "0.34"])):
            with argv_cwd(["infer_rsepm.py", "--domain", domain, *common, *extra], work):
                runpy.run_path(str(published / "infer_rsepm.py"), run_name="__main__")
            with argv_cwd(["convert_seed_to_pseudo_masks.py", "--domain", domain, *common], work):
                runpy.run_path(str(published / "convert_seed_to_pseudo_masks.py"), run_name="__main__")
            with open(work / "experiments" / "predictions" / "T" / domain / "x.pkl", "rb") as f:
                pred = pickle.load(f)
            with Image.open(work / "experiments" / "pseudo-labels" / "T" / domain / "x.png") as im:
                out[f"{domain}_palette"] = np.asarray(im.getpalette(), np.uint8).reshape(-1, 3)
                out[f"{domain}_label"] = np.array(im)
            out[f"{domain}_keys"] = np.asarray(pred["keys"], np.int64)
            out[f"{domain}_seed"] = np.asarray(pred["seed"], np.float32)
            out[f"{domain}_pred_class"] = captured["ms"][-1]
            out[f"{domain}_crf_image"] = captured["crf"][-1]
    networks.RSEPM.forward_with_scales = forward_with_scales
    refinements.DenseCRF.__call__ = crf_call
    labels = np.zeros(NUM_CLASSES, np.float32)
    labels[[11, 14]] = 1
    out["labels"] = labels
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--published", required=True, type=Path, help="checkout of RecurSeed_and_EdgePredictMix (df538e2)")
    p.add_argument("--first", required=True, type=Path, help="checkout of its first commit (4fbc05c1)")
    args = p.parse_args(argv)
    published, first = args.published.resolve(), args.first.resolve()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    patch_runtime()
    sys.path.insert(0, str(published))
    from core import networks

    meta = {"repo": "shjo-april/RecurSeed_and_EdgePredictMix", "commit": commit_of(published),
            "first_commit": commit_of(first), "weight_seed": WEIGHT_SEED, "num_classes": NUM_CLASSES}
    for name, backbone in (("rsepm_keys", "resnet50"), ("rsepm101_keys", "resnet101")):
        save_keys(name, {**meta, "model": f"core/networks.py: RSEPM('{backbone}', {NUM_CLASSES})"},
                  released_net(networks, backbone)[1])
    save_fixture("rsepm_net", {**meta, "what": "RSEPM('resnet50').eval() on x"}, **make_net(networks))
    save_fixture("rsepm_scg", {**meta, "what": "first commit core/inferences.py SCG(0.50, 0.10, 0.30, 0.05)"},
                 **make_scg(first))
    save_fixture("rsepm_pamr", {**meta, "what": "core/refinements/pamr.py PAMR", "configs": PAMR_CONFIGS},
                 **make_pamr(first))
    save_fixture("rsepm_pipeline", {**meta, "what": "infer_rsepm.py + convert_seed_to_pseudo_masks.py, image x",
                                    "tags": list(TAGS)}, **make_pipeline(published, networks))


if __name__ == "__main__":
    main()
