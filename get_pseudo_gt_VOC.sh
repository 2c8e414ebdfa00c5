#!/usr/bin/env bash
# PASCAL VOC 2012 pipeline. Usage: bash get_pseudo_gt_VOC.sh VOC2012_ROOT IMAGENET_PTH [more run_sample.py flags]
# Runs IRN's pipeline with IRN's settings: train_cam, make_cam, eval_cam, cam_to_ir_label, train_irn,
# make_sem_seg_labels, eval_sem_seg, draw. Pseudo labels land in runs/voc12/sem_seg/. IMAGENET_PTH is
# torchvision's resnet50 IMAGENET1K_V1 file (--pretrained_weights).
# Add --method rib for RIB's pipeline (RIB seeds, then the IRN stage with RIB's constants; pseudo labels
# in runs/voc12/sem_seg_rib/); add --train_cam_pass False to reuse a classifier already trained there.
# Add --method drs --saliency_root DIR for DRS (DRS classifier, localization maps, refinement net, saliency
# pseudo labels in runs/voc12/sem_seg_drs/); IMAGENET_PTH is then torchvision's vgg16 IMAGENET1K_V1 file
# (--drs_pretrained_weights), and DIR holds the saliency maps <id>.png (default VOC2012_ROOT/saliency_map).
# --method drs_irn takes the same vgg16 file and sends the DRS seeds through the IRN stage; IRNet's
# ResNet-50 then needs --pretrained_weights RESNET50_PTH as well.
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: bash get_pseudo_gt_VOC.sh VOC2012_ROOT IMAGENET_PTH [run_sample.py flags, e.g. --method drs]" >&2
  exit 2
fi
root=$(cd "$1" 2>/dev/null && pwd) || { echo "error: $1: VOC2012 root not found" >&2; exit 2; }
weights=$2; shift 2
case $weights in /*) ;; *) weights=$PWD/$weights ;; esac
method=irn
prev=
for a in "$@"; do
  if [ "$prev" = "--method" ]; then method=$a; fi
  prev=$a
done
case $method in
  drs|drs_irn) weights_flag=--drs_pretrained_weights ;;
  *) weights_flag=--pretrained_weights ;;
esac
# relative paths among the passed flags (e.g. --saliency_root) are resolved from the caller's folder
args=()
prev=
for a in "$@"; do
  case $prev in
    --saliency_root|--pretrained_weights|--drs_pretrained_weights)
      case $a in /*) ;; *) a=$PWD/$a ;; esac ;;
  esac
  args+=("$a")
  prev=$a
done
cd "$(dirname "$0")"
python run_sample.py --voc12_root "$root" "$weights_flag" "$weights" --work_dir runs/voc12 "${args[@]}"
