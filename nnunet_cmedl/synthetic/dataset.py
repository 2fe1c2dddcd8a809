"""Write the synthetic thorax as an nnU-Net raw dataset, plus unpaired volumes of the other modality, tumour metadata
and a preview.

Layout (``raw_root/DatasetNNN_<name>/``), labelled CT (the default, the paper's direction)::

    imagesTr/thorax_000_0000.nii.gz   labelsTr/thorax_000.nii.gz     (CT, label 1 = tumour)
    imagesTs/thorax_012_0000.nii.gz   labelsTs/thorax_012.nii.gz
    dataset.json                      (written by nnU-Net's generate_dataset_json; "unpaired_modality": "MRI")
    unpairedMRI/mri_000.nii.gz        (T2w-like MRI of other patients, no labels; --unpaired-out moves it)
    unpairedMRI_labels_for_inspection/mri_000.nii.gz   (for checks and previews only; never used for training)
    phantom_metadata.json             (per tumour: location easy/hard, size, measured CT contrast, neighbours)
    preview.png

With ``labelled_modality="MRI"`` the labelled cases are T2w-like MRI (channel "T2w", on the MRI grid) and the
unpaired volumes CT of other patients (``unpairedCT/ct_000.nii.gz``, ``"unpaired_modality": "CT"``).

The unpaired folder lives inside the dataset folder by default: a sibling ``DatasetNNN_...`` folder would make
nnU-Net's lookup of the dataset id ambiguous. The whole dataset folder is built under a temporary name and renamed
into place when complete.
"""
import json
import re
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nnunet_cmedl.errors import UserInputError
from nnunet_cmedl.synthetic import phantom
from mri_unpaired.modality import other_modality
from mri_unpaired.atomic import (atomic_directory, exclusive_output, refuse_existing, refuse_foreign,
                                 write_manifest)

CHANNEL_NAMES = {"CT": {0: "CT"}, "MRI": {0: "T2w"}}   # nnU-Net normalises "CT" with its CT scheme, "T2w" z-score
MODALITIES = tuple(CHANNEL_NAMES)
LABELS = {"background": 0, "tumour": 1}
FILE_ENDING = ".nii.gz"
METADATA_NAME = "phantom_metadata.json"
TOOL = "nnunet_cmedl make-synthetic"  # in the manifests that let --overwrite replace only what it wrote
PREVIEW_NAME = "preview.png"


def unpaired_folder_name(unpaired_modality: str) -> str:
    return f"unpaired{unpaired_modality}"


def inspection_labels_folder_name(unpaired_modality: str) -> str:
    return f"unpaired{unpaired_modality}_labels_for_inspection"


_RESERVED_NAMES = {"imagesTr", "labelsTr", "imagesTs", "labelsTs", "dataset.json", METADATA_NAME, PREVIEW_NAME,
                   *(inspection_labels_folder_name(m) for m in MODALITIES)}


@dataclass(frozen=True)
class SyntheticDatasetPaths:
    dataset_folder: Path
    unpaired_folder: Path
    preview_png: Path | None
    metadata_json: Path
    labelled_modality: str = "CT"
    unpaired_modality: str = "MRI"


def labelled_case_id(index: int) -> str:
    return f"thorax_{index:03d}"


def unpaired_case_id(index: int, unpaired_modality: str = "MRI") -> str:
    return f"{unpaired_modality.lower()}_{index:03d}"


def labelled_cases(metadata: dict) -> dict:
    """The labelled cases of a phantom_metadata.json (``ct_cases`` in files written before either modality could be
    labelled)."""
    return metadata["labelled_cases"] if "labelled_cases" in metadata else metadata["ct_cases"]


def unpaired_cases(metadata: dict) -> dict:
    return metadata["unpaired_cases"] if "unpaired_cases" in metadata else metadata["mri_cases"]


def _triple(value, setting: str, kind) -> tuple:
    try:
        values = tuple(kind(v) for v in value)
    except (TypeError, ValueError):
        raise UserInputError(f"{setting}: expected three numbers (z, y, x), got {value!r}") from None
    if len(values) != 3 or any(v <= 0 for v in values):
        raise UserInputError(f"{setting}: expected three positive numbers (z, y, x), got {value!r}")
    return values


