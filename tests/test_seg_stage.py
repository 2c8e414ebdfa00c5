"""The segmentation stage's pieces and the comparison command's rules: the --seg switch and the recipe
tables, the iteration sampler, the per-group poly schedule, the argument rules of --compare, the test-set
PNGs in the VOC server layout."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import run_sample
from misc.errors import UserError
from misc.imutils import color_palette
from misc.io import read_id_list, write_id_list
from misc.segmentation import multiscale_probs, normalize_image, poly_lr
from step import make_seg
from step.common.compare import split_argv
from step.common.seg import save_description, segmentation_network
from step.train_seg import poly_schedule

SEG = ("train_seg", "make_seg", "eval_seg")


def test_seg_stage_is_off_by_default_and_ends_every_pipeline():
    for method, steps in run_sample.PIPELINES.items():
        assert run_sample.CONFIG.pipelines[method] == steps + SEG
        args = run_sample.parse_args(["--method", method])
        assert not any(getattr(args, f"{s}_pass") for s in SEG)
        assert all(getattr(args, f"{s}_pass") for s in steps)
        args = run_sample.parse_args(["--method", method, "--seg", "True", "--train_seg_pass", "False"])
        assert (args.train_seg_pass, args.make_seg_pass, args.eval_seg_pass) == (False, True, True)
        assert args.seg_weights_name == ("sess/deeplab.pth" if method == "irn" else f"sess/deeplab_{method}.pth")


def test_seg_recipes_resolve_in_order():
    voc = ["--voc12_root", "x"]
    v2 = run_sample.parse_args(voc)
    assert (v2.seg_network, v2.seg_crop_size, v2.seg_batch_size, v2.seg_iters, v2.seg_loss) == \
        ("deeplab_v2", 321, 10, 30000, "balanced")
    v3 = run_sample.parse_args(voc + ["--seg_recipe", "deeplab_v3plus", "--seg_iters", "1000"])
    assert (v3.seg_network, v3.seg_crop_size, v3.seg_batch_size, v3.seg_learning_rate, v3.seg_frozen_bn) == \
        ("deeplab_v3plus", 513, 32, 0.05, False)
    assert v3.seg_iters == 1000  # typed flags beat the recipe
    drs = run_sample.parse_args(voc + ["--seg_recipe", "deeplab_v2_drs"])
    assert (drs.seg_self_training, drs.seg_scales, drs.seg_iters) == ("zero", (0.5, 0.75, 1.0, 1.25, 1.5), 10000)
    toy = run_sample.parse_args(["--seg_recipe", "deeplab_v3plus"])  # the toy shrinks, the recipe picks the network
    assert (toy.seg_network, toy.seg_init, toy.seg_width, toy.seg_train_list) == ("deeplab_v3plus", "cam", 32,
                                                                                  "train")
    # the toy starts from the classifier's trunk where the method trains one, else from scratch
    assert (run_sample.parse_args(["--method", "toco"]).seg_init, run_sample.parse_args(["--method", "rib"]).seg_init) \
        == (None, "cam")


@pytest.mark.parametrize("argv,needle", [
    (["--seg_iters", "1500"], "--seg_iters 1500: not a multiple of --seg_epoch_iters"),
    (["--seg_scale_uniform", "True", "--seg_scales", "0.5", "1.0", "1.5"], "--seg_scale_uniform takes two values"),
    (["--dataset", "coco14", "--seg_test_list", "test"], "the server layout is VOC's"),
])
def test_bad_seg_flags_are_one_line(argv, needle):
    with pytest.raises(UserError, match=needle):
        run_sample.parse_args(["--seg", "True", "--voc12_root" if "coco14" not in argv else "--toy_root", "x", *argv])


def test_poly_schedule_per_group():
    w = [torch.nn.Parameter(torch.zeros(1)) for _ in range(2)]
    opt = torch.optim.SGD([{"params": [w[0]], "lr": 1e-3}, {"params": [w[1]], "lr": 2e-2}], lr=1e-3)
    sched = poly_schedule(opt, 100, 10, 1e-6)
    for i in range(105):  # updated every 10 iterations, floored at 1e-6 from iteration 100 on
        assert [g["lr"] for g in opt.param_groups] == pytest.approx([poly_lr(1e-3, i, 100, 0.9, 10, 1e-6),
                                                                     poly_lr(2e-2, i, 100, 0.9, 10, 1e-6)])
        opt.step()
        sched.step()
    assert opt.param_groups[1]["lr"] == pytest.approx(1e-6)


def test_compare_argv_rules():
    methods = tuple(run_sample.PIPELINES)
    assert split_argv(["--seed", "1", "--compare", "irn", "rib", "--draw_num", "2"], methods) == \
        (["irn", "rib"], ["--seed", "1", "--draw_num", "2"])
    for argv, needle in ((["--compare"], "name one or more methods"), (["--compare", "irx"], "irx: not a method"),
                         (["--compare", "irn", "--method", "rib"], "drop --method")):
        with pytest.raises(UserError, match=needle):
            split_argv(argv, methods)


def test_test_set_pngs_are_palette_class_ids_in_the_server_layout(mini_voc, tmp_path):
    """make_seg --seg_test_list writes results/VOC2012/Segmentation/comp6_test_cls/<id>.png: palette PNGs (the VOC
    palette) whose pixel values are the class ids of the network's argmax, for the argmax and the CRF labels."""
    ids = read_id_list(mini_voc / "ImageSets" / "Segmentation" / "val.txt")[:2]
    write_id_list(tmp_path / "two.txt", ids)
    work = tmp_path / "work"
    argv = ["--voc12_root", str(mini_voc), "--work_dir", str(work), "--seg", "True", "--seg_width", "4",
            "--seg_blocks", "1", "1", "1", "1", "--seg_msc_scales", "1.0", "--seg_frozen_bn", "False",
            "--seg_eval_list", str(tmp_path / "two.txt"), "--seg_test_list", str(tmp_path / "two.txt"),
            "--crf_num_workers", "1", "--num_workers", "0"]
    args = run_sample.parse_args(argv)
    torch.manual_seed(0)
    model, desc = segmentation_network(args, 20)
    with torch.no_grad():  # a classifier bias that makes two classes win somewhere: not all background
        model.base.aspp.c0.bias[[3, 15]] = 0.05
    (work / "sess").mkdir(parents=True)
    torch.save(model.state_dict(), work / args.seg_weights_name)
    save_description(work / args.seg_weights_name, desc)
    make_seg.run(args)
    for folder in ("seg", "seg_crf"):
        server = work / f"{folder}_server" / "results" / "VOC2012" / "Segmentation" / "comp6_test_cls"
        assert sorted(p.stem for p in server.iterdir()) == sorted(ids)
        for i in ids:
            im = Image.open(server / f"{i}.png")
            assert im.mode == "P"
            assert np.array_equal(np.array(im.getpalette()[:21 * 3]).reshape(21, 3), color_palette()[:21])
            assert np.array_equal(np.array(im), np.array(Image.open(work / folder / f"{i}.png")))
    model.eval()
    for i in ids:
        raw = np.array(Image.open(mini_voc / "JPEGImages" / f"{i}.jpg").convert("RGB"))
        with torch.no_grad():
            probs = multiscale_probs(model, torch.from_numpy(normalize_image(raw, desc["style"]))[None], (1.0,), False)
        ids_written = np.array(Image.open(work / "seg_server" / make_seg.SERVER_DIR / f"{i}.png"))
        assert np.array_equal(ids_written, probs[0].argmax(0).numpy())
    assert len(np.unique(ids_written)) > 1

