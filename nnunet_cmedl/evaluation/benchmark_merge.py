"""``nnunet_cmedl benchmark-merge``: one benchmark summary from several, e.g. seeds 3-6 trained in one session (or on
one machine) and seeds 7-9 in another, compared as if one benchmark had trained them all.

The summaries must come from the same benchmark setting (budget, configuration, dataset, baseline, iterations per
epoch, test cases). A method's seeds are gathered from every summary; a seed found in two summaries must have the
same results in both (a CPU run repeats bit for bit) and is counted once.

The statistics are computed again over all the seeds, with ``benchmark_report``'s code:
  - summaries that keep each run's final per-tumour and per-case rows (``final_rows``: every summary written by
    ``nnunet_cmedl benchmark`` since stop 31) give every test of the benchmark: over tumours (seed-averaged and
    pooled) and over runs (Welch; paired by seed);
  - otherwise (an older summary among them) only the tests whose unit is the run are possible, from each seed's
    mean: Welch and paired by seed; the tests over tumours are left out (the table shows them empty).
Learning curves (the epochs every summary has), the teacher-vs-student figures and validation logs are merged seed
by seed; minutes per run are each summary's mean weighted by the seeds taken from it (exact where the summaries
share no seed). The figures are drawn again in --output.
"""
import argparse
import json
import math
from pathlib import Path

from nnunet_cmedl.errors import UserInputError
from nnunet_cmedl.evaluation import benchmark_report
from nnunet_cmedl.evaluation.benchmark_report import DIFFICULTIES, CASE_METRICS
from nnunet_cmedl.evaluation.per_tumour import PER_TUMOUR_METRICS

SAME_SETTING = ("budget", "configuration", "dataset", "baseline", "iterations_per_epoch", "n_test_cases")
REQUIRED = SAME_SETTING + ("tumours", "cases", "curves", "n_tumours")


def load_summary(path) -> dict:
    path = Path(path)
    try:
        summary = json.loads(path.read_text())
    except OSError as e:
        raise UserInputError(f"{path}: cannot read it ({e.strerror or e})") from None
    except ValueError as e:
        raise UserInputError(f"{path}: not JSON ({e})") from None
    missing = [k for k in REQUIRED if not isinstance(summary, dict) or k not in summary]
    if missing:
        raise UserInputError(f"{path}: not a benchmark_summary.json of nnunet_cmedl benchmark (no "
                             f"{', '.join(missing)})")
    return summary


def _seeds(summary: dict, method: str) -> list:
    return summary["tumours"]["all"]["dsc"][method]["seeds"]


def _at_seed(summary: dict, method: str, seed, per_seed: list):
    """The value of ``seed`` in a list with one value per seed of ``method`` (in the order of its seeds)."""
    return per_seed[_seeds(summary, method).index(seed)]


def _same(x, y) -> bool:
    if x is None or y is None:
        return x is y
    return (math.isnan(x) and math.isnan(y)) or abs(x - y) <= 1e-9


def sources(summaries: dict) -> dict:
    """{method: {seed: path}}: which summary each method's seed is taken from (the first that has it); a seed with
    other results in a later summary is an error."""
    out = {}
    for path, summary in summaries.items():
        for method in summary["tumours"]["all"]["dsc"]:
            for seed in _seeds(summary, method):
                first = out.setdefault(method, {}).setdefault(seed, path)
                if first != path and not all(
                        _same(*(_at_seed(s, method, seed, s["tumours"][d][m][method]["per_seed"])
                                for s in (summaries[first], summary)))
                        for d in DIFFICULTIES for m in PER_TUMOUR_METRICS):
                    raise UserInputError(f"{path}: {method} seed {seed} has other results than in {first}; a seed "
                                         f"may be in two summaries only as the same run")
    return out


def check_setting(summaries: dict) -> None:
    (first_path, first), *rest = summaries.items()
    for path, summary in rest:
        for key in SAME_SETTING:
            if summary[key] != first[key]:
                raise UserInputError(f"{path}: {key} is {summary[key]!r}, {first_path} has {first[key]!r}; only "
                                     f"summaries of the same benchmark setting can be merged")


def _run_level_table(summaries: dict, where: dict, section, n_units: int, baseline: str) -> dict:
    """``benchmark_report.method_table`` over each seed's mean (one unit per run): its run-level tests are the
    benchmark's; the tests over units are dropped (the units are not in the summaries)."""
    values = {m: {seed: {"run mean": _at_seed(summaries[path], m, seed, section(summaries[path])[m]["per_seed"])}
                  for seed, path in seeds.items()} for m, seeds in where.items()}
    table = benchmark_report.method_table(values, baseline)
    for stats in table.values():
        stats["n_units"] = n_units
        for how in ("seed_averaged", "pooled"):
            stats.get("vs_baseline", {}).pop(how, None)
    return table


def final_rows(summaries: dict, where: dict):
    """{method: {seed: rows}} of the merged seeds, or None where a summary lacks them (written before stop 31)."""
    if not all("final_rows" in s for s in summaries.values()):
        return None
    return {m: {str(seed): summaries[p]["final_rows"][m][str(seed)] for seed, p in seeds.items()}
            for m, seeds in where.items()}


def unit_tables(summaries: dict, where: dict, baseline: str, rows) -> dict:
    if rows is not None:
        results = {m: {seed: {"final": rows[m][str(seed)]} for seed in seeds} for m, seeds in where.items()}
        return {**benchmark_report.unit_tables(results, baseline), "tests_over_units": True}
    first = next(iter(summaries.values()))
    return {"tumours": {d: {metric: _run_level_table(summaries, where, lambda s: s["tumours"][d][metric],
                                                    first["n_tumours"][d], baseline)
                           for metric in PER_TUMOUR_METRICS} for d in DIFFICULTIES},
           "cases": {metric: _run_level_table(summaries, where, lambda s: s["cases"][metric], first["n_test_cases"],
                                              baseline) for metric in CASE_METRICS},
           "n_tumours": first["n_tumours"], "tests_over_units": False}


