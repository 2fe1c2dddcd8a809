"""``nnunet_cmedl export-translated`` (alias ``export-pmri``): translate labelled-modality volumes into the unpaired
modality with a trained CMEDL model: CT into pseudo-MRI (pMRI) in the paper's direction, MRI into pseudo-CT (pCT) for
a model trained on labelled MRI with unpaired CT (the checkpoint's ``cmedl_modalities``; older checkpoints: CT, MRI).
Below, CT/pMRI name the paper's direction.

For each case, the way ``nnUNetv2_predict`` treats an input:
  1. nnU-Net's preprocessing of the model's configuration (transpose, crop to nonzero, CT normalisation, resampling);
  2. the generator over the volume as a sliding window over the patch size with nnU-Net's Gaussian weighting
     (2d configurations slice by slice over the first axis); accumulated in float32 (nnU-Net's predictor accumulates
     logits in float16 and with ``num_segmentation_heads`` channels, neither of which suits image intensities);
  3. back to the input's geometry: resampled with the configuration's ``resampling_fn_probabilities``, the crop
     undone (outside filled with the pMRI's minimum), the transpose undone; written as float32 NIfTI with the input's
     spacing / origin / direction.
Optionally the teacher's segmentation of the pMRI and the student's of the CT, both with nnU-Net's own predictor
(``nnUNetPredictor`` + ``convert_predicted_logits_to_segmentation_with_correct_shape``), so the student's output is
what ``nnUNetv2_predict --disable_tta`` writes.

Outputs per case: ``<case>_pMRI.nii.gz`` (``_pCT`` for an MRI-labelled model) [``<case>_teacher_seg.nii.gz``] [``<case>_student_seg.nii.gz``]; each written
under a temporary name and renamed when complete; existing outputs are refused unless --overwrite.
"""
import argparse
import contextlib
import io
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from nnunet_cmedl.errors import UserInputError
from nnunet_cmedl.inference.cmedl_model import CMEDLModel, add_model_arguments, model_from_arguments
from mri_unpaired.atomic import atomic_temp_path, exclusive_output, refuse_existing



def translated_suffix(unpaired_modality: str = "MRI") -> str:
    """``_pMRI.nii.gz``, ``_pCT.nii.gz``: the translated image's file suffix."""
    return f"_p{unpaired_modality}.nii.gz"
TEACHER_SEG_SUFFIX = "_teacher_seg"
STUDENT_SEG_SUFFIX = "_student_seg"
_CHANNEL_RE = r"_(\d{4})"


# ---------------------------------------------------------------------------------------------- inputs
@dataclass
class CaseFiles:
    case_id: str
    image_files: List[str]        # one per CT channel, in channel order


def _all_file_endings(model: CMEDLModel) -> List[str]:
    from nnunetv2.imageio.reader_writer_registry import LIST_OF_IO_CLASSES
    endings = {model.file_ending} | {e for rw in LIST_OF_IO_CLASSES for e in rw.supported_file_endings}
    return sorted(endings, key=len, reverse=True)


def _split_ending(name: str, endings: Sequence[str]) -> Tuple[str, str]:
    for e in endings:
        if name.lower().endswith(e.lower()) and len(name) > len(e):
            return name[:-len(e)], name[len(name) - len(e):]
    return name, ""


def _channel_names(model: CMEDLModel) -> str:
    names = model.dataset_json.get("channel_names", model.dataset_json.get("modality", {}))
    return ", ".join(f"{k}: {v}" for k, v in names.items())


def _check_channels(model: CMEDLModel, case_id: str, found: Dict[int, str], where) -> List[str]:
    expected = list(range(model.num_input_channels))
    if sorted(found) != expected:
        listing = ", ".join(os.path.basename(found[c]) for c in sorted(found)) or "none"
        raise UserInputError(f"{where}: case {case_id} has channels {sorted(found)} ({listing}) but the model expects "
                             f"{model.num_input_channels} ({_channel_names(model)})")
    return [found[c] for c in expected]


