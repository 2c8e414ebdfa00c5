#!/usr/bin/env bash
# MS COCO 2014 pipeline with RIB's COCO settings. Usage:
#   bash get_pseudo_gt_COCO.sh COCO2014_ROOT IMAGENET_RESNET50_PTH [more run_sample.py flags]
# COCO2014_ROOT holds either JPEGImages/ + coco_seg_anno/ (RIB's layout; train and val told apart by
# annotations/instances_{train,val}2014.json or RIB's train14.txt / val14.txt in the root) or train2014/,
# val2014/ and annotations/ (the official layout).
# 1. When the root has annotations/instances_*2014.json, the class-index masks coco_seg_anno/<id>.png the
#    evaluation reads are derived from them (masks that exist are kept, so this resumes).
# 2. run_sample.py --dataset coco14 --method rib: train_cam, make_rib_cam (tau 0.5, lr 5e-6, 15 auxiliary
#    images, logit stop 1000, area ratio 0.8), eval_cam (sweep 0.10-0.50), cam_to_ir_label (0.35 / 0.17),
#    train_irn, make_sem_seg_labels (background 0.22, seeds ^1.3), eval_sem_seg, draw, on COCO train.
#    Pseudo labels land in runs/coco14/sem_seg_rib/. Add --train_cam_pass False to reuse a classifier
#    already trained there, or --cam_weights_name PATH for another 80-class IRN-layout checkpoint.
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: bash get_pseudo_gt_COCO.sh COCO2014_ROOT IMAGENET_RESNET50_PTH [run_sample.py flags]" >&2
  exit 2
fi
root=$(cd "$1" 2>/dev/null && pwd) || { echo "error: $1: COCO root not found" >&2; exit 2; }
weights=$2; shift 2
case $weights in /*) ;; *) weights=$PWD/$weights ;; esac
cd "$(dirname "$0")"
if ls "$root"/annotations/instances_*2014.json >/dev/null 2>&1; then
  python -m coco14.make_seg_masks --coco14_root "$root"
fi
python run_sample.py --dataset coco14 --method rib --coco14_root "$root" --pretrained_weights "$weights" \
  --work_dir runs/coco14 "$@"
