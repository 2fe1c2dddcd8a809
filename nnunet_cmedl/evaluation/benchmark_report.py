"""Evaluation of ``nnunet_cmedl benchmark``: test predictions of every run and checkpoint, per-case and per-tumour
metrics, paired tests pooled over seeds, learning curves and the teacher-vs-student figure.

Pooling over seeds, two ways (both reported):
  seed-averaged: each tumour's (case's) metric averaged over a method's seeds, then one pair per tumour (case)
                 against the baseline's seed average; the pairs are independent units (the primary test);
  pooled:        one pair per tumour (case) and seed, baseline and method with the same seed; more pairs, but the
                 pairs of one tumour are not independent, so its p-values are optimistic.
Both hold the trained networks fixed: with few seeds, the variation between training runs (which the CMEDL_noHint
negative control shows to be large, docs/BENCHMARK.md) is not in them. The run-level test is reported beside them:
  runs:          each run's (seed's) mean over the tumours (cases), Welch t-test of the method's runs against the
                 baseline's; its unit is the training run.
  runs paired:   the same means, paired by seed (the baseline's run and the method's run of one seed share the
                 student's initial weights and, on the CPU, its batches until the methods differ): a t-test of the
                 per-seed differences over the seeds both have; its unit is the training run too.
"""
import contextlib
import hashlib
import io
import json
import math
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

from nnunet_cmedl import plotting
from nnunet_cmedl.checkpoint_io import load_checkpoint
from nnunet_cmedl.errors import UserInputError
from nnunet_cmedl.env import trainers_visible_to_nnunet
from nnunet_cmedl.evaluation import per_tumour
from nnunet_cmedl.evaluation.statistics import paired_t_test, paired_wilcoxon, welch_t_test
from nnunet_cmedl.evaluation.metrics import evaluate_folders
from nnunet_cmedl.evaluation.tables import fmt, format_table
from mri_unpaired.atomic import atomic_file

DIFFICULTIES = ("hard", "easy", "all")
CASE_METRICS = ("dsc", "sdsc", "hd95")
COMPLETE = ".benchmark_prediction_complete"


# ------------------------------------------------------------------------------------------------ predictions
def run_predictions(workdir: Path, run) -> Path:
    """Where a run's test predictions go: one folder per checkpoint inside."""
    return workdir / "predictions" / f"{run.trainer}_fold{run.fold}"


def prediction_folder(workdir: Path, run, checkpoint: str) -> Path:
    return run_predictions(workdir, run) / Path(checkpoint).stem


def checkpoints(run, workdir: Path, curve_epochs=None) -> list:
    """(epoch, checkpoint file name) of a finished run: the intermediate curve checkpoints (those of
    ``curve_epochs`` if given), then the final one. A checkpoint counts if its file is in the run's folder or its
    test predictions are complete in ``workdir`` (a run trained and predicted elsewhere: scripts/gpu_benchmark.py)."""
    from nnunet_cmedl.training.experiment import CURVE_CHECKPOINT_PATTERN
    final = load_checkpoint(run.folder / "checkpoint_final.pth")["current_epoch"]
    prefix = CURVE_CHECKPOINT_PATTERN.split("{")[0]
    names = {p.name for p in run.folder.glob(prefix + "*.pth")}
    names |= {p.parent.name + ".pth" for p in run_predictions(workdir, run).glob(prefix + "*/" + COMPLETE)}
    found = sorted((int(Path(n).stem.removeprefix(prefix)), n) for n in names)
    return [(e, n) for e, n in found if e < final and (curve_epochs is None or e in curve_epochs)] \
        + [(final, "checkpoint_final.pth")]


STUDENT_SHA1 = ".benchmark_student_sha1"


