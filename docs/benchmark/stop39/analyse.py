"""Stop 39, experiment G (PREREGISTERED.md): P1 and P2 from the merged benchmark summary, with stop 37's comparison
(seed-averaged per tumour, Wilcoxon; per seed, paired t). Usage: python analyse.py benchmark_summary.json"""
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "stop37"))
import analyse as stop37  # noqa: E402  (stop 37's pre-registered comparison, reused as it is)

PLAIN, CMEDL, DEEP, LAST = "nnU-Net", "CMEDL", "CMEDL_hintDeepStages", "CMEDL_hintLastStage"
stop37.SHORT.update({CMEDL: "published CMEDL", DEEP: "deep-stage hint", LAST: "last-stage hint"})


def main(path) -> None:
    summary = json.loads(Path(path).read_text())
    out = ["P1: the deep-stage hint against the published CMEDL (primary: all tumours)"]
    out += [f"  {stop37.compare(summary, DEEP, CMEDL, kind)}" for kind in ("all", "hard", "easy")]
    out += ["P2: the deep-stage hint against plain nnU-Net (rescued unless behind at p < 0.05 on easy or all)"]
    out += [f"  {stop37.compare(summary, DEEP, PLAIN, kind)}" for kind in ("hard", "easy", "all")]
    if LAST in summary["final_rows"]:  # experiment H
        out += ["P1-H: the last-stage hint against the published CMEDL (primary: all tumours)"]
        out += [f"  {stop37.compare(summary, LAST, CMEDL, kind)}" for kind in ("all", "hard", "easy")]
        out += ["P2-H: the last-stage hint against plain nnU-Net (rescued unless behind at p < 0.05 on easy or all)"]
        out += [f"  {stop37.compare(summary, LAST, PLAIN, kind)}" for kind in ("hard", "easy", "all")]
    out += ["For reference: the published CMEDL against plain nnU-Net (stop 36's runs)"]
    out += [f"  {stop37.compare(summary, CMEDL, PLAIN, kind)}" for kind in ("hard", "easy", "all")]
    print("\n".join(out))


if __name__ == "__main__":
    main(sys.argv[1])
