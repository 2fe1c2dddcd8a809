"""Validation curves of the benchmark's runs, block by block (issue 8): is the teacher ahead of its student, when,
and what does the hint loss do?

For each method and seed, from the run's final checkpoint (nnU-Net's own logging, nothing is predicted): the
student's validation pseudo-Dice (nnU-Net's, on the fold's validation batches, mean over foreground classes), the
teacher's pseudo-Dice on its input (pMRI, or what an oracle's teacher sees) and the hint loss, each as the mean of
blocks of ``--block`` epochs; and the epochs in which the teacher was ahead of the student at the previous
validation after the student's onset (pseudo-Dice > 0.05 once), i.e. where the hint gate 'teacher_ahead_after_onset'
(the AfterOnset variants) lets the hint through. Default CMEDL's hint is on in every epoch whatever this says.

    python scripts/validation_blocks.py --workdir W --budget long --methods nnU-Net CMEDL --seeds 3 4 5 [--block 20]
"""
import argparse
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def blocks(values, size: int) -> str:
    values = np.asarray(values, dtype=float)
    return "[" + ", ".join(f"{np.nanmean(values[i:i + size]):.3f}" for i in range(0, len(values), size)) + "]"


def teacher_ahead_epochs(teacher, student) -> list:
    """Epochs whose hint the gate 'teacher_ahead_after_onset' opens (the trainer's rule and onset, hint_gate_open)."""
    from nnunet_cmedl.distillation.hint import HINT_ONSET_DICE, hint_gate_open
    return [e for e in range(1, len(teacher))
            if hint_gate_open("teacher_ahead_after_onset", teacher[:e], student[:e], HINT_ONSET_DICE)]


def describe(method: str, seed: int, logs: dict, size: int) -> str:
    student = [float(np.nanmean(d)) for d in logs["dice_per_class_or_region"]]
    line = f"{method:34s} seed {seed}: student {blocks(student, size)}"
    teacher = logs.get("cmedl_teacher_pseudo_dice_pmri")
    if teacher:
        ahead = teacher_ahead_epochs(teacher, student)
        line += (f"  teacher {blocks(teacher, size)}  hint loss {blocks(logs['cmedl_hint'], size)}"
                 f"  teacher ahead in {len(ahead)} epochs" + (f" ({ahead[0]}-{ahead[-1]})" if ahead else ""))
    return line


def main(argv=None) -> int:
    from nnunet_cmedl.benchmark import BUDGETS
    from nnunet_cmedl.training.benchmark_trainers import METHODS
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", type=Path, required=True, help="the benchmark's workdir (nnunet_cmedl benchmark)")
    p.add_argument("--budget", choices=sorted(BUDGETS), default="cpu", help="the runs' budget (default: cpu)")
    p.add_argument("--methods", nargs="+", required=True, choices=sorted(METHODS), metavar="METHOD",
                   help="benchmark methods, e.g. nnU-Net CMEDL")
    p.add_argument("--seeds", nargs="+", type=int, required=True)
    p.add_argument("-c", "--configuration", help="the runs' configuration (default: the budget's, e.g. 2d_bench)")
    p.add_argument("--fold", type=int, default=0)
    p.add_argument("--block", type=int, default=10, help="epochs per block (default 10)")
    a = p.parse_args(argv)
    if a.block < 1:
        p.error(f"--block {a.block}: give at least 1 epoch per block")

    from nnunet_cmedl.checkpoint_io import load_checkpoint
    from nnunet_cmedl.training.benchmark_trainers import trainer_name
    budget = BUDGETS[a.budget]
    configuration = a.configuration or budget["dim"]
    runs = []
    for seed in a.seeds:
        for method in a.methods:
            name = trainer_name(method, budget["trainer_budget"], seed)
            folders = sorted((a.workdir / "nnUNet_results").glob(f"Dataset*/{name}__nnUNetPlans__{configuration}"))
            ckpt = (folders[0] if len(folders) == 1 else a.workdir / "nnUNet_results" / "Dataset*" /
                    f"{name}__nnUNetPlans__{configuration}") / f"fold_{a.fold}" / "checkpoint_final.pth"
            if not ckpt.is_file():
                print(f"validation_blocks.py: {ckpt}: no final checkpoint ({method}, seed {seed}, budget {a.budget})"
                      + (f" ({len(folders)} datasets have this run)" if len(folders) > 1 else ""), file=sys.stderr)
                return 2
            runs.append((method, seed, ckpt))
    print(f"fold-{a.fold} validation pseudo-Dice (nnU-Net's; mean per block of {a.block} epochs); the teacher's on "
          f"its input; hint loss; teacher ahead: epochs whose previous validation had the teacher ahead, after the "
          f"student's onset (where an AfterOnset variant's hint is on; default CMEDL's hint is always on)")
    for method, seed, ckpt in runs:
        print(describe(method, seed, load_checkpoint(ckpt, map_location="cpu", trust=True)["logging"], a.block))
    return 0


if __name__ == "__main__":
    sys.exit(main())
