"""Teacher on pseudo-MRI vs student on CT, per test tumour (hard / easy), for the matched teacherAhead runs.

The hint pulls the student's features toward the teacher's. Where the teacher segments worse than the student,
the pull can only cost. This scores, at given checkpoints of each seed:
- plain nnU-Net's student on CT (the benchmark's own test predictions of that checkpoint);
- teacherAhead's student on CT and its teacher on the pMRI of its own generator (`nnunet_cmedl export-pmri
  --teacher-seg --student-seg`, sliding window without mirroring, as the benchmark predicts).

Usage: python teacher_per_tumour.py WORKDIR OUT_JSON --seeds 3 4 5 6 9
Only the final checkpoints (epoch 40) hold the teacher and the generators: the benchmark's intermediate checkpoints
keep the student alone.
"""
import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from nnunet_cmedl.evaluation import per_tumour

DATASET = "Dataset502_CMEDLThorax"
RUN = "{trainer}_benchCPU_seed{seed}__nnUNetPlans__2d_bench"


def checkpoint_name(epoch: int) -> str:
    return "checkpoint_final.pth" if epoch == 40 else f"checkpoint_epoch_{epoch:04d}.pth"


def export(workdir: Path, seed: int, epoch: int) -> Path:
    """The teacherAhead run's pMRI, teacher and student segmentations of the test CTs (cached)."""
    model = workdir / "nnUNet_results" / DATASET / RUN.format(trainer="nnUNetTrainerCMEDL_teacherAhead", seed=seed)
    out = workdir / "teacher_analysis" / f"seed{seed}_epoch{epoch}"
    if not (out / "done").is_file():
        subprocess.run([sys.executable, "-m", "nnunet_cmedl.cli", "export-pmri", "-m", model, "-f", "0",
                        "-chk", checkpoint_name(epoch), "-i", workdir / "nnUNet_raw" / DATASET / "imagesTs",
                        "-o", out, "--teacher-seg", "--student-seg", "--overwrite", "--quiet"], check=True)
        (out / "done").write_text("ok\n")
    for role in ("teacher", "student"):  # <case>.nii.gz per role, as the per-tumour scorer reads them
        folder = out / role
        folder.mkdir(exist_ok=True)
        for f in out.glob(f"*_{role}_seg.nii.gz"):
            link = folder / (f.name.removesuffix(f"_{role}_seg.nii.gz") + ".nii.gz")
            if not link.exists():
                link.symlink_to(f)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("workdir", type=Path)
    p.add_argument("out_json", type=Path)
    p.add_argument("--seeds", nargs="+", type=int, required=True)
    p.add_argument("--epochs", nargs="+", type=int, default=[40])
    a = p.parse_args()
    raw = a.workdir / "nnUNet_raw" / DATASET
    metadata = per_tumour.load_metadata(raw / "phantom_metadata.json")
    rows = []
    for seed in a.seeds:
        for epoch in a.epochs:
            out = export(a.workdir, seed, epoch)
            plain = a.workdir / "predictions" / (RUN.format(trainer="nnUNetTrainer", seed=seed).split("__")[0]
                                                 + "_fold0") / Path(checkpoint_name(epoch)).stem
            folders = {"plain nnU-Net student (CT)": plain, "teacherAhead student (CT)": out / "student",
                       "teacherAhead teacher (pMRI)": out / "teacher"}
            for r in per_tumour.tumour_rows(raw / "labelsTs", folders, metadata):
                rows.append({**r, "seed": seed, "epoch": epoch})
    table = {}
    for r in rows:
        table.setdefault((r["epoch"], r["method"], r["difficulty"]), []).append(r["dsc"])
    print(f"per-tumour DSC, mean over tumours and seeds {a.seeds}")
    print(f"{'epoch':>5}  {'who':<30} {'hard':>6} {'easy':>6}")
    for epoch in a.epochs:
        for who in ("plain nnU-Net student (CT)", "teacherAhead student (CT)", "teacherAhead teacher (pMRI)"):
            h, e = (np.mean(table[(epoch, who, d)]) for d in ("hard", "easy"))
            print(f"{epoch:>5}  {who:<30} {h:6.3f} {e:6.3f}")
    a.out_json.write_text(json.dumps(rows, indent=1, default=float))


if __name__ == "__main__":
    main()
