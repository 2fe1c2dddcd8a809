"""``nnunet_cmedl compare``: paired comparison of two or more methods (prediction folders or evaluation JSONs).

For every pair of methods (in the order given), every label and every metric (DSC, sDSC, HD95) it reports the
per-case paired differences (A - B), their mean, the two-sided Wilcoxon signed-rank p-value
(``scipy.stats.wilcoxon``) and which method is better (higher DSC / sDSC, lower HD95), as the CMEDL paper does.

Python API: ``compare_methods(ref_folder, {name: pred_folder_or_metrics_json_or_result_dict}, ...) -> dict``.
"""
from __future__ import annotations

import argparse
import itertools
import math
import os
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from mri_unpaired.atomic import exclusive_output
from nnunet_cmedl.errors import UserInputError
from nnunet_cmedl.evaluation.metrics import (HELP_DEFINITIONS, HIGHER_IS_BETTER, METRIC_TITLES, METRICS, _normalize_labels,
                                             definitions, evaluate_folders, label_key, load_case_groups)
from nnunet_cmedl.evaluation.tables import (fmt, format_table, nan_if_none, read_json, refuse_existing_outputs,
                                            strip_output_prefix, write_csv, write_json)

from nnunet_cmedl.evaluation.statistics import DEFAULT_ALPHA, MIN_N_FOR_TEST, paired_wilcoxon  # noqa: F401

COMPARISON_DEFINITIONS = {
    "difference": "per case: value of method A minus value of method B (cases present in both; a case where either "
                  "value is NaN, e.g. an undefined HD95, is left out of that metric's test and counted in "
                  "n_dropped_nan).",
    "wilcoxon": "scipy.stats.wilcoxon(a, b, zero_method='wilcox', alternative='two-sided', method='auto'): zero "
                "differences are dropped before ranking; scipy's 'auto' uses the exact null distribution for n <= 50 "
                "without tied or zero differences, an exhaustive (hence exact) permutation test for n <= 13 with "
                "ties or zeros, and the tie-corrected normal approximation otherwise.",
    "small_samples": f"with fewer than {MIN_N_FOR_TEST} non-zero differences scipy's p-value is reported unchanged "
                     "with a note: the smallest two-sided exact p-value with n non-zero differences is 2/2^n "
                     "(n=5: 0.0625; min_possible_p in the output), so such a test cannot reach p < 0.05. The same kind "
                     "of note is given whenever 2/2^n >= alpha (p < 0.001 needs at least 11 non-zero differences).",
    "no_test": "p_value is NaN (null in JSON) with the reason in 'note' when there is no paired case with both values "
               "defined or when every paired difference is zero (identical results).",
    "better": "the method with the higher mean DSC / sDSC or the lower mean HD95 over the paired cases (sign of "
              "mean_diff); 'tie' when mean_diff is 0. 'significant' = p_value < alpha.",
}


def _parse_method_specs(specs: Sequence[str]) -> Dict[str, str]:
    methods: Dict[str, str] = {}
    for s in specs:
        name, sep, path = s.partition("=")
        name, path = name.strip(), path.strip()
        if not sep or not name or not path:
            raise UserInputError(f"--pred {s!r}: expected NAME=FOLDER or NAME=metrics.json")
        if name in methods:
            raise UserInputError(f"--pred: the method name {name!r} is given twice")
        methods[name] = path
    return methods


def _normalize_result(name: str, res, src) -> dict:
    """Check an evaluation result (from a JSON file or evaluate_folders) and turn null metric values into NaN."""
    if not isinstance(res, dict) or not isinstance(res.get("per_case"), list) or "labels" not in res \
            or "tolerance_mm" not in res:
        raise UserInputError(f"{src}: not an evaluation result written by 'nnunet_cmedl evaluate' (method {name!r})")
    rows = []
    for r in res["per_case"]:
        try:
            row = dict(r)
            row["case"], row["label"] = str(r["case"]), str(r["label"])
            for m in METRICS:
                row[m] = nan_if_none(r[m])
        except (KeyError, TypeError, ValueError):
            raise UserInputError(f"{src}: malformed per_case entry {r!r} (method {name!r})") from None
        rows.append(row)
    res = dict(res)
    res["per_case"] = rows
    res["labels"] = [str(k) for k in res["labels"]]
    return res


