"""Matched pairs against the perturbation control, per seed, from a benchmark summary.

For each seed: the final per-tumour DSC (mean over the 25 hard / 25 easy / 50 tumours) of plain nnU-Net, and the
difference to it of CMEDL_teacherAhead (the hint: its students equal plain nnU-Net's until the gate first opens) and of
nnU-Net_reseed20 (plain nnU-Net reseeded at epoch 20: a perturbation with no change of method). If the hint did
something a perturbation does not, its differences would stand apart from the control's: the last lines compare them
over seeds (Welch t-test of the differences, and of their sizes).

Usage: python pairs_table.py benchmark_summary.json
"""
import json
import sys

import numpy as np
from scipy import stats

summary = json.load(open(sys.argv[1]))
methods = ("CMEDL_teacherAhead", "nnU-Net_reseed20")
seeds = sorted({r["seed"] for r in summary["runs"]})
print(f"final per-tumour DSC, plain nnU-Net and the difference to it, per seed ({summary['command']})")
print(f"{'tumours':<8} {'seed':>4} {'nnU-Net':>8} " + " ".join(f"{'Δ ' + m:>22}" for m in methods))
deltas = {}
for difficulty in ("hard", "easy", "all"):
    dsc = summary["tumours"][difficulty]["dsc"]
    runs = {m: dict(zip(dsc[m]["vs_baseline"]["seeds"], dsc[m]["per_seed"])) for m in methods}
    base_seeds = sorted({r["seed"] for r in summary["runs"] if r["method"] == "nnU-Net"})
    base = dict(zip(base_seeds, dsc["nnU-Net"]["per_seed"]))
    for seed in seeds:
        cells = []
        for m in methods:
            d = runs[m][seed] - base[seed] if seed in runs[m] and seed in base else np.nan
            deltas.setdefault((difficulty, m), []).append(d)
            cells.append(f"{d:+22.3f}")
        print(f"{difficulty:<8} {seed:>4} {base.get(seed, np.nan):8.3f} " + " ".join(cells))
print()
for difficulty in ("hard", "easy", "all"):
    hint, control = (np.array(deltas[(difficulty, m)]) for m in methods)
    ok = np.isfinite(hint) & np.isfinite(control)
    hint, control = hint[ok], control[ok]
    t_signed = stats.ttest_ind(hint, control, equal_var=False).pvalue
    t_size = stats.ttest_ind(np.abs(hint), np.abs(control), equal_var=False).pvalue
    print(f"{difficulty:<5} hint Δ {hint.mean():+.3f} (sd {hint.std(ddof=1):.3f}, mean |Δ| {np.abs(hint).mean():.3f}); "
          f"control Δ {control.mean():+.3f} (sd {control.std(ddof=1):.3f}, mean |Δ| {np.abs(control).mean():.3f}); "
          f"Welch p: Δ {t_signed:.2f}, |Δ| {t_size:.2f} ({ok.sum()} seeds)")
