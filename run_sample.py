"""The whole pipeline of a method: its steps (PIPELINES), the flags with their defaults in typed sections,
and the recipe tables.

    python run_sample.py                                  # built-in toy dataset (VOC), CPU-sized recipe
    python run_sample.py --voc12_root VOCdevkit/VOC2012 --pretrained_weights resnet50-0676ba61.pth
    python run_sample.py --dataset coco14 --method rib --coco14_root data/coco2014 --pretrained_weights ...
    torchrun --nproc_per_node 8 run_sample.py --voc12_root ...   # one process per GPU (DDP, id shards)
    python run_sample.py --method rib --help              # the flags of one method's pipeline
    python run_sample.py --seg True                       # ... ending with DeepLab trained on the pseudo labels
    python run_sample.py --compare irn rib                # every stage of each method, one table

Edit the defaults below to change a run; ``python -m step.<name>`` reads the same flags and defaults.
Flags not given on the command line take, in this order (a later one wins): the defaults below,
DATASET_RECIPES[--dataset], METHOD_RECIPES[--method], PUBLISHED_RECIPES[(--method, --dataset)],
SEG_RECIPES[--seg_recipe] and, without a dataset root (the toy dataset is then generated), TOY_RECIPE then
TOY_METHOD_RECIPES[--method].
Method outputs (cam_out_dir, ...) get a _<method> suffix for every method but irn (cam_rib, ...), so runs
of several methods share one work_dir and one classifier. The machinery is misc/config.py; the flags
page docs/flags.md is generated from this file (python -m misc.config --markdown > docs/flags.md).
"""
from __future__ import annotations

import os
import sys
from typing import Sequence

from misc.cli import guarded
from misc.config import Config, Flags, flag, section
from misc.errors import UserError
from net.registry import CLASSIFIERS