def _check_settings(dataset_id, dataset_name, num_train, num_test, num_unpaired, seed) -> None:
    if not 1 <= int(dataset_id) <= 999:
        raise UserInputError(f"dataset id (-d) {dataset_id}: must be between 1 and 999 (nnU-Net uses three digits)")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]*", dataset_name or ""):
        raise UserInputError(f"dataset name (--name) {dataset_name!r}: use letters, digits, '_' or '-'")
    if num_train < 1:
        raise UserInputError(f"--num-train {num_train}: at least one training case is needed")
    if num_test < 0 or num_unpaired < 0:
        raise UserInputError(f"--num-test {num_test} / --num-unpaired {num_unpaired}: must not be negative")
    if num_train + num_test > 1000 or num_unpaired > 1000:
        raise UserInputError("--num-train + --num-test and --num-unpaired: at most 1000 each (case ids have 3 "
                             "digits)")
    if int(seed) < 0:
        raise UserInputError(f"--seed {seed}: must be a non-negative integer")


def _resolve_unpaired_folder(folder, dataset_folder: Path, raw_root: Path, modality: str) -> Path:
    if folder is None:
        return dataset_folder / unpaired_folder_name(modality)
    out = Path(folder).expanduser().absolute()
    if out == dataset_folder or dataset_folder.is_relative_to(out):
        raise UserInputError(f"{out}: the unpaired {modality} folder (--unpaired-out) must not be or contain the "
                             f"dataset folder {dataset_folder}")
    if out.is_relative_to(dataset_folder) and out.relative_to(dataset_folder).parts[0] in _RESERVED_NAMES:
        raise UserInputError(f"{out}: the unpaired {modality} folder (--unpaired-out) must not be one of the "
                             f"dataset's own entries ({', '.join(sorted(_RESERVED_NAMES))})")
    if out.parent == raw_root and re.match(r"Dataset\d{3}_", out.name):
        raise UserInputError(f"{out}: a DatasetNNN_ folder for the unpaired {modality} in nnUNet_raw would make "
                             f"nnU-Net's dataset lookup ambiguous; put it inside the dataset folder (the default) or "
                             f"elsewhere")
    return out


def _refuse_clashing_dataset_id(raw_root: Path, dataset_id: int, dataset_folder: Path) -> None:
    if not raw_root.is_dir():
        return
    clashes = sorted(p.name for p in raw_root.glob(f"Dataset{dataset_id:03d}_*") if p != dataset_folder)
    if clashes:
        raise UserInputError(f"{raw_root}: holds {clashes[0]} already, with the same dataset id {dataset_id:03d}; "
                             f"nnU-Net could not tell them apart, choose another -d")


def _write_nifti(array: np.ndarray, grid: phantom.Grid, path: Path) -> None:
    import SimpleITK as sitk
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(grid.spacing_xyz)
    image.SetOrigin(grid.origin_xyz)
    sitk.WriteImage(image, str(path), True)


def _rounded(value, digits=2):
    if isinstance(value, dict):
        return {k: _rounded(v, digits) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_rounded(v, digits) for v in value]
    if isinstance(value, (bool, np.bool_)) or value is None or isinstance(value, str):
        return bool(value) if isinstance(value, np.bool_) else value
    if isinstance(value, (int, np.integer)):
        return int(value)
    return round(float(value), digits)


