"""Regenerate the RIB parity fixtures by running the published RIB code (jbeomlee93/RIB) on CPU.

    python -m tests.parity.make_fixtures_rib --published /work/published/RIB

Not run by CI: tests/parity/test_parity_rib.py only reads what this writes. The published ``gndp2d`` is
called on constructed class maps; the published per-image loop (``obtain_RIB_CAM._work`` with its
``RIB_learn``) runs on one small target image with the full ResNet-50 (weights from ``random_state_dict``),
K steps, and auxiliary batches given explicitly: the loop's DataLoader over ``VOC12RIBDataset`` is replaced
at run time by a list of fixed batches (the same tensors the test hands the toolkit), after the dataset has
built its class-disjoint list, which is recorded. The loss function is wrapped to record each step's pooled
logits and loss. CUDA calls, the ImageNet download and image reading are replaced as for IRN
(tests/parity/helpers.py). Runs: the main one (K steps, no stop), a logit stop and an area stop (thresholds
set from the main run so that each rule fires at a known step), and the scale list in another order.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from tests.parity import helpers as H
from tests.parity.scenes import scene
from tests.parity.util import FIXTURES, save_fixture

CAM_SEED = 3
TARGET = "2007_000032"
TARGET_SIZE = (40, 56)
TARGET_CLASSES = [17, 18]  # the random classifier's maps of these cover little of the target at 0.3 (the area
# stop stays off at RIB's 0.7) and have a positive max at every loss scale (gndp's guard is not involved)
K, BATCH, AUX_CROP = 3, 2, 64  # steps, auxiliary images per step, their size (RIB: 10, 20, 512)
LR = 1e-6  # RIB's VOC lr is 8e-6; one such step on the random classifier flattens its maps (peak 2.2 -> 5.7)
SCALES = (1.0, 0.5, 1.5, 2.0)
TAU = 0.4
# a small pool for the published class-disjoint list (ids with their classes); the target is its first id
POOL = {TARGET: TARGET_CLASSES, "2007_000039": [3], "2007_000063": [17, 7], "2007_000068": [2, 13],
        "2007_000121": [18], "2007_000123": [11], "2007_000129": [1, 14], "2007_000170": [14]}
SAMPLED = 16  # weights stored per tensor


def _multi_hot(classes: list[int]) -> np.ndarray:
    y = np.zeros(20, np.float32)
    y[classes] = 1
    return y


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--published", type=Path, required=True, help="checkout of jbeomlee93/RIB")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    root = a.published.resolve()
    commit = H.published_commit(root)
    tmp = Path(tempfile.mkdtemp(prefix="rib_parity_"))
    sys.argv = ["obtain_RIB_CAM.py", "--cam_out_dir", str(tmp / "cam")]  # it parses its flags on import
    m = H.import_published(root, ["net.resnet50", "net.resnet50_cam", "misc.torchutils", "voc12.dataloader",
                                  "obtain_RIB_CAM"])
    H.run_on_cpu()
    H.without_imagenet(m["net.resnet50"])
    rib, dl = m["obtain_RIB_CAM"], m["voc12.dataloader"]
    meta = {"published": "jbeomlee93/RIB", "commit": commit, "cam_seed": CAM_SEED, "tau": TAU}

    # ---- gndp2d: value and gradient, aux path (per-row labels) and target path (one class set)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 20, 4, 5, generator=g)
    labels = torch.zeros(4, 20)
    for r, cls in enumerate([[3], [0, 7, 19], [5, 6], [2, 9, 16]]):
        labels[r, cls] = 1
    x[3, 9] = -x[3, 9].abs() - 0.1  # a present class whose map is negative everywhere
    x[3, 16] = -x[3, 16].abs()
    x[3, 16, 1, 2] = 0.0  # a present class whose max is exactly 0
    weight = torch.randn(4, 20, generator=g)  # d(sum(weight * z))/dx is the gradient compared
    pooled = {}
    for name, xs, valid, is_rib in (("aux", x, labels, True), ("target", x[:2], torch.nonzero(labels[1])[:, 0], False)):
        xs = xs.clone().requires_grad_(True)
        z = m["misc.torchutils"].gndp2d(xs, valid_cat=valid, score_th=TAU, is_RIB=is_rib)
        (z * weight[:len(z)]).sum().backward()
        pooled.update({f"{name}_z": z.detach().numpy(), f"{name}_grad": xs.grad.numpy()})
    save_fixture("rib_gndp", meta, x=x.numpy(), labels=labels.numpy(), weight=weight.numpy(), **pooled)

    # ---- inputs of the per-image runs
    rng = np.random.default_rng(1)
    target, _ = scene(rng, *TARGET_SIZE, [0, 1])
    aux_images = np.stack([[scene(rng, AUX_CROP, AUX_CROP, [0])[0] for _ in range(BATCH)] for _ in range(K)])
    for i, cls in POOL.items():
        dl.cls_labels_dict[int(i.replace("_", ""))] = _multi_hot(cls)
    H.serve_images(dl, {TARGET: target})
    normalise = dl.TorchvisionNormalize()
    aux_inputs = [torch.from_numpy(np.stack([normalise(im).transpose(2, 0, 1) for im in step])) for step in aux_images]

    model = m["net.resnet50_cam"].CAM()
    theta0, first = H.tied_random_state_dict(model, CAM_SEED)
    model.load_state_dict(theta0, strict=True)
    # each auxiliary image is labelled with the classes (1 or 2, none of the target's) whose raw maps peak
    # highest on it, so that every labelled map stays positive and gndp's guard is not involved
    aux_labels = np.zeros((K, BATCH, 20), np.float32)
    with torch.no_grad():
        for step, batch in enumerate(aux_inputs):
            peaks = model(batch).flatten(2).amax(2)
            peaks[:, TARGET_CLASSES] = -np.inf
            for slot in range(BATCH):
                aux_labels[step, slot, peaks[slot].argsort(descending=True)[:1 + (step + slot) % 2]] = 1
    aux_batches = [{"img": b, "label": torch.from_numpy(lab)} for b, lab in zip(aux_inputs, aux_labels)]
    irn_keys = json.loads((FIXTURES / "irn_res50_cam_keys.json").read_text())["shapes"]
    assert {k: list(v.shape) for k, v in theta0.items()} == irn_keys, "RIB's res50_cam keys differ from IRN's"
    trainable = [k for k in theta0 if k.startswith(("resnet50.layer3", "resnet50.layer4", "classifier"))]
    picks = H.sample_indices({k: tuple(theta0[k].shape) for k in trainable}, SAMPLED, seed=7)

    def run(scales=SCALES, iters=K, stop_th=600.0, explode_ratio=0.7) -> dict:
        """One target through the published loop. Returns the record: per-step logits and losses, the
        pool the published loader would draw from, the seed and the weights afterwards."""
        rec: dict = {"logits": [], "loss": [], "target_loss": [], "cam_1": []}
        loss_fn = rib.raw_logit_loss_supp_others_norm

        def recording_loss(logits, labels):
            loss, target_loss = loss_fn(logits, labels)
            rec["logits"].append(logits.detach().clone())
            rec["loss"].append(loss.item())
            rec["target_loss"].append(target_loss.item())
            return loss, target_loss

        loader = torch.utils.data.DataLoader

        def data_loader(dataset, **kw):
            if isinstance(dataset, dl.VOC12RIBDataset):  # the auxiliary loader: fixed batches instead
                rec["pool"] = [int(n) for n in dataset.img_name_list]
                rec["pool_batches"] = len(loader(dataset, **kw))
                return iter(aux_batches)
            return loader(dataset, **kw)

        def record_scale_1(module, args, kwargs, out):  # the scale-1.0 CAM of each step (area-stop inputs)
            if kwargs.get("cats") is not None and args[0].shape[-2:] == TARGET_SIZE:
                rec["cam_1"].append(out[0].detach().clone())

        rib.raw_logit_loss_supp_others_norm = recording_loss
        rib.DataLoader = data_loader
        hook = model.register_forward_hook(record_scale_1, with_kwargs=True)
        args = rib.args  # RIB_learn and save_npy read the module's own args
        args.cam_scales, args.RIB_iter, args.RIB_batch, args.RIB_lr = scales, iters, BATCH, LR
        args.score_th, args.stop_th, args.explode_ratio, args.train_list = TAU, stop_th, explode_ratio, pool_list
        args.voc12_root, args.num_workers = "voc", 0
        data = dl.VOC12ClassificationDatasetMSF(pool_list, voc12_root="voc", scales=scales)
        target_only = torch.utils.data.Subset(data, [0])
        rib._work(0, model, [target_only], theta0, args)
        hook.remove()
        rib.raw_logit_loss_supp_others_norm, rib.DataLoader = loss_fn, loader
        seed = np.load(Path(args.cam_out_dir) / f"{TARGET}.npy", allow_pickle=True).item()
        rec["seed"] = {"keys": seed["keys"].numpy(), "cam": seed["cam"].numpy(), "high_res": seed["high_res"]}
        rec["weights"] = {k: v.clone() for k, v in model.state_dict().items()}
        rec["args"] = {k: getattr(args, k) for k in ("cam_scales", "RIB_iter", "RIB_batch", "RIB_lr", "score_th",
                                                     "stop_th", "explode_th", "explode_ratio", "cam_weight_decay")}
        return rec

    pool_list = str(H.write_id_list(tmp / "pool.txt", POOL))
    main_run = run()
    assert len(main_run["loss"]) == K, "the main run must take all K steps"
    assert all(torch.equal(main_run["weights"][k], theta0[k]) for k in first if k not in trainable)
    moved = {k: float((main_run["weights"][k] - theta0[k]).abs().max()) for k in trainable}

    # logit stop: a threshold between |target loss| of two steps, so that it fires after a known update
    t = np.abs(main_run["target_loss"])
    stop_at = next((j for j in range(1, K) if t[j] > t[:j].max()), 0)
    stop_th = (t[stop_at] + t[:stop_at].max()) / 2 if stop_at else t[0] / 2
    logit_run = run(stop_th=float(stop_th))
    assert len(logit_run["loss"]) == stop_at + 1

    # area stop (checked from step 1 on, before that step's update): a ratio between the covered shares
    # of steps 1 and 2's scale-1.0 maps when the cover grows, else just below step 1's
    cover = []
    keys = torch.tensor(TARGET_CLASSES)
    for c in main_run["cam_1"]:
        merged = torch.relu(c[0]) + torch.relu(c[1]).flip(-1)
        norm = merged[keys] / (merged[keys].flatten(1).amax(1)[:, None, None] + 1e-5)
        cover.append(float((norm > 0.3).any(0).float().mean()))
    area_at = 2 if K > 2 and cover[2] > cover[1] else 1
    ratio = (cover[1] + cover[2]) / 2 if area_at == 2 else cover[1] - 0.5 / main_run["cam_1"][0][0, 0].numel()
    area_run = run(explode_ratio=ratio)
    assert len(area_run["loss"]) == area_at  # updates taken before the stop

    # the scale list in another order: the published loop takes the area check at index 0 and drops index 1
    # from the loss whatever their scales; the toolkit goes by value
    order_run = run(scales=(0.5, 1.0, 1.5, 2.0), iters=2, explode_ratio=1.0)

    def arrays(prefix: str, rec: dict) -> dict:
        out = {f"{prefix}_{k}": v for k, v in rec["seed"].items()}
        out[f"{prefix}_loss"] = np.array(rec["loss"], np.float64)
        out[f"{prefix}_target_loss"] = np.array(rec["target_loss"], np.float64)
        out[f"{prefix}_logits"] = np.stack([lg.numpy() for lg in rec["logits"]])
        return out

    weights = {f"w_{k}": main_run["weights"][k].flatten()[picks[k]].numpy() for k in trainable}
    save_fixture("rib_run", {**meta, "first_keys": first, "target_size": TARGET_SIZE, "K": K, "batch": BATCH,
                             "aux_crop": AUX_CROP, "lr": LR, "main_args": main_run["args"],
                             "logit_stop_args": logit_run["args"], "logit_stop_updates": len(logit_run["loss"]),
                             "area_stop_args": area_run["args"], "area_stop_updates": len(area_run["loss"]),
                             "area_cover": cover, "order_args": order_run["args"],
                             "weight_digests": {k: H.digest(main_run["weights"][k]) for k in trainable},
                             "max_weight_change": moved},
                 target=target, target_label=_multi_hot(TARGET_CLASSES), aux_images=aux_images, aux_labels=aux_labels,
                 **arrays("main", main_run), **arrays("logit_stop", logit_run), **arrays("area_stop", area_run),
                 **arrays("order", order_run), **weights,
                 **{f"pick_{k}": v for k, v in picks.items()})
    pool_ids = list(POOL)
    save_fixture("rib_aux_pool", {**meta, "batch": BATCH, "ids": pool_ids},
                 labels=np.stack([_multi_hot(c) for c in POOL.values()]),
                 published_disjoint=np.array([pool_ids.index(f"{str(n)[:4]}_{str(n)[4:]}") for n in main_run["pool"]]),
                 published_batches=np.int64(main_run["pool_batches"]))
    print(f"RIB fixtures written from {root} @ {commit}")


if __name__ == "__main__":
    main()
