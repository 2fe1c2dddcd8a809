"""``nnunet_cmedl evaluate``: DSC, surface Dice and HD95 per case and label for a prediction folder.

Writes OUT_PREFIX.csv (one row per case and label) and OUT_PREFIX.json (per case, aggregates, definitions,
tolerance, inputs) and prints a summary table. The computation lives in ``nnunet_cmedl.evaluation.metrics``.
"""
import argparse
import sys
from pathlib import Path

from mri_unpaired.atomic import exclusive_output
from nnunet_cmedl.errors import UserInputError
from nnunet_cmedl.evaluation.metrics import (CSV_COLUMNS, HELP_DEFINITIONS, METRIC_TITLES, METRICS,
                                             evaluate_folders)
from nnunet_cmedl.evaluation.tables import (fmt, fmt_mean_sd, format_table, refuse_existing_outputs,
                                            strip_output_prefix, write_csv, write_json)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="nnunet_cmedl evaluate",
        description="DSC, surface Dice (sDSC) and HD95 per case and label of a prediction folder against a reference "
                    "folder (cases matched by file name). Writes OUT_PREFIX.csv (one row per case and label) and "
                    "OUT_PREFIX.json (per-case values, aggregates per label: mean ± sd, median, n, definitions, "
                    "tolerance, inputs) and prints a summary table.",
        epilog=HELP_DEFINITIONS + "spacing comes from the image headers (SimpleITK); reference and prediction must "
               "agree in size, spacing, origin and direction.\nexample:\n  nnunet_cmedl evaluate -ref "
               "nnUNet_raw/Dataset501_X/labelsTs -pred predictions/cmedl --dataset-json "
               "nnUNet_raw/Dataset501_X/dataset.json",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-ref", "--ref-folder", required=True, help="folder with the reference label images")
    p.add_argument("-pred", "--pred-folder", required=True, help="folder with the predicted label images")
    p.add_argument("-o", "--output-prefix", default=None,
                   help="write OUT_PREFIX.csv and OUT_PREFIX.json (default: PRED_FOLDER/cmedl_metrics)")
    p.add_argument("--tolerance-mm", type=float, default=2.0, help="surface Dice tolerance in mm (default: 2)")
    p.add_argument("--labels", type=int, nargs="+", default=None,
                   help="label values to evaluate (default: the foreground labels of --dataset-json if given, else "
                        "every nonzero value found in the references)")
    p.add_argument("--dataset-json", default=None,
                   help="nnU-Net dataset.json: label names, default labels, regions and the 'ignore' label")
    p.add_argument("--file-ending", default=".nii.gz", help="file ending of the images (default: .nii.gz)")
    p.add_argument("--case-groups", default=None,
                   help="JSON {case_id: group} or {group: [case_id, ...]}: aggregates per group as well")
    p.add_argument("--allow-missing", action="store_true",
                   help="evaluate only the cases that have a prediction instead of failing on missing ones")
    p.add_argument("-np", "--num-processes", type=int, default=1, help="worker processes (default: 1)")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    p.add_argument("-q", "--quiet", action="store_true", help="do not print the summary table")
    p.add_argument("--per-case", action="store_true", help="also print a table with one row per case and label")
    return p


def output_paths(prefix) -> tuple:
    """OUT_PREFIX.csv and OUT_PREFIX.json (a prefix given with a .csv/.json ending is taken without it)."""
    prefix = strip_output_prefix(prefix)
    return Path(prefix + ".csv"), Path(prefix + ".json")


def summary_table(result: dict) -> str:
    """Terminal table: one row per label (and per group and label when case groups were given)."""
    headers = ["label", "name", "n"]
    for m in METRICS:
        headers += [f"{METRIC_TITLES[m]} mean ± sd", "median"]
    headers.append("HD95 undefined")

    def rows_for(aggs, group=None):
        out = []
        for k in result["labels"]:
            a = aggs[k]
            row = ([f"{group}: {k}" if group else k, result["label_names"].get(k, ""),
                    a["dsc"]["n"] + a["dsc"]["n_nan"]])
            for m in METRICS:
                row += [fmt_mean_sd(a[m]["mean"], a[m]["sd"]), fmt(a[m]["median"])]
            row.append(a["hd95"]["n_nan"])
            out.append(row)
        return out

    rows = rows_for(result["aggregates"])
    for g, aggs in result.get("group_aggregates", {}).items():
        rows += rows_for(aggs, g)
    inp = result["inputs"]
    title = (f"{inp['n_cases']} cases, {inp['pred_folder']} vs {inp['ref_folder']}; surface Dice tolerance "
             f"{result['tolerance_mm']:g} mm")
    return format_table(headers, rows, title)


def per_case_table(result: dict) -> str:
    headers = ["case", "label", "DSC", "sDSC", "HD95 (mm)", "ref voxels", "pred voxels"]
    rows = [[r["case"], r.get("label_name") or r["label"], fmt(r["dsc"]), fmt(r["sdsc"]),
             "undefined" if r["hd95_undefined"] else fmt(r["hd95"]), r["ref_voxels"], r["pred_voxels"]]
            for r in result["per_case"]]
    return format_table(headers, rows, "per case")


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    prefix = args.output_prefix if args.output_prefix is not None else str(Path(args.pred_folder) / "cmedl_metrics")
    csv_path, json_path = output_paths(prefix)
    with exclusive_output(json_path, "nnunet_cmedl evaluate"):
        return _evaluate(args, csv_path, json_path)


def _evaluate(args, csv_path, json_path) -> int:
    refuse_existing_outputs([csv_path, json_path], args.overwrite)
    if args.num_processes < 1:
        raise UserInputError(f"--num-processes: must be >= 1, got {args.num_processes}")
    result = evaluate_folders(args.ref_folder, args.pred_folder, labels=args.labels, tolerance_mm=args.tolerance_mm,
                              file_ending=args.file_ending, dataset_json=args.dataset_json,
                              case_groups=args.case_groups, allow_missing=args.allow_missing,
                              num_processes=args.num_processes)
    result["outputs"] = {"csv": str(csv_path.resolve()), "json": str(json_path.resolve())}
    write_csv(csv_path, CSV_COLUMNS, result["per_case"], overwrite=args.overwrite)
    write_json(json_path, result, overwrite=args.overwrite)
    inp = result["inputs"]
    if inp["missing_predictions"]:
        print(f"warning: {len(inp['missing_predictions'])} reference cases have no prediction and were skipped "
              f"(--allow-missing)", file=sys.stderr)
    if inp["labels_absent_everywhere"]:
        print(f"warning: labels {inp['labels_absent_everywhere']} occur in no reference and no prediction: not "
              f"scored (NaN)", file=sys.stderr)
    if inp["labels_only_in_predictions"]:
        print(f"warning: labels {inp['labels_only_in_predictions']} occur in predictions but were not evaluated",
              file=sys.stderr)
    if not args.quiet:
        if args.per_case:
            print(per_case_table(result) + "\n")
        print(summary_table(result))
    print(f"wrote {csv_path} and {json_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