def _load_evaluation_json(name: str, path) -> dict:
    return _normalize_result(name, read_json(path, "evaluation JSON"), path)


def _method_summary(name: str, source: str, kind: str, res: dict) -> dict:
    return {"source": source, "kind": kind, "ref_folder": res.get("inputs", {}).get("ref_folder"),
            "tolerance_mm": res["tolerance_mm"], "labels": res["labels"], "n_cases": len({r["case"] for r in res["per_case"]}),
            "aggregates": res.get("aggregates"), "per_case": res["per_case"]}


def compare_methods(ref_folder, methods: Dict[str, object], labels=None, tolerance_mm: Optional[float] = None,
                    file_ending: str = ".nii.gz", *, dataset_json=None, case_groups=None,
                    alpha: float = DEFAULT_ALPHA, allow_missing: bool = False, num_processes: int = 1) -> dict:
    """Paired comparison of ``methods`` ({name: prediction folder | evaluation JSON path | evaluate_folders dict}).

    tolerance_mm: None -> the tolerance of the given evaluation JSONs if they agree, else 2.0. Evaluation JSONs
    must have been computed at the same tolerance (else UserInputError).
    """
    if len(methods) < 2:
        raise UserInputError("--pred: give at least two methods (NAME=FOLDER NAME2=FOLDER2)")
    if not (0 < float(alpha) < 1):
        raise UserInputError(f"--alpha: must be between 0 and 1, got {alpha}")
    wanted = _normalize_labels(labels)
    wanted_keys = [label_key(lab) for lab in wanted] if wanted is not None else None

    loaded: Dict[str, dict] = {}
    summaries: Dict[str, dict] = {}
    notes: List[str] = []
    pending = {}
    for name, spec in methods.items():
        if isinstance(spec, dict):
            loaded[name] = _normalize_result(name, spec, f"method {name!r}")
            summaries[name] = ("given as a result dict", "result")
        elif str(spec).endswith(".json") and Path(spec).is_file():
            loaded[name] = _load_evaluation_json(name, spec)
            summaries[name] = (os.path.abspath(spec), "evaluation_json")
        elif Path(spec).is_dir():
            pending[name] = spec
        else:
            raise UserInputError(f"{spec}: method {name!r} is neither a prediction folder nor an evaluation JSON file")

    tols = {n: float(r["tolerance_mm"]) for n, r in loaded.items()}
    if tolerance_mm is None:
        distinct = sorted(set(tols.values()))
        if len(distinct) > 1:
            raise UserInputError("the evaluation JSONs use different surface Dice tolerances "
                                 f"({', '.join(f'{n}: {t:g} mm' for n, t in tols.items())}); re-evaluate at one tolerance")
        tolerance_mm = distinct[0] if distinct else 2.0
    tolerance_mm = float(tolerance_mm)
    for n, t in tols.items():
        if abs(t - tolerance_mm) > 1e-9:
            raise UserInputError(f"{summaries[n][0]}: evaluated at a surface Dice tolerance of {t:g} mm, not "
                                 f"{tolerance_mm:g} mm (method {n!r}); re-evaluate or pass --tolerance-mm {t:g}")

    if pending and ref_folder is None:
        raise UserInputError("-ref: a reference folder is needed to evaluate prediction folders")
    for name, folder in pending.items():
        loaded[name] = evaluate_folders(ref_folder, folder, labels=wanted, tolerance_mm=tolerance_mm,
                                        file_ending=file_ending, dataset_json=dataset_json,
                                        allow_missing=allow_missing, num_processes=num_processes)
        summaries[name] = (os.path.abspath(folder), "prediction_folder")
    names = list(methods)  # keep the user's order
    if ref_folder is not None:
        ref_abs = os.path.abspath(ref_folder)
        for n in names:
            r = loaded[n].get("inputs", {}).get("ref_folder")
            if r is not None and os.path.abspath(r) != ref_abs:
                notes.append(f"method {n!r} was evaluated against {r}, not {ref_abs}")

    # labels compared: the requested ones (each method must have them) or those common to all methods
    if wanted_keys is not None:
        for n in names:
            miss = [k for k in wanted_keys if k not in loaded[n]["labels"]]
            if miss:
                raise UserInputError(f"{summaries[n][0]}: method {n!r} has no results for labels {', '.join(miss)}")
        keys = wanted_keys
    else:
        keys = [k for k in loaded[names[0]]["labels"] if all(k in loaded[n]["labels"] for n in names[1:])]
        if not keys:
            raise UserInputError("the methods have no label in common: " +
                                 "; ".join(f"{n}: {', '.join(loaded[n]['labels'])}" for n in names))
        dropped = sorted({k for n in names for k in loaded[n]["labels"]} - set(keys))
        if dropped:
            notes.append(f"labels not evaluated for every method and therefore not compared: {', '.join(dropped)}")
    label_names = {}
    for n in names:  # the first real name wins over the placeholder 'label_K' of a method evaluated without names
        for k, v in loaded[n].get("label_names", {}).items():
            if k not in label_names or (label_names[k] == f"label_{k}" and v != label_names[k]):
                label_names[k] = v
    label_names = {k: label_names.get(k, f"label_{k}") for k in keys}

    groups = load_case_groups(case_groups) if case_groups is not None else None
    subsets = ["all"] + (sorted(set(groups.values())) if groups else [])

    index = {n: {(r["case"], r["label"]): r for r in loaded[n]["per_case"]} for n in names}
    paired_rows, tests = [], []
    for a, b in itertools.combinations(names, 2):
        cases_a = {c for c, _ in index[a]}
        cases_b = {c for c, _ in index[b]}
        common = sorted(cases_a & cases_b)
        only = sorted(cases_a ^ cases_b)
        if not common:
            raise UserInputError(f"methods {a!r} and {b!r} have no case in common")
        if only:
            notes.append(f"{a} vs {b}: {len(only)} case(s) evaluated for only one method and left out: "
                         f"{', '.join(only[:10])}{' ...' if len(only) > 10 else ''}")
        for k in keys:
            per_case = []
            for c in common:
                ra, rb = index[a].get((c, k)), index[b].get((c, k))
                if ra is None or rb is None:
                    continue
                row = {"method_a": a, "method_b": b, "label": k, "label_name": label_names[k], "case": c,
                       "group": groups.get(c) if groups else None}
                for m in METRICS:
                    va, vb = float(ra[m]), float(rb[m])
                    row[f"{m}_a"], row[f"{m}_b"], row[f"{m}_diff"] = va, vb, va - vb
                per_case.append(row)
            paired_rows += per_case
            for subset in subsets:
                sel = per_case if subset == "all" else [r for r in per_case if r["group"] == subset]
                for m in METRICS:
                    tests.append(_test_row(a, b, subset, k, label_names[k], m, sel, alpha))

    method_info = {n: _method_summary(n, summaries[n][0], summaries[n][1], loaded[n]) for n in names}
    return {
        "tool": "nnunet_cmedl compare",
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "tolerance_mm": tolerance_mm,
        "alpha": float(alpha),
        "labels": keys,
        "label_names": label_names,
        "methods_order": names,
        "definitions": {**definitions(tolerance_mm), **COMPARISON_DEFINITIONS},
        "inputs": {"ref_folder": os.path.abspath(ref_folder) if ref_folder is not None else None,
                   "methods": {n: {"source": method_info[n]["source"], "kind": method_info[n]["kind"]} for n in names},
                   "file_ending": file_ending,
                   "dataset_json": os.path.abspath(dataset_json) if dataset_json is not None else None,
                   "case_groups": (os.path.abspath(case_groups) if isinstance(case_groups, (str, os.PathLike))
                                   else ("given as a mapping" if case_groups is not None else None)),
                   "labels_requested": wanted_keys},
        "notes": notes,
        "methods": method_info,
        "tests": tests,
        "paired_per_case": paired_rows,
    }


