"""The whole pipeline: typed flags with IRN's defaults, and the order of the steps.

    python run_sample.py                                  # built-in toy dataset (VOC), CPU-sized recipe
    python run_sample.py --voc12_root VOCdevkit/VOC2012 --pretrained_weights resnet50-0676ba61.pth
    python run_sample.py --dataset coco14 --method rib --coco14_root data/coco2014 --pretrained_weights ...
    torchrun --nproc_per_node 8 run_sample.py --voc12_root ...   # one process per GPU (DDP, id shards)

Edit the defaults below to change a run; ``python -m step.<name>`` reads the same flags and defaults.
Flags not given on the command line take, in this order (a later one wins): IRN's defaults below,
DATASET_RECIPES[--dataset], METHOD_RECIPES[--method], PUBLISHED_RECIPES[(--method, --dataset)], and,
without a dataset root (the toy dataset is then generated), TOY_RECIPE.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Sequence

from misc.cli import guarded, str2bool
from misc.errors import UserError

# CPU cores per process: torchrun starts LOCAL_WORLD_SIZE processes on this machine, and each sizes its
# loader and CRF pools from its share.
CORES = max(1, (os.cpu_count() or 2) // int(os.environ.get("LOCAL_WORLD_SIZE", "1")))

STEPS = ("train_cam", "make_cam", "make_rib_cam", "eval_cam", "cam_to_ir_label", "train_irn", "make_sem_seg_labels", "eval_sem_seg",
         "draw")

# What the toy dataset changes (flags not given on the command line). IRN's recipe cannot learn from
# random weights (frozen BN statistics, frozen early stages), so the toy trains from scratch a ResNet-50
# shape with one bottleneck per stage and half width, ordinary BatchNorm and Adam, at the toy's 128-pixel
# scale (measured: SGD and the full 50-layer depth learn far slower in the same CPU minutes). IRNet's
# frozen backbone is the trained toy classifier's (there are no ImageNet weights offline), at 128-pixel
# crops; IRN's 990 steps at lr 0.1 become 300 steps at lr 0.3 (measured on the toy: 100 steps at 0.1 leave
# the boundaries blurry and the pseudo labels below the seeds; 300 at 0.3 beat them, see the README).
TOY_RECIPE = dict(
    recipe="scratch", backbone_width=32, backbone_blocks=(1, 1, 1, 1), cam_crop_size=128,
    cam_resize_long=(100, 160), cam_batch_size=16, cam_num_epoches=12, cam_optimizer="adam",
    cam_learning_rate=1e-3, irn_init="cam", irn_crop_size=128, irn_batch_size=8, irn_num_epoches=6,
    irn_learning_rate=0.3,
)

# What --dataset changes for every method (flags not given on the command line): its lists and toy
# folder. MS COCO 2014 has train (82,783) and val (40,504) only; RIB trains, infers and evaluates on train.
# The default work_dir is per dataset too (runs/voc12, runs/coco14; toys runs/toy, runs/toy_coco14).
DATASET_RECIPES = {
    "voc12": dict(),
    "coco14": dict(train_list="train", val_list="val", infer_list="train", eval_list="train",
                   toy_root="data/toy_coco14", toy_n_train=400),
}

# What --method changes on any dataset: RIB (Lee et al., NeurIPS 2021) seeds replace make_cam's, and its
# outputs get their own folders so an IRN run and a RIB run can share one work_dir (and one classifier).
METHOD_RECIPES = {
    "irn": dict(make_rib_cam_pass=False),
    "rib": dict(make_cam_pass=False, cam_out_dir="cam_rib", ir_label_out_dir="ir_label_rib",
                irn_weights_name="sess/res50_irn_rib.pth", sem_seg_out_dir="sem_seg_rib", eval_out_dir="eval_rib",
                draw_out_dir="draw_rib"),
}

# The published constants of a method on a dataset (IRN's VOC ones are the defaults; IRN published no
# COCO semantic-label recipe, so IRN on COCO keeps them). RIB: get_pseudo_gt_VOC.sh / get_pseudo_gt_COCO.sh
# of its code (obtain_RIB_CAM[_coco].py and run_sample[_coco].py defaults). sem_seg_canvas 0: RIB's COCO
# walk runs IRNet on the image itself (EdgeDisplacement(coco=True)), not padded to the 512 crop.
PUBLISHED_RECIPES = {
    ("rib", "voc12"): dict(cam_eval_sweep=(0.20, 0.49, 0.01), conf_fg_thres=0.35, conf_bg_thres=0.17,
                           sem_seg_bg_thres=0.27, sem_seg_power=1.3),
    ("rib", "coco14"): dict(rib_tau=0.5, rib_lr=5e-6, rib_aux_batch=15, rib_stop_logit=1000, rib_area_ratio=0.8,
                            cam_eval_sweep=(0.10, 0.50, 0.01), conf_fg_thres=0.35, conf_bg_thres=0.17,
                            sem_seg_bg_thres=0.22, sem_seg_power=1.3, sem_seg_canvas=0),
}


def build_parser() -> argparse.ArgumentParser:
    """Every flag of every step, with IRN's defaults."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("data and environment")
    g.add_argument("--dataset", type=str, default=None, choices=tuple(DATASET_RECIPES),
                   help="voc12 (PASCAL VOC 2012, 20 classes) or coco14 (MS COCO 2014, 80 classes); default "
                        "coco14 when --coco14_root is given, else voc12")
    g.add_argument("--voc12_root", type=str, default=None,
                   help="VOC2012 folder (with JPEGImages/). Absent: generate and use the toy dataset")
    g.add_argument("--coco14_root", type=str, default=None,
                   help="COCO 2014 folder: JPEGImages/ + coco_seg_anno/ (RIB layout) or train2014/, val2014/ + "
                        "annotations/ (official). Absent with --dataset coco14: generate and use the toy COCO")
    g.add_argument("--method", type=str, default="irn", choices=tuple(METHOD_RECIPES),
                   help="seed method: irn (make_cam, IRN's constants) or rib (make_rib_cam, RIB's constants)")
    g.add_argument("--work_dir", type=str, default=None,
                   help="folder of every artifact of this run (default runs/<dataset>, toy: runs/toy or "
                        "runs/toy_coco14); relative output paths below are inside it")
    g.add_argument("--train_list", type=str, default="train_aug",
                   help="ids for train_cam/make_cam: a split name in <work_dir>/meta or a .txt path")
    g.add_argument("--val_list", type=str, default="val", help="ids for the train_cam validation loss")
    g.add_argument("--infer_list", type=str, default="train", help="ids for the later inference steps")
    g.add_argument("--eval_list", type=str, default="train", help="ids the eval steps score (IRN: VOC train)")
    g.add_argument("--num_workers", type=int, default=max(1, CORES // 2),
                   help="DataLoader worker processes (per torchrun process)")
    g.add_argument("--device", type=str, default="auto", help="'auto' (CUDA if present, else CPU), 'cpu', 'cuda:0', ...")
    g.add_argument("--amp", type=str, default="off", choices=("off", "bf16"),
                   help="bfloat16 autocast in the network passes of train_cam, make_cam, make_rib_cam, train_irn "
                        "and make_sem_seg_labels (losses, random walk and outputs stay fp32)")
    g.add_argument("--channels_last", type=str2bool, default=False,
                   help="channels_last memory format for the networks of those steps")
    g.add_argument("--seed", type=int, default=0, help="seed of Python, NumPy, torch and the loader workers")
    g.add_argument("--deterministic", type=str2bool, default=False, help="ask torch for deterministic kernels")
    g.add_argument("--overwrite", type=str2bool, default=False,
                   help="make-steps recompute ids whose output exists (default: skip them, i.e. resume)")
    g = p.add_argument_group("toy dataset (used when the dataset's root flag is absent)")
    g.add_argument("--toy_root", type=str, default="data/toy_voc",
                   help="where the toy folder is written (coco14: data/toy_coco14)")
    g.add_argument("--toy_seed", type=int, default=0)
    g.add_argument("--toy_n_train_aug", type=int, default=400, help="toy VOC train_aug size (train_cam, make_cam)")
    g.add_argument("--toy_n_train", type=int, default=100,
                   help="toy train size: VOC the evaluated first ids of train_aug; COCO (400) all of train")
    g.add_argument("--toy_n_val", type=int, default=100)
    g.add_argument("--toy_classes", type=int, default=80,
                   help="toy COCO: objects are drawn from this many of the 80 classes (spread over the ids)")
    g.add_argument("--toy_size", type=int, default=128, help="long side of toy images, pixels")
    g = p.add_argument_group("classifier (train_cam)")
    g.add_argument("--recipe", type=str, default="irn", choices=("irn", "scratch"),
                   help="irn: ImageNet init, frozen BN stats and stages 1-2; scratch: random init, all trained")
    g.add_argument("--backbone_width", type=int, default=64, help="ResNet-50 base width (64 = standard)")
    g.add_argument("--backbone_blocks", type=int, nargs=4, default=(3, 4, 6, 3),
                   help="bottlenecks per stage ((3, 4, 6, 3) = ResNet-50)")
    g.add_argument("--pretrained_weights", type=str, default=None,
                   help="local torchvision resnet50 IMAGENET1K_V1 .pth (required by --recipe irn)")
    g.add_argument("--cam_network", type=str, default="net.resnet50_cam")
    g.add_argument("--cam_crop_size", type=int, default=512)
    g.add_argument("--cam_resize_long", type=int, nargs=2, default=(320, 640), metavar=("LO", "HI"),
                   help="random long-side resize range before the crop, pixels")
    g.add_argument("--cam_batch_size", type=int, default=16)
    g.add_argument("--cam_num_epoches", type=int, default=5)
    g.add_argument("--cam_learning_rate", type=float, default=0.1, help="backbone lr; the classifier gets 10x")
    g.add_argument("--cam_weight_decay", type=float, default=1e-4)
    g.add_argument("--cam_optimizer", type=str, default="sgd", choices=("sgd", "adam"),
                   help="sgd = IRN; both follow the poly schedule")
    g.add_argument("--cam_momentum", type=float, default=1e-4,
                   help="SGD momentum. IRN/RIB effectively used 1e-4 (their optimizer bug); 1e-4 reproduces them")
    g.add_argument("--cam_weights_name", type=str, default="sess/res50_cam.pth")
    g = p.add_argument_group("seeds (make_cam) and their evaluation (eval_cam)")
    g.add_argument("--cam_scales", type=float, nargs="+", default=(1.0, 0.5, 1.5, 2.0))
    g.add_argument("--cam_batch_images", type=int, default=8, help="images per forward pass (same size bucketed)")
    g.add_argument("--cam_out_dir", type=str, default="cam")
    g.add_argument("--cam_eval_thres", type=float, default=0.15, help="fixed background threshold")
    g.add_argument("--cam_eval_sweep", type=float, nargs=3, default=(0.05, 0.60, 0.01), metavar=("LO", "HI", "STEP"),
                   help="background thresholds swept by eval_cam, inclusive range")
    g.add_argument("--eval_out_dir", type=str, default="eval", help="per-step evaluation JSON files")
    g = p.add_argument_group("RIB seeds (make_rib_cam; --method rib)")
    g.add_argument("--rib_iters", type=int, default=10, help="K: most fine-tuning steps per image")
    g.add_argument("--rib_lr", type=float, default=8e-6, help="lr of stages 3-4 in the fine-tuning (stages 1-2 stay fixed); the classifier gets 10x")
    g.add_argument("--rib_aux_batch", type=int, default=20, help="class-disjoint auxiliary images per step")
    g.add_argument("--rib_tau", type=float, default=0.4, help="gndp pooling threshold (of the class map's max)")
    g.add_argument("--rib_stop_logit", type=float, default=600, help="stop once |target logit sum| exceeds this")
    g.add_argument("--rib_area_thres", type=float, default=0.3, help="area stop: CAM level counted as covered")
    g.add_argument("--rib_area_ratio", type=float, default=0.7, help="area stop: covered share of the image")
    g.add_argument("--rib_aux_list", type=str, default=None,
                   help="ids the auxiliary images come from (default: --train_list, as RIB)")
    g.add_argument("--rib_loss_scales", type=float, nargs="+", default=(1.0, 1.5, 2.0),
                   help="scales of the target image in the loss (each with its flip)")
    g = p.add_argument_group("IR labels (cam_to_ir_label)")
    g.add_argument("--conf_fg_thres", type=float, default=0.30, help="seed score above which a pixel is confident foreground")
    g.add_argument("--conf_bg_thres", type=float, default=0.05, help="seed score below which a pixel is confident background")
    g.add_argument("--crf_iters", type=int, default=10, help="dense CRF mean-field iterations")
    g.add_argument("--crf_gt_prob", type=float, default=0.7, help="dense CRF unary confidence in the input label")
    g.add_argument("--crf_num_workers", type=int, default=CORES, help="CRF process pool size (per torchrun process)")
    g.add_argument("--ir_label_out_dir", type=str, default="ir_label")
    g = p.add_argument_group("IRNet (train_irn)")
    g.add_argument("--irn_init", type=str, default="imagenet", choices=("imagenet", "cam"),
                   help="frozen backbone: imagenet = --pretrained_weights (IRN); cam = the trained classifier's")
    g.add_argument("--irn_crop_size", type=int, default=512, help="training crop (multiple of 16); also the "
                   "minimum inference canvas")
    g.add_argument("--irn_rescale", type=float, nargs=2, default=(0.5, 1.5), metavar=("LO", "HI"),
                   help="random rescale range before the crop")
    g.add_argument("--irn_batch_size", type=int, default=32)
    g.add_argument("--irn_num_epoches", type=int, default=3)
    g.add_argument("--irn_learning_rate", type=float, default=0.1, help="boundary branch lr; displacement gets 10x")
    g.add_argument("--irn_weight_decay", type=float, default=1e-4)
    g.add_argument("--irn_momentum", type=float, default=1e-4, help="SGD momentum (1e-4 reproduces IRN, see --cam_momentum)")
    g.add_argument("--irn_radius", type=int, default=10, help="pixel pairs within this radius train the affinities")
    g.add_argument("--irn_weights_name", type=str, default="sess/res50_irn.pth")
    g = p.add_argument_group("pseudo labels (make_sem_seg_labels) and their evaluation (eval_sem_seg)")
    g.add_argument("--beta", type=float, default=10, help="affinity power of the random walk")
    g.add_argument("--exp_times", type=int, default=8, help="the walk takes 2^exp_times steps")
    g.add_argument("--sem_seg_radius", type=int, default=5, help="neighbourhood radius of the random walk")
    g.add_argument("--sem_seg_power", type=float, default=1.0, help="seeds are raised to this power (IRN 1, RIB 1.3)")
    g.add_argument("--sem_seg_bg_thres", type=float, default=0.25, help="background score after global max normalisation")
    g.add_argument("--sem_seg_batch_images", type=int, default=8, help="same-size images walked together")
    g.add_argument("--sem_seg_canvas", type=int, default=None,
                   help="IRNet inference pads images to at least this side (default --irn_crop_size, as IRN); "
                        "0 pads only to a multiple of 16 (RIB's COCO)")
    g.add_argument("--sem_seg_save_scores", type=str2bool, default=False,
                   help="also save the scores before the threshold to <sem_seg_out_dir>_scores/")
    g.add_argument("--sem_seg_eval_sweep", type=float, nargs=3, default=(0.05, 0.60, 0.01), metavar=("LO", "HI", "STEP"),
                   help="background thresholds eval_sem_seg sweeps when the scores were saved")
    g.add_argument("--sem_seg_out_dir", type=str, default="sem_seg")
    g = p.add_argument_group("pictures (draw)")
    g.add_argument("--draw_num", type=int, default=8, help="images drawn (the first N of --eval_list)")
    g.add_argument("--draw_out_dir", type=str, default="draw")
    g = p.add_argument_group("steps to run")
    for s in STEPS:
        g.add_argument(f"--{s}_pass", type=str2bool, default=True, help=f"run {s}")
    return p


def resolve(args: argparse.Namespace, explicit: set[str]) -> argparse.Namespace:
    """Fill the flags not in ``explicit`` from DATASET_RECIPES, METHOD_RECIPES, PUBLISHED_RECIPES and (toy)
    TOY_RECIPE, a later table winning over an earlier one; fill dataset, toy and work_dir."""
    if args.dataset is None:
        args.dataset = "coco14" if args.coco14_root is not None else "voc12"
    other = "coco14_root" if args.dataset == "voc12" else "voc12_root"
    if getattr(args, other) is not None:
        raise UserError(f"--{other} {getattr(args, other)}: does not fit --dataset {args.dataset}; pass "
                        f"--{args.dataset}_root instead (or --dataset {other[:-5]})")
    args.toy = getattr(args, f"{args.dataset}_root") is None
    recipe = dict(DATASET_RECIPES[args.dataset])
    recipe.update(METHOD_RECIPES[args.method])
    recipe.update(PUBLISHED_RECIPES.get((args.method, args.dataset), {}))
    if args.toy:
        recipe.update(TOY_RECIPE)
    for k, v in recipe.items():
        if k not in explicit:
            setattr(args, k, v)
    if args.work_dir is None:
        toy_dir = "toy" if args.dataset == "voc12" else f"toy_{args.dataset}"
        args.work_dir = os.path.join("runs", toy_dir if args.toy else args.dataset)
    return args


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse flags, then resolve the recipes (``resolve``). Returns the namespace every step's run(args) takes."""
    parser = build_parser()
    args = parser.parse_args(argv)
    probe = argparse.ArgumentParser(add_help=False)  # which flags were typed: parse with no defaults
    for act in parser._actions:
        if act.option_strings and act.dest != "help":
            probe.add_argument(*act.option_strings, dest=act.dest, nargs=act.nargs, default=argparse.SUPPRESS)
    explicit = set(vars(probe.parse_known_args(argv)[0]))
    return resolve(args, explicit)


def main(argv: Sequence[str] | None = None) -> None:
    """Run every enabled step in order, timing each. Under torchrun every rank runs every step, with a
    barrier after each, so no step reads a file another rank is still writing."""
    import importlib

    from misc import dist
    from misc.torchutils import pick_device
    from step.common.entry import record_config
    from step.common.parallel import say

    args = parse_args(argv)
    dist.init(pick_device(args.device))
    record_config(args, "run_sample")
    for s in STEPS:
        if getattr(args, f"{s}_pass"):
            t = time.time()
            say(f"== step.{s}")
            importlib.import_module(f"step.{s}").run(args)
            dist.barrier()
            say(f"== step.{s} done in {time.time() - t:.1f} s")
    dist.destroy()


if __name__ == "__main__":
    guarded(lambda: main(sys.argv[1:]))
