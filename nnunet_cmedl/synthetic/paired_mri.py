"""``nnunet_cmedl paired-mri``: the true MRI of each labelled CT patient, preprocessed onto the CT (an oracle).

A diagnostic, never a method: CMEDL exists because the MRI is of other patients (unpaired). Where each CT patient's
own MRI is at hand, ``nnUNetTrainerCMEDL_pairedOracle`` (training/oracle.py) lets CMEDL's teacher segment it instead
of the generator's pseudo-MRI: the best teacher the hint could ever pull toward. Whether the student gains from
*that* teacher separates the two reasons why CMEDL may not help on a dataset (issue 8): a generator that does not
render the tumours, or a hint that does not pass on what a teacher knows. Two sources of that MRI:
- a phantom dataset (``nnunet_cmedl make-synthetic``, the default): the phantom knows each patient's anatomy and
  renders that patient's own T2w-like MRI on the CT grid, voxel for voxel aligned with the CT and its label;
- ``--mri-folder DIR``: real MRI of the same patients registered to their planning CT (an MR simulator, say), one
  ``<case><file_ending>`` (or ``<case>_0000<file_ending>``) per labelled case, already resampled onto that case's CT
  grid by your registration (same size, spacing, origin and direction: checked as ``nnunet_cmedl evaluate`` checks a
  prediction against its reference, ``evaluation.metrics.check_geometry``).

Each case goes through nnU-Net's own ``DefaultPreprocessor.run_case_npy`` as a two-channel image [CT, MRI]: one
transpose, one crop and one resampling for both channels, the CT normalised as planned and the MRI like the unpaired
MRI (z-score per image). The CT channel is then checked against the case nnU-Net preprocessed: equal, or the case is
refused. The MRI channel is stored as ``<case>.npy`` (float32, shape (1, *case)) in
``<preprocessed>/<dataset>/<data_identifier>__mri_paired_oracle/``, written atomically.
"""
import argparse
import copy
import json
import os
from pathlib import Path

import numpy as np

from mri_unpaired.atomic import atomic_file
from mri_unpaired.modality import get_modality
from mri_unpaired.plans import resolve_configuration
from mri_unpaired.preprocess import resolve_dataset
from nnunet_cmedl.errors import UserInputError, itk_message

FOLDER_SUFFIX = "__mri_paired_oracle"
SOURCE_FILE = "paired_mri_source.json"  # in the output folder: where its MRI came from (a rerun must not mix sources)
PHANTOM = "phantom"
# the CT channel of the two-channel preprocessing must equal nnU-Net's preprocessed case this closely
ALIGNMENT_TOLERANCE = 1e-4


def paired_folder(preprocessed_dataset_folder, data_identifier: str) -> Path:
    return Path(preprocessed_dataset_folder) / f"{data_identifier}{FOLDER_SUFFIX}"


def phantom_settings(raw_folder: Path) -> dict:
    path = raw_folder / "phantom_metadata.json"
    try:
        metadata = json.loads(path.read_text())
        seed, grid = int(metadata["seed"]), metadata["ct_grid"]
        shape, spacing = tuple(grid["shape_zyx"]), tuple(grid["spacing_zyx_mm"])
    except (OSError, ValueError, KeyError, TypeError):
        raise UserInputError(f"{path}: not the metadata of a dataset written by nnunet_cmedl make-synthetic; a true "
                             f"paired MRI exists only for its phantoms") from None
    if metadata.get("labelled_modality", "CT") != "CT":
        raise UserInputError(f"{path}: the labelled modality is {metadata['labelled_modality']}, not CT")
    return {"seed": seed, "shape": shape, "spacing": spacing, "hard_ct_signal": metadata.get("hard_ct_signal")}


