"""Regenerate the IRN parity fixtures by running the published IRN code (jiwoon-ahn/irn) on CPU.

    python -m tests.parity.make_fixtures_irn --published /work/published/irn \
        --chainercv /work/.mirror/chainer+chainercv/repo

Not run by CI: the tests (tests/parity/test_parity_irn.py) only read what this writes. Every stage runs the
published functions themselves (make_cam's, cam_to_ir_label's and make_sem_seg_labels' ``_work`` loops,
train_irn's ``run``, eval_cam's and eval_sem_seg's ``run``) on small synthetic inputs with weights from
``random_state_dict``; CUDA calls, the ImageNet download, image reading and the data loaders are replaced
at run time (tests/parity/helpers.py). chainercv does not install on Python 3.11: only its pure-Python
file chainercv/evaluations/eval_semantic_segmentation.py is imported (from a checkout or a bare git
repository, --chainercv), with a stand-in for the ``six`` it imports and for the VOC dataset class. The
published commit (and chainercv's) is recorded in each fixture's meta.
"""
from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
import types
from pathlib import Path

import numpy as np
import torch

from tests.parity import helpers as H
from tests.parity.scenes import ir_label_band, scene
from tests.parity.util import save_fixture, save_keys

CAM_SEED, IRN_SEED = 1, 2
IDS = ("2007_000032", "2007_000039")  # two images of different sizes
SIZES = ((61, 80), (72, 53))
N_CLASSES = (2, 1)  # classes per image, picked where the random classifier's maps have structure
SCALES = (1.0, 0.5, 1.5, 2.0)
IRN_CROP = 128  # train_irn's crop (PathIndex on crop/4) and EdgeDisplacement's canvas, 512 in IRN
CHAINERCV_FILE = "chainercv/evaluations/eval_semantic_segmentation.py"


def _multi_hot(classes: list[int]) -> np.ndarray:
    y = np.zeros(20, np.float32)
    y[classes] = 1
    return y