def student_fingerprint(run, checkpoint: str, loaded: dict = None):
    """sha1 over what decides a checkpoint's test predictions: the student's weights, the run's plans.json and
    dataset.json and its configuration (the predictor's settings are the benchmark's own, fixed). None where the
    checkpoint file is not here (a run predicted elsewhere). ``loaded``: that checkpoint, where the caller has
    loaded it already."""
    path = run.folder / checkpoint
    if not path.is_file():
        return None
    import torch
    digest = hashlib.sha1()
    for name, tensor in sorted((loaded or load_checkpoint(path))["network_weights"].items()):
        digest.update(name.encode() + b"\0" + str(tensor.dtype).encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    for name in ("plans.json", "dataset.json"):
        digest.update((run.folder.parent / name).read_bytes())
    digest.update(run.folder.parent.name.split("__")[-1].encode())
    return digest.hexdigest()


def reuse_identical_predictions(output: Path, fingerprint: str) -> bool:
    """Copy the complete test predictions of another checkpoint with the same student (``student_fingerprint``)
    into ``output``: the same network predicts the same segmentations, so predicting again only costs time (on the
    CPU, CMEDL_noHint's student is plain nnU-Net's bit for bit at each seed). True if it did."""
    for key_file in sorted(output.parent.parent.glob(f"*/*/{STUDENT_SHA1}")):
        source = key_file.parent
        if source == output or key_file.read_text().strip() != fingerprint or not (source / COMPLETE).is_file():
            continue
        output.mkdir(parents=True, exist_ok=True)
        for f in source.iterdir():
            if f.is_file() and f.name not in (COMPLETE, METRICS_CACHE, STUDENT_SHA1):
                with atomic_file(output / f.name, mode="wb") as out:
                    out.write(f.read_bytes())
        (output / STUDENT_SHA1).write_text(fingerprint + "\n")
        (output / COMPLETE).write_text(f"copied from {source} (the same student weights, plans and configuration)\n")
        return True
    return False


def complete_for(output: Path, fingerprint) -> bool:
    """``output`` holds complete predictions of this training of the run: not of an earlier training under the same
    trainer name (a run trained again since; stop 33 found such predictions reused). ``fingerprint``: the run's
    ``student_fingerprint`` (None where its checkpoint is not here: predictions made elsewhere count as they are).
    Predictions of another training lose their completion mark here, so that they are made again."""
    if not (output / COMPLETE).is_file():
        return False
    if fingerprint is None:
        return True
    key = output / STUDENT_SHA1
    if key.is_file() and key.read_text().strip() == fingerprint:
        return True
    (output / COMPLETE).unlink()  # predicted again; the new files replace the old ones
    return False


def predict_checkpoint(run, checkpoint: str, images: Path, output: Path, device: str, loaded: dict = None) -> Path:
    """The test images through nnU-Net's predictor (what nnUNetv2_predict runs), tile step 0.5, no TTA; or a copy
    of the predictions of a checkpoint with the same student weights (``reuse_identical_predictions``). ``loaded``:
    that checkpoint, where the caller has loaded it already."""
    fingerprint = student_fingerprint(run, checkpoint, loaded)
    if complete_for(output, fingerprint):
        return output
    if fingerprint is not None and reuse_identical_predictions(output, fingerprint):
        return output
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    # quiet: on the CPU nnU-Net says perform_everything_on_device is off, and its trainer lookup where it searched
    with contextlib.redirect_stdout(io.StringIO()), trainers_visible_to_nnunet():
        predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=False,
                                    perform_everything_on_device=device != "cpu", device=torch.device(device),
                                    verbose=False, allow_tqdm=False)
        predictor.initialize_from_trained_model_folder(str(run.folder.parent), use_folds=(run.fold,),
                                                       checkpoint_name=checkpoint)
    output.mkdir(parents=True, exist_ok=True)
    with contextlib.redirect_stdout(io.StringIO()):  # the sequential predictor prints a line per case
        predictor.predict_from_files_sequential(str(images), str(output), save_probabilities=False, overwrite=True)
    if fingerprint is not None:
        (output / STUDENT_SHA1).write_text(fingerprint + "\n")
    (output / COMPLETE).write_text(f"{run.trainer} fold {run.fold} {checkpoint}\n")
    return output


