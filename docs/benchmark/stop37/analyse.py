"""Stop 37, experiment E (PREREGISTERED.md): P1, P2 and the DSC secondaries from the benchmark's summary
(``final_rows``: each run's per-tumour rows at its final checkpoint). P1's numbers are also the benchmark's own table;
P2 (two-step against the CT control, paired per tumour) is computed here, as the benchmark pairs each method with
its baseline only. Usage: python analyse.py benchmark_summary.json"""
import json
import sys
from pathlib import Path

import numpy as np
from scipy import stats

PLAIN, TWO_STEP, CONTROL = "nnU-Net", "CMEDL_longWarmTumourAfterOnset", "CMEDL_ctTeacherSameLabelsTumourAfterOnset"
SHORT = {PLAIN: "plain", TWO_STEP: "two-step", CONTROL: "CT control"}


def per_tumour(summary: dict, method: str, kind: str):
    """{(case, tumour): [DSC per seed]} and the seeds, for one kind of tumour."""
    runs = summary["final_rows"][method]
    seeds = sorted(runs, key=int)
    values = {}
    for seed in seeds:
        for r in runs[seed]["tumours"]:
            if kind == "all" or r["difficulty"] == kind:
                values.setdefault((r["case"], r["tumour"]), []).append(r["dsc"])
    return values, seeds


def compare(summary: dict, a: str, b: str, kind: str) -> str:
    """a - b: seed-averaged per tumour (Wilcoxon), and per seed (the runs' means; paired t over seeds)."""
    va, sa = per_tumour(summary, a, kind)
    vb, sb = per_tumour(summary, b, kind)
    assert sa == sb and va.keys() == vb.keys(), "the two methods must have the same seeds and tumours"
    keys = sorted(va)
    d = np.array([np.mean(va[k]) - np.mean(vb[k]) for k in keys])
    per_seed = [np.mean([va[k][i] for k in keys]) - np.mean([vb[k][i] for k in keys]) for i in range(len(sa))]
    p_runs = stats.ttest_1samp(per_seed, 0.0).pvalue if len(per_seed) > 1 else float("nan")
    return (f"{SHORT[a]} - {SHORT[b]}, {kind} (n={len(keys)}): {np.mean([np.mean(va[k]) for k in keys]):.3f} vs "
            f"{np.mean([np.mean(vb[k]) for k in keys]):.3f}, {d.mean():+.3f} (seed-averaged Wilcoxon p "
            f"{stats.wilcoxon(d).pvalue:.2g}, {(d > 0).sum()}/{d.size} higher); per seed "
            f"{', '.join(f'{x:+.3f}' for x in per_seed)} (paired t over seeds p {p_runs:.2g})")


def main(path) -> None:
    summary = json.loads(Path(path).read_text())
    out = ["P1: the two-step CMEDL against plain nnU-Net (target: hard >= +0.03, p < 0.05; easy not behind at "
           "p < 0.05)"]
    out += [f"  {compare(summary, TWO_STEP, PLAIN, kind)}" for kind in ("hard", "easy", "all")]
    out += ["P2: the CT control against the two-step (contradicted if two-step ahead on hard at p < 0.05)"]
    out += [f"  {compare(summary, CONTROL, TWO_STEP, kind)}" for kind in ("hard", "easy", "all")]
    out += ["Secondary: the CT control against plain nnU-Net"]
    out += [f"  {compare(summary, CONTROL, PLAIN, kind)}" for kind in ("hard", "easy", "all")]
    teachers = summary.get("teacher_on_pmri", {})
    for method in (TWO_STEP, CONTROL):
        if method in teachers:
            t = teachers[method]
            for kind in ("hard", "easy"):
                if kind in t:
                    parts = [f"{name} {np.mean(v):.3f}" for name, v in t[kind].items()]
                    out.append(f"teacher of {SHORT[method]}, {kind}, mean of seeds {t['seeds']}: {', '.join(parts)}")
    print("\n".join(out))


if __name__ == "__main__":
    main(sys.argv[1])
