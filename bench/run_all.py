"""Every step's throughput: the toolkit against an IRN-style execution of the same algorithm on the same
inputs in the same run, the ratio, peak memory, and the projected wall time of the VOC pipeline.

    python -m bench.run_all [--device auto] [--full] [--amp off|bf16] [--channels_last False|True]
                            [--images N] [--walks N] [--steps N] [--rib_images N]

Reference (IRN style): one image per forward pass, fp32, NCHW; the dense n x n random walk
(misc.randomwalk.dense_random_walk); IRNet's pair labels built per sample on the CPU with NumPy
(IRN's GetAffinityLabelFromIndices) and shipped to the device, path affinities by IRN's max_pool2d gather;
dense CRF in one process. Toolkit: the steps' own code (batches of same-size images, stencil walk,
on-device pair labels, CRF process pool of all cores), with --amp and --channels_last (default: the
toolkit's defaults). Both run on the same random or toy inputs; data loading is timed for make_cam only
(both paths decode JPEGs in 2 workers), file writing nowhere.

Peak memory of one call (random walk, train_irn step): on CUDA torch.cuda.max_memory_allocated above
the allocation before the call; on CPU the growth of the process's peak resident set size during the
call (Linux VmHWM, reset through /proc/self/clear_refs), with glibc's mmap threshold pinned at 128 KiB so
that every large buffer is mapped when allocated and unmapped when freed (small ones can still come from
memory freed earlier: a slight undercount).

Default (quick): the toy recipe's network on toy-sized inputs, a few minutes on 2 CPU cores.
--full: ResNet-50 and VOC sizes (500x375 images, 512 crops, IRN's batches: 16 for train_cam, 32 for
train_irn), meant for a GPU; it also projects the whole IRN pseudo-GT pipeline on VOC train_aug
(10,582 images: train_cam 5 epochs, make_cam, cam_to_ir_label, train_irn 3 epochs, make_sem_seg_labels)
from the measured rates.
"""
from __future__ import annotations

import argparse
import copy
import ctypes
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

import run_sample
from bench import bench_crf, bench_make_cam, bench_rib
from misc.cli import str2bool
from misc.imutils import downsample_label
from misc.indexing import PathIndex
from misc.randomwalk import dense_random_walk, random_walk
from misc.seeds import walk_scores
from misc.torchutils import autocast, pick_device
from net import resnet50_cam, resnet50_irn
from net.resnet50_irn import EdgeDisplacement, pair_loss

VOC_TRAIN_AUG = 10582


@dataclass
class Setting:
    """Input sizes and counts of one benchmark mode."""

    net: dict  # resnet50_cam.Net keywords (recipe, width, blocks)
    image: tuple[int, int]  # (H, W) of inference images
    crop: int  # training crop
    cam_batch: int  # train_cam batch
    irn_batch: int  # train_irn batch
    images: int  # make_cam, make_sem_seg_labels, cam_to_ir_label images
    walks: int  # random walks
    steps: int  # timed training steps
    rib_images: int


QUICK = Setting(dict(recipe="scratch", width=32, blocks=(1, 1, 1, 1)), (96, 128), 128, 16, 8, 16, 8, 3, 1)
FULL = Setting(dict(recipe="irn"), (375, 500), 512, 16, 32, 32, 4, 5, 2)
COUNTS = ("images", "walks", "steps", "rib_images")  # Setting fields the command line may override


@dataclass
class Row:
    """One line of the table: items/s of both paths (reference None: no separate reference) and peak MB."""

    step: str
    unit: str
    reference: float | None
    toolkit: float
    ref_mb: float | None = None
    tool_mb: float | None = None


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def rate(fn: Callable[[], object], items: int, device: torch.device) -> float:
    """Items per second of ``fn`` (which handles ``items`` items), timed after one warm-up call."""
    fn()
    _sync(device)
    t = time.perf_counter()
    fn()
    _sync(device)
    return items / (time.perf_counter() - t)