def _tumour_record(tumour: phantom.Tumour, measured: dict, volume: phantom.PhantomVolume, k: int,
                   modality: str) -> dict:
    anatomy, grid = volume.anatomy, volume.grid
    centre_xyz = tumour.centre[::-1]
    record = {
        "id": k,
        "location": tumour.location,
        "difficulty": "hard" if tumour.location == "mediastinal" else "easy",
        "side": "left" if tumour.side > 0 else "right",
        "shape": tumour.shape,
        "centre_mm_xyz": centre_xyz,
        "centre_voxel_zyx": grid.voxel_of(tumour.centre),
        "radius_mm": tumour.radius,
        "voxels": measured["voxels"],
    }
    if not measured["voxels"]:
        return record
    record["inside_voxel_zyx"] = measured["inside_voxel_zyx"]
    record["volume_ml"] = measured["volume_ml"]
    record["equivalent_radius_mm"] = (3 * measured["volume_ml"] * 1000 / (4 * np.pi)) ** (1 / 3)
    if modality == "ct":
        hard = tumour.location == "mediastinal"
        record.update({
            "ct_mean_hu": measured["mean"],
            "surrounding": ("mediastinum, heart, vessels and collapsed lung" if hard else "lung parenchyma"),
            "ct_contrast_vs_surrounding_hu": measured["contrast_vs_adjacent_soft_tissue" if hard
                                                      else "contrast_vs_lung"],
            "ct_contrast_vs_mediastinum_hu": measured["contrast_vs_mediastinum"],
            "ct_contrast_vs_lung_hu": measured["contrast_vs_lung"],
            "ct_contrast_vs_atelectasis_hu": measured["contrast_vs_atelectasis"],
            "boundary_fractions": measured["boundary_fractions"],
            "soft_tissue_boundary_fraction": measured["soft_tissue_boundary_fraction"],
            "touches_atelectasis": measured["touches_atelectasis"],
            "touches_vessel": measured["touches_vessel"],
        })
        # The noise-free values the phantom was built with (the measured ones above include noise).
        if hard:
            record["design"] = {
                "ct_mean_hu": tumour.ct_mean_hu,
                "mediastinum_hu": anatomy.ct_hu[phantom.Tissue.MEDIASTINUM],
                "contrast_vs_mediastinum_hu": tumour.ct_mean_hu - anatomy.ct_hu[phantom.Tissue.MEDIASTINUM],
                "texture_sd_hu": tumour.ct_texture_sd_hu,
                "atelectasis_hu": tumour.atelectasis_ct_hu,
                "atelectasis_enhancement_hu": tumour.atelectasis_enhancement_hu,
                "adjacent_vessel": tumour.vessel is not None,
            }
        else:
            record["design"] = {"ct_mean_hu": tumour.ct_mean_hu, "lung_hu": anatomy.ct_hu[phantom.Tissue.LUNG],
                                "texture_sd_hu": tumour.ct_texture_sd_hu}
    else:
        record.update({"mri_mean": measured["mean"],
                       "mri_contrast_vs_mediastinum": measured["contrast_vs_mediastinum"],
                       "mri_contrast_vs_atelectasis": measured["contrast_vs_atelectasis"]})
    return record


def _summary(cases: dict) -> dict:
    """Tumour counts; for labelled CT also the CT contrasts (None for labelled MRI)."""
    tumours = [t for case in cases.values() for t in case["tumours"] if t["voxels"]]
    hard = [t for t in tumours if t["difficulty"] == "hard"]
    easy = [t for t in tumours if t["difficulty"] == "easy"]

    def stats(values):
        values = [abs(v) for v in values if v is not None]
        return {"mean": float(np.mean(values)), "min": float(np.min(values)), "max": float(np.max(values))} \
            if values else None
    return {
        "tumours": len(tumours), "hard_tumours": len(hard), "easy_tumours": len(easy),
        "hard_abs_ct_contrast_vs_mediastinum_hu": stats([t.get("ct_contrast_vs_mediastinum_hu") for t in hard]),
        "hard_abs_ct_contrast_vs_surrounding_hu": stats([t.get("ct_contrast_vs_surrounding_hu") for t in hard]),
        "easy_abs_ct_contrast_vs_lung_hu": stats([t.get("ct_contrast_vs_lung_hu") for t in easy]),
        "hard_touching_atelectasis": sum(t.get("touches_atelectasis", False) for t in hard),
        "hard_touching_vessel": sum(t.get("touches_vessel", False) for t in hard),
    }


