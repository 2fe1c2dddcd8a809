"""``nnunet_cmedl panels``: one PNG per case to look at what CMEDL does.

Panels, all on the axial slice (first array axis) where the reference tumour is largest:
  1. CT in a mediastinal window (W400/L40: the hard tumours lie against the mediastinum);
  2. the pseudo-MRI the generator makes of it;
  3. a real MRI slice of another patient (unpaired, from --mri, at a similar relative z position) for comparison;
  4. the CT zoomed on the tumour with the contours of the reference (green), the student (red) and the teacher
     (blue; it segmented the pseudo-MRI).
``index.json`` beside the PNGs lists each panel with the slice used; ``make_case_panels`` is the Python API.
Above is the paper's direction; a model trained on labelled MRI with unpaired CT (its checkpoint's
``cmedl_modalities``) gets the MRI in a 1-99th percentile window, its pseudo-CT and a real CT (--unpaired) in a
mediastinal window, with titles that say so.
"""
import argparse
import json
import sys
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from nnunet_cmedl.errors import UserInputError
from nnunet_cmedl.evaluation.metrics import dice
from nnunet_cmedl.plotting import largest_area_slice
from mri_unpaired.validation import refuse_damaged_file
from mri_unpaired.atomic import atomic_file, atomic_path, exclusive_output, refuse_existing

CT_WINDOW = (400.0, 40.0)  # width, level (HU): mediastinal
COLOURS = {"reference": "#00c000", "student": "#ff2020", "teacher": "#2060ff"}
INDEX_NAME = "index.json"
MRI_ENDINGS = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd", ".gipl")


# ---------------------------------------------------------------------------------------------- helpers
def mri_files(mri) -> List[Path]:
    if mri is None:
        return []
    mri = Path(mri)
    if not mri.exists():
        raise UserInputError(f"{mri}: --unpaired not found")
    if mri.is_file():
        return [mri]
    files = sorted(p for p in mri.iterdir() if p.is_file() and p.name.lower().endswith(MRI_ENDINGS)
                   and not p.name.startswith("."))
    if not files:
        raise UserInputError(f"{mri}: no image volumes ({', '.join(MRI_ENDINGS)}) in this folder")
    return files


def read_mri(path: Path):
    """(volume in SimpleITK array order z, y, x; its spacing z, y, x)."""
    import SimpleITK as sitk
    refuse_damaged_file(path)
    try:
        image = sitk.ReadImage(str(path))
        array = sitk.GetArrayFromImage(image).astype(np.float32)
    except RuntimeError as e:
        lines = [ln for ln in str(e).splitlines() if ln.strip()]
        raise UserInputError(f"{path}: cannot read this image ({lines[-1].strip() if lines else 'unreadable'})") \
            from None
    spacing = list(image.GetSpacing())[::-1]
    if array.ndim == 2:
        array, spacing = array[None], [1.0, *spacing]
    if array.ndim != 3:
        raise UserInputError(f"{path}: expected a 2d or 3d volume, got {array.ndim} dimensions")
    return array, spacing


def _percentile_window(volume: np.ndarray, low: float = 1.0, high: float = 99.0):
    lo, hi = np.percentile(volume, [low, high])
    return float(lo), float(hi if hi > lo else lo + 1)


def _largest_component(mask: np.ndarray) -> np.ndarray:
    from scipy.ndimage import label
    labelled, n = label(mask)
    if n <= 1:
        return mask
    sizes = np.bincount(labelled.ravel())[1:]
    return labelled == (1 + int(np.argmax(sizes)))


def _zoom_box(mask: np.ndarray, shape, pixel_size=(1.0, 1.0), factor: float = 3.0, min_mm: float = 60.0):
    """(row0, row1, col0, col1): a square (in mm) around the largest component of ``mask``, ``factor`` times its
    extent and at least ``min_mm`` wide, inside the slice; the whole slice if the mask is empty."""
    mask = np.asarray(mask, bool)
    if not mask.any():
        return 0, shape[0], 0, shape[1]
    rows, cols = np.nonzero(_largest_component(mask))
    extent_mm = max((rows.max() - rows.min() + 1) * pixel_size[0], (cols.max() - cols.min() + 1) * pixel_size[1])
    side_mm = max(extent_mm * factor, min_mm)
    box = []
    for coords, n, size in ((rows, shape[0], pixel_size[0]), (cols, shape[1], pixel_size[1])):
        side = min(int(np.ceil(side_mm / size)), n)
        start = int(round((coords.min() + coords.max() + 1) / 2 - side / 2))
        start = min(max(start, 0), n - side)
        box += [start, start + side]
    return tuple(box)