def _vm(key: str) -> float:
    """A /proc/self/status memory field in MB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1]) / 1024
    raise KeyError(key)


def peak_mb(fn: Callable[[], object], device: torch.device) -> float:
    """Peak memory of one call of ``fn`` above what was in use before it, MB (see the module docstring);
    nan where it cannot be measured."""
    if device.type == "cuda":
        _sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        _sync(device)
        return (torch.cuda.max_memory_allocated(device) - base) / 2**20
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM to the current resident set
        base = _vm("VmRSS")
    except (OSError, KeyError):
        return float("nan")
    fn()
    return _vm("VmHWM") - base


def pin_mmap_threshold() -> None:
    """glibc: serve every allocation of 128 KiB or more with its own mapping, returned to the OS on free
    (M_MMAP_THRESHOLD set explicitly also stops glibc raising it), so peak_mb sees large buffers on CPU.
    Call before the benchmarks allocate; no-op without glibc."""
    try:
        ctypes.CDLL("libc.so.6").mallopt(-3, 128 * 1024)
    except OSError:
        pass


def irn_pair_labels(label: np.ndarray, index: PathIndex, num_classes: int) -> list[np.ndarray]:
    """IRN's GetAffinityLabelFromIndices for one stride-4 label map (h, w) on the CPU: float32
    (n_offsets, n_src) masks [bg_pos, fg_pos, neg]."""
    flat = label.reshape(-1)
    src = flat[index.src_indices.cpu().numpy()][None]
    dst = flat[index.dst_indices.cpu().numpy()]
    valid = (src < num_classes + 1) & (dst < num_classes + 1)
    equal = src == dst
    pos = equal & valid
    return [(pos & (src == 0)).astype(np.float32), (pos & (src > 0)).astype(np.float32),
            (~equal & valid).astype(np.float32)]


def irn_to_affinity(edge: torch.Tensor, index: PathIndex) -> torch.Tensor:
    """IRN's Net.to_affinity: gather every path of a length group and max-pool over it (autograd keeps the
    gathered paths). edge (B, 1, h, w) in [0, 1] -> (B, n_offsets, n_src)."""
    flat = edge.reshape(edge.shape[0], -1)
    out = []
    for ind in index.path_indices:
        d = flat.index_select(1, ind.reshape(-1)).view(flat.shape[0], *ind.shape)
        out.append((1 - F.max_pool2d(d, (d.shape[2], 1))).squeeze(2))
    return torch.cat(out, 1)


def _training_step(model: torch.nn.Module, loss_fn: Callable[[torch.nn.Module], torch.Tensor]
                   ) -> Callable[[], None]:
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-6)

    def step() -> None:
        loss = loss_fn(model)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


def _toolkit(model: torch.nn.Module, channels_last: bool) -> torch.nn.Module:
    return model.to(memory_format=torch.channels_last) if channels_last else model


def bench_train_cam(s: Setting, device: torch.device, amp: str, cl: bool) -> Row:
    """One optimiser step of the classifier per call: fp32 NCHW vs the toolkit's settings."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(s.cam_batch, 3, s.crop, s.crop, generator=g).to(device)
    y = (torch.rand(s.cam_batch, 20, generator=g) < 0.1).float().to(device)
    ref = resnet50_cam.Net(20, **s.net).to(device).train()
    tool = _toolkit(copy.deepcopy(ref), cl)

    def loss(model: torch.nn.Module, mode: str) -> torch.Tensor:
        with autocast(device, mode):
            logits = model(x)
        return F.multilabel_soft_margin_loss(logits.float(), y)

    def steps(model: torch.nn.Module, mode: str) -> Callable[[], None]:
        step = _training_step(model, lambda m: loss(m, mode))
        return lambda: [step() for _ in range(s.steps)]
    return Row("train_cam step", "images", rate(steps(ref, "off"), s.steps * s.cam_batch, device),
               rate(steps(tool, amp), s.steps * s.cam_batch, device))


def bench_make_cam_row(s: Setting, device: torch.device, amp: str, cl: bool, full: bool) -> Row:
    """bench.bench_make_cam's loop: one image per pass (fp32) vs batches of 8 with the toolkit's settings."""
    model, data, sizes = bench_make_cam.toy_inputs(full, "data/toy_voc", s.images)
    ref = model.to(device).eval()
    tool = _toolkit(copy.deepcopy(ref), cl)
    reference = bench_make_cam.images_per_second(ref, data, sizes, 1, device)
    with autocast(device, amp):
        toolkit = bench_make_cam.images_per_second(tool, data, sizes, 8, device)
    return Row("make_cam", "images", reference, toolkit)


def bench_cam_to_ir_label(s: Setting) -> Row:
    """bench.bench_crf's inputs: two dense CRF passes per image in one process vs a pool of every core."""
    h, w = s.image
    items = bench_crf._inputs(s.images, h, w)
    pool = os.cpu_count() or 1

    def pooled() -> None:
        with ProcessPoolExecutor(pool) as ex:
            list(ex.map(bench_crf._one, items, chunksize=2))
    cpu = torch.device("cpu")
    return Row(f"cam_to_ir_label ({pool} processes)", "images",
               rate(lambda: [bench_crf._one(it) for it in items], s.images, cpu), rate(pooled, s.images, cpu))


