"""MS COCO 2014: category mapping golden facts, RLE/polygon decoding against pycocotools' outputs, both folder
layouts parsing to the same labels and lists, grey-scale and object-free images, one-line errors, and the
order in which run_sample resolves dataset, method, published and toy recipes."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from coco14.annotations import decode_rle, encode_rle, load_instances, rasterise, rle_string_to_counts
from coco14.dataloader import CAT_IDS, CAT_TO_INDEX, CLASS_NAMES, COCO14, canonical_id
from coco14.make_cls_labels import make_cls_labels
from coco14.make_seg_masks import make_seg_masks
from coco14.toy import EMPTY_AT, GREY_AT, write_toy_coco
from misc.errors import UserError
from misc.imutils import read_image
from misc.io import read_id_list

ROOT = Path(__file__).resolve().parents[1]

NAMES_IN_ID_ORDER = [
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee", "skis",
    "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors", "teddy bear",
    "hair drier", "toothbrush"]


def test_category_mapping_golden():
    assert len(CAT_IDS) == len(CLASS_NAMES) == 80 and list(CAT_IDS) == sorted(set(CAT_IDS))
    assert list(CLASS_NAMES) == NAMES_IN_ID_ORDER
    assert CAT_TO_INDEX[1] == 0 and CLASS_NAMES[0] == "person"
    assert CAT_TO_INDEX[90] == 79 and CLASS_NAMES[79] == "toothbrush"
    assert CAT_TO_INDEX[13] == 11 and CLASS_NAMES[11] == "stop sign"  # first id after the first gap
    assert CAT_TO_INDEX[67] == 60 and CLASS_NAMES[60] == "dining table"
    assert set(range(1, 91)) - set(CAT_IDS) == {12, 26, 29, 30, 45, 66, 68, 69, 71, 83}
    assert COCO14.num_classes == 80 and COCO14.palette.shape == (256, 3)


def test_canonical_id():
    for name in ("COCO_train2014_000000057870.jpg", "COCO_val2014_000000057870", "000000057870.png", "57870",
                 57870):
        assert canonical_id(name) == "000000057870"


# Compressed strings and masks recorded once from pycocotools 2.0 (mask.encode / frPyObjects + decode).
RLE_GOLDEN = [
    ((3, 3), "324", [3, 2, 4], [(0, 1), (1, 1)]),
    ((14, 15), "f4:b1", [150, 10, 50], None),  # a multi-group run, then the third run stored as itself
    ((4, 4), "`0", [16], []),
    ((5, 7), "0S1", [0, 35], None),  # starts with a foreground run: the leading background run is 0
]


@pytest.mark.parametrize("size,string,counts,fg", RLE_GOLDEN)
def test_rle_golden(size, string, counts, fg):
    assert rle_string_to_counts(string) == counts
    m = decode_rle({"size": list(size), "counts": string})
    np.testing.assert_array_equal(m, decode_rle({"size": list(size), "counts": counts}))
    assert m.shape == size and m.sum() == sum(counts[1::2])
    if fg is not None:
        assert sorted(zip(*np.nonzero(m))) == fg
    assert encode_rle(m)["counts"] == counts


def test_rle_golden_with_deltas():
    # pycocotools on a random 20x30 mask (p = 0.1): from the fourth run on, runs are deltas to run i-2
    counts = rle_string_to_counts("51R10oN10O0010701050E0?0e00VO0")
    assert counts[:6] == [5, 1, 34, 1, 1, 2]
    assert rle_string_to_counts("555L") == [5, 5, 5, 1]  # a negative delta (1 - 5)
    m = np.random.default_rng(0).random((20, 30)) < 0.3
    np.testing.assert_array_equal(decode_rle(encode_rle(m)), m)
    with pytest.raises(ValueError, match="sum"):
        decode_rle({"size": [2, 2], "counts": [1, 2]})


def test_rasterise_polygon_overlap_and_crowd():
    rect = [[1.0, 1.0, 8.0, 1.0, 8.0, 6.0, 1.0, 6.0]]
    m = rasterise([{"index": 4, "area": 35, "segmentation": rect}], 10, 12)
    # pycocotools fills exactly x 1..7, y 1..5 for this rectangle (pixel centres inside)
    assert m[1:6, 1:8].min() == 5 and (m > 0).sum() == 35
    small = np.zeros((10, 12), bool)
    small[2:4, 2:4] = True
    anns = [{"index": 0, "area": 4, "segmentation": encode_rle(small)},  # listed first, but smaller: wins
            {"index": 4, "area": 35, "segmentation": rect},
            {"index": 79, "area": 2, "iscrowd": 1, "segmentation": {"size": [10, 12], "counts": [118, 2]}}]
    m = rasterise(anns, 10, 12)
    assert (m[2:4, 2:4] == 1).all() and (m == 5).sum() == 31 and (m == 80).sum() == 2
    assert m[8:10, 11].tolist() == [80, 80]  # crowd region, column-major end of the image


@pytest.fixture(scope="module")
def mini_coco(tmp_path_factory) -> Path:
    """A 36-image toy COCO in the official layout (train 24, val 12), long side 64, with masks derived."""
    return write_toy_coco(tmp_path_factory.mktemp("coco") / "coco2014", seed=5, n_train=24, n_val=12, size=64)


def _rib_layout(official: Path, dst: Path, with_json: bool) -> Path:
    """The RIB layout built from an official-layout folder: JPEGImages/<id>.jpg, coco_seg_anno/, and the
    split as instances JSON (with_json) or as RIB's train14.txt / val14.txt of unpadded integer ids."""
    (dst / "JPEGImages").mkdir(parents=True)
    for split in ("train", "val"):
        ids = []
        for p in sorted((official / f"{split}2014").glob("*.jpg")):
            shutil.copy(p, dst / "JPEGImages" / f"{canonical_id(p.name)}.jpg")
            ids.append(str(int(canonical_id(p.name))))
        if not with_json:
            (dst / f"{split}14.txt").write_text("\n".join(ids) + "\n")
    shutil.copytree(official / "coco_seg_anno", dst / "coco_seg_anno")
    if with_json:
        shutil.copytree(official / "annotations", dst / "annotations")
    return dst