def _test_row(a, b, subset, k, label_name, m, sel, alpha) -> dict:
    va = np.array([r[f"{m}_a"] for r in sel], dtype=np.float64)
    vb = np.array([r[f"{m}_b"] for r in sel], dtype=np.float64)
    ok = ~(np.isnan(va) | np.isnan(vb))
    va, vb = va[ok], vb[ok]
    d = va - vb
    hib = HIGHER_IS_BETTER[m]
    n = int(d.size)
    nan = float("nan")
    mean_diff = float(d.mean()) if n else nan
    row = {"method_a": a, "method_b": b, "subset": subset, "label": k, "label_name": label_name, "metric": m,
           "higher_is_better": hib, "n": n, "n_dropped_nan": int((~ok).sum()),
           "mean_a": float(va.mean()) if n else nan, "mean_b": float(vb.mean()) if n else nan,
           "mean_diff": mean_diff, "median_diff": float(np.median(d)) if n else nan,
           "sd_diff": float(d.std(ddof=1)) if n >= 2 else nan,
           "a_better_cases": int(((d > 0) if hib else (d < 0)).sum()),
           "b_better_cases": int(((d < 0) if hib else (d > 0)).sum()),
           "tied_cases": int((d == 0).sum())}
    row.update(paired_wilcoxon(va, vb, alpha))
    if math.isnan(mean_diff):
        better = None
    elif mean_diff == 0:
        better = "tie"
    else:
        better = a if (mean_diff > 0) == hib else b
    row["better"] = better
    row["significant"] = bool(row["p_value"] < alpha) if not math.isnan(row["p_value"]) else False
    row["alpha"] = float(alpha)
    return row


