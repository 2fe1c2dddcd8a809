"""When does each run's student start to segment, and how often was its teacher ahead? From a benchmark summary.

Per run (method, seed): the first epoch whose validation pseudo-Dice (nnU-Net's, on the 4 validation cases) is
above 0.05; the number of epochs in which teacherAhead's gate was open (the teacher's validation pseudo-Dice on pMRI
above the student's on CT in the epoch before); the mean validation pseudo-Dice of the last 10 epochs.

Usage: python validation_onsets.py benchmark_summary.json
"""
import json
import sys

import numpy as np

summary = json.load(open(sys.argv[1]))
print(f"{'method':<24} {'seed':>4} {'student > 0.05 from epoch':>26} {'gate open (epochs)':>19} "
      f"{'val Dice, last 10':>18} {'teacher, last 10':>17}")
onsets = {}
for method, seeds in summary["validation"].items():
    for seed, log in sorted(seeds.items(), key=lambda kv: int(kv[0])):
        student = np.array([np.nanmean(x) if np.ndim(x) else x for x in log["mean_fg_dice"]], dtype=float)
        onset = int(np.argmax(student > 0.05)) if (student > 0.05).any() else None
        onsets.setdefault(method, []).append(np.nan if onset is None else onset)
        teacher = log.get("cmedl_teacher_pseudo_dice_pmri")
        gate = tail_t = ""
        if teacher:
            teacher = np.array(teacher, dtype=float)
            gate = str(int(sum(teacher[e - 1] > student[e - 1] for e in range(1, len(student)))))
            tail_t = f"{teacher[-10:].mean():.3f}"
        print(f"{method:<24} {seed:>4} {str(onset):>26} {gate:>19} {student[-10:].mean():18.3f} {tail_t:>17}")
print()
for method, values in onsets.items():
    v = np.array(values, dtype=float)
    print(f"{method:<24} first epoch above 0.05: mean {np.nanmean(v):.1f}, median {np.nanmedian(v):.0f} "
          f"({np.isfinite(v).sum()} of {v.size} runs get there)")