def render_paired_mri(metadata: dict, case_id: str) -> np.ndarray:
    """The T2w-like MRI of the patient of labelled case ``case_id`` (thorax_NNN), on its CT grid, as (z, y, x)."""
    from nnunet_cmedl.synthetic import phantom
    try:
        index = int(case_id.rsplit("_", 1)[1])
    except (IndexError, ValueError):
        raise UserInputError(f"case {case_id!r}: not a phantom case name (thorax_NNN)") from None
    grid = phantom.Grid(metadata["shape"], metadata["spacing"])
    signal = metadata["hard_ct_signal"] or phantom.HARD_CT_SIGNALS[0]
    volume = phantom.make_ct_volume(metadata["seed"], index, grid, signal)
    rng = phantom.case_rng(metadata["seed"], "paired_mri_noise", index)
    return phantom.render_mri(volume.anatomy, volume.maps, grid, rng)


class PhantomMRI:
    """The phantom patient's own MRI, rendered (``render_paired_mri``)."""
    name = PHANTOM

    def __init__(self, raw_folder: Path):
        self.metadata = phantom_settings(raw_folder)

    def __call__(self, case_id: str, ct_file, ct_properties: dict) -> np.ndarray:
        mri = render_paired_mri(self.metadata, case_id)
        if mri.shape != tuple(ct_properties["shape"]):
            raise UserInputError(f"{ct_file}: shape {tuple(ct_properties['shape'])} is not the phantom's CT grid "
                                 f"{mri.shape}")
        return mri


class RegisteredMRI:
    """Each case's MRI from a folder, registered and resampled onto its CT's grid (module docstring)."""

    def __init__(self, folder, file_ending: str):
        self.folder, self.file_ending = Path(folder).resolve(), file_ending
        if not self.folder.is_dir():
            raise UserInputError(f"{self.folder}: --mri-folder is not a folder")
        self.name = str(self.folder)
        self._checked = {}  # case -> its MRI file, once checked

    def file_of(self, case_id: str) -> Path:
        candidates = [self.folder / f"{case_id}{suffix}{self.file_ending}" for suffix in ("", "_0000")]
        found = [f for f in candidates if f.is_file()]
        if not found:
            raise UserInputError(f"{candidates[0]}: no registered MRI of case {case_id} (nor {candidates[1].name}); "
                                 f"the oracle needs one per labelled case")
        return found[0]

    def check(self, case_id: str, ct_file) -> Path:
        """The case's MRI file, refused (one line naming it) unless it is intact and on its CT's grid (headers only)."""
        import SimpleITK as sitk
        from mri_unpaired.validation import refuse_damaged_file
        from nnunet_cmedl.evaluation.metrics import check_geometry
        if case_id in self._checked:  # write_paired_mri checks every file before the first is written
            return self._checked[case_id]
        mri_file = self.file_of(case_id)
        refuse_damaged_file(mri_file)
        headers = []
        for f in (mri_file, ct_file):
            reader = sitk.ImageFileReader()
            reader.SetFileName(str(f))
            try:
                reader.ReadImageInformation()
            except RuntimeError as e:
                raise UserInputError(f"{f}: not a readable image ({itk_message(e)})") from None
            headers.append({"size": reader.GetSize(), "components": reader.GetNumberOfComponents(),
                            "spacing": reader.GetSpacing(), "origin": reader.GetOrigin(),
                            "direction": reader.GetDirection()})
        mri, ct = headers
        if mri["components"] != 1:
            raise UserInputError(f"{mri_file}: {mri['components']} components per voxel; one MRI channel expected")
        try:  # the tolerances with which `nnunet_cmedl evaluate` holds a prediction to its reference
            check_geometry(ct, mri, ct_file, mri_file)
        except UserInputError as e:
            raise UserInputError(f"{e}; resample the registered MRI onto the CT grid") from None
        self._checked[case_id] = mri_file
        return mri_file

    def __call__(self, case_id: str, ct_file, ct_properties: dict) -> np.ndarray:
        from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO
        mri, _ = SimpleITKIO().read_images([str(self.check(case_id, ct_file))])
        return mri[0]


def paired_plans(plans: dict, configuration: str) -> dict:
    """Plans in which ``configuration`` preprocesses two channels: the CT as planned, then the MRI as the unpaired
    MRI is (z-score per image, no mask)."""
    p = copy.deepcopy(plans)
    cfg = resolve_configuration(p, configuration)
    cfg.pop("inherits_from", None)
    cfg["normalization_schemes"] = list(cfg["normalization_schemes"][:1]) + [get_modality("MRI").normalization]
    cfg["use_mask_for_norm"] = list(cfg["use_mask_for_norm"][:1]) + [False]
    p["configurations"][configuration] = cfg
    props = p["foreground_intensity_properties_per_channel"]
    props["1"] = dict(props["0"])  # z-score ignores it; DefaultPreprocessor._normalize looks it up per channel
    return p


