"""``nnunet_cmedl benchmark``: plain nnU-Net vs. CMEDL and its ablations, several seeds, learning curves, on the
synthetic thorax.

What it does (every step reuses what a previous run with the same settings finished):
  1. data: the synthetic dataset (``make-synthetic``; hard tumours with the CT signal of ``--hard-ct-signal``),
     nnU-Net's planning and preprocessing, a small configuration, the unpaired MRI preprocessed onto it; for the
     CMEDL_pairedOracle* diagnostics also each CT patient's own MRI (``paired-mri``, which only a phantom has);
  2. splits (``splits_final.json``, written once): fold 0 trains on ``n_labelled`` cases (few labels), fold 1 on 4x
     as many; both validate on the same cases. Every method trains fold 0. The *reference* (plain nnU-Net on fold
     1) checks that the hard tumours carry a CT signal that more labels let a CT-only network learn;
  3. training through the stock ``nnUNetv2_train``: each method x seed is one trainer class
     (``training/benchmark_trainers.py``), same data, fold, budget and seeds; light checkpoints every few epochs;
     nnU-Net's validation after training is skipped (nothing here reads it) unless --final-validation;
  4. test predictions with nnU-Net's own predictor (what ``nnUNetv2_predict`` runs; tile step 0.5, no TTA) from the
     final checkpoint and from every intermediate one (learning curves); a checkpoint whose student weights equal
     one already predicted (CMEDL_noHint's student is plain nnU-Net's bit for bit on the CPU) gets a copy;
  5. evaluation: per case and per tumour (hard = mediastinal, easy = lung; phantom metadata) DSC, surface Dice at
     2 mm, HD95, recall; paired Wilcoxon tests against plain nnU-Net, per tumour and per case, pooled over seeds in
     two ways (``seed-averaged``: each tumour's metric averaged over seeds, one pair per tumour; ``pooled``: one pair
     per tumour and seed); learning curves (test DSC vs iterations and vs training wall-clock, seed bands) and the
     teacher's validation pseudo-Dice on pMRI next to the student's on CT, as PNGs;
  6. ``benchmark_summary.json`` / ``.md`` in --workdir.

Settings (which methods, which hint options) are chosen by the validation pseudo-Dice of fold 0 (nnU-Net's logger,
in the figures); the test set is only predicted with trained models, never used to pick settings.

Budgets:
  cpu (default): 85-135 min on 2 CPU cores (docs/BENCHMARK.md); 2d, 64x64 patches, batch 8, at most 32 feature
                 maps; 40 epochs x 30 iterations (1200), checkpoints every 10 epochs; 10 labelled cases (+40 for the
                 reference), 4 validation, 20 test, 16 MRI;
                 methods nnU-Net, CMEDL, CMEDL_noHint, CMEDL_FastCUT; seeds 0 1 2; reference seed 0.
  long:          the cpu budget's data and setting, 120 epochs (3600 iterations), checkpoints every 20 epochs;
                 methods nnU-Net, CMEDL; seed 0 (scripts/gpu_benchmark.py trains it on a GPU beside the cpu runs).
  smoke:         the cpu budget's data, 2 epochs x 2 iterations: checks the machinery, measures nothing.
  gpu:           nnU-Net's 3d_fullres as planned, 100 epochs x 250 iterations, checkpoints every 10 epochs; 20 labelled
                 (+60), 5 validation, 40 test, 30 MRI; also CMEDL_CUT; seeds 0 1 2; reference seeds 0 1 2.
"""
import argparse
import json
import os
import time
from pathlib import Path

from nnunet_cmedl import pipeline
from nnunet_cmedl.errors import UserInputError
from mri_unpaired.atomic import atomic_file

