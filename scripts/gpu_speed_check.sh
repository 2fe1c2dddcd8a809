#!/usr/bin/env bash
# The GPU speed check of docs/performance.md: MSD-Lung-sized plans (no data needed), then `benchmark-speed` on CUDA for
# 3d_fullres and 2d, eager (AMP, like ../shared/GPU_NOTES.md's baseline) and compiled (nnU-Net's default on CUDA).
# Usage: scripts/gpu_speed_check.sh OUT_DIR   (python with nnunetv2 + this project importable: $PYTHON, default python)
# Writes OUT_DIR/speed_<configuration>_<eager|compiled>.json and .md; about 10 minutes on an H100/H200.
set -euo pipefail
out="${1:?usage: scripts/gpu_speed_check.sh OUT_DIR}"
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
py="${PYTHON:-python}"
mkdir -p "$out"
PYTHON="$py" bash "$repo/scripts/msd_lung_like_plans.sh" "$out/plans" > /dev/null
plans="$out/plans/nnUNet_preprocessed/Dataset991_MSDLungLike/nnUNetPlans.json"
dataset_json="$(dirname "$plans")/dataset.json"
"$py" -c 'import torch; print(torch.cuda.get_device_name(0), torch.__version__)'
for config in 3d_fullres 2d; do
  for mode in eager compiled; do
    flag=$([ "$mode" = eager ] && echo --no-compile || echo --compile)
    "$py" -m nnunet_cmedl.cli benchmark-speed --plans "$plans" --dataset-json "$dataset_json" -c "$config" \
      --device cuda --warmup 8 --iterations 20 $flag \
      --methods plain cmedl cut fastcut nnUNetTrainerCMEDL_identity nnUNetTrainerCMEDL_stridedStem \
      --json "$out/speed_${config}_${mode}.json" | tee "$out/speed_${config}_${mode}.md"
  done
done