def predict_teacher_on_pmri(run, images: Path, workdir: Path, device: str, checkpoint: dict = None):
    """A CMEDL run's teacher on the pMRI of its own generator, for the test CTs, at the final checkpoint
    (``nnunet_cmedl export-pmri --teacher-seg``: sliding window, tile step 0.5, no TTA, as the student is predicted).
    The hint can teach the student only what this teacher knows (issue 8). None for a run without a teacher.
    ``checkpoint``: the run's final checkpoint where the caller has loaded it already."""
    output = run_predictions(workdir, run) / "teacher_on_pmri_final"
    if checkpoint is None and (run.folder / "checkpoint_final.pth").is_file():
        checkpoint = load_checkpoint(run.folder / "checkpoint_final.pth")
    fingerprint = student_fingerprint(run, "checkpoint_final.pth", checkpoint)  # which training of the run it is
    if complete_for(output, fingerprint):
        return output

    def complete(what: str) -> Path:
        if fingerprint is not None:
            (output / STUDENT_SHA1).write_text(fingerprint + "\n")
        (output / COMPLETE).write_text(f"{run.trainer} fold {run.fold} {what}, checkpoint_final.pth\n")
        return output
    if checkpoint is None or "cmedl_teacher_weights" not in checkpoint:
        return None
    if checkpoint.get("cmedl_i2i_method") == "paired_oracle":  # a diagnostic: its teacher on each patient's own MRI
        from nnunet_cmedl.synthetic.paired_mri import predict_teacher_on_paired_mri
        predict_teacher_on_paired_mri(run.folder.parent, run.fold, images, output, device)
        return complete("teacher on the paired MRI (oracle)")
    from nnunet_cmedl.inference.cmedl_model import find_trainer_class, load_cmedl_model
    from nnunet_cmedl.training.strategies import nnUNetTrainerPseudoMRI
    trainer_class = find_trainer_class(checkpoint.get("trainer_name", ""))
    if trainer_class is not None and issubclass(trainer_class, nnUNetTrainerPseudoMRI):
        return None  # pMRI-only / CT+pMRI: the segmenter on pMRI is the deployed network, scored as the "student"
    from nnunet_cmedl.inference.export_pmri import export_pseudo_mri_batch
    model = load_cmedl_model(run.folder.parent, fold=run.fold, device=device, trust_checkpoint=True)  # our own run
    exported = output / "pmri_and_teacher"
    written = export_pseudo_mri_batch(model, images, exported, teacher_seg=True, overwrite=True, show_progress=False)
    for files in written:  # <case>.nii.gz, as the student's predictions are named (the scorers read that)
        seg = files["teacher_seg"]
        seg.replace(output / seg.name.replace("_teacher_seg", ""))
    return complete("teacher on pMRI")


METRICS_CACHE = "benchmark_metrics.json"


def prediction_fingerprint(folder: Path) -> str:
    """sha1 over the names and bytes of the files in a prediction folder (but the metrics cache)."""
    digest = hashlib.sha1()
    for f in sorted(p for p in folder.iterdir() if p.is_file() and p.name != METRICS_CACHE):
        digest.update(f.name.encode() + b"\0" + f.read_bytes())
    return digest.hexdigest()


def evaluate_prediction(labels: Path, folder: Path, metadata: dict, key: str) -> dict:
    """Per-case DSC/sDSC/HD95 and per-tumour rows of one prediction folder, cached beside it for the predictions they
    were computed from: predictions replaced later (e.g. a GPU bundle unpacked over older ones, stop 22) are scored
    again, never given the old scores."""
    cache = folder / METRICS_CACHE
    fingerprint = prediction_fingerprint(folder)
    if cache.is_file():
        cached = json.loads(cache.read_text())
        if cached.get("predictions_sha1") == fingerprint:
            return cached
    cases = evaluate_folders(labels, folder, labels=[1], tolerance_mm=2.0)
    case_rows = [{"case": r["case"], **{k: r.get(k) for k in CASE_METRICS}}
                 for r in cases["per_case"] if r.get("label") in (1, "1")]
    tumour_rows = per_tumour.tumour_rows(labels, {key: folder}, metadata)
    result = {"cases": case_rows, "tumours": tumour_rows, "predictions_sha1": fingerprint}
    with atomic_file(cache) as f:
        json.dump(result, f, default=float)
    return result


# ------------------------------------------------------------------------------------------------ statistics
def _mean(values) -> float:
    v = np.array([np.nan if x is None else x for x in values], dtype=float)
    return float(np.nanmean(v)) if np.isfinite(v).any() else float("nan")


def unit_values(results: dict, method: str, unit: str, difficulty: str, metric: str) -> dict:
    """{seed: {unit id: value}} of one method at its final checkpoint; unit 'tumours' or 'cases'."""
    out = {}
    for seed, res in results[method].items():
        rows = res["final"][unit]
        out[seed] = {(r["case"], r.get("tumour")): r[metric] for r in rows
                     if unit == "cases" or difficulty == "all" or r["difficulty"] == difficulty}
    return out


