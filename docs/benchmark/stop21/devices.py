"""Plain nnU-Net trained on the GPU (stop 21, workdir A) against the same trainer and seeds trained on the CPU
(stop 20, workdir B): per-tumour test DSC at the final checkpoint, mean over tumours, per seed. Same data (the
benchmark's seed-0 dataset, made again), same fold and budget; only the device (and AMP on CUDA) differs.

    python docs/benchmark/stop21/devices.py /tmp/bench /tmp/bench11 0 1 2 3 4 5
"""
import json
import sys
from pathlib import Path

import numpy as np


def tumour_dsc(workdir: Path, seed: int) -> dict:
    rows = json.loads((workdir / "predictions" / f"nnUNetTrainer_benchCPU_seed{seed}_fold0" / "checkpoint_final"
                       / "benchmark_metrics.json").read_text())["tumours"]
    return {(r["case"], r["tumour"]): (r["difficulty"], r["dsc"]) for r in rows}


def main(a: str, b: str, *seeds: str) -> None:
    print(f"{'seed':>4} | {'hard A':>7} {'hard B':>7} | {'easy A':>7} {'easy B':>7} | {'all A':>6} {'all B':>6}")
    means = {k: [] for k in ("hard A", "hard B", "easy A", "easy B", "all A", "all B")}
    for seed in map(int, seeds):
        ta, tb = tumour_dsc(Path(a), seed), tumour_dsc(Path(b), seed)
        assert ta.keys() == tb.keys(), "not the same test tumours"
        row = []
        for group in ("hard", "easy", "all"):
            for name, t in (("A", ta), ("B", tb)):
                v = float(np.mean([d for g, d in t.values() if group in ("all", g)]))
                means[f"{group} {name}"].append(v)
                row.append(v)
        print(f"{seed:>4} | {row[0]:7.3f} {row[1]:7.3f} | {row[2]:7.3f} {row[3]:7.3f} | {row[4]:6.3f} {row[5]:6.3f}")
    print("mean | " + " | ".join(f"{np.mean(means[f'{g} A']):7.3f} {np.mean(means[f'{g} B']):7.3f}"
                                 for g in ("hard", "easy", "all")))


if __name__ == "__main__":
    main(*sys.argv[1:])
