"""make_cam throughput: batched over same-size images vs IRN's one image at a time, same weights and images.

    python -m bench.bench_make_cam [--n_images 64] [--batch 8] [--device auto] [--full]

Default: the toy recipe's network on the toy dataset (CPU-sized). --full: a standard-width ResNet-50 on
toy images upscaled to VOC's 500x375 (use it on a GPU). Both paths run the same multiscale_cams code;
IRN style calls it with one image per forward pass. Prints a table with images/s and the ratio; data
loading (JPEG decode + rescale in 2 workers) is included in both, writing the files is not.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from torch.utils.data import DataLoader

from misc.imutils import image_size, pil_resize, read_image
from misc.samples import MultiScaleDataset, SizeBucketSampler, collate_same_size
from misc.seeds import multiscale_cams, normalise_keep
from misc.torchutils import pick_device
from net.resnet50_cam import CAM
from voc12.dataloader import VOC12
from voc12.toy import write_toy_voc


class _Upscaled(MultiScaleDataset):
    """Toy images resized to 500x375 (landscape) so --full sees VOC-sized inputs."""

    def load(self, i: int) -> np.ndarray:
        return pil_resize(read_image(self.image_path(self.ids[i])), (375, 500), 3)


def _run(model, loader, device) -> float:
    n, t = 0, time.perf_counter()
    with torch.no_grad():
        for b in loader:
            views = [v.to(device, non_blocking=True) for v in b["img"]]
            s, h = multiscale_cams(model, views, b["size"])
            for j in range(len(b["name"])):
                keys = torch.nonzero(b["label"][j])[:, 0].to(device)
                normalise_keep(s[j], keys).cpu(), normalise_keep(h[j], keys).cpu()
            n += len(b["name"])
    if device.type == "cuda":
        torch.cuda.synchronize()
    return n / (time.perf_counter() - t)


def toy_inputs(full: bool, toy_root: str, n_images: int) -> tuple[CAM, MultiScaleDataset, list[tuple[int, int]]]:
    """(network on the CPU, dataset of the first ``n_images`` toy images, their sizes): the toy recipe's net on
    the toy images, or with ``full`` a standard-width ResNet-50 on the images upscaled to 500x375."""
    ds = VOC12(write_toy_voc(toy_root))
    ids = [f"toy_{i:06d}" for i in range(n_images)]
    labels = {i: np.eye(20, dtype=np.float32)[i_ % 20] for i_, i in enumerate(ids)}
    if full:
        return CAM(20, "irn"), _Upscaled(ds.image_path, ids, labels), [(375, 500)] * len(ids)
    return (CAM(20, "scratch", width=32, blocks=(1, 1, 1, 1)), MultiScaleDataset(ds.image_path, ids, labels),
            [image_size(ds.image_path(i)) for i in ids])


def images_per_second(model: torch.nn.Module, data: MultiScaleDataset, sizes: list[tuple[int, int]], batch: int,
                      device: torch.device) -> float:
    """make_cam's loop over ``data`` in batches of up to ``batch`` same-size images (2 loader workers),
    after one warm-up pass (allocator, cuDNN autotune). Returns images/s."""
    loader = DataLoader(data, batch_sampler=SizeBucketSampler(sizes, batch), collate_fn=collate_same_size,
                        num_workers=2)
    _run(model, loader, device)
    return _run(model, loader, device)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n_images", type=int, default=64)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--device", type=str, default="auto")
    p.add_argument("--full", action="store_true")
    p.add_argument("--toy_root", type=str, default="data/toy_voc")
    a = p.parse_args()
    device = pick_device(a.device)
    model, data, sizes = toy_inputs(a.full, a.toy_root, a.n_images)
    model = model.to(device).eval()
    torch.manual_seed(0)
    rows = [(name, images_per_second(model, data, sizes, bs, device))
            for name, bs in (("IRN style (1 image per pass)", 1), (f"batched ({a.batch} same-size images)", a.batch))]
    print(f"device: {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'}, "
          f"{torch.get_num_threads()} threads, {a.n_images} images, {'ResNet-50 at 500x375' if a.full else 'toy net'}")
    print(f"{'path':<36}{'images/s':>10}{'ratio':>8}")
    for name, ips in rows:
        print(f"{name:<36}{ips:>10.2f}{ips / rows[0][1]:>8.2f}")


if __name__ == "__main__":
    main()
