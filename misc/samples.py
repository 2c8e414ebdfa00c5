"""torch Datasets that turn image ids into samples (augmented training crops, image + label pairs, multi-scale
inference views), their collate function and the same-size batch sampler. They work for every dataset layout
(VOC, COCO, toy): they only need an id -> path function (``misc.dataset_spec`` says where a dataset's files are)."""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from misc import imutils
from misc.errors import UserError
from misc.seeds import IGNORE

PathFn = Callable[[str], Path]


class ImageDataset(Dataset):
    """Raw images: item = {'name': id, 'img': uint8 (H, W, 3)}."""

    def __init__(self, image_path: PathFn, ids: Sequence[str]):
        self.image_path = image_path
        self.ids = list(ids)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict:
        return {"name": self.ids[i], "img": imutils.read_image(self.image_path(self.ids[i]))}


class ClassificationDataset(ImageDataset):
    """Training images for the classifier.

    Augmentation (IRN order): long side resized to U{resize_long}, ImageNet normalisation, horizontal flip
    (p 0.5), random ``crop`` x ``crop`` crop with zero fill (zero = mean colour). With ``resize_long=None``
    and ``flip=False`` the crop is top-left instead (validation). ``jitter`` (brightness, contrast,
    saturation, hue): colour jitter (``imutils.color_jitter``) after the resize (RS+EPM's reconstructed
    recipe). item = {'name', 'img': float32 (3, crop, crop), 'label': float32 (C,) multi-hot}.
    """

    def __init__(self, image_path: PathFn, ids: Sequence[str], labels: dict[str, np.ndarray], crop: int,
                 resize_long: tuple[int, int] | None = (320, 640), flip: bool = True,
                 jitter: tuple[float, float, float, float] | None = None):
        super().__init__(image_path, ids)
        self.labels, self.crop, self.resize_long, self.flip = labels, crop, resize_long, flip
        self.jitter = jitter

    def __getitem__(self, i: int) -> dict:
        img = imutils.read_image(self.image_path(self.ids[i]))
        if self.resize_long is not None:
            img = imutils.random_resize_long(img, *self.resize_long)
        if self.jitter is not None:
            img = imutils.color_jitter(img, *self.jitter)
        x = imutils.normalize(img)
        if self.flip and np.random.rand() < 0.5:
            x = x[:, ::-1]
        if self.resize_long is None and not self.flip:
            x = imutils.top_left_crop(x, self.crop, 0.0)
        else:
            x = imutils.random_crop([x], self.crop, [0.0])[0]
        return {"name": self.ids[i], "img": torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1))),
                "label": torch.from_numpy(self.labels[self.ids[i]])}


class MultiScaleDataset(ImageDataset):
    """Inference input: every scale of an image with its horizontal flip.

    item = {'name', 'size': (H, W), 'label': float32 (C,), 'img': list over ``scales`` of float32
    (2, 3, round(H*s), round(W*s)) holding [image, flipped image]}. Scales are made with PIL bicubic.
    """

    def __init__(self, image_path: PathFn, ids: Sequence[str], labels: dict[str, np.ndarray],
                 scales: Sequence[float] = (1.0, 0.5, 1.5, 2.0)):
        super().__init__(image_path, ids)
        self.labels, self.scales = labels, tuple(scales)

    def load(self, i: int) -> np.ndarray:
        """The uint8 (H, W, 3) image of item i (override to change what is fed, e.g. in benchmarks)."""
        return imutils.read_image(self.image_path(self.ids[i]))

    def __getitem__(self, i: int) -> dict:
        img = self.load(i)
        views = []
        for s in self.scales:
            x = imutils.normalize(imutils.pil_rescale(img, s, 3) if s != 1.0 else img).transpose(2, 0, 1)
            views.append(torch.from_numpy(np.ascontiguousarray(np.stack([x, x[:, :, ::-1]]))))
        return {"name": self.ids[i], "size": img.shape[:2], "label": torch.from_numpy(self.labels[self.ids[i]]),
                "img": views}


def collate_same_size(items: list[dict]) -> dict:
    """Collate MultiScaleDataset items of one image size: 'img' becomes a list over scales of
    (B, 2, 3, h_s, w_s); 'label' (B, C); 'name' a list; 'size' the shared (H, W)."""
    return {"name": [it["name"] for it in items], "size": tuple(items[0]["size"]),
            "label": torch.stack([it["label"] for it in items]),
            "img": [torch.stack(v) for v in zip(*(it["img"] for it in items))]}


