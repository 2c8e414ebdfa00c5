"""Regenerate the DRS parity fixtures by running the published DRS code (qjadud1994/DRS) on CPU.

    python -m tests.parity.make_fixtures_drs --published /work/published/DRS

Not run by CI. The published models and scripts are imported/run from the given checkout with run-time
patches only (``.cuda()`` is the identity, ``model_zoo.load_url`` returns no weights, ``sklearn`` is a stub,
``collections.Iterable`` is restored for Python 3.10+); nothing of theirs is copied. Writes:

- ``drs_cls_learnable_keys.json``, ``drs_cls_delta_keys.json``, ``drs_refine_keys.json``: the published
  models' state_dict keys and shapes (``models/vgg.py`` with delta 0 and 0.6, ``models/vgg_refine.py``);
- ``drs_net.npz``: both classifiers' logits, raw class maps (``extra_conv4`` output) and normalised CAMs
  (``forward(x, label, size)``), the refinement net's raw and upsampled output, on ``drs_common.net_inputs``
  with ``drs_common.drs_weights``; the meta holds the published lr groups (``get_parameter_groups``) by name;
- ``drs_locmap.npz``: ``scripts/localization_map_gen.py`` run on one image (its model input at each scale,
  sub-sampled, the raw class maps of the label channels at each scale, and the stored uint8 map);
- ``drs_target.npz``: the refinement target built by ``utils/LoadData_refine.py`` (valid loader) from a
  hand-made uint8 localization map with ties;
- ``drs_pseudo.npz``: ``scripts/pseudo_seg_label_gen.py`` run on the same image with a hand-made saliency map
  (the refinement net's raw label-channel outputs at each scale and the written label PNG).

The image is written as PNG bytes under ``JPEGImages/<id>.jpg`` (PIL opens it by content), so both sides
decode the same pixels; the fixture holds the pixels.
"""
from __future__ import annotations

import argparse
import collections
import collections.abc
import importlib
import importlib.machinery
import os
import runpy
import sys
import tempfile
import types
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn as nn
import torch.utils.model_zoo
from PIL import Image

from tests.parity.drs_common import CAM_SIZE, DELTA, NET_SEED, NUM_CLASSES, PUBLISHED, drs_weights, net_inputs
from tests.parity.util import save_fixture, save_keys

IMAGE_ID = "2007_000001"
TARGET_ID = "2007_000002"
IMAGE_HW = (60, 84)
IMAGE_SEED = 23
IMAGE_LABELS = (3, 11)
PSEUDO_HEAD_SCALE, PSEUDO_HEAD_SHIFT = 0.6, -0.5
SUB = 16


def published_commit(root: Path) -> str:
    """The checkout's commit: from COMMITS.txt beside it (``DRS <sha>``), else from git."""
    listing = root.parent / "COMMITS.txt"
    if listing.is_file():
        for line in listing.read_text().splitlines():
            name, _, sha = line.partition(" ")
            if name == root.name:
                return sha.strip()
    import subprocess
    return subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], check=True, capture_output=True,
                          text=True).stdout.strip()


def import_published(root: Path) -> dict[str, types.ModuleType]:
    """Patch what the published code needs on a CPU-only Python 3.11 and import its modules."""
    for name in ("sklearn", "sklearn.metrics"):
        stub = types.ModuleType(name)
        stub.__spec__ = importlib.machinery.ModuleSpec(name, None)
        sys.modules[name] = stub
    sys.modules["sklearn.metrics"].confusion_matrix = None
    collections.Iterable = collections.abc.Iterable
    torch.Tensor.cuda = lambda self, *a, **k: self
    nn.Module.cuda = lambda self, *a, **k: self
    torch.utils.model_zoo.load_url = lambda *a, **k: {}
    sys.path.insert(0, str(root))
    return {n: importlib.import_module(n) for n in ("models.vgg", "models.vgg_refine", "utils.LoadData_refine")}