def preprocess_with_paired_mri(ct_file, case_id: str, plans: dict, configuration: str, dataset_json: dict,
                               mri_source):
    """(data, properties) of nnU-Net's preprocessing of the two-channel image [CT, the patient's own MRI]
    (``mri_source``: ``PhantomMRI`` or ``RegisteredMRI``)."""
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO
    from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    ct, properties = SimpleITKIO().read_images([str(ct_file)])
    mri = mri_source(case_id, ct_file, {**properties, "shape": ct.shape[1:]})
    pm = PlansManager(paired_plans(plans, configuration))
    two = dict(dataset_json, channel_names={"0": "CT", "1": "MRI"})
    data, _, properties = DefaultPreprocessor(verbose=False).run_case_npy(
        np.concatenate([ct, mri[None].astype(np.float32)]), None, properties, pm, pm.get_configuration(configuration),
        two)
    return data, properties


def preprocess_case(case_id: str, raw_folder: Path, preprocessed_case, plans: dict, configuration: str,
                    dataset_json: dict, mri_source) -> np.ndarray:
    """The case's paired MRI in its preprocessed space, (1, *shape) float32; refused unless the CT channel of the
    same preprocessing equals ``preprocessed_case`` (nnU-Net's preprocessed CT of the case)."""
    ct_file = raw_folder / "imagesTr" / f"{case_id}_0000{dataset_json.get('file_ending', '.nii.gz')}"
    data, _ = preprocess_with_paired_mri(ct_file, case_id, plans, configuration, dataset_json, mri_source)
    expected = np.asarray(preprocessed_case[:], dtype=np.float32)
    if data.shape[1:] != expected.shape[1:] or not np.allclose(data[0], expected[0], atol=ALIGNMENT_TOLERANCE):
        raise UserInputError(f"{ct_file}: its CT preprocessed beside the paired MRI differs from nnU-Net's "
                             f"preprocessed case; the MRI would not be aligned (re-run nnUNetv2_preprocess?)")
    return np.ascontiguousarray(data[1:], dtype=np.float32)


def predict_teacher_on_paired_mri(model_folder, fold, images, output, device: str = "cpu", mri_folder=None) -> list:
    """An oracle run's teacher on the test cases' own MRI (``images``: the raw test CTs; their MRI rendered by the
    phantom, or read from ``mri_folder``), sliding window with tile step 0.5 and no TTA as the students are
    predicted; ``<case>.nii.gz`` in ``output``. Returns the written files."""
    import torch
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO
    from nnunet_cmedl.inference.cmedl_model import load_cmedl_model
    from nnunet_cmedl.inference.export_pmri import segment_preprocessed

    images, output = Path(images), Path(output)
    model = load_cmedl_model(model_folder, fold=fold, device=torch.device(device), trust_checkpoint=True)
    ending = model.dataset_json.get("file_ending", ".nii.gz")
    mri_source = PhantomMRI(images.parent) if mri_folder is None else RegisteredMRI(mri_folder, ending)
    output.mkdir(parents=True, exist_ok=True)
    written = []
    for ct_file in sorted(images.glob(f"*_0000{ending}")):
        case = ct_file.name[:-len(f"_0000{ending}")]
        data, properties = preprocess_with_paired_mri(ct_file, case, model.plans_manager.plans,
                                                      model.configuration_name, model.dataset_json, mri_source)
        seg = segment_preprocessed(model, model.teacher, data[model.num_input_channels:], properties)
        target = output / f"{case}{ending}"
        tmp = output / f".{case}.tmp{ending}"
        SimpleITKIO().write_seg(seg, str(tmp), properties)
        os.replace(tmp, target)
        written.append(target)
    return written


def save_atomically(array: np.ndarray, path: Path) -> None:
    with atomic_file(path, mode="wb") as f:
        np.save(f, array)