def _contour(ax, mask: Optional[np.ndarray], colour: str, extent, linestyle="-"):
    if mask is None or not mask.any():
        return
    ax.contour(mask.astype(float), levels=[0.5], colors=[colour], linewidths=1.6, linestyles=linestyle,
               extent=extent, origin="upper")


# ---------------------------------------------------------------------------------------------- one panel
def render_panel(png_file, case_id: str, ct: np.ndarray, pmri: np.ndarray, reference: np.ndarray,
                 student: np.ndarray, teacher: np.ndarray, slice_index: int, spacing_zyx,
                 mri: Optional[np.ndarray] = None, mri_name: str = "", mri_slice: Optional[int] = None,
                 mri_spacing_zyx=(1.0, 1.0, 1.0),
                 student_source: str = "", scores: Optional[Dict[str, float]] = None,
                 modalities=("CT", "MRI")) -> None:
    """Draw one case's panel (3d arrays in the input's array order, slice taken along axis 0) into ``png_file``.
    ``modalities``: (labelled, unpaired) names; CT is shown in the mediastinal window, anything else in the 1-99th
    percentiles of its volume."""
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.patches import Rectangle

    labelled, unpaired = modalities
    width, level = CT_WINDOW
    ct_lo, ct_hi = (level - width / 2, level + width / 2) if labelled == "CT" else _percentile_window(ct)
    window = f"W{width:.0f}/L{level:.0f} HU" if labelled == "CT" else "1-99th percentile"

    def unpaired_window(volume):
        return (level - width / 2, level + width / 2) if unpaired == "CT" else _percentile_window(volume)
    z = slice_index
    ct_slice, pmri_slice = ct[z], pmri[z]
    masks = {"reference": reference[z] > 0, "student": student[z] > 0, "teacher": teacher[z] > 0}
    aspect = float(spacing_zyx[1]) / float(spacing_zyx[2])  # row height / column width in mm

    fig = Figure(figsize=(17, 4.5), dpi=110, layout="constrained")
    axes = fig.subplots(1, 4)
    n_slices = ct.shape[0]

    ax = axes[0]
    ax.imshow(ct_slice, cmap="gray", vmin=ct_lo, vmax=ct_hi, aspect=aspect, interpolation="nearest")
    ax.set_title(f"{labelled}, slice {z}/{n_slices - 1}\nwindow {window}"
                 + (" (mediastinal)" if labelled == "CT" else " of the volume"), fontsize=10)

    ax = axes[1]
    lo, hi = _percentile_window(pmri)
    ax.imshow(pmri_slice, cmap="gray", vmin=lo, vmax=hi, aspect=aspect, interpolation="nearest")
    ax.set_title(f"pseudo-{unpaired} (CMEDL generator)\nwindow 1-99th percentile of the volume", fontsize=10)

    ax = axes[2]
    if mri is not None:
        lo, hi = unpaired_window(mri)
        ax.imshow(mri[mri_slice], cmap="gray", vmin=lo, vmax=hi, interpolation="nearest",
                  aspect=float(mri_spacing_zyx[1]) / float(mri_spacing_zyx[2]))
        ax.set_title(f"real {unpaired} of ANOTHER patient (unpaired)\n{mri_name}, slice {mri_slice}/"
                     f"{mri.shape[0] - 1} (similar relative z)", fontsize=10)
    else:
        ax.text(0.5, 0.5, f"no real {unpaired} given\n(--unpaired FILE_OR_FOLDER)", ha="center", va="center",
                fontsize=11, transform=ax.transAxes)
        ax.set_title(f"real {unpaired} (another patient)", fontsize=10)

    ax = axes[3]
    # zoomed on the largest reference tumour (on the predictions where it has none on this slice)
    focus = masks["reference"] if masks["reference"].any() else (masks["student"] | masks["teacher"])
    r0, r1, c0, c1 = _zoom_box(focus, ct_slice.shape, (float(spacing_zyx[1]), float(spacing_zyx[2])))
    extent = (-0.5, ct_slice.shape[1] - 0.5, ct_slice.shape[0] - 0.5, -0.5)
    ax.imshow(ct_slice, cmap="gray", vmin=ct_lo, vmax=ct_hi, aspect=aspect, interpolation="nearest",
              extent=extent)
    _contour(ax, masks["reference"], COLOURS["reference"], extent)
    _contour(ax, masks["student"], COLOURS["student"], extent, "--")
    _contour(ax, masks["teacher"], COLOURS["teacher"], extent, ":")
    ax.set_xlim(c0 - 0.5, c1 - 0.5)
    ax.set_ylim(r1 - 0.5, r0 - 0.5)
    zoomed = (r0, r1, c0, c1) != (0, ct_slice.shape[0], 0, ct_slice.shape[1])
    ax.set_title(f"contours on {labelled}" + (" (zoom: yellow box in panel 1)" if zoomed else "") + "\n"
                 f"{window}", fontsize=10)
    if zoomed:
        axes[0].add_patch(Rectangle((c0 - 0.5, r0 - 0.5), c1 - c0, r1 - r0, fill=False, edgecolor="yellow",
                                    linewidth=1, linestyle="--"))
    labels = {"reference": "reference", "student": f"student ({student_source})", "teacher": f"teacher (on pseudo-{unpaired})"}
    if scores:
        labels = {k: (v + (f", DSC {scores[k]:.2f}" if k in scores and np.isfinite(scores[k]) else ""))
                  for k, v in labels.items()}
    styles = {"reference": "-", "student": "--", "teacher": ":"}
    handles = [Line2D([], [], color=COLOURS[k], linestyle=styles[k], linewidth=2,
                      label=labels[k] + ("" if masks[k].any() else " - none on this slice")) for k in COLOURS]
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.02), fontsize=8, frameon=False)

    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"{case_id}: slice of largest reference tumour area (axial, array axis 0); "
                 f"DSC over the whole case", fontsize=11)
    with atomic_path(png_file) as tmp:
        fig.savefig(tmp, format="png")


