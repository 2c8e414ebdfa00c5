"""VOC folder parsing on a generated mini VOC: labels from XML and from masks agree, lists, errors."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from misc.errors import UserError
from misc.imutils import read_label_png
from misc.io import read_id_list
from voc12.dataloader import VOC12
from voc12.make_cls_labels import labels_from_mask, labels_from_xml, make_cls_labels


def test_xml_and_mask_labels_agree(mini_voc):
    ds = VOC12(mini_voc)
    for xml in sorted((mini_voc / "Annotations").glob("*.xml")):
        from_xml = labels_from_xml(xml, ds.class_names)
        from_mask = labels_from_mask(read_label_png(ds.gt_path(xml.stem)))
        assert from_xml == from_mask and len(from_xml) >= 1


def test_lists_and_mask_fallback(mini_voc, tmp_path):
    root = tmp_path / "voc"
    shutil.copytree(mini_voc, root)
    for x in list((root / "Annotations").glob("*.xml"))[:5]:
        x.unlink()  # these ids must fall back to their masks
    out = tmp_path / "meta"
    labels = make_cls_labels(VOC12(root), out)
    assert json.loads((out / "cls_labels.json").read_text()) == labels
    ref = make_cls_labels(VOC12(mini_voc), tmp_path / "meta_ref")
    assert labels == ref and len(labels) == 40
    train, val, aug = (read_id_list(out / f"{s}.txt") for s in ("train", "val", "train_aug"))
    assert len(train) == 10 and len(val) == 10 and len(aug) == 30
    assert set(train) <= set(aug) and not set(aug) & set(val)
    assert all(isinstance(i, str) and i.startswith("toy_") for i in aug)


def test_part_names_are_not_classes(tmp_path):
    xml = tmp_path / "a.xml"
    xml.write_text("<annotation><object><name>person</name><part><name>head</name></part></object>"
                   "<object><name>dog</name></object><object><name>person</name></object></annotation>")
    assert labels_from_xml(xml, VOC12.class_names) == [11, 14]


def test_clear_errors(mini_voc, tmp_path):
    with pytest.raises(UserError, match="JPEGImages"):
        VOC12(tmp_path)
    with pytest.raises(UserError, match="not found"):
        VOC12(tmp_path / "nowhere")
    bad = tmp_path / "bad.png"
    from misc.io import save_png
    save_png(bad, np.full((4, 4), 42, np.uint8))
    with pytest.raises(UserError, match="bad.png.*42"):
        VOC12(mini_voc).check_mask(read_label_png(bad), bad)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    from misc.imutils import read_image
    with pytest.raises(UserError, match="broken.jpg"):
        read_image(broken)


def test_toy_is_deterministic(mini_voc, tmp_path):
    from voc12.toy import write_toy_voc
    again = write_toy_voc(tmp_path / "again", seed=3, n_train_aug=30, n_train=10, n_val=10, size=96)
    for name in ("toy_000000", "toy_000017"):
        a = read_label_png(mini_voc / "SegmentationClass" / f"{name}.png")
        b = read_label_png(again / "SegmentationClass" / f"{name}.png")
        np.testing.assert_array_equal(a, b)
        jpg = Path("JPEGImages") / f"{name}.jpg"
        assert (mini_voc / jpg).read_bytes() == (again / jpg).read_bytes()
    m = read_label_png(mini_voc / "SegmentationClass" / "toy_000000.png")
    assert set(np.unique(m)) - {0, 255} and 255 in m  # objects and a border band


def test_segmentation_dataset_keeps_image_and_label_aligned(tmp_path):
    """Joint rescale/flip/crop: label 1 must still sit on the bright square, padding must be 255/zero."""
    from PIL import Image

    from misc.io import save_png
    from misc.samples import SegmentationDataset

    img = np.zeros((60, 90, 3), np.uint8)
    img[10:40, 50:80] = 255  # a bright square, off-centre so a flip moves it
    lab = np.zeros((60, 90), np.uint8)
    lab[10:40, 50:80] = 1
    Image.fromarray(img).save(tmp_path / "a.png")
    save_png(tmp_path / "a_label.png", lab)
    data = SegmentationDataset(lambda i: tmp_path / f"{i}.png", lambda i: tmp_path / f"{i}_label.png", ["a"],
                               crop=100, rescale=(0.6, 1.4))
    np.random.seed(0)
    for _ in range(10):
        item = data[0]
        x, y = item["img"].numpy(), item["label"].numpy()
        assert x.shape == (3, 100, 100) and y.shape == (100, 100)
        bright = x.mean(0) > 1.0  # normalised white is about 2.2, black about -1.8, padding exactly 0
        inner = (y == 1)
        assert inner.sum() > 100
        assert bright[inner].mean() > 0.9 and (~bright[y == 0]).mean() > 0.9  # edges differ: bicubic vs nearest
        pad = np.all(x == 0, axis=0)
        assert pad.any() and np.all(y[pad] == 255)
