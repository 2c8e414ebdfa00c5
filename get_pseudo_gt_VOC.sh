#!/usr/bin/env bash
# PASCAL VOC 2012 pipeline. Usage: bash get_pseudo_gt_VOC.sh VOC2012_ROOT IMAGENET_RESNET50_PTH [more run_sample.py flags]
# Runs IRN's pipeline with IRN's settings: train_cam, make_cam, eval_cam, cam_to_ir_label, train_irn,
# make_sem_seg_labels, eval_sem_seg, draw. Pseudo labels land in runs/voc12/sem_seg/.
# Add --method rib for RIB's pipeline (RIB seeds, then the IRN stage with RIB's constants; pseudo labels
# in runs/voc12/sem_seg_rib/); add --train_cam_pass False to reuse a classifier already trained there.
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: bash get_pseudo_gt_VOC.sh VOC2012_ROOT IMAGENET_RESNET50_PTH [run_sample.py flags]" >&2
  exit 2
fi
root=$(cd "$1" 2>/dev/null && pwd) || { echo "error: $1: VOC2012 root not found" >&2; exit 2; }
weights=$2; shift 2
case $weights in /*) ;; *) weights=$PWD/$weights ;; esac
cd "$(dirname "$0")"
python run_sample.py --voc12_root "$root" --pretrained_weights "$weights" --work_dir runs/voc12 "$@"