def _walk_inputs(s: Setting, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """K = 3 random class maps (N, 3, h, w) and boundary maps (N, 1, h, w) at the images' stride-4 size."""
    h, w = ((s.image[0] - 1) // 4 + 1, (s.image[1] - 1) // 4 + 1)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(s.walks, 3, h, w, generator=g).to(device)
    edge = torch.rand(s.walks, 1, h, w, generator=g).pow(2).to(device)
    return x, edge


def bench_random_walk(s: Setting, device: torch.device) -> Row:
    """The walk alone (t = 256, radius 5, beta 10): dense T^256 per image vs the stencil over the batch.
    Peak memory: one dense walk vs the batched stencil walk of all the images."""
    x, edge = _walk_inputs(s, device)

    def dense() -> None:
        for i in range(len(x)):
            dense_random_walk(x[i], edge[i])
    return Row(f"random walk {tuple(x.shape[2:])} map", "images", rate(dense, len(x), device),
               rate(lambda: random_walk(x, edge), len(x), device),
               peak_mb(lambda: dense_random_walk(x[0], edge[0]), device), peak_mb(lambda: random_walk(x, edge), device))


def bench_make_sem_seg_labels(s: Setting, device: torch.device, amp: str, cl: bool) -> Row:
    """IRNet's boundary pass with flips + the walk: one image at a time with the dense walk (fp32) vs
    batches of 8 through walk_scores (stencil) with the toolkit's settings."""
    net = dict(width=s.net.get("width", 64), blocks=s.net.get("blocks", (3, 4, 6, 3)))
    ref = EdgeDisplacement(**net, canvas=s.crop).to(device).eval()
    tool = _toolkit(copy.deepcopy(ref), cl)
    g = torch.Generator().manual_seed(0)
    imgs = torch.randn(s.images, 2, 3, *s.image, generator=g).to(device)
    x, _ = _walk_inputs(s, device)
    cams = [x[i % len(x), :2] for i in range(s.images)]

    def one_by_one() -> None:
        with torch.no_grad():
            for i in range(s.images):
                boundary, _ = ref(imgs[i:i + 1])
                dense_random_walk(cams[i], boundary[0])

    def batched() -> None:
        with torch.no_grad():
            for j in range(0, s.images, 8):
                with autocast(device, amp):
                    boundary, _ = tool(imgs[j:j + 8])
                walk_scores(cams[j:j + 8], boundary.float(), s.image, 1.0, 5, 10, 8)
    return Row("make_sem_seg_labels", "images", rate(one_by_one, s.images, device), rate(batched, s.images, device))


def bench_train_irn(s: Setting, device: torch.device, amp: str, cl: bool) -> Row:
    """One optimiser step of IRNet per call on random images and blob label maps: IRN style (fp32, pair
    labels per sample with NumPy on the CPU, max_pool2d affinities) vs the toolkit (on-device pair labels)."""
    net = dict(width=s.net.get("width", 64), blocks=s.net.get("blocks", (3, 4, 6, 3)))
    ref = resnet50_irn.Net(**net).to(device).train()
    tool = _toolkit(copy.deepcopy(ref), cl)
    index = PathIndex(10, (s.crop // 4, s.crop // 4)).to(device)
    rng = np.random.default_rng(0)
    blobs = rng.integers(0, 21, (s.irn_batch, s.crop // 32, s.crop // 32)).repeat(32, 1).repeat(32, 2)
    blobs[rng.random(blobs.shape) < 0.1] = 255
    labels = blobs.astype(np.uint8)
    x = torch.randn(s.irn_batch, 3, s.crop, s.crop, generator=torch.Generator().manual_seed(0)).to(device)

    def irn_loss(model: torch.nn.Module) -> torch.Tensor:
        edge, dp = model(x)
        small = [downsample_label(torch.from_numpy(lab)[None], 4)[0].numpy() for lab in labels]
        per_sample = [irn_pair_labels(lab, index, 20) for lab in small]
        pairs = tuple(torch.from_numpy(np.stack(m)).to(device) for m in zip(*per_sample))
        return pair_loss(irn_to_affinity(torch.sigmoid(edge), index), dp, pairs, index)["total"]

    def tool_loss(model: torch.nn.Module) -> torch.Tensor:
        with autocast(device, amp):
            edge, dp = model(x)
        small = downsample_label(torch.from_numpy(labels).to(device), 4)
        return resnet50_irn.affinity_displacement_loss(edge.float(), dp.float(), small, index, 20)["total"]

    ref_step, tool_step = _training_step(ref, irn_loss), _training_step(tool, tool_loss)
    n = s.steps * s.irn_batch
    return Row("train_irn step", "images", rate(lambda: [ref_step() for _ in range(s.steps)], n, device),
               rate(lambda: [tool_step() for _ in range(s.steps)], n, device), peak_mb(ref_step, device),
               peak_mb(tool_step, device))


def bench_make_rib_cam(s: Setting, device: torch.device, full: bool) -> Row:
    """bench.bench_rib (all 10 steps, 20 auxiliary images): RIB fine-tunes one image at a time in both
    implementations, so there is no separate reference."""
    return Row("make_rib_cam (worst case)", "images", None, 1 / bench_rib.seconds_per_image(full, device, s.rib_images))


def print_table(rows: list[Row]) -> None:
    """The table: items/s of both paths, toolkit/reference, peak MB where measured."""
    def f(v: float | None, fmt: str) -> str:
        return "-" if v is None else format(v, fmt)
    print(f"{'step':<32}{'reference/s':>12}{'toolkit/s':>11}{'ratio':>8}{'ref peak MB':>13}{'tool peak MB':>14}")
    for r in rows:
        ratio = None if r.reference is None else r.toolkit / r.reference
        print(f"{r.step:<32}{f(r.reference, '.4g'):>12}{r.toolkit:>11.4g}{f(ratio, '.1f'):>8}"
              f"{f(r.ref_mb, '.1f'):>13}{f(r.tool_mb, '.1f'):>14}")


def print_projection(rows: dict[str, Row]) -> None:
    """Minutes of the IRN pseudo-GT pipeline on VOC train_aug at the measured rates (one device)."""
    work = [("train_cam step", 5), ("make_cam", 1), ("cam_to_ir_label", 1), ("train_irn step", 3),
            ("make_sem_seg_labels", 1)]
    print(f"\nprojected VOC train_aug ({VOC_TRAIN_AUG} images) on this device, minutes")
    print(f"{'step':<32}{'images':>9}{'reference':>11}{'toolkit':>9}")
    totals = [0.0, 0.0]
    for prefix, epochs in work:
        r = next(v for k, v in rows.items() if k.startswith(prefix))
        n = epochs * VOC_TRAIN_AUG
        mins = [n / r.reference / 60, n / r.toolkit / 60]
        totals = [a + b for a, b in zip(totals, mins)]
        print(f"{prefix:<32}{n:>9}{mins[0]:>11.1f}{mins[1]:>9.1f}")
    print(f"{'whole pipeline':<32}{'':>9}{totals[0]:>11.1f}{totals[1]:>9.1f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", type=str, default="auto")
    p.add_argument("--full", action="store_true", help="ResNet-50, VOC sizes, and the VOC projection (GPU)")
    p.add_argument("--amp", type=str, default=run_sample.CONFIG.default("amp"), choices=("off", "bf16"))
    p.add_argument("--channels_last", type=str2bool, default=run_sample.CONFIG.default("channels_last"))
    for name in COUNTS:
        p.add_argument(f"--{name}", type=int, default=None,
                       help=f"override the mode's {name} count (quick {getattr(QUICK, name)}, full "
                            f"{getattr(FULL, name)}); fewer is faster and noisier")
    a = p.parse_args()
    counts = {k: getattr(a, k) for k in COUNTS if getattr(a, k) is not None}
    if any(v < 1 for v in counts.values()):
        p.error(f"{', '.join('--' + k for k in COUNTS)} must be at least 1")
    s = replace(FULL if a.full else QUICK, **counts)
    pin_mmap_threshold()
    device = pick_device(a.device)
    torch.manual_seed(0)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({os.cpu_count()} cores)"
    sizes = "ResNet-50, VOC sizes" if a.full else "toy net, toy sizes"
    print(f"device: {name}, {torch.get_num_threads()} threads; {sizes}"
          f" (images {s.image[1]}x{s.image[0]}, crops {s.crop}); toolkit amp {a.amp}, channels_last {a.channels_last}")
    rows = [bench_make_cam_row(s, device, a.amp, a.channels_last, a.full),
            bench_random_walk(s, device),
            bench_make_sem_seg_labels(s, device, a.amp, a.channels_last),
            bench_cam_to_ir_label(s),
            bench_train_cam(s, device, a.amp, a.channels_last),
            bench_train_irn(s, device, a.amp, a.channels_last),
            bench_make_rib_cam(s, device, a.full)]
    print_table(rows)
    if a.full:
        print_projection({r.step: r for r in rows})
    else:
        print("\nVOC projection: run with --full (VOC-sized inputs) on the target device")


if __name__ == "__main__":
    main()
