"""Stop 40, experiment I (PREREGISTERED.md): P1-P3 from the merged benchmark summary, with stop 37's comparison
(seed-averaged per tumour, Wilcoxon; per seed, paired t). Usage: python analyse.py benchmark_summary.json"""
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "stop37"))
import analyse as stop37  # noqa: E402  (stop 37's pre-registered comparison, reused as it is)

PLAIN, CMEDL, W01, W03 = "nnU-Net", "CMEDL", "CMEDL_lambdaHint0p1", "CMEDL_lambdaHint0p3"
stop37.SHORT.update({CMEDL: "published CMEDL (weight 1)", W01: "hint weight 0.1", W03: "hint weight 0.3"})


def dose_response(summary) -> list:
    """Secondary: each weight's mean tumour DSC (seed-averaged), hard / easy / all, from 0 (plain) to 1."""
    out = ["Dose-response (secondary): mean per-tumour DSC, seed-averaged"]
    for weight, method in ((0, PLAIN), (0.1, W01), (0.3, W03), (1, CMEDL)):
        means = []
        for kind in ("hard", "easy", "all"):
            values, _ = stop37.per_tumour(summary, method, kind)
            means.append(f"{kind} {np.mean([np.mean(v) for v in values.values()]):.3f}")
        out.append(f"  weight {weight:<3} ({method}): " + ", ".join(means))
    return out


def main(path) -> None:
    summary = json.loads(Path(path).read_text())
    out = ["P1: hint weight 0.1 against the published CMEDL (primary: all tumours)"]
    out += [f"  {stop37.compare(summary, W01, CMEDL, kind)}" for kind in ("all", "hard", "easy")]
    out += ["P2: hint weight 0.1 against plain nnU-Net (target: hard >= +0.03 at p < 0.05, easy not behind; rescued "
            "unless behind at p < 0.05 on easy or all)"]
    out += [f"  {stop37.compare(summary, W01, PLAIN, kind)}" for kind in ("hard", "easy", "all")]
    out += ["P3: hint weight 0.3 against the published CMEDL (all tumours; hard, easy secondary) and plain nnU-Net"]
    out += [f"  {stop37.compare(summary, W03, CMEDL, kind)}" for kind in ("all", "hard", "easy")]
    out += [f"  {stop37.compare(summary, W03, PLAIN, kind)}" for kind in ("hard", "easy", "all")]
    out += ["For reference: the published CMEDL against plain nnU-Net (stop 36's runs)"]
    out += [f"  {stop37.compare(summary, CMEDL, PLAIN, kind)}" for kind in ("hard", "easy", "all")]
    out += dose_response(summary)
    print("\n".join(out))


if __name__ == "__main__":
    main(sys.argv[1])
