"""Segmentation metrics as reported in the CMEDL paper: Dice (DSC), surface Dice (sDSC) and HD95.

Python API
----------
``case_metrics(ref, pred, spacing_mm, label, tolerance_mm)``
    metrics of one label of one case (arrays of label values, spacing in array-axis order).
``mask_metrics(ref_mask, pred_mask, spacing_mm, tolerance_mm)``
    the same for two boolean masks.
``evaluate_folders(ref_folder, pred_folder, labels=None, tolerance_mm=2.0, file_ending='.nii.gz', ...)``
    every case and label of a prediction folder; returns the dict that ``nnunet_cmedl evaluate`` writes as JSON.

Definitions (also in ``definitions(tolerance_mm)`` / the JSON's "definitions" section and in ``--help``)
-------------------------------------------------------------------------------------------
* DSC = 2|R ∩ P| / (|R| + |P|), voxel counts of the label in the reference R and the prediction P.
* Surfaces come from MONAI (``monai.metrics.utils.get_edge_surface_distance(..., use_subvoxels=True)``), which
  implements the surface elements of DeepMind's reference (Nikolov et al., "Clinically applicable segmentation of
  head and neck anatomy for radiotherapy", JMIR 2021; the ``surface-distance`` package): the surface of a mask is
  made of surface elements ("surfels") found in every 2x2x2 voxel neighbourhood, each with its area in mm² from the
  voxel spacing; distances are Euclidean distances in mm between surfels.
* sDSC at tolerance t = (area of R's surface within t of P's surface + area of P's surface within t of R's surface)
  / (area of R's surface + area of P's surface); "within" is distance <= t (MONAI ``compute_surface_dice`` with
  ``use_subvoxels=True``; DeepMind ``compute_surface_dice_at_tolerance``).
* HD95 = max(95th area-weighted percentile of the distances from R's surfels to P's surface, the same from P to R),
  in mm: DeepMind's ``compute_robust_hausdorff(distances, 95)`` (distances sorted with their areas; the first whose
  cumulative area fraction reaches 0.95), computed here on MONAI's surfels. (MONAI's own
  ``compute_hausdorff_distance`` takes an unweighted percentile over boundary voxels: another number.)
  tests/test_metrics.py checks both against DeepMind's package and against analytic spheres.
* Empty masks: both empty -> DSC 1, sDSC 1, HD95 0. Exactly one empty -> DSC 0, sDSC 0, HD95 NaN with
  ``hd95_undefined`` = 1 (no distance exists; never a silent 0 and no made-up penalty). Aggregates skip NaN and
  report how many values they used (``n``) and skipped (``n_nan``).
"""
from __future__ import annotations

import math
import os
import warnings
import sys
from concurrent.futures import ProcessPoolExecutor
from datetime import datetime, timezone
from multiprocessing import get_context
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np

from nnunet_cmedl.errors import UserInputError, itk_message

METRICS = ("dsc", "sdsc", "hd95")
HIGHER_IS_BETTER = {"dsc": True, "sdsc": True, "hd95": False}
METRIC_TITLES = {"dsc": "DSC", "sdsc": "sDSC", "hd95": "HD95 (mm)"}
HD95_PERCENT = 95.0

# geometry agreement between a reference and a prediction image (SimpleITK header values)
SPACING_RTOL = 1e-4          # |spacing_ref - spacing_pred| <= 1e-4 * spacing_ref, per axis
ORIGIN_TOL_VOXELS = 0.01     # |origin_ref - origin_pred| <= 0.01 * (smallest spacing) mm, per axis
DIRECTION_ATOL = 1e-4        # |direction cosine difference| <= 1e-4, per matrix entry

Label = Union[int, Tuple[int, ...]]

# --------------------------------------------------------------------------------------------------------------------
# surfaces (MONAI) and the DeepMind definitions on them
# --------------------------------------------------------------------------------------------------------------------

