"""Per-tumour evaluation on the synthetic dataset, split by difficulty (hard = mediastinal, easy = in the lung).

Every synthetic test case holds both kinds of tumour, so per-case metrics mix them. Here each reference tumour is
the connected component of the reference label that holds the tumour's ``inside_voxel_zyx`` from
``phantom_metadata.json``; it is scored against the prediction restricted to its neighbourhood (voxels within
``neighbourhood_mm`` of the tumour), with the same DSC / surface Dice / HD95 as ``nnunet_cmedl evaluate``, plus
recall (the fraction of the tumour's voxels predicted as tumour).
"""
import json
from pathlib import Path
from typing import Dict

from scipy import ndimage

from nnunet_cmedl.errors import UserInputError
from nnunet_cmedl.evaluation.metrics import check_geometry, mask_metrics, read_label_image

PER_TUMOUR_METRICS = ("dsc", "sdsc", "hd95", "recall")


def load_metadata(path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise UserInputError(f"{path}: cannot read the phantom metadata ({e})") from None


def each_test_tumour(labels_folder, metadata: dict, file_ending: str = ".nii.gz"):
    """Each test tumour of ``phantom_metadata.json`` found in ``labels_folder``: yields (case, reference path, the
    reference's geometry, the tumour's metadata, its mask: the reference component that holds its inside voxel,
    and the reference's foreground)."""
    cases = metadata["labelled_cases"] if "labelled_cases" in metadata else metadata["ct_cases"]  # older files
    for case, info in sorted(cases.items()):
        ref_path = Path(labels_folder) / f"{case}{file_ending}"
        if info.get("split") != "test" or not ref_path.is_file():
            continue
        ref, ref_geom = read_label_image(ref_path)
        labelled = ref > 0
        components, _ = ndimage.label(labelled)
        for tumour in info["tumours"]:
            component = components[tuple(tumour["inside_voxel_zyx"])]
            if component == 0:
                continue  # the tumour's voxel was overwritten by another structure; nothing to score
            yield case, ref_path, ref_geom, tumour, components == component, labelled


def tumour_rows(labels_folder, predictions: Dict[str, Path], metadata: dict, tolerance_mm: float = 2.0,
                neighbourhood_mm: float = 10.0, file_ending: str = ".nii.gz") -> list:
    """One row per (test tumour, method): case, tumour id, difficulty, method, dsc, sdsc, hd95, recall."""
    rows, preds_of = [], {}
    for case, ref_path, ref_geom, tumour, mask, _ in each_test_tumour(labels_folder, metadata, file_ending):
        spacing = tuple(reversed(ref_geom["spacing"]))  # array axis order
        if case not in preds_of:
            preds_of = {case: {}}
            for method, folder in predictions.items():
                pred, pred_geom = read_label_image(Path(folder) / f"{case}{file_ending}")
                check_geometry(ref_geom, pred_geom, ref_path, Path(folder) / f"{case}{file_ending}")
                preds_of[case][method] = pred > 0
        near = ndimage.distance_transform_edt(~mask, sampling=spacing) <= neighbourhood_mm
        for method, pred in preds_of[case].items():
            m = mask_metrics(mask, pred & near, spacing, tolerance_mm)
            rows.append({"case": case, "tumour": tumour["id"], "difficulty": tumour["difficulty"],
                         "location": tumour["location"], "tumour_voxels": int(mask.sum()), "method": method,
                         "dsc": m["dsc"], "sdsc": m["sdsc"], "hd95": m["hd95"],
                         "recall": float((pred & mask).sum() / mask.sum())})
    if not rows:
        raise UserInputError(f"{labels_folder}: no test tumour of phantom_metadata.json found there")
    return rows