class SizeBucketSampler(Sampler):
    """Batches of dataset indices whose images share one (H, W), at most ``batch_size`` each, in a fixed order.

    ``sizes[i]`` is the (H, W) of item i. Every index appears in exactly one batch.
    """

    def __init__(self, sizes: Sequence[tuple[int, int]], batch_size: int):
        buckets: dict[tuple[int, int], list[int]] = defaultdict(list)
        for i, s in enumerate(sizes):
            buckets[tuple(s)].append(i)
        self.batches = [idx[j:j + batch_size] for idx in buckets.values() for j in range(0, len(idx), batch_size)]

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class SegmentationDataset(ImageDataset):
    """Image + label map pairs with joint augmentation (IRN's VOC12SegmentationDataset).

    One random rescale by U(rescale) (image bicubic, label nearest), ImageNet normalisation, one shared
    horizontal flip (p 0.5), one shared random ``crop`` x ``crop`` crop (image filled with 0, label with
    IGNORE). item = {'name', 'img': float32 (3, crop, crop), 'label': uint8 (crop, crop)}.

    ``scales``: the rescale factor is drawn from these values instead (kazuto1011's DeepLab recipes);
    ``normalize``: uint8 (H, W, 3) -> float32 (H, W, 3) mapping the mean colour to 0 (default ImageNet's,
    e.g. ``partial(misc.segmentation.normalize_hwc, style="caffe")`` for the caffe DeepLab files).
    """

    def __init__(self, image_path: PathFn, label_path: PathFn, ids: Sequence[str], crop: int,
                 rescale: tuple[float, float] = (0.5, 1.5), flip: bool = True, scales: Sequence[float] | None = None,
                 normalize: Callable[[np.ndarray], np.ndarray] = imutils.normalize):
        super().__init__(image_path, ids)
        self.label_path, self.crop, self.rescale, self.flip = label_path, crop, rescale, flip
        self.scales, self.normalize = (tuple(scales) if scales else None), normalize

    def __getitem__(self, i: int) -> dict:
        img_id = self.ids[i]
        img = imutils.read_image(self.image_path(img_id))
        label = imutils.read_label_png(self.label_path(img_id))
        if label.shape != img.shape[:2]:
            raise UserError(f"{self.label_path(img_id)}: size {label.shape} differs from its image "
                                    f"{img.shape[:2]}; regenerate it")
        if self.scales is None:
            img, label = imutils.random_scale_pair(img, label, *self.rescale)
        else:
            s = self.scales[np.random.randint(len(self.scales))]
            img, label = imutils.pil_rescale(img, s, 3), imutils.pil_rescale(label, s, 0)
        x = self.normalize(img)
        if self.flip and np.random.rand() < 0.5:
            x, label = x[:, ::-1], label[:, ::-1]
        x, label = imutils.random_crop([x, label], self.crop, [0.0, IGNORE])
        return {"name": img_id, "img": torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1))),
                "label": torch.from_numpy(np.ascontiguousarray(label))}


class SquareDataset(ImageDataset):
    """Images squashed to a ``side`` x ``side`` square (PIL bilinear, aspect ratio not kept), as DRS feeds every
    network. With ``jitter`` (brightness, contrast, saturation, hue: ``imutils.color_jitter``) and ``flip``
    the training augmentation (flip p 0.5, then jitter), then a random ``crop`` x ``crop`` window when
    ``crop`` < side; without them (inference) the square itself.

    item = {'name', 'size': the image's (H, W), 'label': float32 (C,), 'img': float32 (3, s, s), s = crop or side}.
    """

    def __init__(self, image_path: PathFn, ids: Sequence[str], labels: dict[str, np.ndarray], side: int,
                 crop: int | None = None, jitter: Sequence[float] | None = None, flip: bool = False):
        super().__init__(image_path, ids)
        self.labels, self.side, self.crop, self.jitter, self.flip = labels, side, crop, jitter, flip

    def square(self, i: int) -> tuple[np.ndarray, tuple[int, int], bool]:
        """(the augmented uint8 (side, side, 3) square of item i before the crop, the image's (H, W), whether
        it was flipped: a subclass flips its targets with it)."""
        img = imutils.read_image(self.image_path(self.ids[i]))
        x = imutils.pil_resize(img, (self.side, self.side), 1)
        flipped = bool(self.flip and np.random.rand() < 0.5)
        if flipped:
            x = np.ascontiguousarray(x[:, ::-1])
        if self.jitter is not None:
            x = imutils.color_jitter(x, *self.jitter)
        return x, img.shape[:2], flipped

    def __getitem__(self, i: int) -> dict:
        x, size, _ = self.square(i)
        x = imutils.normalize(x)
        if self.crop is not None and self.crop < self.side:
            x = imutils.random_crop([x], self.crop, [0.0])[0]
        return {"name": self.ids[i], "size": size, "label": torch.from_numpy(self.labels[self.ids[i]]),
                "img": torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))}


def collate_squares(items: list[dict]) -> dict:
    """Collate SquareDataset items (images of any size): 'img' (B, 3, s, s), 'label' (B, C), 'name' and 'size'
    lists."""
    return {"name": [it["name"] for it in items], "size": [tuple(it["size"]) for it in items],
            "label": torch.stack([it["label"] for it in items]), "img": torch.stack([it["img"] for it in items])}
