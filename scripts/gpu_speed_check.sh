#!/usr/bin/env bash
# The GPU speed check of docs/performance.md: MSD-Lung-sized plans (no data needed), then `benchmark-speed` on CUDA,
# plain nnU-Net side by side in every run, eager (AMP, like ../shared/GPU_NOTES.md's baseline) and compiled (nnU-Net's
# default on CUDA).
# Usage: scripts/gpu_speed_check.sh OUT_DIR
#   On the `device` tool's bare machine: run(command="bash scripts/gpu_speed_check.sh $OUT",
#   carry=[".gpu/whl", ".gpu/site"]) (scripts/gpu_carry.sh builds them; scripts/gpu_env.sh installs them there).
#   Elsewhere: $PYTHON, a python with nnunetv2 and this project (default: python3).
# Environment: CONFIGS (default "3d_fullres 2d"), MODES (default "compiled eager"; in this order for each
#   configuration), METHODS (default: all six below), WARMUP (8), ITERATIONS (20), STEP_S (a time limit in s for
#   each benchmark-speed run, default none), DEVICE (cuda; cpu for a dry run).
# Writes OUT_DIR/speed_<configuration>_<mode>.json, .md (the table) and .log (one line per trainer as it finishes, so
#   a run stopped by STEP_S still leaves its rows); about 10 minutes on an H100/H200 with the defaults.
set -uo pipefail
out="${1:?usage: scripts/gpu_speed_check.sh OUT_DIR}"
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
py="${PYTHON:-python3}"
source "$repo/scripts/gpu_env.sh" || exit 1
mkdir -p "$out"
work="$(mktemp -d)" && trap 'rm -rf "$work"' EXIT  # the plans (not in OUT_DIR: a device call returns only 8 files)
PYTHON="$py" bash "$repo/scripts/msd_lung_like_plans.sh" "$work" > /dev/null || exit 1
plans="$work/nnUNet_preprocessed/Dataset991_MSDLungLike/nnUNetPlans.json"
dataset_json="$(dirname "$plans")/dataset.json"
"$py" -c 'import torch
print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU", torch.__version__)'
methods="${METHODS:-plain cmedl cut fastcut nnUNetTrainerCMEDL_identity nnUNetTrainerCMEDL_stridedStem}"
rc=0
for config in ${CONFIGS:-3d_fullres 2d}; do
  for mode in ${MODES:-compiled eager}; do
    flag=$([ "$mode" = eager ] && echo --no-compile || echo --compile)
    name="$out/speed_${config}_${mode}"
    echo "== $config, $mode: $(date +%T)"
    # shellcheck disable=SC2086
    timeout "${STEP_S:-0}" "$py" -m nnunet_cmedl.cli benchmark-speed --plans "$plans" --dataset-json "$dataset_json" \
      -c "$config" --device "${DEVICE:-cuda}" --warmup "${WARMUP:-8}" --iterations "${ITERATIONS:-20}" $flag \
      --methods $methods --json "$name.json" > "$name.md" 2> "$name.log"
    status=$?
    grep -E '^\[' "$name.log"; cat "$name.md"
    if [ $status -ne 0 ]; then
        echo "== $config, $mode: exit code $status (124: STEP_S ran out; 137: killed, out of memory or time)"
        rc=1
    fi
  done
done
exit $rc