def _load_chainercv_eval(path: Path, tmp: Path) -> tuple[types.ModuleType, str]:
    """chainercv's semantic-segmentation evaluation module file, from a work tree or a bare repository.
    Returns (module, commit)."""
    if (path / CHAINERCV_FILE).is_file():
        src = path / CHAINERCV_FILE
        rev = subprocess.run(["git", "-C", str(path), "rev-parse", "HEAD"], capture_output=True,
                             text=True).stdout.strip()
    else:
        rev = subprocess.run(["git", "--git-dir", str(path), "rev-parse", "HEAD"], capture_output=True, text=True,
                             check=True).stdout.strip()
        src = tmp / "eval_semantic_segmentation.py"
        src.write_bytes(subprocess.run(["git", "--git-dir", str(path), "show", f"{rev}:{CHAINERCV_FILE}"],
                                       capture_output=True, check=True).stdout)
    sys.modules.setdefault("six", types.SimpleNamespace(moves=types.SimpleNamespace(zip=zip)))
    spec = importlib.util.spec_from_file_location("chainercv_eval_semantic_segmentation", src)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod, rev or "unknown"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--published", type=Path, required=True, help="checkout of jiwoon-ahn/irn")
    p.add_argument("--chainercv", type=Path, required=True, help="checkout or bare git repository of chainer/chainercv")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    root = a.published.resolve()
    commit = H.published_commit(root)
    tmp = Path(tempfile.mkdtemp(prefix="irn_parity_"))
    cv_eval, cv_commit = _load_chainercv_eval(a.chainercv.resolve(), tmp)
    # the published eval steps import chainercv's dataset and evaluation modules: stand-ins, filled below
    cv_datasets = types.ModuleType("chainercv.datasets")
    cv_datasets.VOCSemanticSegmentationDataset = _EvalGT
    sys.modules.update({"chainercv": types.ModuleType("chainercv"), "chainercv.datasets": cv_datasets,
                        "chainercv.evaluations": cv_eval})
    m = H.import_published(root, ["net.resnet50", "net.resnet50_cam", "net.resnet50_irn", "misc.imutils",
                                  "misc.indexing", "misc.pyutils", "voc12.dataloader", "step.make_cam",
                                  "step.cam_to_ir_label", "step.train_irn", "step.make_sem_seg_labels",
                                  "step.eval_cam", "step.eval_sem_seg"])
    H.run_on_cpu()
    H.without_imagenet(m["net.resnet50"])
    dl = m["voc12.dataloader"]
    meta = {"published": "jiwoon-ahn/irn", "commit": commit, "cam_seed": CAM_SEED, "irn_seed": IRN_SEED,
            "irn_edge_gain": H.EDGE_GAIN, "irn_edge_shift": H.EDGE_SHIFT}

    # ---- inputs: two scenes; the published loaders read them through a stand-in imageio
    rng = np.random.default_rng(0)
    images = {i: scene(rng, h, w, [0, 1, 2])[0] for i, (h, w) in zip(IDS, SIZES)}
    H.serve_images(dl, images)
    id_list = str(H.write_id_list(tmp / "ids.txt", IDS))

    # ---- key lists
    cam_net = m["net.resnet50_cam"].Net()
    save_keys("irn_res50_cam_keys", {**meta, "module": "net.resnet50_cam.Net"},
              {k: tuple(v.shape) for k, v in cam_net.state_dict().items()})
    edge_disp = m["net.resnet50_irn"].EdgeDisplacement(crop_size=IRN_CROP)
    irn_shapes = {k: tuple(v.shape) for k, v in edge_disp.state_dict().items()}
    index = m["misc.indexing"].PathIndex(10, (IRN_CROP // 4,) * 2)
    with_buffers = m["net.resnet50_irn"].AffinityDisplacementLoss(index)
    extra = [k for k in with_buffers.state_dict() if k not in irn_shapes]
    assert set(with_buffers.state_dict()) - set(extra) == set(irn_shapes)
    save_keys("irn_res50_irn_keys", {**meta, "module": "net.resnet50_irn.EdgeDisplacement (= Net; "
                                     "AffinityDisplacementLoss adds the buffers in dropped_buffers)",
                                     "dropped_buffers": extra}, irn_shapes)

    # ---- stage 1-2: CAM forward and make_cam's seeds
    cam = m["net.resnet50_cam"].CAM()
    cam_sd, cam_first = H.tied_random_state_dict(cam, CAM_SEED)
    cam.load_state_dict(cam_sd, strict=True)
    cam.eval()
    cam_net.load_state_dict(cam_sd, strict=True)
    for i in IDS:
        dl.cls_labels_dict[int(i.replace("_", ""))] = np.zeros(20, np.float32)
    msf = dl.VOC12ClassificationDatasetMSF(id_list, voc12_root="voc", scales=SCALES)
    item = msf[0]
    x = torch.from_numpy(item["img"][0])  # scale 1.0: (2, 3, H, W) image and its flip
    with torch.no_grad():
        cam_forward = cam(x)
        logits = cam_net(x)
    views = {f"view_digest_{j}_{s}": np.asarray(H.digest(msf[j]["img"][k]))
             for j in range(len(IDS)) for k, s in enumerate(SCALES)}
    cam_dir = tmp / "cam"
    cam_dir.mkdir()

    def make_cam(labels: dict[str, np.ndarray]) -> None:
        for i, y in labels.items():
            dl.cls_labels_dict[int(i.replace("_", ""))] = y
        data = dl.VOC12ClassificationDatasetMSF(id_list, voc12_root="voc", scales=SCALES)
        m["step.make_cam"]._work(0, cam, [data], H.args_namespace(num_workers=0, cam_out_dir=str(cam_dir)))

    # with random weights any class will do: take those whose seed has both a confident foreground (> 0.30)
    # and a confident background (< 0.05), so that the IR labels and pseudo labels have several values
    make_cam({i: np.ones(20, np.float32) for i in IDS})
    labels = {}
    for i, n in zip(IDS, N_CLASSES):
        hr = np.load(cam_dir / f"{i}.npy", allow_pickle=True).item()["high_res"]
        both = np.minimum((hr > 0.30).mean((1, 2)), (hr < 0.05).mean((1, 2)))
        labels[i] = _multi_hot(sorted(np.argsort(-both, kind="stable")[:n].tolist()))
    make_cam(labels)
    seeds = {}
    for j, i in enumerate(IDS):
        d = np.load(cam_dir / f"{i}.npy", allow_pickle=True).item()
        seeds.update({f"keys_{j}": d["keys"].numpy(), f"cam_{j}": d["cam"].numpy(), f"high_res_{j}": d["high_res"]})
    save_fixture("irn_cam", {**meta, "scales": SCALES, "first_keys": cam_first},
                 **{f"image_{j}": images[i] for j, i in enumerate(IDS)},
                 **{f"label_{j}": labels[i] for j, i in enumerate(IDS)},
                 cam_forward=cam_forward.numpy(), logits=logits.numpy(), **views, **seeds)

    # ---- stage 3: cam_to_ir_label (CRF on), IRN's thresholds
    ir_dir = tmp / "ir_label"
    ir_dir.mkdir()
    fg, bg = 0.30, 0.05
    raw = dl.VOC12ImageDataset(id_list, voc12_root="voc", img_normal=None, to_torch=False)
    m["step.cam_to_ir_label"]._work(0, [raw], H.args_namespace(
        num_workers=2, cam_out_dir=str(cam_dir), ir_label_out_dir=str(ir_dir), conf_fg_thres=fg, conf_bg_thres=bg))
    import imageio.v2 as imageio
    save_fixture("irn_ir_label", {**meta, "conf_fg_thres": fg, "conf_bg_thres": bg},
                 **{f"ir_label_{j}": np.asarray(imageio.imread(ir_dir / f"{i}.png")) for j, i in enumerate(IDS)})

    # ---- stage 4: IRNet outputs and train_irn's four loss terms on one batch
    crops, crop_labels = [], []
    for cls in ([0, 11], [4]):
        img, lab = scene(rng, IRN_CROP, IRN_CROP, cls)
        crops.append(img)
        crop_labels.append(ir_label_band(lab))
    crops, crop_labels = np.stack(crops), np.stack(crop_labels)
    crop_labels[1, -20:] = 255  # a zero-padded crop's label fill
    batch = torch.from_numpy(np.stack([dl.TorchvisionNormalize()(c).transpose(2, 0, 1) for c in crops]))
    record: dict[str, object] = {}

    def build_loss_net(path_index):
        net = m["net.resnet50_irn"].AffinityDisplacementLoss(path_index)
        sd, first = H.irn_random_state_dict(m["net.resnet50_irn"].EdgeDisplacement(), IRN_SEED)
        missing, unexpected = net.load_state_dict(sd, strict=False)
        assert not unexpected and all(k.startswith(("path_indices", "disp_target")) for k in missing)
        with torch.no_grad():
            record["edge_out"], record["dp_out"] = net(batch, False)
        record["path_index"], record["first_keys"] = path_index, first
        return net

    def affinity_pack(*_, **__):
        pi = record["path_index"]
        to_labels = dl.GetAffinityLabelFromIndices(pi.src_indices, pi.dst_indices)
        per = [to_labels(m["misc.imutils"].pil_rescale(lab, 0.25, 0)) for lab in crop_labels]
        return [{"img": batch, "aff_bg_pos_label": torch.stack([t[0] for t in per]),
                 "aff_fg_pos_label": torch.stack([t[1] for t in per]),
                 "aff_neg_label": torch.stack([t[2] for t in per])}]

    class Meter(m["misc.pyutils"].AverageMeter):
        def add(self, values):
            record.setdefault("losses", []).append(dict(values))
            super().add(values)

    loaders = iter([affinity_pack, lambda *a, **k: [{"img": batch}]])
    m["step.train_irn"].DataLoader = lambda *a, **k: next(loaders)(*a, **k)
    m["step.train_irn"].pyutils.AverageMeter = Meter
    sys.modules["parity_irn_network"] = types.SimpleNamespace(AffinityDisplacementLoss=build_loss_net)
    label_dir = tmp / "label"
    label_dir.mkdir()
    m["step.train_irn"].run(H.args_namespace(
        irn_crop_size=IRN_CROP, irn_network="parity_irn_network", train_list=id_list, infer_list=id_list,
        ir_label_out_dir=str(label_dir), voc12_root="voc", irn_batch_size=2, num_workers=0, irn_num_epoches=1,
        irn_learning_rate=0.1, irn_weight_decay=1e-4, irn_weights_name=str(tmp / "res50_irn.pth")))
    (losses,) = record["losses"]
    save_fixture("irn_irnet", {**meta, "crop": IRN_CROP, "radius": 10, "first_keys": record["first_keys"]},
                 crops=crops, crop_labels=crop_labels, edge_out=record["edge_out"].numpy(),
                 dp_out=record["dp_out"].numpy(), pos_aff=np.float64(losses["loss1"]),
                 neg_aff=np.float64(losses["loss2"]), dp_fg=np.float64(losses["loss3"]),
                 dp_bg=np.float64(losses["loss4"]))

    # ---- stage 5: make_sem_seg_labels (EdgeDisplacement, dense walk), IRN's constants
    edge_disp.load_state_dict(H.irn_random_state_dict(edge_disp, IRN_SEED)[0], strict=True)
    edge_disp.eval()
    walks = []
    walk = m["misc.indexing"].propagate_to_edge

    def recording_walk(x, edge, **kw):
        walks.append({"cam": x.clone(), "edge": edge.clone(), "rw": walk(x, edge, **kw), "kw": kw})
        return walks[-1]["rw"]

    m["step.make_sem_seg_labels"].indexing.propagate_to_edge = recording_walk
    loader = m["step.make_sem_seg_labels"].DataLoader
    # the loop slices with np.asarray(pack['size'])[0], a 1-element array: numpy 2 refuses what old numpy
    # took as an index, so the sizes are handed over as 0-d tensors (the same numbers)
    m["step.make_sem_seg_labels"].DataLoader = lambda *a, **k: ({**p, "size": [s[0] for s in p["size"]]}
                                                               for p in loader(*a, **k))
    sem_dir = tmp / "sem_seg"
    sem_dir.mkdir()
    beta, exp_times, bg_thres = 10, 8, 0.25
    m["step.make_sem_seg_labels"]._work(0, edge_disp, [dl.VOC12ClassificationDatasetMSF(id_list, "voc", scales=(1.0,))],
                                        H.args_namespace(num_workers=0, beta=beta, exp_times=exp_times,
                                                         sem_seg_bg_thres=bg_thres, cam_out_dir=str(cam_dir),
                                                         sem_seg_out_dir=str(sem_dir)))
    assert all(w["kw"]["radius"] == 5 for w in walks)
    save_fixture("irn_sem_seg", {**meta, "canvas": IRN_CROP, "beta": beta, "exp_times": exp_times, "radius": 5,
                                 "sem_seg_bg_thres": bg_thres},
                 **{f"boundary_{j}": w["edge"].numpy() for j, w in enumerate(walks)},
                 **{f"rw_{j}": w["rw"].numpy() for j, w in enumerate(walks)},
                 **{f"sem_seg_{j}": np.asarray(imageio.imread(sem_dir / f"{i}.png")) for j, i in enumerate(IDS)})

    # ---- stage 6: eval_cam and eval_sem_seg mIoU on a hand-made set
    gts, cams, keys, preds = _hand_made_eval_set()

    _EvalGT.gts = gts
    eval_dir = tmp / "eval"
    eval_dir.mkdir()
    for j, i in enumerate(_EvalGT(None, None).ids):
        np.save(eval_dir / f"{i}.npy", {"keys": keys[j], "high_res": cams[j]})
        imageio.imwrite(eval_dir / f"{i}.png", preds[j])
    printed: dict[str, list] = {"cam": [], "sem": []}
    m["step.eval_cam"].print = lambda *v, **k: printed["cam"].append(v)
    m["step.eval_sem_seg"].print = lambda *v, **k: printed["sem"].append(v)
    cam_thres = 0.15
    m["step.eval_cam"].run(H.args_namespace(chainer_eval_set="train", voc12_root="voc", cam_out_dir=str(eval_dir),
                                            cam_eval_thres=cam_thres))
    m["step.eval_sem_seg"].run(H.args_namespace(chainer_eval_set="train", voc12_root="voc",
                                                sem_seg_out_dir=str(eval_dir)))
    ((cam_res,),) = printed["cam"]
    (bg_fp, bg_fn), (fg_fp, fg_fn), (sem_res,) = printed["sem"]
    save_fixture("irn_eval", {**meta, "chainercv": "chainer/chainercv", "chainercv_commit": cv_commit,
                              "cam_eval_thres": cam_thres},
                 **{f"gt_{j}": g for j, g in enumerate(gts)}, **{f"high_res_{j}": c for j, c in enumerate(cams)},
                 **{f"keys_{j}": k for j, k in enumerate(keys)}, **{f"pred_{j}": q for j, q in enumerate(preds)},
                 cam_iou=cam_res["iou"], cam_miou=np.float64(cam_res["miou"]), sem_iou=sem_res["iou"],
                 sem_miou=np.float64(sem_res["miou"]),
                 sem_fp_fn=np.array([bg_fp, bg_fn, fg_fp, fg_fn], np.float64))
    print(f"IRN fixtures written from {root} @ {commit}")


class _EvalGT:
    """Stand-in for chainercv's VOCSemanticSegmentationDataset over ``gts`` (ids e0, e1, ...): GT masks with
    255 read as -1, as chainercv does."""

    gts: list[np.ndarray] = []

    def __init__(self, split, data_dir):
        self.ids = [f"e{j}" for j in range(len(self.gts))]

    def __len__(self) -> int:
        return len(self.ids)

    def get_example_by_keys(self, i: int, keys: tuple[int, ...]) -> tuple[np.ndarray]:
        g = self.gts[i].astype(np.int32)
        return (np.where(g == 255, -1, g),)


def _hand_made_eval_set() -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
    """Three small GT masks (classes 0-4, 255 ignored), seeds for them (with a score exactly at the 0.15
    threshold, which goes to background) and pseudo labels (with 255, counted as background)."""
    rng = np.random.default_rng(5)
    gts = [np.array([[0, 0, 1, 1, 255, 0], [0, 1, 1, 1, 255, 0], [3, 3, 1, 0, 0, 0], [3, 3, 0, 0, 4, 4],
                     [3, 255, 0, 0, 4, 4]], np.uint8),
           np.array([[2, 2, 0, 0], [2, 2, 0, 3], [0, 0, 3, 3], [0, 1, 3, 3]], np.uint8),
           np.array([[0, 0, 0], [1, 1, 0], [1, 1, 255], [0, 0, 0], [2, 2, 2], [2, 0, 0]], np.uint8)]
    keys = [np.array([0, 2, 3]), np.array([1, 2]), np.array([0, 1])]
    cams = [rng.uniform(0, 0.4, (len(k),) + g.shape).astype(np.float32) for k, g in zip(keys, gts)]
    cams[0][:, 0, 0] = [np.float32(0.15), 0.1, 0.05]  # a tie with the background plane
    cams[1][1, 2, 2] = 0.9
    preds = [np.where(g == 255, 0, g).astype(np.uint8) for g in gts]
    preds[0][0, :3] = [1, 4, 255]
    preds[1][1:3, 1:3] = 2
    preds[2][4, 0] = 255
    preds[2][5, 1:] = [3, 4]
    return gts, cams, keys, preds


if __name__ == "__main__":
    main()