def paired_tests(base: dict, other: dict) -> dict:
    """Seed-averaged and pooled paired Wilcoxon tests of ``other`` vs ``base`` ({seed: {unit: value}})."""
    seeds = sorted(set(base) & set(other))
    units = sorted(set.intersection(*(set(base[s]) & set(other[s]) for s in seeds))) if seeds else []

    def clean(a, b):
        a, b = np.array(a, dtype=float), np.array(b, dtype=float)
        ok = np.isfinite(a) & np.isfinite(b)
        return a[ok], b[ok]

    a, b = clean([_mean(other[s][u] for s in seeds) for u in units], [_mean(base[s][u] for s in seeds) for u in units])
    averaged = {"n": int(a.size), "mean_difference": float(np.mean(a - b)) if a.size else float("nan"),
                **paired_wilcoxon(a, b)}
    a, b = clean([other[s][u] for s in seeds for u in units], [base[s][u] for s in seeds for u in units])
    pooled = {"n": int(a.size), "mean_difference": float(np.mean(a - b)) if a.size else float("nan"),
              **paired_wilcoxon(a, b)}
    # the run as the unit: each seed's mean over the units, the method's runs against the baseline's (all seeds of
    # each, unpaired): the between-run variation that the two tests above hold fixed
    runs = welch_t_test([_mean(v.values()) for v in other.values()], [_mean(v.values()) for v in base.values()])
    # the same runs as matched pairs, one per seed that both have
    runs_paired = paired_t_test([_mean(other[s].values()) for s in seeds], [_mean(base[s].values()) for s in seeds])
    return {"seeds": seeds, "seed_averaged": averaged, "pooled": pooled, "runs": runs, "runs_paired": runs_paired}


def method_stats(values: dict) -> dict:
    """Mean over units per seed, then mean and sd of those over seeds."""
    per_seed = [_mean(v.values()) for v in values.values()]
    return {"seeds": list(values), "per_seed": per_seed, "mean": _mean(per_seed),
            "sd_over_seeds": float(np.nanstd(per_seed, ddof=1)) if len(per_seed) > 1 else float("nan"),
            "n_units": len(next(iter(values.values()), {}))}


def curve_points(results: dict, method: str) -> dict:
    """{difficulty: {'iterations': [...], 'minutes': [...], 'dsc': [[per seed] per point]}} of a method."""
    out = {}
    for difficulty in DIFFICULTIES:
        epochs = sorted(set.intersection(*(set(r["curve"]) for r in results[method].values())))
        values, minutes = [], []
        for e in epochs:
            values.append([_mean(t["dsc"] for t in r["curve"][e]["tumours"]
                                 if difficulty == "all" or t["difficulty"] == difficulty)
                           for r in results[method].values()])
            minutes.append([r["minutes_at_epoch"].get(e, float("nan")) for r in results[method].values()])
        out[difficulty] = {"epochs": epochs, "dsc": values, "minutes": minutes}
    return out


def teacher_vs_student(results: dict, baseline: str) -> dict:
    """Per CMEDL method, final checkpoint, per-tumour DSC (mean over tumours, per seed) of its teacher on pMRI, its
    student on CT and the baseline's student of the same seed: the paper's premise is teacher > student."""
    out = {}
    for method, seeds in results.items():
        with_teacher = sorted(s for s, r in seeds.items() if "teacher_final" in r)
        if not with_teacher:
            continue
        out[method] = {"seeds": with_teacher}
        for difficulty in DIFFICULTIES:
            def per_seed(rows_of):
                return [_mean(t["dsc"] for t in rows_of(s)["tumours"]
                              if difficulty == "all" or t["difficulty"] == difficulty) for s in with_teacher]
            teacher = per_seed(lambda s: seeds[s]["teacher_final"])
            student = per_seed(lambda s: seeds[s]["final"])
            base = per_seed(lambda s: results[baseline][s]["final"] if s in results[baseline] else {"tumours": []})
            out[method][difficulty] = {"teacher": teacher, "student": student, f"{baseline} student": base}
            if all("pmri_contrast" in seeds[s] for s in with_teacher):  # does the pMRI show the tumours?
                for image in ("pMRI", "CT"):
                    out[method][difficulty][f"{image} tumour AUC"] = [
                        seeds[s]["pmri_contrast"][difficulty][image] for s in with_teacher]
    return out


