#!/usr/bin/env bash
# MSD-Lung-sized nnU-Net plans without data (for the speed benchmark on a GPU): writes a dataset fingerprint of 63 CTs
# of 1.25 x 0.78 x 0.78 mm and ~200-300 x 512 x 512 voxels plus one tiny image, then runs nnU-Net's own planner.
# Gives 3d_fullres patch 80x192x160 batch 2 and 2d 512x512 batch 12 (nnunetv2 2.8.1), like ../shared/GPU_NOTES.md.
# Usage: scripts/msd_lung_like_plans.sh OUT_DIR [extra nnUNetv2_plan_experiment args, e.g. -pl nnUNetPlannerResEncM]
# Prints the plans file(s) it wrote. Python: $PYTHON or the project's .venv.
set -euo pipefail
out="${1:?usage: scripts/msd_lung_like_plans.sh OUT_DIR [nnUNetv2_plan_experiment args]}"; shift
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
py="${PYTHON:-$repo/.venv/bin/python}"
export nnUNet_raw="$out/nnUNet_raw" nnUNet_preprocessed="$out/nnUNet_preprocessed" nnUNet_results="$out/nnUNet_results"
export nnUNet_n_proc_DA="${nnUNet_n_proc_DA:-1}"
name=Dataset991_MSDLungLike
"$py" - "$nnUNet_raw/$name" "$nnUNet_preprocessed/$name" <<'PY'
import json, os, shutil, sys
import numpy as np
import nibabel as nib
raw, pre = sys.argv[1], sys.argv[2]
for d in (raw + "/imagesTr", raw + "/labelsTr", pre):
    os.makedirs(d, exist_ok=True)
affine = np.diag([0.78, 0.78, 1.25, 1.0])
nib.save(nib.Nifti1Image(np.zeros((16, 16, 8), np.int16), affine), raw + "/imagesTr/lung_001_0000.nii.gz")
nib.save(nib.Nifti1Image(np.zeros((16, 16, 8), np.uint8), affine), raw + "/labelsTr/lung_001.nii.gz")
dataset = {"channel_names": {"0": "CT"}, "labels": {"background": 0, "tumour": 1}, "numTraining": 1,
           "file_ending": ".nii.gz", "overwrite_image_reader_writer": "NibabelIO"}
json.dump(dataset, open(raw + "/dataset.json", "w"), indent=2)
shutil.copy(raw + "/dataset.json", pre + "/dataset.json")
n = 63
shapes = [[int(s), 512, 512] for s in np.random.default_rng(0).integers(200, 300, n)]
fingerprint = {"spacings": [[1.25, 0.78, 0.78]] * n, "shapes_after_crop": shapes,
               "median_relative_size_after_cropping": 1.0,
               "foreground_intensity_properties_per_channel": {"0": {
                   "max": 3000.0, "mean": -150.0, "median": -100.0, "min": -1024.0, "percentile_00_5": -1000.0,
                   "percentile_99_5": 800.0, "std": 300.0}}}
json.dump(fingerprint, open(pre + "/dataset_fingerprint.json", "w"), indent=2)
PY
# nnUNetv2_plan_experiment through $py (its console script need not sit beside $py, e.g. wheels installed with --target)
"$py" -c 'import sys; from nnunetv2.experiment_planning.plan_and_preprocess_entrypoints import plan_experiment_entry
sys.argv[0] = "nnUNetv2_plan_experiment"; sys.exit(plan_experiment_entry())' -d 991 "$@" > "$out/plan_experiment.log"
ls "$nnUNet_preprocessed/$name"/*Plans*.json
