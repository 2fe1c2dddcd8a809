"""Stop 35, experiment C: the pre-registered tests (docs/benchmark/stop35/PREREGISTERED.md) from tumour-contrast JSONs."""
import json, sys
from pathlib import Path
import numpy as np
from scipy import stats

def load(path):
    return json.loads(Path(path).read_text())["per_tumour"]

def table(rows, name):
    return {(r["case"], r["tumour"]): r for r in rows}

def wil(d):
    d = np.asarray(d)
    return f"{d.mean():+.3f} ({(d > 0).sum()}/{d.size} higher, Wilcoxon p {stats.wilcoxon(d).pvalue:.2g})"

main = load(sys.argv[1])          # CT, g1200, warm_s3..12, MRI (3 mm ring, no gap)
extra = load(sys.argv[2]) if len(sys.argv) > 2 else None  # g3600, fastcut1200 with g1200 again
warm = [f"warm_s{s}" for s in range(3, 13)]
out = []
for kind in ("hard", "easy"):
    sel = [r for r in main if r["difficulty"] == kind]
    ct = np.array([r["CT_auc"] for r in sel])
    g = np.array([r["g1200_auc"] for r in sel])
    w = np.array([[r[f"{m}_auc"] for m in warm] for r in sel]).mean(1)
    out.append(f"{kind} (n={len(sel)}): CT {ct.mean():.3f}, MRI {np.mean([r['MRI_auc'] for r in sel]):.3f}")
    out.append(f"  primary G1200 - CT: {wil(g - ct)}")
    out.append(f"  primary G1200+1200 (mean of 10 runs per tumour, {w.mean():.3f}) - CT: {wil(w - ct)}")
    per_run = [np.mean([r[f'{m}_auc'] - r['CT_auc'] for r in sel]) for m in warm]
    out.append(f"    runs with a positive mean difference: {sum(x > 0 for x in per_run)} of 10 "
               f"(range {min(per_run):+.3f} to {max(per_run):+.3f})")
    if extra:
        esel = {(r["case"], r["tumour"]): r for r in extra if r["difficulty"] == kind}
        keys = [(r["case"], r["tumour"]) for r in sel]
        for name in [k[:-4] for k in extra[0] if k.endswith("_auc") and k[:-4] not in ("CT", "MRI", "g1200")]:
            x = np.array([esel[k][f"{name}_auc"] for k in keys])
            out.append(f"  primary {name} ({x.mean():.3f}) - CT: {wil(x - ct)}")
            out.append(f"  secondary {name} - G1200: {wil(x - g)}")
# the measure against the teacher: Spearman, pooled over the ten two-step runs
for kind in ("hard", "easy", "all"):
    xs, ys = [], []
    for s in range(3, 13):
        bench = "bench13" if s <= 6 else "bench14"
        f = Path(f"/tmp/{bench}/predictions/nnUNetTrainerCMEDL_warmTumourAfterOnset_benchCPU_seed{s}_fold0/"
                 "teacher_on_pmri_final/benchmark_metrics.json")
        dsc = {(r["case"], r["tumour"]): r["dsc"] for r in json.loads(f.read_text())["tumours"]}
        for r in main:
            if kind in ("all", r["difficulty"]):
                xs.append(r[f"warm_s{s}_auc"]); ys.append(dsc[(r["case"], r["tumour"])])
    rho = stats.spearmanr(xs, ys)
    out.append(f"teacher DSC vs pMRI AUC, {kind}, pooled over 10 runs (n={len(xs)}): Spearman {rho.statistic:+.2f}, "
               f"p {rho.pvalue:.2g}")
print("\n".join(out))