def input_cases(model: CMEDLModel, input_path) -> List[CaseFiles]:
    """Cases of ``input_path``: one CT file (its sibling channel files join it, nnU-Net naming) or a folder of
    nnU-Net-named files ``CASE_XXXX<file_ending>`` grouped per case like nnUNetv2_predict does."""
    input_path = Path(input_path)
    if not input_path.exists():
        raise UserInputError(f"{input_path}: input not found")
    ending = model.file_ending
    if input_path.is_dir():
        ours = (translated_suffix("MRI"), translated_suffix("CT"), TEACHER_SEG_SUFFIX + ending, STUDENT_SEG_SUFFIX + ending)  # outputs written here
        files = sorted(p.name for p in input_path.iterdir() if p.is_file() and p.name.endswith(ending)
                       and not p.name.startswith(".") and not p.name.endswith(ours))
        if not files:
            raise UserInputError(f"{input_path}: no {ending} files in this folder (the model's file ending, from "
                                 f"its dataset.json)")
        pattern = re.compile(r"(.+)" + _CHANNEL_RE + re.escape(ending))
        groups: Dict[str, Dict[int, str]] = {}
        for name in files:
            m = pattern.fullmatch(name)
            if m is None:
                raise UserInputError(f"{input_path / name}: not named like nnU-Net's inputs CASE_XXXX{ending} "
                                     f"(XXXX = 4-digit channel index)")
            groups.setdefault(m.group(1), {})[int(m.group(2))] = str(input_path / name)
        return [CaseFiles(case, _check_channels(model, case, found, input_path)) for case, found in
                sorted(groups.items())]

    stem, file_ending = _split_ending(input_path.name, _all_file_endings(model))
    m = re.fullmatch(r"(.+)" + _CHANNEL_RE, stem)
    if m is None:  # a single file that does not follow nnU-Net's naming: the case is the file's name
        return [CaseFiles(stem, _check_channels(model, stem, {0: str(input_path)}, input_path))]
    case_id = m.group(1)
    found = {}
    for p in input_path.parent.iterdir():
        mm = re.fullmatch(re.escape(case_id) + _CHANNEL_RE + re.escape(file_ending), p.name)
        if mm is not None:
            found[int(mm.group(1))] = str(p)
    if model.num_input_channels == 1:
        found = {0: str(input_path)}  # the file asked for, whatever its channel index
    return [CaseFiles(case_id, _check_channels(model, case_id, found, input_path))]


def reader_writer_for(model: CMEDLModel, image_file: str):
    """nnU-Net's reader/writer of the plans when it reads this file ending, else the one nnU-Net picks for it."""
    rw_class = model.plans_manager.image_reader_writer_class
    _, ending = _split_ending(os.path.basename(image_file), _all_file_endings(model))
    if ending and ending.lower() not in [e.lower() for e in rw_class.supported_file_endings]:
        from nnunetv2.imageio.reader_writer_registry import determine_reader_writer_from_file_ending
        try:
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                rw_class = determine_reader_writer_from_file_ending(ending, image_file, verbose=False)
        except Exception:
            raise UserInputError(f"{image_file}: no nnU-Net reader can read this file") from None
    return rw_class