PAIRED_COLUMNS = ["method_a", "method_b", "label", "label_name", "case", "group"] + \
    [f"{m}_{s}" for m in METRICS for s in ("a", "b", "diff")]
TEST_COLUMNS = ["method_a", "method_b", "subset", "label", "label_name", "metric", "higher_is_better", "n",
                "n_dropped_nan", "n_nonzero", "mean_a", "mean_b", "mean_diff", "median_diff", "sd_diff",
                "a_better_cases", "b_better_cases", "tied_cases", "wilcoxon_statistic", "p_value", "min_possible_p",
                "alpha", "significant", "better", "note"]


def tests_table(result: dict) -> str:
    headers = ["A vs B", "subset", "label", "metric", "n", "mean A", "mean B", "A - B", "p (Wilcoxon)",
               f"p<{result['alpha']:g}", "better"]
    rows = []
    for t in result["tests"]:
        rows.append([f"{t['method_a']} vs {t['method_b']}", t["subset"], f"{t['label']} {t['label_name']}",
                     METRIC_TITLES[t["metric"]], t["n"], fmt(t["mean_a"]), fmt(t["mean_b"]), fmt(t["mean_diff"]),
                     fmt(t["p_value"], 4) + (" *" if t["note"] else ""), "yes" if t["significant"] else "no",
                     t["better"] or "-"])
    title = (f"paired comparison, surface Dice tolerance {result['tolerance_mm']:g} mm; two-sided Wilcoxon "
             "signed-rank; * = see the note in the JSON/CSV")
    return format_table(headers, rows, title)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="nnunet_cmedl compare",
        description="Paired comparison of two or more segmentation methods on the same reference cases. Each method "
                    "is a prediction folder (evaluated here) or an evaluation JSON from 'nnunet_cmedl evaluate'. For "
                    "every pair, label and metric (DSC, sDSC, HD95): per-case differences A - B, their mean, the "
                    "two-sided Wilcoxon signed-rank p-value (scipy.stats.wilcoxon) and the better method (higher "
                    "DSC/sDSC, lower HD95). Writes OUT_PREFIX.csv (per-case paired differences), "
                    "OUT_PREFIX_tests.csv (one row per pair, subset, label and metric) and OUT_PREFIX.json.",
        epilog=HELP_DEFINITIONS + "tests:\n"
               "  cases where a value is NaN for either method (undefined HD95) are left out of that metric's test;\n"
               "  zero differences are dropped (zero_method='wilcox'); no non-zero difference -> p = NaN with a note;\n"
               f"  fewer than {MIN_N_FOR_TEST} non-zero differences -> scipy's p with a note (the smallest possible p "
               "is 2/2^n,\n  so p < 0.05 needs n >= 6 and p < 0.001 needs n >= 11).\n"
               "example:\n  nnunet_cmedl compare -ref labelsTs --pred nnunet=pred_nnunet cmedl=pred_cmedl -o cmp",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-ref", "--ref-folder", default=None,
                   help="folder with the reference label images (needed unless every method is an evaluation JSON)")
    p.add_argument("--pred", nargs="+", required=True, metavar="NAME=PATH",
                   help="methods: NAME=prediction_folder or NAME=metrics.json (two or more)")
    p.add_argument("-o", "--output-prefix", default="cmedl_compare",
                   help="write OUT_PREFIX.csv, OUT_PREFIX_tests.csv and OUT_PREFIX.json (default: ./cmedl_compare)")
    p.add_argument("--tolerance-mm", type=float, default=None,
                   help="surface Dice tolerance in mm (default: that of the given evaluation JSONs, else 2)")
    p.add_argument("--labels", type=int, nargs="+", default=None,
                   help="labels to compare (default: --dataset-json's foreground labels, else all labels that every "
                        "method has)")
    p.add_argument("--dataset-json", default=None, help="nnU-Net dataset.json (label names, default labels)")
    p.add_argument("--file-ending", default=".nii.gz", help="file ending of the images (default: .nii.gz)")
    p.add_argument("--case-groups", default=None,
                   help="JSON {case_id: group} or {group: [case_id, ...]}: tests per group as well")
    p.add_argument("--alpha", type=float, default=DEFAULT_ALPHA,
                   help=f"significance level for the 'significant' column (default: {DEFAULT_ALPHA:g}, the CMEDL "
                        "paper's)")
    p.add_argument("--allow-missing", action="store_true", help="skip reference cases that a method did not predict")
    p.add_argument("-np", "--num-processes", type=int, default=1, help="worker processes (default: 1)")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    p.add_argument("-q", "--quiet", action="store_true", help="do not print the table")
    return p