def pmri_contrast(labels: Path, images: Path, teacher_folder: Path, metadata_path: Path):
    """Mean tumour-vs-surroundings AUC per kind of tumour in the pMRI the teacher segmented and in the CT
    (``nnunet_cmedl tumour-contrast``), or None where the pMRI is not kept (the paired-MRI oracle)."""
    from nnunet_cmedl.evaluation import tumour_contrast
    pmri = teacher_folder / "pmri_and_teacher"
    if not pmri.is_dir():
        return None
    try:
        rows = tumour_contrast.measure(labels, images, {"pMRI": pmri}, phantom_metadata=metadata_path)
    except UserInputError as e:  # e.g. a pMRI folder left incomplete: the benchmark goes on without the AUCs
        print(f"warning: {pmri}: no tumour AUCs ({e})", file=sys.stderr)
        return None
    return {d: {image: _mean(r[f"{image}_auc"] for r in rows if d == "all" or r["difficulty"] == d)
                for image in ("pMRI", "CT")} for d in DIFFICULTIES}


# ------------------------------------------------------------------------------------------------ evaluation
def evaluate(runs, data, workdir: Path, device: str, baseline: str, budget_name: str, train_seconds: dict,
             command: str, curve_epochs=None) -> dict:
    from tqdm import tqdm
    from nnunet_cmedl.training.benchmark_trainers import BUDGETS
    metadata = per_tumour.load_metadata(data.raw_folder / "phantom_metadata.json")
    labels, images = data.raw_folder / "labelsTs", data.raw_folder / "imagesTs"
    results = defaultdict(dict)  # method -> seed -> {'final', 'curve', 'minutes_at_epoch', 'log'}
    jobs = [(run, epoch, ck) for run in runs for epoch, ck in checkpoints(run, workdir, curve_epochs)]
    for run, epoch, ck in tqdm(jobs, desc="test predictions (runs x checkpoints)", unit="checkpoint"):
        out = prediction_folder(workdir, run, ck)
        # the final checkpoint, loaded once: the student's fingerprint, the training log and the teacher
        final_checkpoint = load_checkpoint(run.folder / ck) if ck == "checkpoint_final.pth" else None
        evaluated = evaluate_prediction(labels, predict_checkpoint(run, ck, images, out, device, final_checkpoint),
                                        metadata, run.name)
        entry = results[run.name].setdefault(run.seed, {"curve": {}})
        entry["curve"][epoch] = evaluated
        if final_checkpoint is not None:
            entry["final"] = evaluated
            log = final_checkpoint["logging"]
            # wall-clock on an otherwise idle machine, estimated as epochs x the run's fastest epoch (training and
            # nnU-Net's validation): runs that shared the CPU with other work are not penalised for it
            starts, ends = log["epoch_start_timestamps"], log["epoch_end_timestamps"]
            fastest = min(e - s for s, e in zip(starts, ends))
            entry["minutes_at_epoch"] = {e + 1: (e + 1) * fastest / 60 for e in range(len(ends))}
            entry["measured_minutes"] = (ends[-1] - starts[0]) / 60
            entry["fastest_epoch_seconds"] = fastest
            entry["log"] = {k: log.get(k) for k in ("mean_fg_dice", "ema_fg_dice", "cmedl_teacher_pseudo_dice_pmri",
                                                    "train_losses", "val_losses")}
            teacher = predict_teacher_on_pmri(run, images, workdir, device, final_checkpoint)
            if teacher is not None:
                entry["teacher_final"] = evaluate_prediction(labels, teacher, metadata, run.name + " teacher")
                contrast = pmri_contrast(labels, images, teacher, data.raw_folder / "phantom_metadata.json")
                if contrast is not None:
                    entry["pmri_contrast"] = contrast
    header = {"budget": budget_name, "configuration": data.configuration, "dataset": data.dataset_name,
              "device": device, "command": command, "baseline": baseline,
              "iterations_per_epoch": BUDGETS[runs[0].trainer.split("_")[-2]]["num_iterations_per_epoch"],
              "runs": [{"method": r.name, "seed": r.seed, "fold": r.fold, "trainer": r.trainer,
                        "folder": str(r.folder)} for r in runs],
              "train_seconds_this_invocation": train_seconds}
    summary = summarise(results, header)
    summary["figures"] = plot_all(summary, workdir)
    return summary