def _first_error_line(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    text = lines[-1] if lines else type(e).__name__
    return text[:300]


def read_case(model: CMEDLModel, image_files: Sequence[str]):
    """(data (C, *spatial) float32, properties, reader/writer instance) read with nnU-Net's reader."""
    from mri_unpaired.validation import refuse_damaged_file
    for f in image_files:
        if not os.path.isfile(f):
            raise UserInputError(f"{f}: image not found")
        refuse_damaged_file(f)
    rw = reader_writer_for(model, image_files[0])()
    try:
        data, properties = rw.read_images(list(image_files))
    except Exception as e:
        culprit, reason = image_files[0], _first_error_line(e)
        if len(image_files) > 1:  # find which file fails on its own; else the files do not fit together
            culprit, reason = ", ".join(image_files), f"the channel files do not fit together ({reason})"
            for f in image_files:
                try:
                    with contextlib.redirect_stdout(io.StringIO()):
                        rw.read_images([f])
                except Exception as e1:
                    culprit, reason = f, _first_error_line(e1)
                    break
        raise UserInputError(f"{culprit}: cannot read this image ({reason})") from None
    if data.shape[0] != model.num_input_channels:
        raise UserInputError(f"{image_files[0]}: has {data.shape[0]} channel(s) but the model expects "
                             f"{model.num_input_channels} ({_channel_names(model)})")
    return data, properties, rw


def preprocess_case(model: CMEDLModel, image_files: Sequence[str]):
    """nnU-Net's preprocessing of the model's configuration: (data (C, *spatial), properties, reader/writer)."""
    data, properties, rw = read_case(model, image_files)
    preprocessor = model.configuration_manager.preprocessor_class(verbose=False)
    data, _, properties = preprocessor.run_case_npy(data, None, properties, model.plans_manager,
                                                    model.configuration_manager, model.dataset_json)
    return np.ascontiguousarray(data, dtype=np.float32), properties, rw


# ---------------------------------------------------------------------------------------------- the generator
def sliding_window_slicers(image_size: Sequence[int], patch_size: Sequence[int], step_size: float) -> list:
    """Slicers like nnUNetPredictor's: over every axis for 3d patches, slice by slice over axis 0 for 2d ones."""
    from nnunetv2.inference.sliding_window_prediction import compute_steps_for_sliding_window
    patch_size = list(patch_size)
    slicers = []
    if len(patch_size) < len(image_size):
        steps = compute_steps_for_sliding_window(tuple(image_size[1:]), tuple(patch_size), step_size)
        for d in range(image_size[0]):
            for sx in steps[0]:
                for sy in steps[1]:
                    slicers.append((slice(None), d, *[slice(s, s + p) for s, p in zip((sx, sy), patch_size)]))
    else:
        steps = compute_steps_for_sliding_window(tuple(image_size), tuple(patch_size), step_size)
        for sx in steps[0]:
            for sy in steps[1]:
                for sz in steps[2]:
                    slicers.append((slice(None), *[slice(s, s + p) for s, p in zip((sx, sy, sz), patch_size)]))
    return slicers


@torch.inference_mode()
def generate_pmri_preprocessed(model: CMEDLModel, data, step_size: float = 0.5) -> torch.Tensor:
    """The generator over preprocessed CT ``data`` (C, *spatial): pMRI (mri_channels, *spatial), float32 on CPU."""
    from acvl_utils.cropping_and_padding.padding import pad_nd_image
    from nnunetv2.inference.sliding_window_prediction import compute_gaussian
    from nnunetv2.utilities.helpers import dummy_context

    if not 0 < step_size <= 1:
        raise UserInputError(f"--step-size {step_size}: must be in (0, 1]")
    device = model.device
    data = torch.as_tensor(data, dtype=torch.float32)
    patch = model.patch_size
    # nnU-Net pads inputs smaller than the patch with 0 (the normalised mean) and crops the result back
    padded, revert = pad_nd_image(data, patch, "constant", {"value": 0}, True, None)
    slicers = sliding_window_slicers(padded.shape[1:], patch, step_size)
    gaussian = compute_gaussian(tuple(patch), sigma_scale=1. / 8, value_scaling_factor=10, dtype=torch.float32,
                                device=device)
    out_channels = int(model.i2i_kwargs.get("mri_channels", 1))
    result = torch.zeros((out_channels, *padded.shape[1:]), dtype=torch.float32, device=device)
    weights = torch.zeros(padded.shape[1:], dtype=torch.float32, device=device)
    autocast = torch.autocast(device.type, enabled=True) if device.type == "cuda" else dummy_context()
    model.generator.eval()
    with autocast:
        for sl in slicers:
            tile = padded[sl][None].to(device, non_blocking=True)
            prediction = model.generator(tile)[0].float()
            result[sl] += prediction * gaussian
            weights[sl[1:]] += gaussian
    result /= weights
    result = result[(slice(None), *revert[1:])].cpu()
    if not torch.isfinite(result).all():
        raise RuntimeError("the generator produced non-finite values")
    return result


def pmri_to_input_geometry(model: CMEDLModel, pmri_preprocessed, properties: dict) -> np.ndarray:
    """Undo nnU-Net's preprocessing geometry for an image: resample (resampling_fn_probabilities), uncrop (filled with
    the pMRI's minimum), untranspose. Returns (*input array shape) for one channel, else (C, *input array shape)."""
    from acvl_utils.cropping_and_padding.bounding_boxes import insert_crop_into_image
    pm, cm = model.plans_manager, model.configuration_manager
    pmri = pmri_preprocessed.numpy() if isinstance(pmri_preprocessed, torch.Tensor) else np.asarray(pmri_preprocessed)
    spacing_transposed = [properties["spacing"][i] for i in pm.transpose_forward]
    shape_before_resampling = properties["shape_after_cropping_and_before_resampling"]
    current_spacing = cm.spacing if len(cm.spacing) == len(shape_before_resampling) else \
        [spacing_transposed[0], *cm.spacing]
    resampled = cm.resampling_fn_probabilities(pmri.astype(np.float32), shape_before_resampling, current_spacing,
                                               spacing_transposed)
    resampled = np.asarray(resampled.numpy() if isinstance(resampled, torch.Tensor) else resampled, dtype=np.float32)
    fill = float(resampled.min())
    full = np.full((resampled.shape[0], *properties["shape_before_cropping"]), fill, dtype=np.float32)
    full = insert_crop_into_image(full, resampled, properties["bbox_used_for_cropping"])
    full = full.transpose([0, *[i + 1 for i in pm.transpose_backward]])
    return np.ascontiguousarray(full[0] if full.shape[0] == 1 else full)


# ---------------------------------------------------------------------------------------------- segmentations
def make_predictor(model: CMEDLModel, network, step_size: float = 0.5, use_mirroring: bool = False):
    """nnU-Net's own predictor around one of the model's networks (as the trainer's final validation builds it)."""
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    with contextlib.redirect_stdout(io.StringIO()):  # it announces that CPU results stay on the CPU
        predictor = nnUNetPredictor(tile_step_size=step_size, use_gaussian=True, use_mirroring=use_mirroring,
                                    perform_everything_on_device=model.device.type == "cuda", device=model.device,
                                    verbose=False, allow_tqdm=False)
    predictor.manual_initialization(network, model.plans_manager, model.configuration_manager,
                                    [network.state_dict()], model.dataset_json, model.trainer_name,
                                    model.inference_allowed_mirroring_axes)
    return predictor


def segment_preprocessed(model: CMEDLModel, network, data, properties: dict, step_size: float = 0.5,
                         use_mirroring: bool = False) -> np.ndarray:
    """Label map in the input's geometry (array order of nnU-Net's reader) from preprocessed ``data``."""
    from nnunetv2.inference.export_prediction import convert_predicted_logits_to_segmentation_with_correct_shape
    predictor = make_predictor(model, network, step_size, use_mirroring)
    data = torch.as_tensor(np.ascontiguousarray(data), dtype=torch.float32)
    logits = predictor.predict_logits_from_preprocessed_data(data).cpu()
    return convert_predicted_logits_to_segmentation_with_correct_shape(
        logits, model.plans_manager, model.configuration_manager, model.label_manager, properties)


# ---------------------------------------------------------------------------------------------- one case
@dataclass
class CaseResult:
    """Arrays in the input's geometry (the array order of nnU-Net's reader: z, y, x for SimpleITK)."""
    case_id: str
    image_files: List[str]
    properties: dict
    pmri: np.ndarray
    teacher_seg: Optional[np.ndarray] = None
    student_seg: Optional[np.ndarray] = None
    reader_writer: object = None
    outputs: Dict[str, Path] = field(default_factory=dict)


def translate_case(model: CMEDLModel, image_files: Sequence[str], teacher_seg: bool = False,
                   student_seg: bool = False, step_size: float = 0.5, use_mirroring: bool = False,
                   case_id: Optional[str] = None) -> CaseResult:
    """pMRI (and optionally the teacher's / student's segmentations) of one case, in the input's geometry."""
    image_files = [str(f) for f in image_files]
    data, properties, rw = preprocess_case(model, image_files)
    pmri_pre = generate_pmri_preprocessed(model, data, step_size)
    result = CaseResult(case_id or os.path.basename(image_files[0]), image_files, properties,
                        pmri_to_input_geometry(model, pmri_pre, properties), reader_writer=rw)
    if teacher_seg:
        result.teacher_seg = segment_preprocessed(model, model.teacher, pmri_pre, properties, step_size,
                                                  use_mirroring)
    if student_seg:
        result.student_seg = segment_preprocessed(model, model.student, data, properties, step_size, use_mirroring)
    return result


# ---------------------------------------------------------------------------------------------- writing
def _sitk_geometry_3d(spacing, origin, direction):
    """Geometry of a 4d SimpleITK image (channels in one file) reduced to its first three axes."""
    n = len(spacing)
    if n <= 3:
        return spacing, origin, direction
    d = np.asarray(direction).reshape(n, n)[:3, :3]
    return tuple(spacing[:3]), tuple(origin[:3]), tuple(d.ravel())


def write_image_like_input(array: np.ndarray, output_file, properties: dict, image_file: str) -> None:
    """Write a float image (input array order) with the input's geometry, as nnU-Net's writers do for labels."""
    import SimpleITK as sitk
    array = np.asarray(array, dtype=np.float32)
    if "sitk_stuff" in properties:
        stuff = properties["sitk_stuff"]
        spacing, origin, direction = _sitk_geometry_3d(stuff["spacing"], stuff["origin"], stuff["direction"])
        image = sitk.GetImageFromArray(array[0] if len(spacing) == 2 else array)
        image.SetSpacing(spacing)
        image.SetOrigin(origin)
        image.SetDirection(direction)
        if "original_orientation" in stuff:  # SimpleITKIOWithReorient
            image = sitk.DICOMOrient(image, stuff["original_orientation"])
        sitk.WriteImage(image, str(output_file), True)
    elif "nibabel_stuff" in properties:
        import nibabel
        stuff = properties["nibabel_stuff"]
        if "reoriented_affine" in stuff:  # NibabelIOWithReorient
            from nibabel.orientations import axcodes2ornt, io_orientation, ornt_transform
            img = nibabel.Nifti1Image(array.transpose((2, 1, 0)), affine=stuff["reoriented_affine"])
            img = img.as_reoriented(ornt_transform(axcodes2ornt("RAS"), io_orientation(stuff["original_affine"])))
        else:
            img = nibabel.Nifti1Image(array.transpose((2, 1, 0)), affine=stuff["original_affine"])
        nibabel.save(img, str(output_file))
    else:  # readers without a world geometry (2d natural images, tif): nnU-Net's spacing only
        image = sitk.GetImageFromArray(array)
        image.SetSpacing([float(s) for s in properties["spacing"][::-1]])
        sitk.WriteImage(image, str(output_file), True)


def output_files(output_folder, case_id: str, teacher_seg: bool, student_seg: bool,
                 seg_ending: str = ".nii.gz", unpaired_modality: str = "MRI") -> Dict[str, Path]:
    output_folder = Path(output_folder)
    files = {"pmri": output_folder / f"{case_id}{translated_suffix(unpaired_modality)}"}
    if teacher_seg:
        files["teacher_seg"] = output_folder / f"{case_id}{TEACHER_SEG_SUFFIX}{seg_ending}"
    if student_seg:
        files["student_seg"] = output_folder / f"{case_id}{STUDENT_SEG_SUFFIX}{seg_ending}"
    return files


def _seg_ending(model: CMEDLModel) -> str:
    rw_class = model.plans_manager.image_reader_writer_class
    return ".nii.gz" if ".nii.gz" in rw_class.supported_file_endings else model.file_ending


def write_case(result: CaseResult, files: Dict[str, Path], overwrite: bool = False) -> Dict[str, Path]:
    """Write the case's outputs under temporary names, then rename them all into place."""
    for f in files.values():
        refuse_existing(f, overwrite)
    temps = {}
    try:
        for key, final in files.items():
            tmp = atomic_temp_path(final)
            temps[key] = tmp
            if key == "pmri":
                write_image_like_input(result.pmri, tmp, result.properties, result.image_files[0])
            else:
                seg = result.teacher_seg if key == "teacher_seg" else result.student_seg
                result.reader_writer.write_seg(seg, tmp, result.properties)  # nnU-Net's own label export
        for key, final in files.items():
            os.replace(temps.pop(key), final)  # atomic_temp_path gave it normal permissions
    finally:
        for tmp in temps.values():
            with contextlib.suppress(OSError):
                os.unlink(tmp)
    result.outputs = dict(files)
    return result.outputs


def export_pseudo_mri(model: CMEDLModel, image_files: Sequence[str], output_file, teacher_seg_file=None,
                      student_seg_file=None, step_size: float = 0.5, overwrite: bool = False,
                      use_mirroring: bool = False) -> CaseResult:
    """One case: write its pMRI to ``output_file`` (and the teacher's / student's segmentations if files are given)."""
    files = {"pmri": Path(output_file)}
    if teacher_seg_file is not None:
        files["teacher_seg"] = Path(teacher_seg_file)
    if student_seg_file is not None:
        files["student_seg"] = Path(student_seg_file)
    for f in files.values():
        refuse_existing(f, overwrite)
    result = translate_case(model, image_files, teacher_seg="teacher_seg" in files,
                            student_seg="student_seg" in files, step_size=step_size, use_mirroring=use_mirroring)
    write_case(result, files, overwrite)
    return result


def export_pseudo_mri_batch(model: CMEDLModel, input_path, output_folder, teacher_seg: bool = False,
                            student_seg: bool = False, step_size: float = 0.5, overwrite: bool = False,
                            use_mirroring: bool = False, show_progress: bool = True) -> List[Dict[str, Path]]:
    """Every case of ``input_path`` (a CT file or a folder of nnU-Net-named CT files) into ``output_folder``.
    Returns the written files per case ({'pmri': ..., 'teacher_seg': ..., 'student_seg': ...})."""
    from tqdm import tqdm
    cases = input_cases(model, input_path)
    output_folder = Path(output_folder)
    if output_folder.exists() and not output_folder.is_dir():
        raise UserInputError(f"{output_folder}: output exists and is not a folder")
    seg_ending = _seg_ending(model)
    planned = [output_files(output_folder, c.case_id, teacher_seg, student_seg, seg_ending, model.modalities[1])
               for c in cases]
    if not overwrite:  # refuse before any work rather than after half of the cases
        existing = [f for files in planned for f in files.values() if f.exists()]
        if existing:
            more = f" (and {len(existing) - 1} more)" if len(existing) > 1 else ""
            raise UserInputError(f"{existing[0]}: output exists already{more}; pass --overwrite to replace it")
    output_folder.mkdir(parents=True, exist_ok=True)
    written = []
    with tqdm(total=len(cases), desc="pseudo-MRI", unit="case", disable=not show_progress, file=sys.stderr) as bar:
        for case, files in zip(cases, planned):
            bar.set_postfix_str(case.case_id)
            result = translate_case(model, case.image_files, teacher_seg, student_seg, step_size, use_mirroring,
                                    case_id=case.case_id)
            written.append(write_case(result, files, overwrite))
            bar.update()
    return written


# ---------------------------------------------------------------------------------------------- CLI
def build_parser(command: str = "export-translated") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=f"nnunet_cmedl {command}",
        description="Translate labelled-modality volumes into the unpaired modality with a trained CMEDL model (its "
                    "I2I generator), in the input's geometry: CT into pseudo-MRI (<case>_pMRI.nii.gz) in the paper's "
                    "direction, MRI into pseudo-CT (<case>_pCT.nii.gz) for a model trained on labelled MRI. "
                    "Optionally also the teacher's segmentation of the translated image and the student's "
                    "segmentation of the input (the latter is what nnUNetv2_predict --disable_tta writes)."
                    + (" export-pmri and export-translated are the same command." if command == "export-pmri" else ""))
    add_model_arguments(p)
    p.add_argument("-i", "--input", required=True, metavar="INPUT",
                   help="an image of the labelled modality, or a folder of nnU-Net-named files (CASE_0000.nii.gz, ...)")
    p.add_argument("-o", "--output", required=True, metavar="OUTPUT_FOLDER",
                   help="where <case>_pMRI.nii.gz (or _pCT) goes")
    p.add_argument("--teacher-seg", action="store_true",
                   help="also write the teacher's segmentation of the translated image (<case>_teacher_seg.nii.gz)")
    p.add_argument("--student-seg", action="store_true",
                   help="also write the student's segmentation of the input (<case>_student_seg.nii.gz)")
    p.add_argument("--tta", action="store_true",
                   help="mirroring test-time augmentation for the segmentations (off by default, like --disable_tta)")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def main(argv=None, command: str = "export-translated") -> int:
    args = build_parser(command).parse_args(argv)
    model = model_from_arguments(args)
    with exclusive_output(args.output, "nnunet_cmedl export-translated"):
        written = export_pseudo_mri_batch(model, args.input, args.output, teacher_seg=args.teacher_seg,
                                          student_seg=args.student_seg, step_size=args.step_size,
                                          overwrite=args.overwrite, use_mirroring=args.tta,
                                          show_progress=not args.quiet)
    print(f"wrote {len(written)} case(s) to {args.output}")
    return 0


def main_pmri(argv=None) -> int:
    return main(argv, "export-pmri")


if __name__ == "__main__":
    sys.exit(main())