BUDGETS = {
    "cpu": dict(dim="2d_bench", trainer_budget="benchCPU", n_labelled=10, n_val=4, reference_factor=4, num_test=20,
                num_mri=16, methods=("nnU-Net", "CMEDL", "CMEDL_noHint", "CMEDL_FastCUT"), seeds=(0, 1, 2),
                reference_seeds=(0,)),
    # benchCPU's setting 3x longer (3600 iterations), plain vs CMEDL: the learning curves past the cpu budget's end
    "long": dict(dim="2d_bench", trainer_budget="benchLong", n_labelled=10, n_val=4, reference_factor=4, num_test=20,
                 num_mri=16, methods=("nnU-Net", "CMEDL"), seeds=(0,), reference_seeds=()),
    # seconds per run: the benchmark's machinery end to end on the cpu budget's data (dry runs, checks)
    "smoke": dict(dim="2d_bench", trainer_budget="benchSmoke", n_labelled=10, n_val=4, reference_factor=4,
                  num_test=20, num_mri=16, methods=("nnU-Net", "CMEDL"), seeds=(0,), reference_seeds=(0,)),
    "gpu": dict(dim="3d_fullres", trainer_budget="benchGPU", n_labelled=20, n_val=5, reference_factor=4, num_test=40,
                num_mri=30, methods=("nnU-Net", "CMEDL", "CMEDL_noHint", "CMEDL_CUT", "CMEDL_FastCUT"),
                seeds=(0, 1, 2), reference_seeds=(0, 1, 2)),
}
REFERENCE = "nnU-Net_4xLabels"


def benchmark_splits(case_ids, n_labelled: int, n_val: int, reference_factor: int) -> list:
    """Fold 0: the first n_labelled cases; fold 1 (reference): reference_factor x as many; both validate on the
    last n_val cases."""
    need = n_labelled * reference_factor + n_val
    if len(case_ids) < need:
        raise UserInputError(f"the dataset has {len(case_ids)} training cases; the benchmark needs {need}")
    cases = sorted(case_ids)
    val = cases[-n_val:]
    return [{"train": cases[:n_labelled], "val": val},
            {"train": cases[:n_labelled * reference_factor], "val": val}]


def write_splits(preprocessed: Path, splits: list) -> Path:
    """splits_final.json: written when absent; an existing one must be the same (never overwritten)."""
    path = preprocessed / "splits_final.json"
    if path.is_file():
        existing = json.loads(path.read_text())
        if existing != splits:
            raise UserInputError(f"{path}: holds other splits than the benchmark's (fold 0: {len(splits[0]['train'])} "
                                 f"labelled cases, fold 1: {len(splits[1]['train'])}); use another --workdir or -d")
        return path
    with atomic_file(path) as f:
        json.dump(splits, f, indent=1)
    return path


class Run:
    """One training run: method, seed, fold, its trainer class and results folder."""

    def __init__(self, method: str, seed: int, fold: int, budget: str, data: pipeline.PreparedDataset, steps):
        from nnunet_cmedl.training.benchmark_trainers import trainer_name
        self.method, self.seed, self.fold, self.budget = method, seed, fold, budget
        self.name = REFERENCE if fold == 1 else method
        self.trainer = trainer_name("nnU-Net" if method == REFERENCE else method, budget, seed)
        self.folder = pipeline.results_folder(steps, data, self.trainer) / f"fold_{fold}"

    def __repr__(self):
        return f"{self.name} seed {self.seed}"


def plan_runs(methods, seeds, reference_seeds, budget: str, data, steps) -> list:
    runs = []
    for seed in seeds:  # seed-major: a run stopped half-way has every method for its first seeds
        runs += [Run(m, seed, 0, budget, data, steps) for m in methods]
        if seed in reference_seeds:
            runs.append(Run(REFERENCE, seed, 1, budget, data, steps))
    return runs + [Run(REFERENCE, seed, 1, budget, data, steps) for seed in reference_seeds if seed not in seeds]


def finished(run: Run, data: pipeline.PreparedDataset, steps) -> bool:
    """A finished run of the same trainer class (the class fixes method, budget and seed), configuration and epochs;
    anything else is not reused (pipeline.finished_run)."""
    from nnunet_cmedl.training.benchmark_trainers import BUDGETS
    return pipeline.finished_run(run.folder, run.trainer, run.fold, pipeline.plans_file(steps, data),
                                 BUDGETS[run.budget]["num_epochs"])