def merged_curves(summaries: dict, where: dict) -> dict:
    """Per method and difficulty, one value per seed at the epochs that every summary has for every method: one set
    of epochs for all methods, as the tables and figures need (stop 34: a summary with checkpoints at epochs 20 and 30
    beside one with 10, 20, 30 made the table of curves fail)."""
    common = set.intersection(*(set(curve[d]["epochs"]) for summary in summaries.values()
                                for curve in summary["curves"].values() for d in DIFFICULTIES))
    out = {}
    for method, seeds in where.items():
        out[method] = {}
        for difficulty in DIFFICULTIES:
            curves = {p: summaries[p]["curves"][method][difficulty] for p in set(seeds.values())}
            epochs = sorted(common)
            entry = {"epochs": epochs, "dsc": [], "minutes": []}
            for e in epochs:
                for key in ("dsc", "minutes"):
                    entry[key].append([_at_seed(summaries[p], method, seed,
                                                curves[p][key][curves[p]["epochs"].index(e)])
                                       for seed, p in seeds.items()])
            out[method][difficulty] = entry
    return out


def merged_teachers(summaries: dict, where: dict) -> dict:
    out = {}
    for method, seeds in where.items():
        entry = {"seeds": []}
        for seed, path in seeds.items():
            teacher = summaries[path].get("teacher_on_pmri", {}).get(method)
            if not teacher or seed not in teacher["seeds"]:
                continue
            entry["seeds"].append(seed)
            i = teacher["seeds"].index(seed)
            for difficulty in DIFFICULTIES:
                for key, values in teacher[difficulty].items():
                    entry.setdefault(difficulty, {}).setdefault(key, []).append(values[i])
        if entry["seeds"]:  # a value that some summaries do not have (older ones: the tumour AUCs) is left out
            n = len(entry["seeds"])
            out[method] = {"seeds": entry["seeds"], **{d: {k: v for k, v in entry[d].items() if len(v) == n}
                                                       for d in DIFFICULTIES}}
    return out


def _mean_over_seeds(summaries: dict, where: dict, key: str) -> dict:
    out = {}
    for method, seeds in where.items():
        values = [summaries[p].get(key, {}).get(method) for p in seeds.values()]
        values = [v for v in values if v is not None]
        out[method] = sum(values) / len(values) if values else float("nan")
    return out


def merge(paths) -> dict:
    """The merged summary (without figures) of the benchmark summaries at ``paths``."""
    summaries = {str(p): load_summary(p) for p in paths}
    if len(summaries) < 2:
        raise UserInputError("benchmark-merge needs two or more different summaries")
    check_setting(summaries)
    first = next(iter(summaries.values()))
    baseline = first["baseline"]
    where = sources(summaries)
    for method, seeds in where.items():
        where[method] = dict(sorted(seeds.items()))
    where = {baseline: where.pop(baseline), **where}
    runs = {(r["method"], r["seed"]): r for s in summaries.values() for r in s.get("runs", [])}
    rows = final_rows(summaries, where)
    return {**{k: first[k] for k in SAME_SETTING},
            "device": ", ".join(sorted({s.get("device", "?") for s in summaries.values()})),
            "command": "nnunet_cmedl benchmark-merge " + " ".join(summaries),
            "merged_from": [{"summary": p, "command": s.get("command", "")} for p, s in summaries.items()],
            "runs": [runs[k] for k in sorted(runs) if k[0] in where and k[1] in where[k[0]]],
            "curves": merged_curves(summaries, where),
            "minutes_per_run": _mean_over_seeds(summaries, where, "minutes_per_run"),
            "measured_minutes_per_run": _mean_over_seeds(summaries, where, "measured_minutes_per_run"),
            "fastest_epoch_seconds": _mean_over_seeds(summaries, where, "fastest_epoch_seconds"),
            "validation": {m: {str(seed): summaries[p]["validation"][m][str(seed)] for seed, p in seeds.items()
                               if str(seed) in summaries[p].get("validation", {}).get(m, {})}
                           for m, seeds in where.items()},
            **unit_tables(summaries, where, baseline, rows),
            "teacher_on_pmri": merged_teachers(summaries, where),
            **({"final_rows": rows} if rows is not None else {})}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nnunet_cmedl benchmark-merge", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("summaries", nargs="+", help="benchmark_summary.json files (or the workdirs that hold them)")
    p.add_argument("-o", "--output", required=True,
                   help="folder for the merged benchmark_summary.json/.md and figures (created; an existing "
                        "benchmark summary there is replaced only with --overwrite)")
    p.add_argument("--overwrite", action="store_true", help="replace a merged summary already in --output")
    return p


def main(argv=None) -> int:
    a = build_parser().parse_args(argv)
    paths = [Path(s) / "benchmark_summary.json" if Path(s).is_dir() else Path(s) for s in a.summaries]
    output = Path(a.output)
    target = output / "benchmark_summary.json"
    if any(p.resolve() == target.resolve() for p in paths):
        raise UserInputError(f"{output}: holds one of the summaries to merge; write the merged one elsewhere")
    if target.exists() and not a.overwrite:
        raise UserInputError(f"{target}: exists; choose another --output or pass --overwrite")
    summary = merge(paths)
    output.mkdir(parents=True, exist_ok=True)
    summary["figures"] = benchmark_report.plot_all(summary, output)
    benchmark_report.write_summary(summary, output)
    return 0
