"""``nnunet_cmedl benchmark``: plain nnU-Net vs. CMEDL with the same budget, fold and seeds, on the synthetic data.

Trains each trainer through the stock ``nnUNetv2_train`` (fold 0, same configuration, same number of epochs and
iterations), predicts the test images with the stock ``nnUNetv2_predict`` (no test-time augmentation for either),
then evaluates:
  - per case: DSC, surface Dice (2 mm), HD95, with paired Wilcoxon tests  (nnunet_cmedl compare)
  - per tumour, hard (mediastinal, ~0-4 HU in CT) vs easy (lung): the same metrics and recall on each tumour's
    neighbourhood, with paired Wilcoxon tests against plain nnU-Net
and writes ``benchmark_summary.json`` / ``.md``, case panels and one HTML report in --workdir.

Budgets: ``cpu`` (default; 2d small configuration, 10 epochs x 25 iterations each, about 30 min on 2 CPU cores) and
``gpu`` (nnU-Net's planned 3d_fullres, 100 epochs x 250 iterations, a larger dataset, plus the no-hint ablation).
"""
import argparse
import json
import time
from pathlib import Path

from nnunet_cmedl import pipeline
from nnunet_cmedl.evaluation import per_tumour
from nnunet_cmedl.evaluation.tables import fmt, format_table
from nnunet_cmedl.utils.atomic import atomic_file

BUDGETS = {
    "cpu": dict(dim="2d", num_train=12, num_test=8, num_mri=12,
                trainers=("nnUNetTrainer_cpuBudget", "nnUNetTrainerCMEDL_cpuBudget")),
    "gpu": dict(dim="3d_fullres", num_train=40, num_test=20, num_mri=30,
                trainers=("nnUNetTrainer_100epochs", "nnUNetTrainerCMEDL_100epochs",
                          "nnUNetTrainerCMEDL_noHint_100epochs")),
}


def method_name(trainer: str) -> str:
    """nnUNetTrainer_cpuBudget -> nnU-Net, nnUNetTrainerCMEDL_noHint_cpuBudget -> CMEDL_noHint."""
    core = trainer.removeprefix("nnUNetTrainer")
    for suffix in ("_cpuBudget", "_100epochs"):
        core = core.removesuffix(suffix)
    return core.lstrip("_") or "nnU-Net"