def with_warm_starts(runs: list, data, steps) -> list:
    """The runs, each warm-started one preceded by the run it starts from (benchmark_trainers.WARM_STARTS), once."""
    from nnunet_cmedl.training.benchmark_trainers import warm_start_source
    out = []
    for run in runs:
        origin = warm_start_source(run.method, run.budget, run.fold)
        if origin:
            source = Run(origin[0], origin[1], origin[3], origin[2], data, steps)
            if all(r.trainer != source.trainer or r.fold != source.fold for r in out):
                out.append(source)
        if all(r.trainer != run.trainer or r.fold != run.fold for r in out):
            out.append(run)
    return out


def train_all(steps, data, runs, device: str) -> dict:
    """Train every run not finished yet (stock nnUNetv2_train), in order, a warm-started run after the one it starts
    from; returns training seconds per run."""
    seconds = {}
    runs = with_warm_starts(runs, data, steps)
    for i, run in enumerate(runs, 1):
        if finished(run, data, steps):
            steps.skip(f"train {run} ({i}/{len(runs)})", f"reusing {run.folder}/checkpoint_final.pth (same trainer "
                                                        f"class, configuration and epochs)")
            continue
        t = time.time()
        steps.run(f"train {run} ({i}/{len(runs)}): nnUNetv2_train {data.dataset_id} {data.configuration} "
                  f"{run.fold} -tr {run.trainer}",
                  [pipeline.BIN / "nnUNetv2_train", data.dataset_id, data.configuration, run.fold, "-tr",
                   run.trainer, "-device", device] + (["--c"] if (run.folder / "checkpoint_latest.pth").is_file()
                                                      else []))
        seconds[f"{run.name}/seed{run.seed}"] = time.time() - t
    return seconds