# ---------------------------------------------------------------------------------------------- all cases
def _read_label(rw, path: Path, shape, what: str) -> np.ndarray:
    if Path(path).is_file():
        refuse_damaged_file(path)
    try:
        seg, _ = rw.read_seg(str(path))
    except Exception as e:
        lines = [ln for ln in str(e).splitlines() if ln.strip()]
        raise UserInputError(f"{path}: cannot read this {what} ({lines[-1].strip() if lines else 'unreadable'})") \
            from None
    seg = seg[0]
    if seg.shape != tuple(shape):
        raise UserInputError(f"{path}: {what} has shape {seg.shape} but the image has {tuple(shape)}")
    return seg


def make_case_panels(model, images_folder, labels_folder, out_folder, student_pred_folder=None, mri=None,
                     overwrite: bool = False, step_size: float = 0.5, show_progress: bool = False) -> List[Path]:
    """A PNG per case of ``images_folder`` (nnU-Net-named CT files) with the reference labels of ``labels_folder``;
    student segmentations from ``student_pred_folder`` (nnUNetv2_predict output) or computed with the model's student.
    Writes ``index.json`` beside the PNGs; returns the PNG paths in case order."""
    from tqdm import tqdm

    from nnunet_cmedl.inference.export_pmri import input_cases, translate_case

    images_folder, labels_folder, out_folder = Path(images_folder), Path(labels_folder), Path(out_folder)
    if not images_folder.is_dir():
        raise UserInputError(f"{images_folder}: images folder not found")
    if not labels_folder.is_dir():
        raise UserInputError(f"{labels_folder}: reference labels folder not found")
    if student_pred_folder is not None and not Path(student_pred_folder).is_dir():
        raise UserInputError(f"{student_pred_folder}: --student-pred folder not found")
    cases = input_cases(model, images_folder)
    ending = model.file_ending
    # every input and output checked before the first (slow) case
    for c in cases:
        ref = labels_folder / f"{c.case_id}{ending}"
        if not ref.is_file():
            raise UserInputError(f"{ref}: reference label of case {c.case_id} not found")
        if student_pred_folder is not None and not (Path(student_pred_folder) / f"{c.case_id}{ending}").is_file():
            raise UserInputError(f"{Path(student_pred_folder) / (c.case_id + ending)}: student prediction of case "
                                 f"{c.case_id} not found")
    pngs = [out_folder / f"{c.case_id}.png" for c in cases]
    for f in pngs + [out_folder / INDEX_NAME]:
        refuse_existing(f, overwrite)
    mris = mri_files(mri)
    out_folder.mkdir(parents=True, exist_ok=True)

    entries = []
    for i, (case, png) in enumerate(tqdm(list(zip(cases, pngs)), desc="panels", unit="case",
                                         disable=not show_progress, file=sys.stderr)):
        result = translate_case(model, case.image_files, teacher_seg=True, student_seg=student_pred_folder is None,
                                step_size=step_size, case_id=case.case_id)
        rw = result.reader_writer
        ct, _ = rw.read_images(case.image_files[:1])
        ct = ct[0]
        reference = _read_label(rw, labels_folder / f"{case.case_id}{ending}", ct.shape, "reference label")
        if student_pred_folder is not None:
            student = _read_label(rw, Path(student_pred_folder) / f"{case.case_id}{ending}", ct.shape,
                                  "student prediction")
            student_source = "--student-pred"
        else:
            student, student_source = result.student_seg, "computed"
        teacher = result.teacher_seg
        pmri = result.pmri if result.pmri.ndim == ct.ndim else result.pmri[0]
        z = largest_area_slice(reference)
        mri_array, mri_name, mri_slice, mri_spacing = None, "", None, (1.0, 1.0, 1.0)
        if mris:
            mri_path = mris[i % len(mris)]
            mri_array, mri_spacing = read_mri(mri_path)
            relative = z / max(ct.shape[0] - 1, 1)
            mri_slice = int(round(relative * (mri_array.shape[0] - 1)))
            mri_name = mri_path.name
        scores = {"student": dice(student, reference), "teacher": dice(teacher, reference)}
        render_panel(png, case.case_id, ct, pmri, reference, student, teacher, z, result.properties["spacing"],
                     mri_array, mri_name, mri_slice, mri_spacing, student_source, scores, model.modalities)
        entries.append({
            "case": case.case_id, "png": png.name, "slice": z, "axis": 0, "num_slices": int(ct.shape[0]),
            "reference_area_voxels": int((reference[z] > 0).sum()), "reference_empty": not bool((reference > 0).any()),
            "student_source": student_source, "student_file": (str(Path(student_pred_folder) /
                                                                   f"{case.case_id}{ending}")
                                                               if student_pred_folder is not None else None),
            "dice_student": scores["student"], "dice_teacher": scores["teacher"],
            "mri_file": str(mris[i % len(mris)]) if mris else None, "mri_slice": mri_slice,
            "image_files": [str(f) for f in case.image_files],
        })
    index = {"model_folder": str(model.model_folder), "checkpoint": str(model.checkpoint_file),
             "configuration": model.configuration_name,
             "modalities": {"labelled": model.modalities[0], "unpaired": model.modalities[1]},
             "ct_window": {"width": CT_WINDOW[0], "level": CT_WINDOW[1], "name": "mediastinal"},
             "slice_rule": "argmax over axis 0 of the reference foreground area (middle slice if empty)",
             "contours": {"reference": "green", "student": "red", "teacher": "blue"},
             "panels": [{k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in e.items()}
                        for e in entries]}
    with atomic_file(out_folder / INDEX_NAME, overwrite=True) as f:
        json.dump(index, f, indent=2)
    return pngs