# CPU cores per process: torchrun starts LOCAL_WORLD_SIZE processes on this machine, and each sizes its
# loader and CRF pools from its share.
CORES = max(1, (os.cpu_count() or 2) // int(os.environ.get("LOCAL_WORLD_SIZE", "1")))

# The ordered steps of each method (modules step/<name>.py). A new method adds one line.
PIPELINES = {
    "irn": ("train_cam", "make_cam", "eval_cam", "cam_to_ir_label", "train_irn", "make_sem_seg_labels",
            "eval_sem_seg", "draw"),
    "rib": ("train_cam", "make_rib_cam", "eval_cam", "cam_to_ir_label", "train_irn", "make_sem_seg_labels",
            "eval_sem_seg", "draw"),
    "drs": ("train_drs_cls", "make_drs_locmap", "eval_cam", "train_drs_refine", "make_drs_pseudo", "eval_sem_seg",
            "draw"),
    "drs_irn": ("train_drs_cls", "make_drs_locmap", "eval_cam", "cam_to_ir_label", "train_irn", "make_sem_seg_labels",
                "eval_sem_seg", "draw"),
    "toco": ("train_single_stage", "infer_single_stage", "eval_cam", "eval_sem_seg", "draw"),
    "pufs": ("train_single_stage", "infer_single_stage", "eval_cam", "eval_sem_seg", "draw"),
    "rsepm": ("train_rsepm", "infer_rsepm", "eval_cam", "eval_sem_seg", "draw"),
    "rsepm_irn": ("train_rsepm", "infer_rsepm", "eval_cam", "cam_to_ir_label", "train_irn", "make_sem_seg_labels",
                  "eval_sem_seg", "draw"),
}


@section("run")
class Run:
    """Method, work folder, devices, precision, seeds, resume"""

    method: str = flag("irn", "seed method: its pipeline and recipes (irn: make_cam; rib: make_rib_cam; drs: DRS "
                       "seeds, refinement net, saliency pseudo labels; drs_irn: DRS seeds through the IRN stage; "
                       "toco, pufs: single-stage ViT, train_single_stage and infer_single_stage; rsepm: RS+EPM, "
                       "train_rsepm and infer_rsepm (released pseudo labels); rsepm_irn: its seeds through the IRN "
                       "stage)",
                       choices=tuple(PIPELINES))
    work_dir: str | None = flag(None, "folder of every artifact of this run (default runs/<dataset>, toy: runs/toy "
                                "or runs/toy_coco14); relative output paths are inside it")
    eval_out_dir: str = flag("eval", "per-step evaluation JSON files", output=True)
    num_workers: int = flag(max(1, CORES // 2), "DataLoader worker processes (per torchrun process)", minimum=0,
                            shown="half the CPU cores of the process, at least 1")
    device: str = flag("auto", "'auto' (CUDA if present, else CPU), 'cpu', 'cuda:0', ...")
    amp: str = flag("off", "bfloat16 autocast in the network passes of train_cam, make_cam, make_rib_cam, train_irn, "
                    "make_sem_seg_labels, train_single_stage (its training forward), infer_single_stage, train_rsepm "
                    "and infer_rsepm (losses, random walk, CRF loss and outputs stay fp32)", choices=("off", "bf16"))
    channels_last: bool = flag(False, "channels_last memory format for the networks of those steps")
    seed: int = flag(0, "seed of Python, NumPy, torch and the loader workers")
    deterministic: bool = flag(False, "ask torch for deterministic kernels")
    overwrite: bool = flag(False, "make-steps recompute ids whose output exists, training steps train again when "
                           "their weights exist, <work_dir>/meta is derived again from a changed dataset (default: "
                           "skip finished work, i.e. resume; refuse a changed dataset)")


@section("data")
class Data:
    """Dataset and id lists

    Besides these flags the parser sets ``toy``: True when the dataset's root flag is absent (the toy dataset
    is then generated and used).
    """

    dataset: str | None = flag(None, "voc12 (PASCAL VOC 2012, 20 classes) or coco14 (MS COCO 2014, 80 classes); "
                               "default coco14 when --coco14_root is given, else voc12", choices=("voc12", "coco14"))
    voc12_root: str | None = flag(None, "VOC2012 folder (with JPEGImages/). Absent: generate and use the toy dataset")
    coco14_root: str | None = flag(None, "COCO 2014 folder: JPEGImages/ + coco_seg_anno/ (RIB layout) or "
                                   "train2014/, val2014/ + annotations/ (official). Absent with --dataset coco14: "
                                   "generate and use the toy COCO")
    train_list: str = flag("train_aug", "ids for train_cam, the seeds, the IR labels and train_irn: a split name "
                           "in <work_dir>/meta or a .txt path")
    val_list: str = flag("val", "ids for the train_cam validation loss")
    infer_list: str = flag("train", "ids for the mean shift of train_irn and the pseudo labels")
    eval_list: str = flag("train", "ids the eval steps score (IRN: VOC train)")


@section("toy")
class Toy:
    """The toy dataset (used when the dataset's root flag is absent)"""

    toy_root: str = flag("data/toy_voc", "where the toy folder is written (coco14: data/toy_coco14)")
    toy_seed: int = flag(0, "seed of the toy scenes")
    toy_n_train_aug: int = flag(400, "toy VOC train_aug size (train_cam, the seeds)", minimum=1)
    toy_n_train: int = flag(100, "toy train size: VOC the evaluated first ids of train_aug; COCO (400) all of train",
                            minimum=1)
    toy_n_val: int = flag(100, "toy val size", minimum=1)
    toy_classes: int = flag(80, "toy COCO: objects are drawn from this many of the 80 classes (spread over the ids)",
                            minimum=1, maximum=80)
    toy_size: int = flag(128, "long side of toy images, pixels", minimum=32)

    def check(self, args: Flags) -> None:
        if args.toy and args.dataset == "voc12" and self.toy_n_train > self.toy_n_train_aug:
            raise UserError(f"--toy_n_train {self.toy_n_train}: more than --toy_n_train_aug {self.toy_n_train_aug} "
                            "(toy VOC train is the first ids of train_aug); lower it or raise --toy_n_train_aug")


@section("backbone")
class Backbone:
    """The classifier network (train_cam's, also IRNet's backbone shape)"""

    cam_network: str = flag("net.resnet50_cam", "classifier network, a name of net.registry.CLASSIFIERS",
                            choices=tuple(CLASSIFIERS))
    recipe: str = flag("irn", "irn: ImageNet init, frozen BN stats and stages 1-2; scratch: random init, all trained",
                       choices=("irn", "scratch"))
    backbone_width: int = flag(64, "ResNet-50 base width (64 = standard)", minimum=1)
    backbone_blocks: tuple[int, int, int, int] = flag((3, 4, 6, 3), "bottlenecks per stage ((3, 4, 6, 3) = ResNet-50)",
                                                      minimum=1)
    pretrained_weights: str | None = flag(None, "local torchvision resnet50 IMAGENET1K_V1 .pth (required by --recipe "
                                          "irn and --irn_init imagenet)")


@section("classifier")
class Classifier:
    """Classifier training (train_cam)"""

    cam_crop_size: int = flag(512, "training crop, pixels", minimum=16)
    cam_resize_long: tuple[int, int] = flag((320, 640), "random long-side resize range before the crop, pixels",
                                            minimum=1, ordered=True, metavar=("LO", "HI"))
    cam_batch_size: int = flag(16, "total batch (over all torchrun processes)", minimum=1)
    cam_num_epoches: int = flag(5, "epochs", minimum=1)
    cam_learning_rate: float = flag(0.1, "backbone lr; the classifier gets 10x", above=0)
    cam_weight_decay: float = flag(1e-4, "weight decay (also of the RIB fine-tuning)", minimum=0)
    cam_optimizer: str = flag("sgd", "sgd = IRN; both follow the poly schedule", choices=("sgd", "adam"))
    cam_momentum: float = flag(1e-4, "SGD momentum. IRN/RIB effectively used 1e-4 (their optimizer bug); 1e-4 "
                               "reproduces them", minimum=0, maximum=1)
    cam_weights_name: str = flag("sess/res50_cam.pth", "the classifier's weights (shared by the methods that use it)")


@section("seeds")
class Seeds:
    """Seeds (make_cam, make_rib_cam) and their evaluation (eval_cam)"""

    cam_scales: tuple[float, ...] = flag((1.0, 0.5, 1.5, 2.0), "image scales whose flip-merged CAMs are summed",
                                         above=0)
    cam_batch_images: int = flag(8, "images per forward pass (same size bucketed)", minimum=1)
    cam_out_dir: str = flag("cam", "seed folder", output=True)
    cam_eval_thres: float = flag(0.15, "fixed background threshold", minimum=0)
    cam_eval_sweep: tuple[float, float, float] = flag((0.05, 0.60, 0.01), "background thresholds swept by eval_cam, "
                                                      "inclusive range", sweep=True, metavar=("LO", "HI", "STEP"))


@section("rib")
class Rib:
    """RIB seeds (make_rib_cam)"""

    rib_iters: int = flag(10, "K: most fine-tuning steps per image", minimum=1)
    rib_lr: float = flag(8e-6, "lr of stages 3-4 in the fine-tuning (stages 1-2 stay fixed); the classifier gets 10x",
                         above=0)
    rib_aux_batch: int = flag(20, "class-disjoint auxiliary images per step", minimum=0)
    rib_tau: float = flag(0.4, "gndp pooling threshold (of the class map's max)", above=0)
    rib_stop_logit: float = flag(600, "stop once |target logit sum| exceeds this", minimum=0)
    rib_area_thres: float = flag(0.3, "area stop: CAM level counted as covered", minimum=0, maximum=1)
    rib_area_ratio: float = flag(0.7, "area stop: covered share of the image", minimum=0)
    rib_aux_list: str | None = flag(None, "ids the auxiliary images come from (default: --train_list, as RIB)")
    rib_loss_scales: tuple[float, ...] = flag((1.0, 1.5, 2.0), "scales of the target image in the loss (each with "
                                              "its flip); among --cam_scales", above=0)

    def check(self, args: Flags) -> None:
        if 1.0 not in args.cam_scales or not set(self.rib_loss_scales) <= set(args.cam_scales):
            raise UserError(f"--rib_loss_scales {' '.join(map(str, self.rib_loss_scales))}: must be among --cam_scales "
                            f"{' '.join(map(str, args.cam_scales))}, which must hold 1.0 (the area stop looks at it)")


@section("drs")
class Drs:
    """DRS: classifier with suppression, localization maps, refinement net, saliency pseudo labels

    The DRS steps squash every image to a square (aspect ratio not kept, as published); seeds and pseudo labels
    come back at the image's own size. Both DRS pipelines (drs, drs_irn) share the two networks' weights.
    """

    drs_init: str = flag("imagenet", "imagenet: both VGG-16 trunks start from --drs_pretrained_weights (DRS); "
                         "scratch: random init", choices=("imagenet", "scratch"))
    drs_pretrained_weights: str | None = flag(None, "local torchvision vgg16 IMAGENET1K_V1 .pth (vgg16-397923af.pth; "
                                              "required by --drs_init imagenet)")
    drs_width: int = flag(64, "VGG-16 base width: stage widths x (1, 2, 4, 8, 8) (64 = VGG-16, needed by ImageNet "
                          "weights)", minimum=1)
    drs_convs: tuple[int, int, int, int, int] = flag((2, 2, 3, 3, 3), "VGG trunk convs per stage ((2, 2, 3, 3, 3) = "
                                                     "VGG-16, needed by ImageNet weights)", minimum=1)
    drs_norm: bool = flag(False, "BatchNorm before every activation of both trunks (not published; the toy trains "
                          "from scratch, where the plain VGG does not learn)")
    drs_delta: float | None = flag(None, "fixed suppression controller G = delta; none: the learnable one "
                                   "(published)", above=0)
    drs_resize: int = flag(384, "classifier training: images squashed to this square, pixels", minimum=16)
    drs_crop: int = flag(320, "classifier training: random crop of the square, pixels", minimum=16)
    drs_jitter: tuple[float, float, float, float] = flag((0.3, 0.3, 0.3, 0.1), "colour jitter of both trainings: "
                                                         "brightness, contrast, saturation, hue", minimum=0,
                                                         metavar=("B", "C", "S", "H"))
    drs_batch_size: int = flag(10, "classifier total batch (over all torchrun processes; the published code used "
                               "5 per GPU on 2 GPUs)", minimum=1)
    drs_num_epoches: int = flag(15, "classifier epochs", minimum=1)
    drs_optimizer: str = flag("sgd", "classifier optimiser: sgd = Nesterov SGD (DRS); adam (the toy)",
                              choices=("sgd", "adam"))
    drs_learning_rate: float = flag(1e-3, "classifier lr of the trunk weights; trunk biases 2x, head and DRS "
                                    "controller weights 10x, head biases 20x", above=0)
    drs_momentum: float = flag(0.9, "classifier SGD (Nesterov) momentum", minimum=0, maximum=1)
    drs_weight_decay: float = flag(5e-4, "classifier weight decay (all groups)", minimum=0)
    drs_decay_epochs: tuple[int, ...] = flag((4, 9), "classifier lr x0.1 from the start of these 0-based epochs "
                                             "(DRS: 1-based 5 and 10)", minimum=0)
    drs_cls_weights_name: str = flag("sess/vgg16_drs.pth", "the DRS classifier's weights")
    drs_side: int = flag(320, "localization maps, refinement and pseudo labels: images squashed to this square",
                         minimum=16)
    drs_scales: tuple[int, ...] = flag((256, 320, 384), "sides the square is resized to for the max-fused "
                                       "localization and refined maps (no flip)", minimum=16)
    drs_batch_images: int = flag(8, "images per inference batch (all are squares)", minimum=1)
    drs_refine_batch_size: int = flag(10, "refinement total batch (over all torchrun processes)", minimum=1)
    drs_refine_num_epoches: int = flag(30, "refinement epochs", minimum=1)
    drs_refine_learning_rate: float = flag(1e-4, "refinement Adam lr (no weight decay)", above=0)
    drs_refine_decay_epochs: tuple[int, ...] = flag((9, 19), "refinement lr x0.1 from the start of these 0-based "
                                                    "epochs (DRS: 1-based 10 and 20)", minimum=0)
    drs_refine_weights_name: str = flag("sess/vgg16_drs_refine.pth", "the refinement network's weights")
    saliency_root: str | None = flag(None, "folder of 8-bit saliency maps <id>.png of the images' sizes (DRS: "
                                     "PoolNet's); default <dataset root>/saliency_map")
    drs_saliency_thres: int = flag(50, "a pixel is salient above this saliency value (0..255)", minimum=0,
                                   maximum=255)
    drs_alpha: float = flag(0.2, "pseudo labels: refined scores below this are no object cue", minimum=0)
    drs_confident: float = flag(0.9, "pseudo labels: a channel above this counts as confident", minimum=0)
    drs_max_confident: int = flag(2, "pseudo labels: more confident channels than this -> ignore (255)", minimum=0)
    drs_select: str = flag("last", "which epoch's weights each DRS training keeps: last; or gt_miou, the published "
                           "selection: after every epoch the saliency pseudo labels (no ignore rules) of "
                           "--eval_list are scored against its GT masks, i.e. it uses pixel labels",
                           choices=("last", "gt_miou"))

    def check(self, args: Flags) -> None:
        if self.drs_optimizer == "sgd" and self.drs_momentum == 0:
            raise UserError("--drs_momentum 0: Nesterov SGD needs a momentum above 0 (DRS: 0.9)")
        if self.drs_crop > self.drs_resize:
            raise UserError(f"--drs_crop {self.drs_crop}: larger than --drs_resize {self.drs_resize}; the crop is "
                            "taken from the squashed square")


@section("ir_label")
class IrLabel:
    """IR labels (cam_to_ir_label)"""

    conf_fg_thres: float = flag(0.30, "seed score above which a pixel is confident foreground", minimum=0, maximum=1)
    conf_bg_thres: float = flag(0.05, "seed score below which a pixel is confident background", minimum=0, maximum=1)
    crf_iters: int = flag(10, "dense CRF mean-field iterations", minimum=0)
    crf_gt_prob: float = flag(0.7, "dense CRF unary confidence in the input label", above=0, maximum=1)
    crf_num_workers: int = flag(CORES, "CRF process pool size (per torchrun process)", minimum=0,
                                shown="the CPU cores of the process")
    ir_label_out_dir: str = flag("ir_label", "IR label folder", output=True)


@section("irn")
class Irn:
    """IRNet (train_irn)"""

    irn_init: str = flag("imagenet", "frozen backbone: imagenet = --pretrained_weights (IRN); cam = the trained "
                         "classifier's", choices=("imagenet", "cam"))
    irn_crop_size: int = flag(512, "training crop; also the minimum inference canvas", minimum=16, multiple_of=16)
    irn_rescale: tuple[float, float] = flag((0.5, 1.5), "random rescale range before the crop", above=0, ordered=True,
                                            metavar=("LO", "HI"))
    irn_batch_size: int = flag(32, "total batch (over all torchrun processes)", minimum=1)
    irn_num_epoches: int = flag(3, "epochs", minimum=1)
    irn_learning_rate: float = flag(0.1, "boundary branch lr; displacement gets 10x", above=0)
    irn_weight_decay: float = flag(1e-4, "weight decay", minimum=0)
    irn_momentum: float = flag(1e-4, "SGD momentum (1e-4 reproduces IRN, see --cam_momentum)", minimum=0, maximum=1)
    irn_radius: int = flag(10, "pixel pairs within this radius train the affinities", minimum=2)
    irn_weights_name: str = flag("sess/res50_irn.pth", "IRNet's weights", output=True)


@section("sem_seg")
class SemSeg:
    """Pseudo labels (make_sem_seg_labels) and their evaluation (eval_sem_seg)"""

    beta: float = flag(10, "affinity power of the random walk", above=0)
    exp_times: int = flag(8, "the walk takes 2^exp_times steps", minimum=0)
    sem_seg_radius: int = flag(5, "neighbourhood radius of the random walk", minimum=2)
    sem_seg_power: float = flag(1.0, "seeds are raised to this power (IRN 1, RIB 1.3)", above=0)
    sem_seg_bg_thres: float = flag(0.25, "background score after global max normalisation", minimum=0)
    sem_seg_batch_images: int = flag(8, "same-size images walked together", minimum=1)
    sem_seg_canvas: int | None = flag(None, "IRNet inference pads images to at least this side (default "
                                      "--irn_crop_size, as IRN); 0 pads only to a multiple of 16 (RIB's COCO)",
                                      minimum=0, multiple_of=16)
    sem_seg_save_scores: bool = flag(False, "also save the scores before the threshold to <sem_seg_out_dir>_scores/")
    sem_seg_eval_sweep: tuple[float, float, float] = flag((0.05, 0.60, 0.01), "background thresholds eval_sem_seg "
                                                          "sweeps when the scores were saved", sweep=True,
                                                          metavar=("LO", "HI", "STEP"))
    sem_seg_out_dir: str = flag("sem_seg", "pseudo-label folder", output=True)


@section("draw")
class Draw:
    """Pictures (draw)"""

    draw_num: int = flag(8, "images drawn (the first N of --eval_list)", minimum=0)
    draw_out_dir: str = flag("draw", "picture folder", output=True)


@section("single_stage")
class SingleStage:
    """Single-stage ViT training and inference shared by ToCo and PUFS (train_single_stage, infer_single_stage)

    The schedule counts iterations (--ss_max_iters at the total batch --ss_batch_size, whatever the number of
    torchrun processes), cut into epochs of --ss_epoch_iters iterations: training resumes after the last
    finished one. --method picks the algorithm (its section: toco or pufs).
    """

    ss_patch_size: int = flag(16, "ViT patch size (ViT-B/16: 16)", minimum=1)
    ss_embed_dim: int = flag(768, "ViT width (ViT-B: 768)", minimum=1)
    ss_depth: int = flag(12, "ViT blocks (ViT-B: 12); the aux CAM reads block depth - 3", minimum=3)
    ss_num_heads: int = flag(12, "ViT attention heads (ViT-B: 12)", minimum=1)
    ss_img_size: int = flag(224, "stored position-embedding grid is this / patch size (ToCo 224, resized at every "
                            "forward; PUFS 448)", minimum=1)
    ss_head_hidden: int = flag(2048, "hidden width of the projection heads (published 2048)", minimum=1)
    ss_drop_path: float = flag(0.0, "stochastic depth in training (ToCo 0, PUFS 0.1; 0 at inference)", minimum=0,
                               maximum=1)
    ss_pretrained_weights: str | None = flag(None, "local ImageNet ViT-B/16 file (timm vit_base_patch16_224 'jx' or "
                                             "deit_base_patch16_224 layout, .pth or .safetensors); required on real "
                                             "data unless --ss_scratch")
    ss_scratch: bool = flag(False, "train the ViT from random init (the toy; no ImageNet file)")
    ss_crop_size: int = flag(448, "training crop, pixels", minimum=16)
    ss_scale_range: tuple[float, float] = flag((0.5, 2.0), "ToCo's random rescale before the crop", above=0,
                                               ordered=True, metavar=("LO", "HI"))
    ss_jitter: float = flag(0.8, "colour-jitter probability of the views (ToCo 0.8, PUFS 0.5)", minimum=0, maximum=1)
    ss_gray: float = flag(0.2, "grey-scale probability of ToCo's views", minimum=0, maximum=1)
    ss_blur: bool = flag(True, "ToCo's Gaussian blur (p 1.0 / 0.5 / 0.1 by view) and solarize (p 0.2, second view)")
    ss_batch_size: int = flag(4, "total batch over all torchrun processes (VOC 4, COCO 8)", minimum=1)
    ss_max_iters: int = flag(20000, "training iterations (VOC 20k, COCO 80k)", minimum=1)
    ss_epoch_iters: int = flag(2000, "iterations per epoch: the resume (and logging) granularity; divides "
                               "--ss_max_iters", minimum=1)
    ss_lr: float = flag(6e-5, "encoder learning rate; the heads and decoder get --ss_lr_mult times it", above=0)
    ss_lr_mult: float = flag(10.0, "learning-rate factor of the classifiers, projection head and decoder", above=0)
    ss_weight_decay: float = flag(0.01, "AdamW weight decay (ToCo 0.01 on all; PUFS 0.05, none on biases, norms and "
                                  "tokens)", minimum=0)
    ss_warmup_iters: int = flag(1500, "linear warm-up iterations", minimum=0)
    ss_warmup_ratio: float = flag(1e-6, "learning-rate factor at the warm-up's start (ToCo 1e-6, PUFS 0.1)", above=0,
                                  maximum=1)
    ss_schedule: str = flag("poly", "after the warm-up: poly (power 0.9, ToCo) or cosine (PUFS)",
                            choices=("poly", "cosine"))
    ss_loss_schedule: str = flag("voc", "loss weights over time: voc (seg and CRF losses after --ss_seg_start) or "
                                 "coco (the published three COCO phases, 8000 / 12000)", choices=("voc", "coco"))
    ss_seg_start: int = flag(2000, "voc loss schedule: segmentation and CRF losses on after this many iterations",
                             minimum=0)
    ss_high_thre: float = flag(0.7, "pseudo labels: CAM above it is foreground (COCO 0.65)", minimum=0, maximum=1)
    ss_low_thre: float = flag(0.25, "pseudo labels: CAM at most it is background", minimum=0, maximum=1)
    ss_bkg_thre: float = flag(0.5, "background threshold of the validation label rule (COCO 0.45)", minimum=0,
                              maximum=1)
    ss_cam_scales: tuple[float, ...] = flag((1.0, 0.5, 1.5), "scales of the multi-scale CAMs (training and the seeds "
                                            "infer_single_stage writes), each with its flip; 1.0 always runs",
                                            above=0)
    ss_par_iters: int = flag(10, "PAR propagation iterations", minimum=1)
    ss_w_ptc: float = flag(0.2, "patch-token contrast loss weight (PUFS: 'aff')", minimum=0)
    ss_w_seg: float = flag(0.1, "segmentation loss weight", minimum=0)
    ss_w_reg: float = flag(0.05, "dense CRF loss weight (published 0.05 on rloss's lattice, whose gain ~0.63 makes "
                           "it ~0.031 on the exact filter here; docs/methods/toco_pufs.md)", minimum=0)
    ss_crf_loss_scale: float = flag(0.5, "the CRF loss runs on the crop downscaled by this (published 0.5)", above=0,
                                    maximum=1)
    ss_weights_name: str = flag("sess/single_stage.pth", "the trained network (PUFS: student, teacher and FSR centres) "
                                "written by train_single_stage and read by infer_single_stage; a published ToCo "
                                "checkpoint or PUFS student.pth / teacher.pth loads too", output=True)
    ss_infer_scales: tuple[float, ...] = flag((1.0, 1.25, 1.5), "inference scales of the segmentation, each with its "
                                              "flip (flip logits summed, scales max-fused)", above=0)
    ss_crf: bool = flag(True, "dense CRF on the inferred segmentation (published parameters: 10 iterations, "
                        "Gaussian 1/1, bilateral 121/5/4)")
    ss_crf_num_workers: int = flag(CORES, "CRF process pool size (per torchrun process)", minimum=0,
                                   shown="the CPU cores of the process")

    def check(self, args: Flags) -> None:
        if self.ss_max_iters % self.ss_epoch_iters:
            raise UserError(f"--ss_epoch_iters {self.ss_epoch_iters}: does not divide --ss_max_iters "
                            f"{self.ss_max_iters}; pick a divisor (e.g. {self.ss_max_iters // 10 or 1})")
        if self.ss_embed_dim % self.ss_num_heads:
            raise UserError(f"--ss_num_heads {self.ss_num_heads}: does not divide --ss_embed_dim {self.ss_embed_dim}")


@section("toco")
class ToCo:
    """ToCo: class-token contrast with local crops (train_single_stage with --method toco)"""

    toco_crop_num: int = flag(8, "local crops per image", minimum=0)
    toco_local_crop_size: int = flag(96, "local crop side, pixels", minimum=8)
    toco_temp: float = flag(0.5, "CTC temperature (COCO 1.0)", above=0)
    toco_momentum: float = flag(0.9, "EMA momentum of the CTC teacher head", minimum=0, maximum=1)
    toco_w_ctc: float = flag(0.5, "class-token contrast loss weight", minimum=0)
    toco_ctc_dim: int = flag(1024, "output size of the CTC projection head", minimum=1)
    toco_ptc_box: str = flag("pixel", "PTC labels' valid area: pixel (published: the pixel box applied to the token "
                             "grid) or token (the box scaled to the grid)", choices=("pixel", "token"))
    toco_same_flip: bool = flag(False, "flip the main view and the local-crop source together (published: "
                                "independently, so their region maps are mirrored for about half the images)")

    def check(self, args: Flags) -> None:
        if self.toco_local_crop_size > args.ss_crop_size:
            raise UserError(f"--toco_local_crop_size {self.toco_local_crop_size}: larger than --ss_crop_size "
                            f"{args.ss_crop_size}")


@section("pufs")
class Pufs:
    """PUFS: EMA teacher, uncertain-block masking, feature self-reinforcement (--method pufs)"""

    pufs_cls_depth: int = flag(2, "class-attention blocks that build the class token", minimum=1)
    pufs_out_dim: int = flag(4096, "projector output size", minimum=1)
    pufs_momentum: float = flag(0.9995, "teacher EMA momentum at the start (cosine to 1)", minimum=0, maximum=1)
    pufs_fsr_iters: int | None = flag(None, "FSR losses and the momentum schedule span these iterations (default "
                                      "--ss_max_iters)", minimum=1)
    pufs_use_mim: bool = flag(True, "mask blocks of view 2 (off: no FSR-patch loss)")
    pufs_block_size: int = flag(64, "mask block side, pixels (a multiple of --ss_patch_size)", minimum=1)
    pufs_mask_ratio: float = flag(0.4, "share of the blocks masked", minimum=0, maximum=1)
    pufs_w_class: float = flag(0.1, "FSR-class loss weight", minimum=0)
    pufs_w_patch: float = flag(0.1, "FSR-patch loss weight", minimum=0)
    pufs_mask_class_attention: bool = flag(False, "leave masked patches out of the class attention (PUFS's first "
                                           "release; its final code lets them in)")
    pufs_teacher_eval: bool = flag(False, "teacher in eval mode (no drop path; DINO style); published: train mode")
    pufs_eval_model: str = flag("student", "network infer_single_stage uses (docs/methods/toco_pufs.md)",
                                choices=("student", "teacher"))

    def check(self, args: Flags) -> None:
        if self.pufs_block_size % args.ss_patch_size or args.ss_crop_size % self.pufs_block_size:
            raise UserError(f"--pufs_block_size {self.pufs_block_size}: must be a multiple of --ss_patch_size "
                            f"{args.ss_patch_size} and divide --ss_crop_size {args.ss_crop_size}")


@section("rsepm")
class Rsepm:
    """RS+EPM training (train_rsepm; --method rsepm, rsepm_irn): RecurSeed and EdgePredictMix

    The network is the released one (net/rsepm.py); the training was never published: every flag marked
    [reconstructed] is this toolkit's choice, with its reason (docs/methods/rsepm.md). Both RS+EPM pipelines
    share the weights.
    """

    rsepm_depth: int = flag(50, "ResNet depth of the trunk (released: 50 and 101)", choices=(50, 101))
    rsepm_width: int = flag(64, "ResNet base width (64 = released, needed by ImageNet weights)", minimum=1)
    rsepm_blocks: tuple[int, int, int, int] | None = flag(None, "bottlenecks per stage (default: those of "
                                                          "--rsepm_depth)", minimum=1)
    rsepm_feature_size: int = flag(256, "ASPP and decoder width (released 256)", minimum=1)
    rsepm_pretrained_weights: str | None = flag(None, "local torchvision resnet50 / resnet101 IMAGENET1K_V1 .pth "
                                                "(resnet50-19c8e357.pth); required unless --rsepm_scratch")
    rsepm_scratch: bool = flag(False, "train from random init (the toy; no ImageNet file)")
    rsepm_crop_size: int = flag(512, "[reconstructed] training crop, pixels (Puzzle-CAM's recipe)", minimum=16,
                                multiple_of=16)
    rsepm_resize_long: tuple[int, int] = flag((320, 640), "[reconstructed] random long-side resize before the "
                                              "crop (Puzzle-CAM; the released Random_Resize)", minimum=1,
                                              ordered=True, metavar=("LO", "HI"))
    rsepm_jitter: tuple[float, float, float, float] = flag((0.3, 0.3, 0.3, 0.1), "[reconstructed] colour jitter: "
                                                           "brightness, contrast, saturation, hue (Puzzle-CAM; the "
                                                           "released ColorJitter)", minimum=0,
                                                           metavar=("B", "C", "S", "H"))
    rsepm_batch_size: int = flag(16, "[reconstructed] total batch (over all torchrun processes; Puzzle-CAM)",
                                 minimum=2)
    rsepm_epochs: int = flag(20, "[reconstructed] epochs (first commit's tag: RS ep 5 + CM ep 15)", minimum=1)
    rsepm_epm_start: int = flag(5, "[reconstructed] EdgePredictMix from this epoch on (tag RS(ep=5); the decoder "
                                "must be trained before EP uses it)", minimum=0)
    rsepm_optimizer: str = flag("sgd", "[reconstructed] sgd: Nesterov SGD (released SGD wrapper, Puzzle-CAM); "
                                "adam (the toy); both poly 0.9 per iteration (released PolyLR)",
                                choices=("sgd", "adam"))
    rsepm_lr: float = flag(0.01, "[reconstructed] lr of the trunk weights; trunk biases 2x, head weights 10x, head "
                           "biases 20x (released group split, Puzzle-CAM's factors; lowered from Puzzle-CAM's 0.1 "
                           "for the jointly trained decoder)", above=0)
    rsepm_momentum: float = flag(0.9, "[reconstructed] SGD momentum (Puzzle-CAM)", minimum=0, maximum=1)
    rsepm_weight_decay: float = flag(1e-4, "[reconstructed] weight decay of the weight groups, none on biases "
                                     "(Puzzle-CAM)", minimum=0)
    rsepm_refine: bool = flag(True, "[reconstructed] RecurSeed: the CAM seed refined by SCG and PAMR into Mrs "
                              "(figure); False: Mrs is the resized CAM itself (ablation: no SCG/PAMR)")
    rsepm_scg_c1: bool = flag(False, "[reconstructed] SCG also correlates C1 (issue: C2..C5; the first commit "
                              "resizes C1..C5)")
    rsepm_pamr_iters: int = flag(1, "[reconstructed] PAMR iterations in training (released default 1; PAMR paper "
                                 "10)", minimum=1)
    rsepm_pamr_dilations: tuple[int, ...] = flag((1,), "[reconstructed] PAMR dilations in training (released "
                                                 "default 1; PAMR paper 1 2 4 8 12 24)", minimum=1)
    rsepm_cf_fg: float = flag(0.55, "[reconstructed] certainty filter: Mrs >= this is the class (first commit's "
                              "tag CF(c=0.55))", minimum=0, maximum=1)
    rsepm_cf_bg: float = flag(0.10, "[reconstructed] certainty filter: Mrs < this is background, between is "
                              "ignored (tag CF(u=0.10))", minimum=0, maximum=1)
    rsepm_ep_edge: float = flag(0.5, "[reconstructed] EdgePredict: a pixel whose probability vector differs from a "
                                "neighbour's by at least this (half L1) is an uncertain edge (abstract: probability "
                                "difference of adjacent pixels)", minimum=0, maximum=1)
    rsepm_ep_conf: float = flag(0.55, "[reconstructed] EdgePredict: top probability below this is uncertain (as "
                                "--rsepm_cf_fg)", minimum=0, maximum=1)
    rsepm_mix: bool = flag(True, "[reconstructed] EdgePredictMix on after --rsepm_epm_start epochs")
    rsepm_mix_band: int = flag(2, "[reconstructed] stride-4 pixels of the uncertain band pasted around the mixed "
                               "objects (figure: the pasted object keeps an ignore band)", minimum=0)
    rsepm_w_cls: float = flag(1.0, "[reconstructed] Lcls weight (tag cls=1.0)", minimum=0)
    rsepm_w_rec: float = flag(1.0, "[reconstructed] Lrec weight, also of Lrec^mix (tag cam=1.0); 0: no recursion "
                              "(ablation)", minimum=0)
    rsepm_w_seg: float = flag(1.0, "[reconstructed] Lseg weight, also of Lseg^mix (tag seg=1.0)", minimum=0)
    rsepm_w_mix: float = flag(1.0, "[reconstructed] factor of the mixed losses (figure: both on the mixed image)",
                              minimum=0)
    rsepm_weights_name: str = flag("sess/rsepm.pth", "the trained network (released key layout), written by "
                                   "train_rsepm, read by infer_rsepm; a released checkpoint loads too")

    def check(self, args: Flags) -> None:
        if self.rsepm_cf_bg > self.rsepm_cf_fg:
            raise UserError(f"--rsepm_cf_bg {self.rsepm_cf_bg}: above --rsepm_cf_fg {self.rsepm_cf_fg}; the "
                            "background threshold must not exceed the foreground one")
        if self.rsepm_optimizer == "sgd" and self.rsepm_momentum == 0:
            raise UserError("--rsepm_momentum 0: Nesterov SGD needs a momentum above 0 (0.9)")


@section("rsepm_infer")
class RsepmInfer:
    """RS+EPM's released inference (infer_rsepm): seeds and pseudo labels"""

    rsepm_infer_scales: tuple[float, ...] = flag((1.0, 0.5, 1.5, 2.0), "scales, each with its flip, whose softmaxes "
                                                 "are averaged (released)", above=0)
    rsepm_conf_th: float = flag(-1.0, "classes of a seed: -1 the image-level labels (released train setting); "
                                "else predicted probability >= this (released val/test: 0.34)", maximum=1)
    rsepm_bg_gamma: float = flag(2.0, "pseudo labels: background score (1 - max seed)^this (released 2)", above=0)
    rsepm_pseudo_labels: bool = flag(True, "also write the released CRF pseudo labels of --infer_list to "
                                     "--sem_seg_out_dir (rsepm_irn: off, the random walk makes them)")
    rsepm_batch_images: int = flag(4, "same-size images per inference batch", minimum=1)


@section("seg")
class Seg:
    """Segmentation stage (train_seg, make_seg, eval_seg): DeepLab on the pseudo labels, scored on val

    The stage every pipeline can end with: --seg True appends train_seg, make_seg and eval_seg to the method's
    steps; they read its --sem_seg_out_dir. --seg_recipe picks a published recipe (SEG_RECIPES) for the flags
    not typed.
    """

    seg: bool = flag(False, "end the pipeline with the segmentation stage (train_seg, make_seg, eval_seg)")
    seg_recipe: str = flag("deeplab_v2", "published recipe for the seg flags not typed: deeplab_v2 (IRN/RIB "
                           "tables, kazuto1011), deeplab_v2_drs (DRS's v2), deeplab_v3plus (DRS's V3+, VainF)",
                           choices=("deeplab_v2", "deeplab_v2_drs", "deeplab_v3plus"))
    seg_network: str = flag("deeplab_v2", "deeplab_v2 (ResNet-101 MSC, ASPP 6/12/18/24) or deeplab_v3plus",
                            choices=("deeplab_v2", "deeplab_v3plus"))
    seg_init: str | None = flag(None, "initialisation file: v2 a kazuto1011-layout DeepLab file (ImageNet or COCO "
                                "init) or torchvision's resnet101; v3+ torchvision's resnet101; cam: the trained "
                                "classifier's ResNet trunk (--cam_weights_name, same width and blocks: the toy's "
                                "stand-in for ImageNet weights); none: random init (nothing published)")
    seg_width: int = flag(64, "ResNet base width (64 = ResNet-101)", minimum=1)
    seg_blocks: tuple[int, int, int, int] = flag((3, 4, 23, 3), "bottlenecks per stage ((3, 4, 23, 3) = ResNet-101)",
                                                 minimum=1)
    seg_head_channels: int = flag(256, "v3+ ASPP and decoder channels (48 for the low-level projection is "
                                  "scaled alike)", minimum=4)
    seg_output_stride: int = flag(16, "v3+ output stride (v2 is 8)", choices=(8, 16))
    seg_msc_scales: tuple[float, ...] = flag((0.5, 0.75), "v2 multi-scale inputs fused by max inside the network "
                                             "(training and test); 1.0 only: none", above=0)
    seg_frozen_bn: bool = flag(True, "BatchNorm frozen (statistics and affine, the v2 recipes) or trained (v3+)")
    seg_train_list: str = flag("train_aug", "ids the network trains on; each needs a pseudo label in "
                               "--sem_seg_out_dir (run make_sem_seg_labels with --infer_list train_aug)")
    seg_crop_size: int = flag(321, "training crop, pixels", minimum=16)
    seg_scales: tuple[float, ...] = flag((0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0), "random training rescale: one "
                                         "of these factors, or with --seg_scale_uniform U(first, last)", above=0)
    seg_scale_uniform: bool = flag(False, "draw the training rescale from U(first, last) of --seg_scales (VainF)")
    seg_batch_size: int = flag(10, "total batch (over all torchrun processes)", minimum=1)
    seg_iters: int = flag(30000, "training iterations", minimum=1)
    seg_epoch_iters: int = flag(1000, "iterations per resume point (and per val check with --seg_select val)",
                                minimum=1)
    seg_learning_rate: float = flag(2.5e-4, "base lr: v2 backbone 1x, ASPP weights 10x, biases 20x; v3+ head 1x, "
                                    "backbone --seg_backbone_lr_mult", above=0)
    seg_backbone_lr_mult: float = flag(0.1, "v3+ backbone lr multiplier", above=0)
    seg_weight_decay: float = flag(5e-4, "weight decay (v2: not on the ASPP biases)", minimum=0)
    seg_momentum: float = flag(0.9, "SGD momentum", minimum=0, maximum=1)
    seg_poly_every: int = flag(10, "poly 0.9 schedule updated every N iterations (kazuto1011 10, VainF 1)",
                               minimum=1)
    seg_min_lr: float = flag(0.0, "floor of the poly schedule (VainF 1e-6)", minimum=0)
    seg_loss: str = flag("balanced", "balanced: bg mean + fg mean CE (RIB's recipe); ce: plain CE",
                         choices=("balanced", "ce"))
    seg_self_training: str = flag("off", "DRS's extra CE against the argmax over the image's classes: off, zero "
                                  "(published: absent classes zeroed) or exclude", choices=("off", "zero", "exclude"))
    seg_select: str = flag("last", "checkpoint: last (no val labels used) or val (best val mIoU, single scale, no "
                           "CRF, checked every --seg_epoch_iters; DRS's and VainF's practice: scores on val are "
                           "then optimistic)", choices=("last", "val"))
    seg_weights_name: str = flag("sess/deeplab.pth", "the segmentation network's weights", output=True)
    seg_eval_list: str = flag("val", "ids make_seg labels and eval_seg scores")
    seg_test_list: str | None = flag(None, "ids (VOC test) make_seg also labels into "
                                     "<seg_out_dir>_server/results/VOC2012/Segmentation/comp6_test_cls (and the "
                                     "CRF one), the layout of the VOC evaluation server")
    seg_test_scales: tuple[float, ...] = flag((1.0,), "test image scales whose softmaxes are averaged (RS+EPM: "
                                              "1 0.5 1.5 2 with --seg_test_flip)", above=0)
    seg_test_flip: bool = flag(False, "also average the horizontal flips at test")
    seg_crf: bool = flag(True, "also write DeepLab-CRF labels (10 iterations, 3/1, 4/67/3) to --seg_crf_out_dir")
    seg_batch_images: int = flag(4, "same-size images per inference pass", minimum=1)
    seg_out_dir: str = flag("seg", "segmentation labels of --seg_eval_list (palette PNGs)", output=True)
    seg_crf_out_dir: str = flag("seg_crf", "the same after the dense CRF", output=True)

    def check(self, args: Flags) -> None:
        if self.seg_iters % self.seg_epoch_iters:
            raise UserError(f"--seg_iters {self.seg_iters}: not a multiple of --seg_epoch_iters "
                            f"{self.seg_epoch_iters}; change one of them")
        if self.seg_scale_uniform and len(self.seg_scales) != 2:
            raise UserError(f"--seg_scales {' '.join(map(str, self.seg_scales))}: --seg_scale_uniform takes two "
                            "values LO HI")
        if self.seg_test_list is not None and args.dataset != "voc12":
            raise UserError(f"--seg_test_list {self.seg_test_list}: the server layout is VOC's; drop it for "
                            f"--dataset {args.dataset}")


# The segmentation stage every pipeline can end with (--seg True): its steps, appended to each pipeline.
SEG_STAGE = ("train_seg", "make_seg", "eval_seg")

# The published DeepLab recipes (--seg_recipe; docs/methods/deeplab.md). deeplab_v2: kazuto1011's
# DeepLabV2_ResNet101_MSC with the VOC recipe RIB's author states (batch 10, 30k iterations, lr 2.5e-4,
# scales 0.5..2.0, balanced CE, last checkpoint); IRN's repository gives none, so IRN's rows use it too.
# deeplab_v2_drs: DRS's train.py (COCO init, CE + self-training, scales 0.5..1.5, 10k iterations of batch 10
# x iter_size 2, taken here as one batch of 20: with frozen BN the gradient is the same up to the loss's
# normalisation; DRS selects on val: --seg_select val). deeplab_v3plus: VainF's run.sh in DRS (513 crops,
# U(0.5, 2.0), batch 32, 20k iterations, lr 0.05, backbone 0.1x, wd 1e-4, trained BN, poly every iteration
# floored at 1e-6; VainF selects on val too).
SEG_RECIPES = {
    "deeplab_v2": dict(),
    "deeplab_v2_drs": dict(seg_scales=(0.5, 0.75, 1.0, 1.25, 1.5), seg_batch_size=20, seg_iters=10000,
                           seg_loss="ce", seg_self_training="zero"),
    "deeplab_v3plus": dict(seg_network="deeplab_v3plus", seg_crop_size=513, seg_scales=(0.5, 2.0),
                           seg_scale_uniform=True, seg_batch_size=32, seg_iters=20000, seg_learning_rate=0.05,
                           seg_weight_decay=1e-4, seg_frozen_bn=False, seg_poly_every=1, seg_min_lr=1e-6,
                           seg_loss="ce", seg_msc_scales=(1.0,)),
}


# What the toy dataset changes (flags not given on the command line). IRN's recipe cannot learn from
# random weights (frozen BN statistics, frozen early stages), so the toy trains from scratch a ResNet-50
# shape with one bottleneck per stage and half width, ordinary BatchNorm and Adam, at the toy's 128-pixel
# scale (measured: SGD and the full 50-layer depth learn far slower in the same CPU minutes). IRNet's
# frozen backbone is the trained toy classifier's (there are no ImageNet weights offline), at 128-pixel
# crops; IRN's 990 steps at lr 0.1 become 300 steps at lr 0.3 (measured on the toy: 100 steps at 0.1 leave
# the boundaries blurry and the pseudo labels below the seeds; 300 at 0.3 beat them, see docs/).
TOY_RECIPE = dict(
    recipe="scratch", backbone_width=32, backbone_blocks=(1, 1, 1, 1), cam_crop_size=128,
    cam_resize_long=(100, 160), cam_batch_size=16, cam_num_epoches=12, cam_optimizer="adam",
    cam_learning_rate=1e-3, irn_init="cam", irn_crop_size=128, irn_batch_size=8, irn_num_epoches=6,
    irn_learning_rate=0.3,
    # the segmentation stage (--seg True): a narrow DeepLab-v2 on the toy's train pseudo labels (make_sem_seg_labels
    # labels --infer_list train only) starting from the trained toy classifier's trunk (--seg_init cam, the toy's
    # stand-in for the ImageNet init of the published recipes: same width and blocks, frozen BN as published).
    # Measured (docs/methods/deeplab.md): from scratch it stays far below the seeds after 300 iterations of 128 px.
    seg_init="cam", seg_width=32, seg_blocks=(1, 1, 1, 1), seg_head_channels=32, seg_frozen_bn=True,
    seg_msc_scales=(1.0,), seg_train_list="train", seg_crop_size=96, seg_scales=(0.7, 1.3),
    seg_scale_uniform=True, seg_batch_size=8, seg_iters=100, seg_epoch_iters=25,
    seg_learning_rate=1e-4, seg_batch_images=8,
)
# The toy segmentation stage of the methods without a ResNet classifier to start from: the narrow DeepLab from
# scratch (trained BN); from scratch it learned little on the toy (docs/methods/deeplab.md, Toy results).
SEG_SCRATCH_TOY = dict(seg_init=None, seg_width=16, seg_frozen_bn=False)

# DRS on the toy (both DRS pipelines): from scratch (no ImageNet weights offline) a VGG-16-D1 of width 16 with
# one conv per stage and BatchNorm before every activation (measured: the plain 13-conv VGG, with or without
# DRS, stays at the label-prior loss over 5 CPU epochs; with BatchNorm it learns), classifier trained on 64-pixel
# crops of a 72 square (2.3x cheaper than 96 of 112; seeds no worse, measured), maps, refinement and pseudo labels
# on 96-pixel squares (maps at 64/96/128; at 64 the refinement net fits worse), Adam (the published lr groups'
# 10x/20x heads included). drs_irn trains IRNet 1 epoch: a pipeline check (its quality is not asserted).
DRS_TOY = dict(drs_init="scratch", drs_width=16, drs_convs=(1, 1, 1, 1, 1), drs_norm=True, drs_resize=72, drs_crop=64,
               drs_side=96, drs_scales=(64, 96, 128), drs_optimizer="adam", drs_batch_size=16, drs_num_epoches=8,
               drs_learning_rate=3e-4, drs_weight_decay=0.0, drs_decay_epochs=(6,), drs_refine_batch_size=16,
               drs_refine_num_epoches=14, drs_refine_learning_rate=1e-3, drs_refine_decay_epochs=(12,))

# What the toy changes per method, after TOY_RECIPE: a pipeline check in about a minute on 2 CPU cores after
# the shared classifier, not the method's published constants. RIB fine-tunes the classifier once per image
# (25 min of 2-core CPU for the 400 toy seeds at K = 10 with 20 auxiliary images): the toy takes 2 steps with
# 2 auxiliary images, the loss at scale 1.0 only, seeds of two scales, and IRNet trains 2 epochs, not 6.
# ToCo and PUFS on the toy: a from-scratch ViT (patch 8, width 96, 4 blocks) on the toy images at half size
# (64-px crops; inference at scale 0.5), 200 iterations of 8 at lr 5e-4, single-scale training CAMs, 2 local
# crops of 32 px, PAR 3 iterations, CRF loss at a quarter of the crop, seg weight 1.0 from iteration 100 and
# ToCo's CTC weight 0.1 (at 0.5 and lr 1e-3 the CTC loss spiked and the classifier stalled; measured, see
# docs/methods/toco_pufs.md). A pipeline check in a few CPU minutes, not the published constants.
SINGLE_STAGE_TOY = dict(
    ss_scratch=True, ss_patch_size=8, ss_embed_dim=96, ss_depth=4, ss_num_heads=3, ss_img_size=64, ss_head_hidden=256,
    ss_crop_size=64, ss_scale_range=(0.45, 0.55), ss_jitter=0.0, ss_gray=0.0, ss_blur=False, ss_batch_size=8,
    ss_max_iters=200, ss_epoch_iters=50, ss_lr=5e-4, ss_warmup_iters=20, ss_seg_start=100, ss_w_seg=1.0,
    ss_cam_scales=(1.0,),
    ss_par_iters=3, ss_crf_loss_scale=0.25, ss_infer_scales=(0.5,), toco_crop_num=2, toco_local_crop_size=32,
    toco_ctc_dim=256, pufs_out_dim=512, pufs_block_size=16, cam_batch_images=16,
)
# RS+EPM on the toy (both pipelines): from scratch a ResNet of width 16 with one bottleneck per stage and a
# 32-wide ASPP/decoder, 96-pixel crops of the toy's 128-pixel images, Adam; inference at scales 1.0 and 0.5.
# A pipeline check in a few CPU minutes, not a recipe (docs/methods/rsepm.md, Toy results).
RSEPM_TOY = dict(rsepm_scratch=True, rsepm_width=16, rsepm_blocks=(1, 1, 1, 1), rsepm_feature_size=32,
                 rsepm_crop_size=96, rsepm_resize_long=(80, 128), rsepm_batch_size=16, rsepm_epochs=2,
                 rsepm_epm_start=1, rsepm_optimizer="adam", rsepm_lr=1e-3, rsepm_infer_scales=(1.0, 0.5),
                 rsepm_batch_images=16)
TOY_METHOD_RECIPES = {
    "rib": dict(rib_iters=2, rib_aux_batch=2, rib_loss_scales=(1.0,), cam_scales=(1.0, 0.5), irn_num_epoches=2),
    "drs": dict(DRS_TOY, **SEG_SCRATCH_TOY),
    "drs_irn": dict(DRS_TOY, irn_num_epoches=1, **SEG_SCRATCH_TOY),
    "toco": dict(SINGLE_STAGE_TOY, toco_w_ctc=0.1, **SEG_SCRATCH_TOY),
    "pufs": dict(SINGLE_STAGE_TOY, **SEG_SCRATCH_TOY),
    "rsepm": dict(RSEPM_TOY, **SEG_SCRATCH_TOY),
    "rsepm_irn": dict(RSEPM_TOY, irn_num_epoches=1, **SEG_SCRATCH_TOY),  # as drs_irn: a pipeline check of the IRN stage
}

# What --dataset changes for every method (flags not given on the command line): its lists and toy
# folder. MS COCO 2014 has train (82,783) and val (40,504) only; RIB trains, infers and evaluates on train.
# The default work_dir is per dataset too (runs/voc12, runs/coco14; toys runs/toy, runs/toy_coco14).
DATASET_RECIPES = {
    "voc12": dict(),
    "coco14": dict(train_list="train", val_list="val", infer_list="train", eval_list="train",
                   toy_root="data/toy_coco14", toy_n_train=400, seg_train_list="train"),
}

# A method's constants on every dataset (none yet: IRN's are the defaults; RIB's are per dataset below).
METHOD_RECIPES = {
    "irn": dict(),
    "rib": dict(),
    "drs": dict(),
    "drs_irn": dict(),
    "toco": dict(infer_list="val", eval_list="val", cam_eval_thres=0.5, cam_eval_sweep=(0.05, 0.95, 0.05)),
    "rsepm": dict(),
    "rsepm_irn": dict(rsepm_pseudo_labels=False),
    "pufs": dict(infer_list="val", eval_list="val", cam_eval_thres=0.5, cam_eval_sweep=(0.05, 0.95, 0.05),
                 ss_img_size=448, ss_drop_path=0.1, ss_weight_decay=0.05, ss_warmup_ratio=0.1, ss_schedule="cosine",
                 ss_jitter=0.5, ss_gray=0.0, ss_batch_size=8),
}

# The published constants of a method on a dataset (IRN's VOC ones are the defaults; IRN published no
# COCO semantic-label recipe, so IRN on COCO keeps them). RIB: get_pseudo_gt_VOC.sh / get_pseudo_gt_COCO.sh
# of its code (obtain_RIB_CAM[_coco].py and run_sample[_coco].py defaults). sem_seg_canvas 0: RIB's COCO
# walk runs IRNet on the image itself (EdgeDisplacement(coco=True)), not padded to the 512 crop.
SINGLE_STAGE_COCO = dict(ss_batch_size=8, ss_max_iters=80000, ss_epoch_iters=4000, ss_loss_schedule="coco",
                         ss_high_thre=0.65, ss_bkg_thre=0.45)
PUBLISHED_RECIPES = {
    ("toco", "coco14"): dict(SINGLE_STAGE_COCO, toco_temp=1.0),
    ("pufs", "coco14"): dict(SINGLE_STAGE_COCO),
    ("rib", "voc12"): dict(cam_eval_sweep=(0.20, 0.49, 0.01), conf_fg_thres=0.35, conf_bg_thres=0.17,
                           sem_seg_bg_thres=0.27, sem_seg_power=1.3),
    ("rib", "coco14"): dict(rib_tau=0.5, rib_lr=5e-6, rib_aux_batch=15, rib_stop_logit=1000, rib_area_ratio=0.8,
                            cam_eval_sweep=(0.10, 0.50, 0.01), conf_fg_thres=0.35, conf_bg_thres=0.17,
                            sem_seg_bg_thres=0.22, sem_seg_power=1.3, sem_seg_canvas=0),
    # DRS (qjadud1994/DRS run.sh, VOC only): the drs section's defaults are its constants; the published code has
    # no COCO recipe, so DRS on COCO runs them unchanged (80 classes from the dataset spec). drs_irn adds IRN's
    # stage with IRN's defaults (DRS published no saliency-free variant).
    ("drs", "voc12"): dict(),
}

CONFIG = Config(sections=(Run, Data, Toy, Backbone, Classifier, Seeds, Rib, Drs, IrLabel, Irn, SemSeg, Draw,
                          SingleStage, ToCo, Pufs, Rsepm, RsepmInfer, Seg),
                pipelines={m: steps + SEG_STAGE for m, steps in PIPELINES.items()}, dataset_recipes=DATASET_RECIPES,
                method_recipes=METHOD_RECIPES,
                published_recipes=PUBLISHED_RECIPES, toy_recipe=TOY_RECIPE, toy_method_recipes=TOY_METHOD_RECIPES,
                base_method="irn", description=__doc__, choice_recipes={"seg_recipe": SEG_RECIPES},
                optional_steps={s: "seg" for s in SEG_STAGE})


def parse_args(argv: Sequence[str] | None = None) -> Flags:
    """Parse and resolve the flags of --method's pipeline (misc.config.Config.parse); the namespace every
    step's run(args) takes."""
    return CONFIG.parse(argv)


def main(argv: Sequence[str] | None = None) -> list[dict] | None:
    """Run the steps of --method's pipeline in order (step.common.entry.run_pipeline); with ``--compare M1 M2
    ...`` run each method's pipeline to the end and write the comparison table (step.common.compare); returns
    its rows then, else None."""
    # the steps import the library, never this file
    from step.common.compare import compare
    from step.common.entry import run_pipeline

    argv = list(sys.argv[1:] if argv is None else argv)
    if "--compare" in argv:
        return compare(CONFIG, argv)
    run_pipeline(CONFIG, argv)
    return None


if __name__ == "__main__":
    guarded(lambda: main(sys.argv[1:]))
