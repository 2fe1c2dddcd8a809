"""Panels: CT, the generator's pMRI, the teacher's segmentation on it and the students' on CT, through the centre slice
of test tumours (easy ones first, then hard ones; one tumour per case and slice). Reads what teacher_per_tumour.py
exported. Usage: python teacher_panels.py WORKDIR SEED OUT_PNG"""
import json
import sys

import matplotlib
import SimpleITK as sitk

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

workdir, seed, out_png = sys.argv[1], int(sys.argv[2]), sys.argv[3]
raw = f"{workdir}/nnUNet_raw/Dataset502_CMEDLThorax"
exported = f"{workdir}/teacher_analysis/seed{seed}_epoch40"
plain = f"{workdir}/predictions/nnUNetTrainer_benchCPU_seed{seed}_fold0/checkpoint_final"
metadata = json.load(open(f"{raw}/phantom_metadata.json"))
cases = metadata.get("labelled_cases") or metadata["ct_cases"]


def read(path):
    return sitk.GetArrayFromImage(sitk.ReadImage(path))


picks, seen = {"easy": [], "hard": []}, set()
for case, info in sorted(cases.items()):
    if info.get("split") != "test":
        continue
    for tumour in info["tumours"]:
        z = tumour["inside_voxel_zyx"][0]
        if (case, z) not in seen and len(picks[tumour["difficulty"]]) < 3:
            seen.add((case, z))
            picks[tumour["difficulty"]].append((case, tumour, z))
rows = picks["easy"] + picks["hard"]
fig, ax = plt.subplots(len(rows), 4, figsize=(13, 3.2 * len(rows)))
for r, (case, tumour, z) in enumerate(rows):
    ct, pmri = read(f"{raw}/imagesTs/{case}_0000.nii.gz")[z], read(f"{exported}/{case}_pMRI.nii.gz")[z]
    ref = read(f"{raw}/labelsTs/{case}.nii.gz")[z] > 0
    teacher, student = (read(f"{exported}/{case}_{who}_seg.nii.gz")[z] > 0 for who in ("teacher", "student"))
    plain_seg = read(f"{plain}/{case}.nii.gz")[z] > 0
    ax[r, 0].imshow(ct, cmap="gray", vmin=-400, vmax=300)
    ax[r, 0].set_title(f"{case} z={z}: CT, {tumour['difficulty']} tumour {tumour['id']}", fontsize=9)
    ax[r, 1].imshow(pmri, cmap="gray")
    ax[r, 1].set_title(f"pMRI (teacherAhead seed {seed}, final)", fontsize=9)
    ax[r, 2].imshow(pmri, cmap="gray")
    ax[r, 3].imshow(ct, cmap="gray", vmin=-400, vmax=300)
    for a, masks in ((ax[r, 2], ((ref, "lime"), (teacher, "red"))),
                     (ax[r, 3], ((ref, "lime"), (plain_seg, "cyan"), (student, "red")))):
        for mask, colour in masks:
            if mask.any():
                a.contour(mask, [0.5], colors=colour, linewidths=1)
    ax[r, 2].set_title("teacher on pMRI (red), reference (green)", fontsize=9)
    ax[r, 3].set_title("teacherAhead student (red), plain (cyan), ref (green)", fontsize=9)
    for a in ax[r]:
        a.axis("off")
plt.tight_layout()
plt.savefig(out_png, dpi=60)