def method_table(values: dict, baseline: str) -> dict:
    """{method: statistics} of one metric: ``method_stats`` of each method's {seed: {unit: value}} and, for every
    method but the baseline, ``paired_tests`` against the baseline."""
    return {m: {**method_stats(v), **({} if m == baseline else {"vs_baseline": paired_tests(values[baseline], v)})}
            for m, v in values.items()}


def unit_tables(results: dict, baseline: str) -> dict:
    """The summary's 'tumours' and 'cases' statistics from each run's final per-unit rows
    (``results[method][seed]['final']``)."""
    out = {"tumours": {}, "cases": {}}
    for metric in per_tumour.PER_TUMOUR_METRICS:
        for difficulty in DIFFICULTIES:
            out["tumours"].setdefault(difficulty, {})[metric] = method_table(
                {m: unit_values(results, m, "tumours", difficulty, metric) for m in results}, baseline)
    for metric in CASE_METRICS:
        out["cases"][metric] = method_table({m: unit_values(results, m, "cases", "all", metric) for m in results},
                                            baseline)
    out["n_tumours"] = {d: out["tumours"][d]["dsc"][baseline]["n_units"] for d in DIFFICULTIES}
    return out


def summarise(results: dict, header: dict) -> dict:
    """The benchmark's summary (without figures) of evaluated runs: ``results[method][seed]`` holds 'final' and
    'curve' (per-case and per-tumour rows), 'minutes_at_epoch', 'measured_minutes', 'fastest_epoch_seconds', 'log'
    and, for a run with a teacher, 'teacher_final'. ``header``: budget, configuration, dataset, device, command,
    baseline, iterations_per_epoch, runs, train_seconds_this_invocation. The final rows are kept ('final_rows'), so
    that summaries of other seeds can be merged with tests over tumours (``nnunet_cmedl benchmark-merge``)."""
    baseline, methods = header["baseline"], list(results)
    return {**header,
               "n_test_cases": len(next(iter(results[baseline].values()))["final"]["cases"]),
               "curves": {m: curve_points(results, m) for m in methods},
               "minutes_per_run": {m: _mean(max(r["minutes_at_epoch"].values()) for r in results[m].values())
                                   for m in methods},
               "measured_minutes_per_run": {m: _mean(r["measured_minutes"] for r in results[m].values())
                                            for m in methods},
               "fastest_epoch_seconds": {m: _mean(r["fastest_epoch_seconds"] for r in results[m].values())
                                         for m in methods},
               "validation": {m: {s: r["log"] for s, r in results[m].items()} for m in methods},
               **unit_tables(results, baseline),
               "teacher_on_pmri": teacher_vs_student(results, baseline),
               "final_rows": {m: {s: {k: r["final"][k] for k in ("cases", "tumours")} for s, r in results[m].items()}
                              for m in methods}}


# ------------------------------------------------------------------------------------------------ figures, tables
def plot_all(summary: dict, workdir: Path) -> dict:
    with plotting.default_style():
        return _plot_all(summary, workdir, plotting.colours())