def shapes_of(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def group_names(model: nn.Module) -> list[list[str]]:
    """The published ``get_parameter_groups`` as lists of parameter names."""
    name = {id(p): n for n, p in model.named_parameters()}
    return [[name[id(p)] for p in g] for g in model.get_parameter_groups()]


def recorder(module: types.ModuleType, record: dict[str, list]) -> Callable:
    """Replace ``module.vgg16`` by a factory whose model records its inputs and its ``extra_conv4`` outputs."""
    factory = module.vgg16

    def build(*a: Any, **k: Any) -> nn.Module:
        m = factory(*a, **k)
        m.register_forward_pre_hook(lambda mod, inp: record["inputs"].append(inp[0].detach().clone()))
        m.extra_conv4.register_forward_hook(lambda mod, inp, out: record["raw"].append(out.detach().clone()))
        return m
    module.vgg16 = build
    return factory


def run_script(root: Path, script: str, module: types.ModuleType, argv: list[str]) -> dict[str, list]:
    """Run ``scripts/<script>`` as __main__ with ``argv``; returns the recorded model inputs and raw outputs."""
    record: dict[str, list] = {"inputs": [], "raw": []}
    factory = recorder(module, record)
    old_argv = sys.argv
    sys.argv = [script] + argv
    try:
        runpy.run_path(str(root / "scripts" / script), run_name="__main__")
    finally:
        sys.argv = old_argv
        module.vgg16 = factory
    return record


def test_image() -> np.ndarray:
    """A smooth, non-square RGB test image (uint8 IMAGE_HW x 3): blurred noise plus a bright blob."""
    g = torch.Generator().manual_seed(IMAGE_SEED)
    noise = torch.rand(1, 3, IMAGE_HW[0] // 6, IMAGE_HW[1] // 6, generator=g)
    img = torch.nn.functional.interpolate(noise, IMAGE_HW, mode="bicubic", align_corners=False)[0]
    yy, xx = torch.meshgrid(torch.arange(IMAGE_HW[0]), torch.arange(IMAGE_HW[1]), indexing="ij")
    blob = torch.exp(-((yy - 20.0) ** 2 + (xx - 55.0) ** 2) / 150.0)
    img = 0.6 * img + 0.4 * blob * torch.tensor([1.0, 0.4, 0.2])[:, None, None]
    return (img.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()


def test_saliency() -> np.ndarray:
    """A saliency map (uint8 IMAGE_HW): a salient disc around the blob, a ramp, and 49/50/51 (the threshold)."""
    yy, xx = np.mgrid[:IMAGE_HW[0], :IMAGE_HW[1]]
    sal = np.where((yy - 20) ** 2 + (xx - 55) ** 2 < 250, 230, 0).astype(np.uint8)
    sal[40:, :30] = (xx[40:, :30] * 4).astype(np.uint8)
    sal[5:8, 5:35] = np.array([49, 50, 51] * 10, np.uint8)
    return sal


def write_voc(root: Path, img: np.ndarray, sal: np.ndarray, target_map: np.ndarray) -> Path:
    """A two-image VOC folder in the published layout; returns the list file (ids with 0-based classes)."""
    for d in ("JPEGImages", "SegmentationClassAug", "saliency_map", "localization_maps"):
        (root / d).mkdir(parents=True, exist_ok=True)
    for i in (IMAGE_ID, TARGET_ID):
        with open(root / "JPEGImages" / f"{i}.jpg", "wb") as f:
            Image.fromarray(img).save(f, format="PNG")
        Image.fromarray(sal).save(root / "saliency_map" / f"{i}.png")
        Image.fromarray(np.zeros(IMAGE_HW, np.uint8)).save(root / "SegmentationClassAug" / f"{i}.png")
    np.save(root / "localization_maps" / f"{TARGET_ID}.npy", target_map)
    lst = root / "list.txt"
    lst.write_text(f"{IMAGE_ID} {' '.join(map(str, IMAGE_LABELS))}\n")
    (root / "target_list.txt").write_text(f"{TARGET_ID} {' '.join(map(str, IMAGE_LABELS))}\n")
    return lst


def target_map() -> np.ndarray:
    """A hand-made uint8 localization map (20, 24, 24) from few levels, so many pixels tie across classes."""
    g = np.random.default_rng(IMAGE_SEED)
    m = g.choice(np.array([0, 0, 64, 128, 200, 255], np.uint8), size=(NUM_CLASSES, 24, 24))
    m[:, :4, :4] = 0
    return m


def net_fixture(pub: dict[str, types.ModuleType], meta: dict) -> None:
    """Key lists and the network outputs on the shared small batch."""
    x, labels = net_inputs()
    out: dict[str, np.ndarray] = {}
    groups: dict[str, list[list[str]]] = {}
    sel = [torch.nonzero(lab)[:, 0] for lab in labels]
    for tag, delta in (("learnable", 0), ("delta", DELTA)):
        model = pub["models.vgg"].vgg16(pretrained=False, delta=delta).eval()
        shapes = shapes_of(model)
        save_keys(f"drs_cls_{tag}_keys", meta, shapes)
        model.load_state_dict(drs_weights(shapes, NET_SEED), strict=True)
        raw = []
        model.extra_conv4.register_forward_hook(lambda mod, inp, o: raw.append(o.detach().clone()))
        with torch.no_grad():
            logits, cam = model(x, labels, size=CAM_SIZE)
        out[f"{tag}_logits"] = logits.numpy()
        out[f"{tag}_raw"] = raw[0].numpy()
        out[f"{tag}_cam"] = torch.stack([cam[b, s] for b, s in enumerate(sel)]).numpy()
        groups[f"{tag}_lr_groups"] = group_names(model)
    model = pub["models.vgg_refine"].vgg16(pretrained=False).eval()
    shapes = shapes_of(model)
    save_keys("drs_refine_keys", meta, shapes)
    model.load_state_dict(drs_weights(shapes, NET_SEED), strict=True)
    raw = []
    model.extra_conv4.register_forward_hook(lambda mod, inp, o: raw.append(o.detach().clone()))
    with torch.no_grad():
        refined = model(x, labels, size=CAM_SIZE)
    out["refine_raw"] = raw[0].numpy()
    out["refine_out"] = torch.stack([refined[b, s] for b, s in enumerate(sel)]).numpy()
    save_fixture("drs_net", {**meta, **groups, "delta": DELTA}, **out)


def run_scripts(pub: dict[str, types.ModuleType], root: Path, img: np.ndarray, sal: np.ndarray,
                tmap: np.ndarray) -> dict[str, Any]:
    """Run the two published scripts and the refinement dataset in a temporary VOC folder. Returns the
    recorded model inputs/outputs of each script, the stored localization map, the label PNG and the target."""
    with tempfile.TemporaryDirectory() as tmp:
        voc = Path(tmp) / "VOC2012"
        lst = write_voc(voc, img, sal, tmap)
        ckpt_cls, ckpt_ref = Path(tmp) / "cls.pth", Path(tmp) / "refine.pth"
        cls_shapes = shapes_of(pub["models.vgg"].vgg16(pretrained=False, delta=0))
        torch.save({"model": drs_weights(cls_shapes, NET_SEED)}, ckpt_cls)
        ref_sd = drs_weights(shapes_of(pub["models.vgg_refine"].vgg16(pretrained=False)), NET_SEED)
        ref_sd["extra_conv4.weight"] = ref_sd["extra_conv4.weight"] * PSEUDO_HEAD_SCALE
        ref_sd["extra_conv4.bias"] = ref_sd["extra_conv4.bias"] + PSEUDO_HEAD_SHIFT
        torch.save({"model": ref_sd}, ckpt_ref)
        common = ["--img_dir", str(voc) + "/", "--test_list", str(lst), "--num_workers", "0"]
        cwd = os.getcwd()
        os.chdir(root)
        try:
            out: dict[str, Any] = {
                "loc": run_script(root, "localization_map_gen.py", pub["models.vgg"],
                                  common + ["--checkpoint", str(ckpt_cls)]),
                "pseudo": run_script(root, "pseudo_seg_label_gen.py", pub["models.vgg_refine"],
                                     common + ["--checkpoint", str(ckpt_ref)])}
        finally:
            os.chdir(cwd)
        out["locmap"] = np.load(voc / "localization_maps" / f"{IMAGE_ID}.npy")
        with Image.open(voc / "refined_pseudo_segmentation_labels" / f"{IMAGE_ID}.png") as im:
            out["label"] = np.array(im)
        args = argparse.Namespace(input_size=320, crop_size=320, test_list=str(voc / "target_list.txt"),
                                  img_dir=str(voc), num_classes=NUM_CLASSES, batch_size=1, num_workers=0)
        out["target"] = pub["utils.LoadData_refine"].valid_data_loader(args).dataset[0][4].numpy()
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--published", required=True, help="checkout of qjadud1994/DRS")
    root = Path(p.parse_args(argv).published).resolve()
    torch.set_num_threads(1)
    commit = published_commit(root)
    pub = import_published(root)
    meta: dict = {"published": PUBLISHED, "commit": commit, "net_seed": NET_SEED}
    net_fixture(pub, meta)

    img, sal, tmap = test_image(), test_saliency(), target_map()
    res = run_scripts(pub, root, img, sal, tmap)
    labels = list(IMAGE_LABELS)
    scales = (256, 320, 384)

    locmap = res["locmap"]
    absent = np.setdiff1d(np.arange(NUM_CLASSES), labels)
    assert locmap.dtype == np.uint8 and locmap.shape == (NUM_CLASSES, 320, 320) and not locmap[absent].any()
    assert all(locmap[c].max() > 200 for c in labels), "a label class has an empty CAM; pick other labels"
    loc_arrays = {"image": img, "labels": np.asarray(labels), "locmap_u8": locmap[labels]}
    for s, v, r in zip(scales, res["loc"]["inputs"], res["loc"]["raw"]):
        assert v.shape[-1] == s
        loc_arrays[f"input{s}_sub"] = v[0, :, ::SUB, ::SUB].numpy()
        loc_arrays[f"input{s}_sum"] = np.float64(v.double().sum())
        loc_arrays[f"cam{s}"] = r[0, labels].numpy()
    save_fixture("drs_locmap", {**meta, "image_id": IMAGE_ID, "input_subsample": SUB,
                                "note": "image pixels written as PNG under JPEGImages/<id>.jpg"}, **loc_arrays)

    save_fixture("drs_target", meta, locmap_u8=tmap, target=res["target"])

    pseudo, salient = res["label"], sal > 50
    assert pseudo.shape == IMAGE_HW
    counts = {"uncovered": int(((pseudo == 255) & salient).sum()),
              "conflict": int(((pseudo == 255) & ~salient).sum()),
              "background": int((pseudo == 0).sum()),
              **{f"class_{c}": int((pseudo == c + 1).sum()) for c in labels}}
    assert all(counts.values()), f"a pseudo-label rule is not exercised: {counts}"
    ps_arrays = {"saliency": sal, "labels": np.asarray(labels), "label": pseudo}
    for s, r in zip(scales, res["pseudo"]["raw"]):
        ps_arrays[f"raw{s}"] = r[0, labels].numpy()
    save_fixture("drs_pseudo", {**meta, "image_id": IMAGE_ID, "head_scale": PSEUDO_HEAD_SCALE,
                                "head_shift": PSEUDO_HEAD_SHIFT, "counts": counts}, **ps_arrays)
    print("pseudo label pixel counts:", counts)

if __name__ == "__main__":
    main()