def output_paths(prefix) -> tuple:
    prefix = strip_output_prefix(prefix)
    return Path(prefix + ".csv"), Path(prefix + "_tests.csv"), Path(prefix + ".json")


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    methods = _parse_method_specs(args.pred)
    paths = output_paths(args.output_prefix)
    with exclusive_output(paths[-1], "nnunet_cmedl compare"):
        return _compare(args, methods, paths)


def _compare(args, methods, paths) -> int:
    refuse_existing_outputs(paths, args.overwrite)
    if args.num_processes < 1:
        raise UserInputError(f"--num-processes: must be >= 1, got {args.num_processes}")
    result = compare_methods(args.ref_folder, methods, labels=args.labels, tolerance_mm=args.tolerance_mm,
                             file_ending=args.file_ending, dataset_json=args.dataset_json,
                             case_groups=args.case_groups, alpha=args.alpha, allow_missing=args.allow_missing,
                             num_processes=args.num_processes)
    csv_path, tests_path, json_path = paths
    result["outputs"] = {"paired_csv": str(csv_path.resolve()), "tests_csv": str(tests_path.resolve()),
                         "json": str(json_path.resolve())}
    write_csv(csv_path, PAIRED_COLUMNS, result["paired_per_case"], overwrite=args.overwrite)
    write_csv(tests_path, TEST_COLUMNS, result["tests"], overwrite=args.overwrite)
    write_json(json_path, result, overwrite=args.overwrite)
    for n in result["notes"]:
        print(f"note: {n}", file=sys.stderr)
    if not args.quiet:
        print(tests_table(result))
    print(f"wrote {csv_path}, {tests_path} and {json_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