def test_both_layouts_parse_to_the_same_labels(mini_coco, tmp_path):
    official = COCO14(mini_coco)
    assert official.layout == "official"
    ref = make_cls_labels(official, tmp_path / "meta_official")  # labels from the instances JSON
    for with_json in (False, True):  # labels from the masks / from the JSON
        rib = COCO14(_rib_layout(mini_coco, tmp_path / f"rib_{with_json}", with_json))
        assert rib.layout == "jpeg"
        out = tmp_path / f"meta_rib_{with_json}"
        assert make_cls_labels(rib, out) == ref
        for split in ("train", "val"):
            assert read_id_list(out / f"{split}.txt") == read_id_list(tmp_path / "meta_official" / f"{split}.txt")
    train, val = (read_id_list(tmp_path / "meta_official" / f"{s}.txt") for s in ("train", "val"))
    assert len(train) == 24 and len(val) == 12 and train[0] == "000000000001" and val[0] == "000000000025"
    assert json.loads((tmp_path / "meta_official" / "cls_labels.json").read_text()) == ref
    # object-free image: no class, all-background mask; grey-scale JPEG: read as 3 channels
    empty, grey = f"{EMPTY_AT + 1:012d}", f"{GREY_AT + 1:012d}"
    assert ref[empty] == [] and official.read_gt(empty).max() == 0
    assert sum(len(v) > 0 for v in ref.values()) == 36 - 3  # ids 12, 24, 36
    with Image.open(official.image_path(grey)) as im:
        assert im.mode == "L"
    img = read_image(official.image_path(grey))
    assert img.shape[2] == 3 and img.dtype == np.uint8 and (img[..., 0] == img[..., 2]).all()
    inst = load_instances(mini_coco / "annotations" / "instances_train2014.json")
    assert len(inst.images) == 24 and inst.images[grey] == img.shape[:2]


def test_make_seg_masks_resumes(mini_coco, tmp_path):
    root = tmp_path / "c"
    shutil.copytree(mini_coco, root)
    victim = root / "coco_seg_anno" / "000000000003.png"
    before = victim.read_bytes()
    victim.unlink()
    assert make_seg_masks(root) == 1 and victim.read_bytes() == before
    assert make_seg_masks(root) == 0