def surface_distances(ref_mask: np.ndarray, pred_mask: np.ndarray, spacing: Sequence[float]) -> dict:
    """MONAI's surface elements of two non-empty masks: distances (mm) from each surfel of one mask to the other's
    surface and the surfels' areas (mm²), each direction sorted by (distance, area) as DeepMind's reference does."""
    import torch
    from monai.metrics.utils import get_edge_surface_distance
    with warnings.catch_warnings():  # MONAI 1.5-1.6 warns about its own internal use of a deprecated argument
        warnings.simplefilter("ignore", FutureWarning)
        (e_pred, e_ref), (d_pred_ref, d_ref_pred), (a_pred, a_ref) = get_edge_surface_distance(
            torch.as_tensor(np.ascontiguousarray(pred_mask)), torch.as_tensor(np.ascontiguousarray(ref_mask)),
            distance_metric="euclidean", spacing=list(spacing), use_subvoxels=True, symmetric=True, warn_empty=False)
    a_pred, a_ref = a_pred[e_pred], a_ref[e_ref]  # area maps -> one area per surfel, in the distances' order

    def ordered(distances, areas):
        distances = np.asarray(distances.cpu(), dtype=np.float64)
        areas = np.asarray(areas.cpu(), dtype=np.float64)
        order = np.lexsort((areas, distances))
        return distances[order], areas[order]

    d_ref_pred, a_ref = ordered(d_ref_pred, a_ref)
    d_pred_ref, a_pred = ordered(d_pred_ref, a_pred)
    return {"distances_ref_to_pred": d_ref_pred, "areas_ref": a_ref,
            "distances_pred_to_ref": d_pred_ref, "areas_pred": a_pred}


def surface_dice_at_tolerance(surfaces: dict, tolerance_mm: float) -> float:
    """DeepMind's compute_surface_dice_at_tolerance on ``surface_distances``' output."""
    d_rp, a_r = surfaces["distances_ref_to_pred"], surfaces["areas_ref"]
    d_pr, a_p = surfaces["distances_pred_to_ref"], surfaces["areas_pred"]
    return float((a_r[d_rp <= tolerance_mm].sum() + a_p[d_pr <= tolerance_mm].sum()) / (a_r.sum() + a_p.sum()))


def robust_hausdorff(surfaces: dict, percent: float) -> float:
    """DeepMind's compute_robust_hausdorff: the larger of the two directions' area-weighted ``percent``-th
    percentile distance (the first sorted distance whose cumulative area fraction reaches percent/100)."""
    def percentile(distances, areas):
        if len(distances) == 0:
            return math.inf
        index = int(np.searchsorted(np.cumsum(areas) / np.sum(areas), percent / 100.0))
        return float(distances[min(index, len(distances) - 1)])
    return max(percentile(surfaces["distances_ref_to_pred"], surfaces["areas_ref"]),
               percentile(surfaces["distances_pred_to_ref"], surfaces["areas_pred"]))


def monai_version() -> str:
    try:
        from importlib.metadata import version
        return version("monai")
    except Exception:  # pragma: no cover
        return "unknown"


# --------------------------------------------------------------------------------------------------------------------
# definitions (written into the JSON and shown by --help)
# --------------------------------------------------------------------------------------------------------------------

def definitions(tolerance_mm: float) -> Dict[str, str]:
    t = f"{tolerance_mm:g}"
    return {
        "dsc": "Dice similarity coefficient 2|R∩P|/(|R|+|P|) over the voxels of the label (R reference, P prediction).",
        "sdsc": (f"surface Dice at tolerance {t} mm (Nikolov et al. 2021, DeepMind surface-distance "
                 "compute_surface_dice_at_tolerance): (area of R's surface within the tolerance of P's surface + area "
                 "of P's surface within the tolerance of R's surface) / (area of R's surface + area of P's surface); "
                 "'within' is distance <= tolerance; surfaces are area-weighted surface elements of the 2x2x2 voxel "
                 "neighbourhoods, areas and distances in mm from the voxel spacing."),
        "hd95": ("95th-percentile Hausdorff distance in mm (DeepMind surface-distance compute_robust_hausdorff(..., 95)): "
                 "max over the two directions (R->P, P->R) of the area-weighted 95th percentile of the distances from "
                 "the surface elements of one mask to the surface of the other."),
        "empty_masks": ("both R and P empty -> dsc 1, sdsc 1, hd95 0, hd95_undefined 0. Exactly one of them empty -> "
                        "dsc 0, sdsc 0, hd95 NaN and hd95_undefined 1 (no surface distance exists; no penalty value "
                        "is substituted). NaN is written as null in JSON and as 'nan' in CSV."),
        "aggregates": ("per label (and per case group if given) and metric: mean, sd (sample standard deviation, "
                       "ddof=1; NaN when n<2), median, min, max over the cases, skipping NaN values; n = number of "
                       "values used, n_nan = number skipped (for hd95 these are the cases with hd95_undefined = 1, so "
                       "the HD95 mean covers only cases where both masks are non-empty: read it together with n_nan)."),
        "spacing": ("voxel spacing in mm from the image headers (SimpleITK); reference and prediction must have the "
                    f"same size, spacing (relative tolerance {SPACING_RTOL:g}), origin (tolerance "
                    f"{ORIGIN_TOL_VOXELS:g} x the smallest spacing) and direction (tolerance {DIRECTION_ATOL:g})."),
        "labels": ("a label is the set of voxels with that value; a region (tuple of values, from a region-based "
                   "dataset.json) is the union of their voxels. If dataset.json defines an 'ignore' label, prediction "
                   "voxels where the reference has the ignore value are removed from the prediction before every "
                   "metric, and the ignore label itself is not evaluated."),
        "implementation": (f"surfaces, areas and distances from MONAI {monai_version()} "
                           "(get_edge_surface_distance, use_subvoxels=True); sDSC and HD95 as DeepMind's "
                           "surface-distance defines them (nnunet_cmedl.evaluation.metrics)."),
    }


