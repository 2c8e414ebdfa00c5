#!/usr/bin/env bash
# MS COCO 2014 pipeline (RIB settings). Not implemented yet: the coco14 datasets come with a later issue.
echo "get_pseudo_gt_COCO.sh: the MS COCO pipeline is not implemented yet (see README, Status)" >&2
exit 1