def make_synthetic_dataset(raw_root, dataset_id: int = 501, dataset_name: str = "CMEDLThorax", num_train: int = 12,
                           num_test: int = 8, num_unpaired: int = 12, ct_shape=(32, 96, 128), seed: int = 0,
                           overwrite: bool = False, unpaired_folder=None, preview: bool = True,
                           show_progress: bool = True, ct_spacing=None, mri_shape=None, mri_spacing=None,
                           hard_ct_signal: str = phantom.HARD_CT_SIGNALS[0],
                           labelled_modality: str = "CT") -> SyntheticDatasetPaths:
    """Write the synthetic labelled dataset (nnU-Net raw layout, CT or MRI) and the unpaired volumes of the other
    modality; see the module docstring.

    ct_spacing defaults to the spacing that makes ct_shape cover the phantom's field of view (160 x 288 x 384 mm,
    i.e. (5, 3, 3) mm for the default shape); the MRI covers the same field at 0.8 x the CT's slice spacing and 2/3
    of its in-plane spacing unless mri_shape/mri_spacing say otherwise. Same arguments, bit-identical volumes."""
    from nnunetv2.dataset_conversion.generate_dataset_json import generate_dataset_json
    from tqdm import tqdm

    if labelled_modality not in MODALITIES:
        raise UserInputError(f"--labelled-modality {labelled_modality!r}: expected one of {', '.join(MODALITIES)}")
    unpaired_modality = other_modality(labelled_modality)
    _check_settings(dataset_id, dataset_name, num_train, num_test, num_unpaired, seed)
    if hard_ct_signal not in phantom.HARD_CT_SIGNALS:
        raise UserInputError(f"--hard-ct-signal {hard_ct_signal!r}: expected one of "
                             f"{', '.join(phantom.HARD_CT_SIGNALS)}")
    ct_shape = _triple(ct_shape, "ct_shape (--shape)", int)
    ct_spacing = phantom.default_ct_spacing(ct_shape) if ct_spacing is None \
        else _triple(ct_spacing, "ct_spacing (--spacing)", float)
    ct_grid = phantom.Grid(ct_shape, ct_spacing)
    phantom.check_grid(ct_grid, "CT grid (--shape/--spacing)")
    mri_grid = phantom.default_mri_grid(ct_grid)
    if mri_shape is not None or mri_spacing is not None:
        spacing = mri_grid.spacing if mri_spacing is None else _triple(mri_spacing, "mri_spacing", float)
        shape = tuple(int(round(f / s)) for f, s in zip(ct_grid.fov_mm, spacing)) if mri_shape is None \
            else _triple(mri_shape, "mri_shape", int)
        mri_grid = phantom.Grid(shape, spacing)
        phantom.check_grid(mri_grid, "MRI grid (mri_shape/mri_spacing)")

    raw_root = Path(raw_root).expanduser().absolute()
    if raw_root.exists() and not raw_root.is_dir():
        raise UserInputError(f"{raw_root}: the raw data root (--raw / nnUNet_raw) is not a folder")
    dataset_folder = raw_root / f"Dataset{int(dataset_id):03d}_{dataset_name}"
    mri_final = _resolve_unpaired_folder(unpaired_folder, dataset_folder, raw_root, unpaired_modality)
    mri_inside = mri_final.is_relative_to(dataset_folder)
    what = f"unpaired {unpaired_modality} folder"
    # Refuse before the work, not after it: both outputs are checked up front.
    refuse_existing(dataset_folder, overwrite, "dataset folder")
    refuse_foreign(dataset_folder, TOOL, "dataset folder")
    if not mri_inside:
        refuse_existing(mri_final, overwrite, what)
        refuse_foreign(mri_final, TOOL, what)
    _refuse_clashing_dataset_id(raw_root, int(dataset_id), dataset_folder)

    grids = {"CT": ct_grid, "MRI": mri_grid}
    makers = {"CT": lambda index: phantom.make_ct_volume(seed, index, ct_grid, hard_ct_signal),
              "MRI": lambda index: phantom.make_mri_volume(seed, index, mri_grid)}
    inspection = inspection_labels_folder_name(unpaired_modality)
    case_ids = [labelled_case_id(i) for i in range(num_train + num_test)]
    preview_labelled, preview_unpaired = [], []
    metadata = {
        "generator": "nnunet_cmedl make-synthetic (nnunet_cmedl.synthetic.phantom)",
        "seed": int(seed),
        "labelled_modality": labelled_modality,
        "unpaired_modality": unpaired_modality,
        "hard_ct_signal": hard_ct_signal,
        "design": ("CT thorax phantoms. 'lung' tumours (easy) lie in the lung parenchyma with hundreds of HU of "
                   "contrast. 'mediastinal' tumours (hard) abut the mediastinum with a mean CT value within 4 HU of "
                   "it; their lung side lies against collapsed lung (atelectasis), half of them also against a "
                   "vessel, both of nearly the same HU; only a "
                   "faint low-frequency internal texture (a few HU sd) sets them apart. The unpaired T2w-like MRI "
                   "shows other patients, in whom tumours are bright against an intermediate mediastinum and "
                   "collapsed lung."
                   + (" Hard CT signal 'enhancing-atelectasis': the collapsed lung enhances 10-25 HU more than the "
                      "tumour (as on contrast-enhanced CT), a subtle edge on the tumour's lung side only."
                      if hard_ct_signal == "enhancing-atelectasis" else " Hard CT signal 'none'.")),
        "conventions": {
            "centre_mm_xyz": "physical point (mm) as SimpleITK reports it for the written images (LPS)",
            "centre_voxel_zyx": "fractional numpy index (z, y, x) of the nominal centre",
            "inside_voxel_zyx": "a voxel of the written label inside this tumour (to pick its connected component)",
            "contrasts": f"tumour mean minus the mean of the named tissue within {phantom.SHELL_MM:g} mm of the "
                         f"tumour, measured on the written CT (HU); noise included",
            "boundary_fractions": "share of the tumour's face-adjacent outside voxels by tissue",
        },
        "ct_grid": {"shape_zyx": ct_grid.shape, "spacing_zyx_mm": ct_grid.spacing},
        "mri_grid": {"shape_zyx": mri_grid.shape, "spacing_zyx_mm": mri_grid.spacing},
        "unpaired_folder": str(mri_final.relative_to(dataset_folder)) if mri_inside else str(mri_final),
        "labelled_cases": {},
        "unpaired_cases": {},
    }

    with ExitStack() as stack:
        stack.enter_context(exclusive_output(dataset_folder, TOOL))
        build = stack.enter_context(atomic_directory(dataset_folder, overwrite))
        mri_build = build / mri_final.relative_to(dataset_folder) if mri_inside \
            else stack.enter_context(atomic_directory(mri_final, overwrite))
        for sub in ("imagesTr", "labelsTr", "imagesTs", "labelsTs", inspection):
            (build / sub).mkdir()
        mri_build.mkdir(parents=True, exist_ok=True)

        progress = stack.enter_context(tqdm(total=num_train + num_test + num_unpaired, desc="synthetic cases",
                                            unit="case", disable=not show_progress))
        grid = grids[labelled_modality]
        for index, case_id in enumerate(case_ids):
            split = "train" if index < num_train else "test"
            images, labels = ("imagesTr", "labelsTr") if split == "train" else ("imagesTs", "labelsTs")
            volume = makers[labelled_modality](index)
            _write_nifti(volume.image, grid, build / images / f"{case_id}_0000{FILE_ENDING}")
            _write_nifti(volume.maps.label, grid, build / labels / f"{case_id}{FILE_ENDING}")
            measured = phantom.measure_tumours(volume)
            record = {
                "split": split,
                "image": f"{images}/{case_id}_0000{FILE_ENDING}",
                "label": f"{labels}/{case_id}{FILE_ENDING}",
                "label_voxels": int(volume.maps.label.sum()),
                "tumours": [_tumour_record(t, m, volume, k, labelled_modality.lower())
                            for k, (t, m) in enumerate(zip(volume.anatomy.tumours, measured), start=1)],
            }
            if labelled_modality == "CT":
                record["ct_noise_sd_hu"] = phantom.ct_noise_sd(volume.anatomy, ct_grid)
                record["mediastinum_hu"] = volume.anatomy.ct_hu[phantom.Tissue.MEDIASTINUM]
            metadata["labelled_cases"][case_id] = record
            if preview and len(preview_labelled) < 4:
                preview_labelled.append((case_id, volume))
            progress.update()
        grid = grids[unpaired_modality]
        for index in range(num_unpaired):
            case_id = unpaired_case_id(index, unpaired_modality)
            volume = makers[unpaired_modality](index)
            _write_nifti(volume.image, grid, mri_build / f"{case_id}{FILE_ENDING}")
            _write_nifti(volume.maps.label, grid, build / inspection / f"{case_id}{FILE_ENDING}")
            measured = phantom.measure_tumours(volume)
            metadata["unpaired_cases"][case_id] = {
                "image": f"{case_id}{FILE_ENDING}",
                "inspection_label": f"{inspection}/{case_id}{FILE_ENDING}",
                "tumours": [_tumour_record(t, m, volume, k, unpaired_modality.lower())
                            for k, (t, m) in enumerate(zip(volume.anatomy.tumours, measured), start=1)],
            }
            if preview and len(preview_unpaired) < 4:
                preview_unpaired.append((case_id, volume))
            progress.update()

        metadata["summary"] = _summary(metadata["labelled_cases"])
        (build / METADATA_NAME).write_text(json.dumps(_rounded(metadata), indent=1) + "\n")
        names = {"CT": "CT", "MRI": "T2w-like MRI"}
        generate_dataset_json(
            str(build), channel_names=dict(CHANNEL_NAMES[labelled_modality]), labels=dict(LABELS),
            num_training_cases=num_train, file_ending=FILE_ENDING, dataset_name=dataset_folder.name,
            description=f"Synthetic thorax {names[labelled_modality]} for CMEDL: easy lung and hard (on CT) "
                        f"mediastinal tumours; unpaired {names[unpaired_modality]} of other patients in "
                        f"{metadata['unpaired_folder']}; per-tumour details in {METADATA_NAME}",
            license="CC0 (synthetic phantom)", converted_by="nnunet_cmedl make-synthetic",
            unpaired_modality=unpaired_modality)  # read by nnunet_cmedl preprocess-unpaired
        if preview:
            write_preview(build / PREVIEW_NAME, *((preview_labelled, preview_unpaired) if labelled_modality == "CT"
                                                  else (preview_unpaired, preview_labelled)),
                          labelled_modality=labelled_modality)
        write_manifest(build, TOOL)
        if not mri_inside:
            write_manifest(mri_build, TOOL)

    return SyntheticDatasetPaths(dataset_folder=dataset_folder, unpaired_folder=mri_final,
                                 preview_png=dataset_folder / PREVIEW_NAME if preview else None,
                                 metadata_json=dataset_folder / METADATA_NAME, labelled_modality=labelled_modality,
                                 unpaired_modality=unpaired_modality)