# ---------------------------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    from nnunet_cmedl.inference.cmedl_model import add_model_arguments
    p = argparse.ArgumentParser(
        prog="nnunet_cmedl panels",
        description="One PNG per case: CT (W400/L40), pseudo-MRI, a real MRI of another patient, and the reference "
                    "(green) / student (red) / teacher (blue) contours on the slice of largest reference area; plus "
                    "index.json. For a model trained on labelled MRI with unpaired CT: MRI, pseudo-CT, a real CT.")
    add_model_arguments(p)
    p.add_argument("-i", "--images", required=True, metavar="IMAGES_FOLDER",
                   help="folder of nnU-Net-named images of the labelled modality (CASE_0000.nii.gz)")
    p.add_argument("-ref", "--reference", required=True, metavar="LABELS_FOLDER",
                   help="folder of reference labels (CASE.nii.gz)")
    p.add_argument("--student-pred", default=None, metavar="FOLDER",
                   help="the student's predictions (nnUNetv2_predict output); computed with the student if absent")
    p.add_argument("-o", "--output", default=None, metavar="OUT_FOLDER",
                   help="where the PNGs and index.json go (default MODEL_FOLDER/fold_F/cmedl_panels)")
    p.add_argument("--unpaired", "--mri", dest="mri", default=None, metavar="FILE_OR_FOLDER",
                   help="real volume(s) of the unpaired modality shown for comparison (other patients)")
    p.add_argument("--overwrite", action="store_true", help="replace existing PNGs and index.json")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def main(argv=None) -> int:
    from nnunet_cmedl.inference.cmedl_model import model_from_arguments
    args = build_parser().parse_args(argv)
    model = model_from_arguments(args)
    out = Path(args.output) if args.output else model.checkpoint_file.parent / "cmedl_panels"
    with exclusive_output(out, "nnunet_cmedl panels"):
        pngs = make_case_panels(model, args.images, args.reference, out, args.student_pred, args.mri,
                                overwrite=args.overwrite, step_size=args.step_size, show_progress=not args.quiet)
    print(f"wrote {len(pngs)} panel(s) and {INDEX_NAME} to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