HELP_DEFINITIONS = """\
metric definitions (R reference mask, P predicted mask of one label; distances in mm from the header spacing):
  DSC    2|R∩P| / (|R|+|P|)
  sDSC   surface Dice at the tolerance (Nikolov et al. 2021; DeepMind surface-distance): area of the surface
         elements of R within the tolerance of P's surface plus those of P within the tolerance of R's, over the
         total surface area of R and P ('within' = distance <= tolerance)
  HD95   max over both directions of the area-weighted 95th percentile of surface-to-surface distances
         (DeepMind compute_robust_hausdorff(..., 95))
empty masks:
  both empty          -> DSC 1, sDSC 1, HD95 0
  exactly one empty   -> DSC 0, sDSC 0, HD95 NaN with hd95_undefined = 1 (NaN is null in the JSON, 'nan' in
                         the CSV; aggregates skip NaN and report n and n_nan)
"""


# --------------------------------------------------------------------------------------------------------------------
# one case
# --------------------------------------------------------------------------------------------------------------------

def _check_spacing(spacing_mm, ndim: int) -> Tuple[float, ...]:
    try:
        spacing = tuple(float(s) for s in spacing_mm)
    except TypeError:
        raise ValueError(f"spacing_mm must be a sequence of {ndim} numbers, got {spacing_mm!r}") from None
    if len(spacing) != ndim:
        raise ValueError(f"spacing_mm has {len(spacing)} values but the masks have {ndim} dimensions")
    if not all(math.isfinite(s) and s > 0 for s in spacing):
        raise ValueError(f"spacing_mm must be positive and finite, got {spacing}")
    return spacing


def _check_tolerance(tolerance_mm) -> float:
    t = float(tolerance_mm)
    if not (math.isfinite(t) and t >= 0):
        raise ValueError(f"tolerance_mm must be a finite number >= 0, got {tolerance_mm!r}")
    return t


def dice(ref_mask: np.ndarray, pred_mask: np.ndarray) -> float:
    """2|A and B| / (|A| + |B|); 1.0 when both masks are empty (nothing to find, nothing found), as in evaluate."""
    a, b = np.asarray(ref_mask) > 0, np.asarray(pred_mask) > 0
    total = int(a.sum()) + int(b.sum())
    return 2.0 * int(np.logical_and(a, b).sum()) / total if total else 1.0


