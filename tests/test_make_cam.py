"""make_cam: batched output equals one image at a time; the artifact format; resume; the sampler."""
import numpy as np
import torch

from misc.imutils import image_size, strided_size
from misc.io import load_cam, save_cam
from misc.samples import MultiScaleDataset, SizeBucketSampler, collate_same_size
from misc.seeds import multiscale_cams
from net.resnet50_cam import CAM
from voc12.dataloader import VOC12


def test_size_buckets_cover_every_index_once():
    sizes = [(4, 5), (5, 4), (4, 5), (4, 5), (6, 6), (5, 4)]
    batches = list(SizeBucketSampler(sizes, batch_size=2))
    flat = sorted(i for b in batches for i in b)
    assert flat == list(range(6))
    assert all(len({sizes[i] for i in b}) == 1 and len(b) <= 2 for b in batches)


def test_batched_equals_single(mini_voc):
    torch.manual_seed(0)
    ds = VOC12(mini_voc)
    model = CAM(num_classes=20, recipe="scratch", width=8, blocks=(1, 1, 1, 1)).eval()
    for m in model.modules():  # non-trivial BN statistics, so eval-mode BN matters
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
    ids = [f"toy_{i:06d}" for i in range(12)]
    labels = {i: np.eye(20, dtype=np.float32)[0] for i in ids}
    data = MultiScaleDataset(ds.image_path, ids, labels, (1.0, 0.5, 1.5))
    sizes = [image_size(ds.image_path(i)) for i in ids]
    batches = [b for b in SizeBucketSampler(sizes, 4) if len(b) > 1]
    assert batches, "the mini dataset should have images of equal size"
    with torch.no_grad():
        for b in batches:
            batch = collate_same_size([data[i] for i in b])
            s_b, h_b = multiscale_cams(model, batch["img"], batch["size"])
            for j, i in enumerate(b):
                one = collate_same_size([data[i]])
                s_1, h_1 = multiscale_cams(model, one["img"], one["size"])
                assert s_b.shape[2:] == strided_size(sizes[i], 4) and h_b.shape[2:] == sizes[i]
                torch.testing.assert_close(s_b[j], s_1[0], rtol=1e-4, atol=1e-5)
                torch.testing.assert_close(h_b[j], h_1[0], rtol=1e-4, atol=1e-5)


def test_flip_branch_is_mirrored():
    """Feeding [flipped, image] instead of [image, flipped] must give the mirror image of the map."""
    model = CAM(num_classes=3, recipe="scratch", width=8, blocks=(1, 1, 1, 1)).eval()
    x = torch.randn(1, 3, 64, 48)
    views = [torch.stack([x, x.flip(-1)], 1)]
    with torch.no_grad():
        s, _ = multiscale_cams(model, views, (64, 48))
        s2, _ = multiscale_cams(model, [torch.stack([x.flip(-1), x], 1)], (64, 48))
    assert not torch.allclose(s, s.flip(-1), atol=1e-3)  # the map itself is not symmetric
    torch.testing.assert_close(s2, s.flip(-1), rtol=1e-4, atol=1e-5)


def test_artifact_roundtrip_and_legacy_reader(tmp_path):
    keys = np.array([4, 14])
    cam = np.random.rand(2, 10, 12).astype(np.float32)
    hr = np.random.rand(2, 37, 45).astype(np.float32)
    save_cam(tmp_path / "a.npz", keys, cam, hr)
    z = np.load(tmp_path / "a.npz")  # a plain npz: no pickle needed
    assert sorted(z.files) == ["cam", "high_res", "keys"] and z["keys"].dtype == np.int64
    got = load_cam(tmp_path, "a")
    np.testing.assert_array_equal(got["high_res"], hr)
    legacy = {"keys": torch.tensor([4, 14]), "cam": torch.from_numpy(cam), "high_res": hr}
    np.save(tmp_path / "b.npy", legacy, allow_pickle=True)
    old = load_cam(tmp_path, "b")
    np.testing.assert_array_equal(old["keys"], keys)
    np.testing.assert_array_equal(old["cam"], cam)
    assert not list(tmp_path.glob("*.tmp*"))  # atomic writes leave no temp files
