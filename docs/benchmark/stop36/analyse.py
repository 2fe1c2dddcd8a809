"""Stop 36, experiment D: P2 and the AUC secondaries of PREREGISTERED.md, from one tumour-contrast JSON whose pMRIs
are named cmedl_s0..2 and fastcut_s0..2 (the benchmark's exported test pMRIs of each run's final checkpoint).
P1 and the DSC secondaries are the benchmark's own table (benchmark_summary.md)."""
import json
import sys
from pathlib import Path

import numpy as np
from scipy import stats

DRAW0 = {"hard": 0.655, "easy": 0.972}  # the CT's mean AUC on draw 0 (stop 35, 3 mm ring)


def wilcoxon(d):
    d = np.asarray(d)
    return f"{d.mean():+.3f} ({(d > 0).sum()}/{d.size} higher, Wilcoxon p {stats.wilcoxon(d).pvalue:.2g})"


rows = json.loads(Path(sys.argv[1]).read_text())["per_tumour"]
out = []
for kind in ("hard", "easy"):
    sel = [r for r in rows if r["difficulty"] == kind]
    ct = np.array([r["CT_auc"] for r in sel])
    out.append(f"{kind} (n={len(sel)}): CT {ct.mean():.3f} (draw 0: {DRAW0[kind]:.3f}), "
               f"MRI {np.mean([r['MRI_auc'] for r in sel]):.3f}")
    for method in ("cmedl", "fastcut"):
        runs = [f"{method}_s{s}" for s in range(3)]
        per_tumour = np.array([[r[f"{m}_auc"] for m in runs] for r in sel]).mean(1)
        per_run = [np.mean([r[f"{m}_auc"] - r["CT_auc"] for r in sel]) for m in runs]
        tag = "P2" if method == "cmedl" and kind == "hard" else "secondary"
        out.append(f"  {tag} {method} (mean of 3 runs per tumour, {per_tumour.mean():.3f}) - CT: "
                   f"{wilcoxon(per_tumour - ct)}; per run {', '.join(f'{x:+.3f}' for x in per_run)}")
print("\n".join(out))