def _plot_all(summary: dict, workdir: Path, colours: list) -> dict:
    figures = {}
    for x_axis in ("iterations", "minutes"):
        fig, axes = plotting.subplots(1, 3, figsize=(16, 4.5), sharey=True)
        for ax, difficulty in zip(axes, DIFFICULTIES):
            for i, (method, curves) in enumerate(summary["curves"].items()):
                c = curves[difficulty]
                if not c["epochs"]:
                    continue
                dsc = np.array(c["dsc"], dtype=float)
                x = (np.array(c["epochs"]) * summary["iterations_per_epoch"] if x_axis == "iterations"
                     else np.nanmean(np.array(c["minutes"], dtype=float), axis=1))
                colour = colours[i % len(colours)]
                ax.plot(x, np.nanmean(dsc, axis=1), "-o", ms=3, color=colour,
                        label=f"{method} ({dsc.shape[1]} seed{'s' if dsc.shape[1] > 1 else ''})")
                if dsc.shape[1] > 1:
                    ax.fill_between(x, np.nanmin(dsc, axis=1), np.nanmax(dsc, axis=1), color=colour, alpha=0.15)
            ax.set_title(f"{difficulty} tumours (n={summary['n_tumours'][difficulty]})")
            ax.set_xlabel("training iterations" if x_axis == "iterations"
                          else "training minutes (epochs x fastest epoch, incl. nnU-Net's validation)")
            ax.grid(alpha=0.3)
        axes[0].set_ylabel("test DSC per tumour (mean; band: min-max over seeds)")
        axes[-1].legend(fontsize=8, loc="upper left")
        fig.suptitle(f"Learning curves on the test set ({summary['budget']} budget, {summary['configuration']})")
        path = workdir / f"learning_curves_{x_axis}.png"
        plotting.save_figure(fig, path)
        figures[f"learning_curves_{x_axis}"] = str(path)

    fig, ax = plotting.subplots(figsize=(8, 4.5))
    for i, (method, seeds) in enumerate(summary["validation"].items()):
        colour = colours[i % len(colours)]
        for j, (seed, log) in enumerate(seeds.items()):
            ax.plot(log["mean_fg_dice"], color=colour, alpha=0.8, lw=1,
                    label=f"{method}: student on CT" if j == 0 else None)
            teacher = log.get("cmedl_teacher_pseudo_dice_pmri")
            if teacher:
                ax.plot(teacher, "--", color=colour, alpha=0.8, lw=1,
                        label=f"{method}: teacher on pMRI" if j == 0 else None)
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation pseudo-Dice (nnU-Net's, per epoch)")
    ax.set_title("Teacher on pMRI vs student on CT (fold-0 validation; one line per seed)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    path = workdir / "teacher_vs_student.png"
    plotting.save_figure(fig, path)
    figures["teacher_vs_student"] = str(path)
    return figures


def _cell(stats: dict) -> str:
    return f"{fmt(stats['mean'])} ± {fmt(stats['sd_over_seeds'])}"


def _p(stats: dict, how: str) -> str:
    test = stats.get("vs_baseline", {}).get(how)
    if not test:
        return ""
    p = test["p_value"]
    n = test["n"] if "n" in test else f"{test['n_a']}+{test['n_b']} runs"
    return f"{test['mean_difference']:+.3f} (p={'n/a' if p is None or math.isnan(p) else fmt(p, 4)}, n={n})"


def per_seed_differences(summary: dict):
    """(seeds, rows): per difficulty, the baseline's final per-tumour DSC per seed, and for every other method
    'Δ method' with its difference to the baseline at the same seed (nan where either lacks the seed); the last cell
    of each row is the mean over the seeds it has."""
    baseline = summary["baseline"]
    seeds = sorted({s for m in summary["tumours"]["all"]["dsc"].values() for s in m.get("seeds", [])})
    rows = []
    for difficulty in DIFFICULTIES:
        entry = summary["tumours"][difficulty]["dsc"]
        base = dict(zip(entry[baseline].get("seeds", []), entry[baseline]["per_seed"]))
        for method, stats in entry.items():
            own = dict(zip(stats.get("seeds", []), stats["per_seed"]))
            cells = [own[s] - (0.0 if method == baseline else base[s]) if s in own and s in base else float("nan")
                     for s in seeds]
            rows.append((difficulty, method if method == baseline else f"Δ {method}", cells + [_mean(cells)]))
    return seeds, rows


def tables(summary: dict) -> str:
    baseline = summary["baseline"]
    headers = ["tumours", "method", "DSC", "sDSC 2mm", "HD95 mm", "recall",
               f"ΔDSC vs {baseline}, seed-averaged", "ΔDSC pooled (tumour x seed)", "ΔDSC runs (Welch)",
               "ΔDSC runs paired by seed (t)"]
    rows = []
    for difficulty in DIFFICULTIES:
        entry = summary["tumours"][difficulty]
        for method in entry["dsc"]:
            rows.append([f"{difficulty} (n={summary['n_tumours'][difficulty]})", method,
                         *(_cell(entry[k][method]) for k in per_tumour.PER_TUMOUR_METRICS),
                         _p(entry["dsc"][method], "seed_averaged"), _p(entry["dsc"][method], "pooled"),
                         _p(entry["dsc"][method], "runs"), _p(entry["dsc"][method], "runs_paired")])
    out = format_table(headers, rows, "Per tumour at the final checkpoint (mean over tumours, then mean ± sd over "
                                      "seeds; neighbourhood 10 mm; paired two-sided Wilcoxon over tumours; over runs, "
                                      "Welch and a paired t-test of the matched seeds)")
    if summary.get("tests_over_units") is False:
        out += ("\n(merged from summaries without per-tumour rows: only the tests over runs, Welch and paired by seed; "
                "the tests over tumours and cases need every summary's final_rows)")
    headers = ["method", "DSC", "sDSC 2mm", "HD95 mm", f"ΔDSC vs {baseline}, seed-averaged", "ΔDSC pooled",
               "ΔDSC runs (Welch)", "ΔDSC runs paired by seed (t)", "train min/run*"]
    rows = [[m, *(_cell(summary["cases"][k][m]) for k in CASE_METRICS),
             *(_p(summary["cases"]["dsc"][m], how) for how in ("seed_averaged", "pooled", "runs", "runs_paired")),
             fmt(summary["minutes_per_run"][m], 1)]
            for m in summary["cases"]["dsc"]]
    out += "\n\n" + format_table(headers, rows, f"Per case (n={summary['n_test_cases']} test cases)")
    out += ("\n* epochs x the run's fastest epoch (an idle machine's time; as measured, with whatever else ran: "
            + ", ".join(f"{m} {fmt(v, 1)}" for m, v in summary["measured_minutes_per_run"].items()) + " min)")
    headers = ["method", "tumours", *(str(e * summary["iterations_per_epoch"]) for e in
                                      next(iter(summary["curves"].values()))["hard"]["epochs"])]
    rows = []
    for method, curves in summary["curves"].items():
        for difficulty in DIFFICULTIES:
            rows.append([method, difficulty, *(fmt(_mean(v)) for v in curves[difficulty]["dsc"])])
    out += "\n\n" + format_table(headers, rows, "Learning curves: test DSC per tumour (mean over seeds) vs iterations")
    seeds, rows = per_seed_differences(summary)
    if len(seeds) > 1:
        rows = [[d, m, *(("" if not math.isfinite(c) else fmt(c) if m == baseline else f"{c:+.3f}")
                         for c in cells)] for d, m, cells in rows]
        out += "\n\n" + format_table(["tumours", "method", *(f"seed {s}" for s in seeds), "mean"], rows,
                                     f"Per seed: final per-tumour DSC of {baseline}, and each method's difference "
                                     f"to it at the same seed (matched pairs)")
    teachers = summary.get("teacher_on_pmri") or {}
    if teachers:
        headers = ["method", "tumours", "seeds", "teacher on pMRI", "its student on CT", f"{baseline} (same seeds)",
                   "seeds teacher > student"]
        rows = []
        for method, entry in teachers.items():
            for difficulty in DIFFICULTIES:
                t, st, b = (entry[difficulty][k] for k in ("teacher", "student", f"{baseline} student"))
                auc = entry[difficulty].get("pMRI tumour AUC")
                rows.append([method, difficulty, " ".join(map(str, entry["seeds"])), fmt(_mean(t)), fmt(_mean(st)),
                             fmt(_mean(b)), f"{sum(x > y for x, y in zip(t, st))}/{len(t)}",
                             "" if not auc else f"{fmt(_mean(auc))} ({fmt(_mean(entry[difficulty]['CT tumour AUC']))})"])
        out += "\n\n" + format_table(headers + ["tumour AUC in pMRI (CT)"], rows,
                                     "The paper's premise at the final checkpoint: the teacher on the pMRI of its own "
                                     "generator vs the student on CT (test DSC per tumour); how well the pMRI and the "
                                     "CT set the tumours apart from their surroundings (nnunet_cmedl tumour-contrast, "
                                     "AUC 0.5: invisible, 1: fully separated)")
    return out


def write_summary(summary: dict, workdir: Path) -> None:
    with atomic_file(workdir / "benchmark_summary.json") as f:
        json.dump(summary, f, indent=1, default=float)
    text = tables(summary)
    with atomic_file(workdir / "benchmark_summary.md") as f:
        f.write(f"# Benchmark ({summary['budget']} budget, {summary['configuration']}, {summary['device']})\n\n"
                f"Command: `{summary['command']}`\n\n```\n{text}\n```\n\n"
                + "".join(f"![{k}]({Path(v).name})\n" for k, v in summary["figures"].items()))
    print(text)