# -------------------------------------------------------------------------------------------------------- preview
def _first_tumour(cases, location):
    """(case id, volume, tumour number) of the largest tumour of this location in the first case that has one."""
    for case_id, volume in cases:
        found = [(int((volume.maps.tumour_id == k).sum()), k)
                 for k, t in enumerate(volume.anatomy.tumours, start=1) if t.location == location]
        found = [f for f in found if f[0] > 0]
        if found:
            return case_id, volume, max(found)[1]
    return None


def write_preview(path: Path, ct_cases, mri_cases, labelled_modality: str = "CT") -> None:
    """CT: a hard tumour's slice without and with the label contour (mediastinal window), a lung tumour's slice
    (lung window); MRI: a hard tumour's slice without and with its inspection contour, and a lung tumour's slice."""
    from nnunet_cmedl.plotting import largest_area_slice, subplots

    rows = [("CT", ct_cases, {"mediastinal": (-160, 240, "W400/L40"), "lung": (-1350, 150, "W1500/L-600")}),
            ("MRI", mri_cases, {"mediastinal": (0, 900, ""), "lung": (0, 900, "")})]
    rows = [r for r in rows if r[1]]
    fig, axes = subplots(len(rows), 3, figsize=(15, 4.6 * len(rows)), squeeze=False)
    for row, (modality, cases, windows) in enumerate(rows):
        panels = []
        hard, easy = _first_tumour(cases, "mediastinal"), _first_tumour(cases, "lung")
        if hard:
            panels += [(hard, "mediastinal", False), (hard, "mediastinal", True)]
        if easy:
            panels.append((easy, "lung", True))
        elif hard:
            panels.append((hard, "lung", True))  # no lung tumour among the kept cases: the hard one, other window
        for col in range(3):
            ax = axes[row, col]
            ax.axis("off")
            if col >= len(panels):
                continue
            (case_id, volume, k), location, contour = panels[col]
            mask = volume.maps.tumour_id == k
            z = largest_area_slice(mask)
            lo, hi, window = windows[location]
            sy, sx = volume.grid.spacing[1:]
            ax.imshow(volume.image[z], cmap="gray", vmin=lo, vmax=hi, aspect=sy / sx, interpolation="nearest")
            if contour:
                ax.contour(volume.maps.label[z], levels=[0.5], colors="red", linewidths=0.8)
            kind = "hard (mediastinal)" if volume.anatomy.tumours[k - 1].location == "mediastinal" \
                else "easy (lung)"
            text = f"{modality} {case_id} slice {z}: {kind} tumour"
            if modality == "CT":
                mean = float(volume.image[mask].mean())
                med = volume.image[volume.maps.tissue == phantom.Tissue.MEDIASTINUM].mean()
                text += f"\nmean {mean:.0f} HU, mediastinum {med:.0f} HU, {window}"
            text += ", label contour" if contour else ", no contour"
            ax.set_title(text, fontsize=9)
    if labelled_modality == "CT":
        title = ("Synthetic thorax: CT (top, tumour label in red) and unpaired T2w-like MRI of other patients "
                 "(bottom, inspection labels)")
    else:
        title = ("Synthetic thorax: unpaired CT of other patients (top, inspection labels) and labelled T2w-like "
                 "MRI (bottom, tumour label in red)")
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