def write_paired_mri(dataset: str, configuration: str, plans_identifier: str = "nnUNetPlans",
                     show_progress: bool = True, mri_folder=None) -> Path:
    """Every labelled training case's paired MRI, rendered by the phantom or read from ``mri_folder`` (skips cases
    already written from the same source); returns the folder."""
    from batchgenerators.utilities.file_and_folder_operations import load_json
    from nnunetv2.paths import nnUNet_preprocessed, nnUNet_raw
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
    from tqdm import tqdm

    if not nnUNet_raw or not nnUNet_preprocessed:
        raise UserInputError("nnUNet_raw and nnUNet_preprocessed must be set")
    name = resolve_dataset(str(dataset))
    raw_folder, pre = Path(nnUNet_raw) / name, Path(nnUNet_preprocessed) / name
    plans_file = pre / f"{plans_identifier}.json"
    if not plans_file.is_file():
        raise UserInputError(f"{plans_file}: no plans; run nnUNetv2_plan_and_preprocess -d {dataset} first")
    plans, dataset_json = load_json(str(plans_file)), load_json(str(pre / "dataset.json"))
    cfg = resolve_configuration(plans, configuration, str(plans_file))
    cases_folder = pre / cfg["data_identifier"]
    if not cases_folder.is_dir():
        raise UserInputError(f"{cases_folder}: configuration {configuration} is not preprocessed; run "
                             f"nnUNetv2_preprocess -d {dataset} -c {configuration} first")
    dataset_class = infer_dataset_class(str(cases_folder))
    cases = dataset_class(str(cases_folder))
    ending = dataset_json.get("file_ending", ".nii.gz")
    mri_source = PhantomMRI(raw_folder) if mri_folder is None else RegisteredMRI(mri_folder, ending)
    if mri_folder is not None:  # every file there, intact and on its CT's grid, before the first is written
        for case in cases.identifiers:
            mri_source.check(case, raw_folder / "imagesTr" / f"{case}_0000{ending}")
    out = paired_folder(pre, cfg["data_identifier"])
    out.mkdir(exist_ok=True)
    source_file = out / SOURCE_FILE
    # written before this source was recorded: the phantom (the only source then)
    recorded = json.loads(source_file.read_text())["source"] if source_file.is_file() else \
        PHANTOM if any(out.glob("*.npy")) else None
    if recorded not in (None, mri_source.name):
        raise UserInputError(f"{out}: holds paired MRI from {recorded}, not {mri_source.name}; move that folder "
                             f"away first (the oracle must not mix sources)")
    if recorded is None:
        with atomic_file(source_file) as f:
            f.write(json.dumps({"source": mri_source.name}) + "\n")
    todo = [c for c in cases.identifiers if not (out / f"{c}.npy").is_file()]
    for case in tqdm(todo, desc="paired MRI (oracle)", disable=not show_progress):
        data = preprocess_case(case, raw_folder, cases.load_case(case)[0], plans, configuration, dataset_json,
                               mri_source)
        save_atomically(data, out / f"{case}.npy")
    print(f"paired MRI of {len(cases.identifiers)} cases in {out} ({len(todo)} written now; from "
          f"{mri_source.name})")
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nnunet_cmedl paired-mri", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-d", "--dataset", required=True,
                   help="dataset id or name (made by nnunet_cmedl make-synthetic, unless --mri-folder is given)")
    p.add_argument("-c", "--configuration", required=True, help="a preprocessed configuration, e.g. 2d or 3d_fullres")
    p.add_argument("-p", "--plans", default="nnUNetPlans", help="plans identifier (default: nnUNetPlans)")
    p.add_argument("--mri-folder", type=Path, default=None,
                   help="real MRI of the same patients, registered and resampled onto each labelled case's CT grid: "
                        "<case><file_ending> or <case>_0000<file_ending> per case (default: a phantom dataset's "
                        "own, rendered)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv=None) -> int:
    a = build_parser().parse_args(argv)
    write_paired_mri(a.dataset, a.configuration, a.plans, show_progress=not a.no_progress, mri_folder=a.mri_folder)
    return 0