def build_parser() -> argparse.ArgumentParser:
    from nnunet_cmedl.synthetic.phantom import HARD_CT_SIGNALS
    from nnunet_cmedl.training.benchmark_trainers import METHODS
    p = argparse.ArgumentParser(prog="nnunet_cmedl benchmark", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", type=Path, default=Path("benchmark_output"))
    p.add_argument("--budget", choices=sorted(BUDGETS), default="cpu")
    p.add_argument("-d", "--dataset-id", type=int, default=502)
    p.add_argument("--methods", nargs="+", choices=list(METHODS),
                   help="methods to compare (default: the budget's; the first is the baseline)")
    p.add_argument("--seeds", nargs="+", type=int, help="training seeds (default: the budget's)")
    p.add_argument("--reference-seeds", nargs="*", type=int,
                   help="seeds of plain nnU-Net with 4x the labelled cases (default: the budget's; none: skip it)")
    p.add_argument("--data-seed", type=int, default=0, help="seed of the synthetic dataset")
    p.add_argument("--hard-ct-signal", choices=HARD_CT_SIGNALS, default=HARD_CT_SIGNALS[0],
                   help="the hard tumours' CT signal (make-synthetic --hard-ct-signal)")
    p.add_argument("--device", default="auto")
    p.add_argument("--prepare-only", action="store_true",
                   help="stop after the data (dataset, plans, small configuration, unpaired MRI, splits): e.g. to "
                        "train elsewhere with scripts/gpu_benchmark.py")
    p.add_argument("--train-only", action="store_true", help="stop after training")
    p.add_argument("--no-train", action="store_true",
                   help="train nothing: evaluate the runs that have finished (e.g. while others still train)")
    p.add_argument("--curve-epochs", nargs="+", type=int,
                   help="intermediate checkpoints (epochs) to evaluate for the learning curves (default: all saved)")
    p.add_argument("--final-validation", action="store_true",
                   help="let nnUNetv2_train run nnU-Net's validation after training (off: the benchmark scores the "
                        "test cases, and nothing reads that validation; it costs about 40 s per run on 2 CPU cores)")
    p.add_argument("--no-panels", action="store_true", help="skip the case panels of CMEDL (seed of its first run)")
    return p


def main(argv=None) -> int:
    a = build_parser().parse_args(argv)
    budget = BUDGETS[a.budget]
    methods = list(a.methods or budget["methods"])
    seeds = list(a.seeds if a.seeds is not None else budget["seeds"])
    reference_seeds = list(a.reference_seeds if a.reference_seeds is not None else budget["reference_seeds"])
    from nnunet_cmedl.training.benchmark_trainers import SEEDS
    bad = [s for s in seeds + reference_seeds if s not in SEEDS]
    if bad:
        raise UserInputError(f"--seeds/--reference-seeds {bad}: the benchmark trainers exist for seeds "
                             f"{SEEDS.start}-{SEEDS.stop - 1}")

    t0 = time.time()
    device = pipeline.resolve_device(a.device)
    workdir = a.workdir.resolve()
    steps = pipeline.make_steps(workdir, device)
    if device == "cpu" and "nnUNet_n_proc_DA" not in os.environ:
        steps.env["nnUNet_n_proc_DA"] = "0"  # batches in the trainer's process: a seeded run repeats exactly
    # the benchmark trainers' ExperimentMixin reads it (set either way: an exported value does not decide)
    steps.env["nnUNet_cmedl_skip_final_validation"] = "0" if a.final_validation else "1"
    print(f"nnunet-cmedl benchmark: budget {a.budget}, methods {', '.join(methods)}, seeds {seeds}, reference "
          f"seeds {reference_seeds}, device {device}, workdir {workdir}")
    num_train = budget["n_labelled"] * budget["reference_factor"] + budget["n_val"]
    data = pipeline.prepare_dataset(steps, a.dataset_id, budget["dim"], num_train, budget["num_test"],
                                    budget["num_mri"], a.data_seed, a.hard_ct_signal)
    from nnunet_cmedl.training.benchmark_trainers import PAIRED_MRI_METHODS
    if any(m in PAIRED_MRI_METHODS for m in methods):
        steps.run("render the paired MRI of each CT phantom (an oracle for diagnostics) onto the configuration",
                  pipeline.OURS + ["paired-mri", "-d", data.dataset_id, "-c", data.configuration, "--no-progress"])
    splits = benchmark_splits([p.name.removesuffix("_0000.nii.gz") for p in (data.raw_folder / "imagesTr").iterdir()],
                              budget["n_labelled"], budget["n_val"], budget["reference_factor"])
    write_splits(Path(steps.env["nnUNet_preprocessed"]) / data.dataset_name, splits)
    if a.prepare_only:
        print(f"\nData ready in {workdir} ({data.dataset_name}, configuration {data.configuration}); "
              f"--prepare-only: nothing trained")
        return 0
    runs = plan_runs(methods, seeds, reference_seeds, budget["trainer_budget"], data, steps)
    if a.no_train:
        unfinished = [r for r in runs if not finished(r, data, steps)]
        runs = [r for r in runs if r not in unfinished]
        print(f"--no-train: evaluating the {len(runs)} finished runs; not finished: "
              f"{', '.join(map(str, unfinished)) or 'none'}")
        if not any(r.name == methods[0] for r in runs):
            raise UserInputError(f"--no-train: no finished run of the baseline {methods[0]} to compare with")
    train_seconds = {} if a.no_train else train_all(steps, data, runs, device)
    if a.train_only:
        print(f"\nTrained {len(runs)} runs in {(time.time() - t0) / 60:.1f} min (--train-only)")
        return 0
    from nnunet_cmedl.evaluation import benchmark_report
    summary = benchmark_report.evaluate(runs, data, workdir, device, baseline=methods[0], budget_name=a.budget,
                                        train_seconds=train_seconds, curve_epochs=a.curve_epochs,
                                        command="nnunet_cmedl benchmark " + " ".join(argv or []))
    cmedl = next((r for r in runs if r.name == "CMEDL"), None)
    if cmedl is not None and not a.no_panels:
        panels = workdir / "panels"
        steps.run(f"case panels of {cmedl}: CT, pMRI, MRI, reference / student / teacher contours",
                  pipeline.OURS + ["panels", "-m", cmedl.folder.parent, "-i", data.raw_folder / "imagesTs",
                                   "-ref", data.raw_folder / "labelsTs", "--student-pred",
                                   workdir / "predictions" / f"{cmedl.trainer}_fold0" / "checkpoint_final",
                                   "--mri", data.raw_folder / "unpairedMRI", "-o", panels, "--overwrite"])
        summary["panels"] = str(panels)
    summary["total_minutes"] = (time.time() - t0) / 60
    benchmark_report.write_summary(summary, workdir)
    print(f"\nSummary: {workdir / 'benchmark_summary.md'} (json beside it); total {summary['total_minutes']:.1f} min")
    return 0