def mask_metrics(ref_mask: np.ndarray, pred_mask: np.ndarray, spacing_mm: Sequence[float],
                 tolerance_mm: float = 2.0) -> dict:
    """DSC, sDSC at ``tolerance_mm`` and HD95 (mm) of two boolean masks of the same 2D or 3D shape.

    ``spacing_mm`` is in the order of the array axes (for an array from ``sitk.GetArrayFromImage`` that is the
    reverse of ``image.GetSpacing()``). Returns ``dsc, sdsc, hd95, hd95_undefined, ref_voxels, pred_voxels``.
    """
    ref_mask = np.asarray(ref_mask).astype(bool, copy=False)
    pred_mask = np.asarray(pred_mask).astype(bool, copy=False)
    if ref_mask.shape != pred_mask.shape:
        raise ValueError(f"reference shape {ref_mask.shape} != prediction shape {pred_mask.shape}")
    if ref_mask.ndim not in (2, 3):
        raise ValueError(f"only 2D and 3D masks are supported, got {ref_mask.ndim}D")
    spacing = _check_spacing(spacing_mm, ref_mask.ndim)
    tol = _check_tolerance(tolerance_mm)
    n_ref, n_pred = int(ref_mask.sum()), int(pred_mask.sum())
    out = {"ref_voxels": n_ref, "pred_voxels": n_pred}
    if n_ref == 0 and n_pred == 0:
        out.update(dsc=1.0, sdsc=1.0, hd95=0.0, hd95_undefined=False)
        return out
    if n_ref == 0 or n_pred == 0:
        out.update(dsc=0.0, sdsc=0.0, hd95=float("nan"), hd95_undefined=True)
        return out
    surfaces = surface_distances(ref_mask, pred_mask, spacing)
    out.update(dsc=dice(ref_mask, pred_mask), sdsc=surface_dice_at_tolerance(surfaces, tol),
               hd95=robust_hausdorff(surfaces, HD95_PERCENT), hd95_undefined=False)
    return out


def _label_mask(arr: np.ndarray, label: Label) -> np.ndarray:
    if isinstance(label, (tuple, list)):
        return np.isin(arr, np.asarray(label))
    return arr == label


def case_metrics(ref: np.ndarray, pred: np.ndarray, spacing_mm: Sequence[float], label: Label,
                 tolerance_mm: float = 2.0, ignore_value: Optional[int] = None) -> dict:
    """Metrics of one label (int) or region (tuple of ints) of one case; ``ref``/``pred`` are label arrays.

    ``ignore_value``: voxels where ``ref == ignore_value`` are removed from the prediction mask first.
    Returns the dict of ``mask_metrics`` plus ``label``.
    """
    ref = np.asarray(ref)
    pred = np.asarray(pred)
    if ref.shape != pred.shape:
        raise ValueError(f"reference shape {ref.shape} != prediction shape {pred.shape}")
    pred_mask = _label_mask(pred, label)
    if ignore_value is not None:
        pred_mask &= ref != ignore_value
    out = {"label": label}
    out.update(mask_metrics(_label_mask(ref, label), pred_mask, spacing_mm, tolerance_mm))
    return out


# --------------------------------------------------------------------------------------------------------------------
# labels, files, geometry
# --------------------------------------------------------------------------------------------------------------------

def label_key(label: Label) -> str:
    """String key of a label in JSON/CSV: '1' for a label, '(1, 2)' for a region (as nnU-Net writes regions)."""
    if isinstance(label, (tuple, list)):
        return str(tuple(int(v) for v in label)) if len(label) != 1 else str(int(label[0]))
    return str(int(label))


def parse_label_key(key: str) -> Label:
    key = str(key).strip()
    if key.startswith("("):
        vals = [v for v in key.strip("()").split(",") if v.strip()]
        return tuple(int(v) for v in vals)
    return int(key)


def labels_from_dataset_json(path) -> Tuple[List[Label], Dict[str, str], Optional[int]]:
    """Foreground labels (ints, or tuples for regions), {key: name} and the ignore value of an nnU-Net dataset.json."""
    from nnunet_cmedl.evaluation.tables import read_json
    dj = read_json(path, "dataset.json")
    labels = dj.get("labels") if isinstance(dj, dict) else None
    if not isinstance(labels, dict) or not labels:
        raise UserInputError(f"{path}: no 'labels' mapping (name -> value) as in an nnU-Net v2 dataset.json")
    out, names, ignore = [], {}, None
    for name, value in labels.items():
        try:
            if isinstance(value, (list, tuple)):
                vals = tuple(int(v) for v in value)
                lab: Label = vals[0] if len(vals) == 1 else vals
            else:
                if isinstance(value, bool) or float(value) != int(value):
                    raise ValueError
                lab = int(value)
        except (TypeError, ValueError):
            raise UserInputError(f"{path}: label {name!r} has value {value!r}, expected an integer or a list of "
                                 "integers") from None
        if name == "ignore":
            if not isinstance(lab, int):
                raise UserInputError(f"{path}: the 'ignore' label must be one integer, got {value!r}")
            ignore = lab
            continue
        if lab == 0 or lab == (0,):
            continue
        out.append(lab)
        names[label_key(lab)] = str(name)
    if not out:
        raise UserInputError(f"{path}: no foreground label (value != 0) in 'labels'")
    return out, names, ignore