def per_tumour_table(summary: dict, baseline: str) -> str:
    headers = ["tumours", "method", "DSC", "sDSC 2mm", "HD95 mm", "recall", f"p (DSC vs {baseline})"]
    rows = []
    for difficulty, entry in summary.items():
        tests = entry[f"tests_vs_{baseline}"]
        for method, stats in entry["methods"].items():
            p = tests.get(method, {}).get("dsc", {}).get("p_value")
            rows.append([f"{difficulty} (n={entry['n_tumours']})", method,
                         *(f"{fmt(stats[k]['mean'])} ± {fmt(stats[k]['sd'])}" for k in per_tumour.PER_TUMOUR_METRICS),
                         "" if p is None else fmt(p, 4)])
    return format_table(headers, rows, "Per tumour (mean ± sd over test tumours; neighbourhood 10 mm)")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="nnunet_cmedl benchmark", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", type=Path, default=Path("benchmark_output"))
    p.add_argument("--budget", choices=sorted(BUDGETS), default="cpu")
    p.add_argument("-d", "--dataset-id", type=int, default=502)
    p.add_argument("--trainers", nargs="+", help="override the budget's trainers (the first is the baseline)")
    p.add_argument("--dim", choices=sorted(pipeline.SMALL_CONFIGURATIONS), help="override the budget's --dim")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic dataset")
    p.add_argument("--device", default="auto")
    p.add_argument("--no-report", action="store_true", help="skip panels and the HTML report")
    a = p.parse_args(argv)
    budget = dict(BUDGETS[a.budget])
    trainers = a.trainers or budget["trainers"]
    dim = a.dim or budget["dim"]

    t0 = time.time()
    device = pipeline.resolve_device(a.device)
    workdir = a.workdir.resolve()
    steps = pipeline.make_steps(workdir, device)
    print(f"nnunet-cmedl benchmark: budget {a.budget}, trainers {', '.join(trainers)}, device {device}, "
          f"workdir {workdir}")
    data = pipeline.prepare_dataset(steps, a.dataset_id, dim, budget["num_train"], budget["num_test"],
                                    budget["num_mri"], a.seed)
    names = [method_name(t) for t in trainers]
    predictions, timings = {}, {}
    for trainer, name in zip(trainers, names):
        t = time.time()
        pipeline.train(steps, data, trainer, device)
        timings[name] = time.time() - t
        predictions[name] = pipeline.predict(steps, data, trainer, device, workdir / "predictions" / trainer)

    metrics = {}
    for name, folder in predictions.items():
        steps.run(f"per case: DSC, surface Dice (2 mm), HD95 of {name}",
                  pipeline.OURS + ["evaluate", "-ref", data.raw_folder / "labelsTs", "-pred", folder,
                                   "--dataset-json", data.raw_folder / "dataset.json", "--overwrite"])
        metrics[name] = folder / "cmedl_metrics.json"
    comparison = workdir / "comparison"
    log = steps.run("per case: paired Wilcoxon tests between the methods",
                    pipeline.OURS + ["compare", "-ref", data.raw_folder / "labelsTs", "-o", comparison,
                                     "--overwrite", "--pred", *(f"{n}={f}" for n, f in metrics.items())])
    print(log.read_text())

    print(f"\n=== per tumour, hard vs easy", flush=True)
    metadata = per_tumour.load_metadata(data.raw_folder / "phantom_metadata.json")
    rows = per_tumour.tumour_rows(data.raw_folder / "labelsTs", predictions, metadata)
    tumour_summary = per_tumour.summarize_by_difficulty(rows, baseline=names[0])
    table = per_tumour_table(tumour_summary, names[0])
    print(table)

    report = None
    cmedl = next((t for t in trainers if "CMEDL" in t), None)
    if cmedl and not a.no_report:
        model = pipeline.results_folder(steps, data, cmedl)
        panels = workdir / "panels"
        steps.run("case panels: CT, pMRI, MRI, reference / student / teacher contours",
                  pipeline.OURS + ["panels", "-m", model, "-i", data.raw_folder / "imagesTs",
                                   "-ref", data.raw_folder / "labelsTs", "--student-pred", predictions[method_name(cmedl)],
                                   "--mri", data.raw_folder / "unpairedMRI", "-o", panels, "--overwrite"])
        report = workdir / "report.html"
        steps.run("HTML report", pipeline.OURS + [
            "report", "-m", model, "--metrics", *metrics.values(),
            "--comparison", f"{comparison}.json", "--panels", panels, "-o", report, "--overwrite",
            "--title", f"CMEDL vs nnU-Net on the synthetic thorax ({a.budget} budget)"])

    summary = {"budget": a.budget, "configuration": data.configuration, "trainers": dict(zip(names, trainers)),
               "device": device, "dataset": data.dataset_name, "train_seconds": timings,
               "total_minutes": (time.time() - t0) / 60, "per_case_comparison": f"{comparison}.json",
               "per_tumour": tumour_summary, "per_tumour_rows": rows, "report": str(report) if report else None,
               "command": "nnunet_cmedl benchmark " + " ".join(argv if argv is not None else [])}
    with atomic_file(workdir / "benchmark_summary.json") as f:
        json.dump(summary, f, indent=1, default=float)
    with atomic_file(workdir / "benchmark_summary.md") as f:
        f.write(f"# Benchmark ({a.budget} budget, {data.configuration}, {device})\n\n"
                f"Training time: " + ", ".join(f"{n} {s / 60:.1f} min" for n, s in timings.items()) + "\n\n"
                f"```\n{log.read_text()}\n{table}\n```\n")
    print(f"\nSummary: {workdir / 'benchmark_summary.md'}  (json beside it)"
          + (f"\nReport: {report}" if report else "") + f"\nTotal time: {summary['total_minutes']:.1f} min")
    return 0