def test_clear_errors(mini_coco, tmp_path):
    with pytest.raises(UserError, match="not found; pass --coco14_root"):
        COCO14(tmp_path / "nowhere")
    with pytest.raises(UserError, match="neither JPEGImages/ nor train2014/"):
        COCO14(tmp_path)
    (tmp_path / "rib" / "JPEGImages").mkdir(parents=True)
    with pytest.raises(UserError, match="instances_train2014.json or RIB's train14.txt"):
        make_cls_labels(COCO14(tmp_path / "rib"), tmp_path / "meta")
    with pytest.raises(UserError, match="coco14.make_seg_masks"):
        COCO14(tmp_path / "rib").read_gt("000000000001")
    bad = tmp_path / "bad" / "annotations"
    bad.mkdir(parents=True)
    data = json.loads((mini_coco / "annotations" / "instances_val2014.json").read_text())
    data["categories"][0]["name"] = "people"
    (bad / "instances_val2014.json").write_text(json.dumps(data))
    with pytest.raises(UserError, match="instances_val2014.json: category 1 'people'"):
        load_instances(bad / "instances_val2014.json")
    (bad / "instances_train2014.json").write_text("{")
    with pytest.raises(UserError, match="instances_train2014.json: not a COCO instances JSON"):
        load_instances(bad / "instances_train2014.json")
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    r = subprocess.run([sys.executable, "-m", "coco14.make_cls_labels", "--coco14_root", str(tmp_path / "none"),
                        "--out_dir", str(tmp_path / "m")], cwd=ROOT, capture_output=True, text=True, env=env)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and r.stderr.startswith("error: ")


def test_recipe_order():
    import run_sample

    rib = run_sample.parse_args(["--dataset", "coco14", "--method", "rib", "--coco14_root", "/data/coco"])
    # the published COCO constants win over the method's and the dataset's, and explicit flags win over all
    assert (rib.rib_tau, rib.rib_lr, rib.rib_aux_batch, rib.rib_stop_logit, rib.rib_area_ratio) == \
        (0.5, 5e-6, 15, 1000, 0.8)
    assert (rib.conf_fg_thres, rib.conf_bg_thres, rib.sem_seg_bg_thres, rib.sem_seg_power) == (0.35, 0.17, 0.22, 1.3)
    assert tuple(rib.cam_eval_sweep) == (0.10, 0.50, 0.01) and rib.sem_seg_canvas == 0
    assert rib.cam_out_dir == "cam_rib" and rib.train_list == rib.eval_list == "train" and not rib.make_cam_pass
    assert rib.work_dir == os.path.join("runs", "coco14") and not rib.toy and rib.recipe == "irn"
    voc = run_sample.parse_args(["--method", "rib", "--voc12_root", "/data/voc"])
    assert (voc.sem_seg_bg_thres, voc.rib_tau, voc.train_list, voc.work_dir) == (0.27, 0.4, "train_aug", "runs/voc12")
    assert voc.sem_seg_canvas is None and voc.dataset == "voc12"
    irn = run_sample.parse_args(["--coco14_root", "/data/coco", "--sem_seg_bg_thres", "0.3", "--train_list", "val"])
    assert irn.dataset == "coco14" and irn.sem_seg_bg_thres == 0.3 and irn.train_list == "val"
    assert irn.conf_fg_thres == 0.30 and irn.cam_out_dir == "cam"  # IRN on COCO: IRN's constants
    toy = run_sample.parse_args(["--dataset", "coco14", "--method", "rib", "--cam_num_epoches", "2"])
    assert toy.toy and toy.recipe == "scratch" and toy.sem_seg_bg_thres == 0.22 and toy.cam_num_epoches == 2
    assert toy.work_dir == os.path.join("runs", "toy_coco14") and toy.toy_root == "data/toy_coco14"
    assert toy.toy_n_train == 400 and run_sample.parse_args([]).work_dir == os.path.join("runs", "toy")
    with pytest.raises(UserError, match="--voc12_root /v: does not fit --dataset coco14"):
        run_sample.parse_args(["--dataset", "coco14", "--voc12_root", "/v"])