def load_case_groups(spec) -> Dict[str, str]:
    """Case groups from a dict or a JSON file: {case_id: group} or {group: [case_id, ...]}."""
    src = spec
    if not isinstance(spec, dict):
        from nnunet_cmedl.evaluation.tables import read_json
        spec = read_json(spec, "case-groups JSON")
    if not isinstance(spec, dict):
        raise UserInputError(f"{src}: case groups must be a JSON object: {{case_id: group}} or {{group: [case_id, ...]}}")
    out: Dict[str, str] = {}
    for k, v in spec.items():
        if isinstance(v, str):
            out[str(k)] = v
        elif isinstance(v, list) and all(isinstance(c, str) for c in v):
            for c in v:
                if c in out and out[c] != k:
                    raise UserInputError(f"{src}: case {c!r} is in two groups ({out[c]!r} and {k!r})")
                out[c] = str(k)
        else:
            raise UserInputError(f"{src}: entry {k!r} must map a case id to a group name (string) or a group name to "
                                 "a list of case ids")
    return out


def files_by_case(folder, file_ending: str, what: str) -> Dict[str, Path]:
    """{case: file} of a folder of label maps named CASE<file_ending> (nnU-Net's labelsTr/labelsTs and predictions;
    images with channel suffixes are export_pmri.input_cases')."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserInputError(f"{folder}: {what} folder does not exist or is not a folder")
    if not file_ending:
        raise UserInputError("--file-ending must not be empty")
    cases = {}
    for p in sorted(folder.iterdir()):
        if p.name.startswith(".") or not p.name.endswith(file_ending) or not p.is_file():
            continue
        case = p.name[: -len(file_ending)]
        if case:
            cases[case] = p
    return cases


def match_cases(ref_folder, pred_folder, file_ending: str = ".nii.gz", allow_missing: bool = False):
    """Pairs (case, ref_path, pred_path) matched by file name; also the missing and the unmatched case ids."""
    refs = files_by_case(ref_folder, file_ending, "reference")
    preds = files_by_case(pred_folder, file_ending, "prediction")
    if not refs:
        raise UserInputError(f"{ref_folder}: no reference file ending in {file_ending!r}")
    missing = [c for c in refs if c not in preds]
    unmatched = [c for c in preds if c not in refs]
    if missing and not allow_missing:
        shown = ", ".join(f"{c}{file_ending}" for c in missing[:20])
        more = f" and {len(missing) - 20} more" if len(missing) > 20 else ""
        raise UserInputError(f"{pred_folder}: {len(missing)} of {len(refs)} reference cases have no prediction: "
                             f"{shown}{more} (pass --allow-missing to evaluate only the cases present)")
    pairs = [(c, refs[c], preds[c]) for c in refs if c in preds]
    if not pairs:
        raise UserInputError(f"{pred_folder}: no prediction matches a reference file of {ref_folder} "
                             f"(file ending {file_ending!r})")
    return pairs, missing, unmatched


def read_image(path, what: str = "image") -> Tuple[np.ndarray, dict]:
    """One-value-per-voxel 2D/3D image: (array in SimpleITK order z-y-x, header geometry in x-y-z order as in the
    file). Errors are one line naming the file."""
    import SimpleITK as sitk
    from mri_unpaired.validation import refuse_damaged_file
    try:
        img = sitk.ReadImage(str(path))
    except RuntimeError as e:
        raise UserInputError(f"{path}: cannot read the image ({itk_message(e)})") from None
    refuse_damaged_file(path)
    if img.GetNumberOfComponentsPerPixel() != 1:
        raise UserInputError(f"{path}: a {what} must have one value per voxel, this one has "
                             f"{img.GetNumberOfComponentsPerPixel()}")
    if img.GetDimension() not in (2, 3):
        raise UserInputError(f"{path}: only 2D and 3D {what}s are supported, this one is {img.GetDimension()}D")
    geom = {"size": tuple(int(s) for s in img.GetSize()), "spacing": tuple(float(s) for s in img.GetSpacing()),
            "origin": tuple(float(s) for s in img.GetOrigin()),
            "direction": tuple(float(s) for s in img.GetDirection())}
    return sitk.GetArrayFromImage(img), geom


def read_label_image(path) -> Tuple[np.ndarray, dict]:
    """Label array (SimpleITK array order, z-y-x) and header geometry (x-y-z order as in the file)."""
    arr, geom = read_image(path, "label image")
    if not np.issubdtype(arr.dtype, np.integer):
        if not np.issubdtype(arr.dtype, np.floating) or not np.all(np.isfinite(arr)) or np.any(arr != np.round(arr)):
            raise UserInputError(f"{path}: not a label image (voxel values must be integers, found {arr.dtype} values "
                                 "that are not)")
        arr = arr.astype(np.int64)
    return arr, geom


def check_geometry(ref_geom: dict, pred_geom: dict, ref_path, pred_path) -> None:
    def fail(what, a, b):
        raise UserInputError(f"{pred_path}: {what} {tuple(round(x, 6) for x in b)} differs from the reference "
                             f"{ref_path} {tuple(round(x, 6) for x in a)}")
    if ref_geom["size"] != pred_geom["size"]:
        raise UserInputError(f"{pred_path}: size {pred_geom['size']} differs from the reference {ref_path} "
                             f"{ref_geom['size']}")
    rs, ps = np.array(ref_geom["spacing"]), np.array(pred_geom["spacing"])
    if np.any(np.abs(rs - ps) > SPACING_RTOL * rs):
        fail("spacing", rs, ps)
    ro, po = np.array(ref_geom["origin"]), np.array(pred_geom["origin"])
    if np.any(np.abs(ro - po) > ORIGIN_TOL_VOXELS * rs.min()):
        fail("origin", ro, po)
    rd, pd = np.array(ref_geom["direction"]), np.array(pred_geom["direction"])
    if np.any(np.abs(rd - pd) > DIRECTION_ATOL):
        fail("direction", rd, pd)


def _present_labels(arr: np.ndarray) -> set:
    if arr.size == 0:
        return set()
    lo, hi = int(arr.min()), int(arr.max())
    if lo >= 0 and hi < 65536:
        counts = np.bincount(arr.ravel().astype(np.int64, copy=False), minlength=1)
        vals = np.nonzero(counts)[0]
    else:
        vals = np.unique(arr)
    return {int(v) for v in vals if v != 0}


def _evaluate_case(case: str, ref_path: str, pred_path: str, labels: Optional[List[Label]], tolerance_mm: float,
                   ignore_value: Optional[int]) -> dict:
    ref, ref_geom = read_label_image(ref_path)
    pred, pred_geom = read_label_image(pred_path)
    check_geometry(ref_geom, pred_geom, ref_path, pred_path)
    spacing_zyx = tuple(reversed(ref_geom["spacing"]))
    ref_present = _present_labels(ref) - ({ignore_value} if ignore_value is not None else set())
    pred_present = _present_labels(pred) - ({ignore_value} if ignore_value is not None else set())
    todo = labels if labels is not None else sorted(ref_present | pred_present)
    results = {}
    for lab in todo:
        vals = set(lab) if isinstance(lab, tuple) else {lab}
        if not (vals & ref_present) and not (vals & pred_present):
            continue  # both empty: filled in by the caller without reading the masks again
        r = case_metrics(ref, pred, spacing_zyx, lab, tolerance_mm, ignore_value)
        results[label_key(lab)] = r
    return {"case": case, "ref_file": str(ref_path), "pred_file": str(pred_path),
            "size_xyz": list(ref_geom["size"]), "spacing_xyz_mm": list(ref_geom["spacing"]),
            "ref_labels_present": sorted(ref_present), "pred_labels_present": sorted(pred_present),
            "results": results}


def _evaluate_case_job(args):
    return _evaluate_case(*args)


# --------------------------------------------------------------------------------------------------------------------
# aggregation
# --------------------------------------------------------------------------------------------------------------------

def summarize(values: Iterable[float]) -> dict:
    """mean, sd (ddof=1), median, min, max over the non-NaN values; n used, n_nan skipped."""
    v = np.asarray([np.nan if x is None else float(x) for x in values], dtype=np.float64)
    ok = v[~np.isnan(v)]
    n = int(ok.size)
    nan = float("nan")
    return {"mean": float(ok.mean()) if n else nan,
            "sd": float(ok.std(ddof=1)) if n >= 2 else nan,
            "median": float(np.median(ok)) if n else nan,
            "min": float(ok.min()) if n else nan,
            "max": float(ok.max()) if n else nan,
            "n": n, "n_nan": int(v.size - n)}


def aggregate_rows(rows: Sequence[dict], label_keys: Sequence[str], metrics: Sequence[str] = METRICS) -> dict:
    """{label_key: {metric: summarize(...)}} over ``rows`` (dicts with 'label' key and metric values)."""
    out = {}
    for k in label_keys:
        sel = [r for r in rows if r["label"] == k]
        out[k] = {m: summarize(r[m] for r in sel) for m in metrics}
    return out


CSV_COLUMNS = ["case", "group", "label", "label_name", "dsc", "sdsc", "hd95", "hd95_undefined", "ref_voxels",
               "pred_voxels"]


# --------------------------------------------------------------------------------------------------------------------
# folders
# --------------------------------------------------------------------------------------------------------------------

def _normalize_labels(labels) -> Optional[List[Label]]:
    if labels is None:
        return None
    if isinstance(labels, (int, np.integer)):
        labels = [labels]
    out: List[Label] = []
    for lab in labels:
        if isinstance(lab, str):
            lab = parse_label_key(lab)
        if isinstance(lab, (tuple, list)):
            lab = tuple(int(v) for v in lab)
            lab = lab[0] if len(lab) == 1 else lab
        else:
            lab = int(lab)
        if lab == 0:
            raise UserInputError("--labels: 0 is the background; give foreground labels only")
        if lab not in out:
            out.append(lab)
    if not out:
        raise UserInputError("--labels: no label given")
    return out


def evaluate_folders(ref_folder, pred_folder, labels=None, tolerance_mm: float = 2.0, file_ending: str = ".nii.gz",
                     *, dataset_json=None, case_groups=None, allow_missing: bool = False, num_processes: int = 1,
                     progress: bool = False) -> dict:
    """Evaluate every prediction in ``pred_folder`` against the same-named reference in ``ref_folder``.

    labels: list of ints (or tuples = regions); default: the foreground labels of ``dataset_json`` if given, else
    every nonzero value found in the references. case_groups: dict or JSON path ({case: group} or
    {group: [cases]}) for per-group aggregates. Returns the dict written as the evaluation JSON (NaN as float NaN
    here, null in the file).
    """
    try:
        tolerance_mm = _check_tolerance(tolerance_mm)
    except (TypeError, ValueError):
        raise UserInputError(f"--tolerance-mm: must be a finite number >= 0, got {tolerance_mm!r}") from None
    label_names: Dict[str, str] = {}
    ignore_value = None
    wanted = _normalize_labels(labels)
    if dataset_json is not None:
        dj_labels, label_names, ignore_value = labels_from_dataset_json(dataset_json)
        if wanted is None:
            wanted = dj_labels
        else:
            unknown = [label_key(lab) for lab in wanted if label_key(lab) not in label_names]
            if unknown:
                raise UserInputError(f"{dataset_json}: labels {', '.join(unknown)} are not foreground labels of this "
                                     f"dataset.json ({', '.join(f'{k}={v}' for k, v in label_names.items())})")
    groups = load_case_groups(case_groups) if case_groups is not None else None

    pairs, missing, unmatched = match_cases(ref_folder, pred_folder, file_ending, allow_missing)
    jobs = [(c, str(r), str(p), wanted, tolerance_mm, ignore_value) for c, r, p in pairs]
    num_processes = max(1, int(num_processes))
    if num_processes > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(max_workers=min(num_processes, len(jobs)), mp_context=get_context("spawn")) as ex:
            case_results = list(ex.map(_evaluate_case_job, jobs))
    else:
        case_results = []
        for i, job in enumerate(jobs):
            if progress:
                print(f"[{i + 1}/{len(jobs)}] {job[0]}", file=sys.stderr, flush=True)
            case_results.append(_evaluate_case(*job))

    if wanted is None:
        found = sorted(set().union(*(set(cr["ref_labels_present"]) for cr in case_results)))
        if not found:
            raise UserInputError(f"{ref_folder}: every reference is empty (all zero); pass --labels or --dataset-json "
                                 "to say which labels to evaluate")
        wanted = found
    keys = [label_key(lab) for lab in wanted]
    for lab in wanted:
        label_names.setdefault(label_key(lab), f"label_{label_key(lab)}")
    pred_only = sorted(set().union(*(set(cr["pred_labels_present"]) for cr in case_results))
                       - {v for lab in wanted for v in (lab if isinstance(lab, tuple) else (lab,))})

    # a label in no reference and no prediction has nothing to score: NaN, not a perfect 1 per case; asked for by
    # --labels it is a mistake
    absent = [k for k in keys if not any(k in cr["results"] for cr in case_results)]
    if absent and labels is not None:
        present = sorted(set().union(*(set(cr["ref_labels_present"]) | set(cr["pred_labels_present"])
                                       for cr in case_results)))
        raise UserInputError(f"--labels {' '.join(absent)}: in no reference and no prediction of the "
                             f"{len(case_results)} cases (labels found: {', '.join(map(str, present)) or 'none'})")
    if groups is not None:
        unknown = sorted(set(groups) - {c for c, _, _ in pairs} - set(missing))
        if unknown:
            more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
            raise UserInputError(f"{case_groups}: names cases that are not in {ref_folder}: "
                                 f"{', '.join(unknown[:5])}{more}")

    rows = []
    for cr in case_results:
        for lab, k in zip(wanted, keys):
            r = cr["results"].get(k)
            if r is None:  # label absent from both masks: agreement, unless it is absent from every case
                perfect = k not in absent
                r = {"dsc": 1.0 if perfect else math.nan, "sdsc": 1.0 if perfect else math.nan,
                     "hd95": 0.0 if perfect else math.nan, "hd95_undefined": False, "ref_voxels": 0,
                     "pred_voxels": 0}
            row = {"case": cr["case"], "group": groups.get(cr["case"]) if groups is not None else None,
                   "label": k, "label_name": label_names[k]}
            row.update({c: r[c] for c in ("dsc", "sdsc", "hd95", "hd95_undefined", "ref_voxels", "pred_voxels")})
            rows.append(row)

    result = {
        "tool": "nnunet_cmedl evaluate",
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "tolerance_mm": tolerance_mm,
        "labels": keys,
        "label_names": {k: label_names[k] for k in keys},
        "definitions": definitions(tolerance_mm),
        "inputs": {
            "ref_folder": os.path.abspath(ref_folder), "pred_folder": os.path.abspath(pred_folder),
            "file_ending": file_ending,
            "dataset_json": os.path.abspath(dataset_json) if dataset_json is not None else None,
            "case_groups": (os.path.abspath(case_groups) if isinstance(case_groups, (str, os.PathLike))
                            else ("given as a mapping" if case_groups is not None else None)),
            "labels_requested": [label_key(lab) for lab in _normalize_labels(labels)] if labels is not None else None,
            "ignore_value": ignore_value,
            "allow_missing": allow_missing,
            "n_cases": len(case_results),
            "missing_predictions": missing,
            "predictions_without_reference": unmatched,
            "labels_only_in_predictions": pred_only,
            "labels_absent_everywhere": absent,
        },
        "cases": [{k: cr[k] for k in ("case", "ref_file", "pred_file", "size_xyz", "spacing_xyz_mm")}
                  for cr in case_results],
        "per_case": rows,
        "aggregates": aggregate_rows(rows, keys),
    }
    if groups is not None:
        names = sorted({g for g in groups.values()})
        result["group_aggregates"] = {g: aggregate_rows([r for r in rows if r["group"] == g], keys) for g in names}
        evaluated = {cr["case"] for cr in case_results}
        result["inputs"]["cases_without_group"] = sorted(evaluated - set(groups))
        result["inputs"]["grouped_cases_not_evaluated"] = sorted(set(groups) - evaluated)
    return result
