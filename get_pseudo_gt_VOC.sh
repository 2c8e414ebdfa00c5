#!/usr/bin/env bash
# PASCAL VOC 2012 pipeline. Usage: bash get_pseudo_gt_VOC.sh VOC2012_ROOT IMAGENET_RESNET50_PTH [more run_sample.py flags]
# Today it runs the CAM stage (train_cam, make_cam, eval_cam, draw) with IRN's settings; the IRN
# refinement and RIB seeds will be added in front of / after it as they land.
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: bash get_pseudo_gt_VOC.sh VOC2012_ROOT IMAGENET_RESNET50_PTH [run_sample.py flags]" >&2
  exit 2
fi
root=$1; weights=$2; shift 2
cd "$(dirname "$0")"
python run_sample.py --voc12_root "$root" --pretrained_weights "$weights" --work_dir runs/voc12 "$@"
