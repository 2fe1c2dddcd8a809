"""The planned CT configuration, seen from the MRI side: where its plans are, the copy of the plans used to preprocess
MRI onto its geometry, and a hash of the plans entries that decide that geometry."""
import copy
import hashlib
import json
import os

from mri_unpaired.errors import UserInputError, first_line

# bump when the stored MRI changes meaning (it invalidates every existing output folder: they are refused until
# rebuilt with --overwrite)
MRI_FORMAT_VERSION = 1
MRI_NORMALIZATION = "ZScoreNormalization"
MRI_IMAGE_READER = "SimpleITKIO"
MRI_PREPROCESSOR = "DefaultPreprocessor"
MRI_CHANNEL_NAME = "MRI"

# files in a preprocessed dataset folder that are not plans
_NOT_PLANS = {"dataset.json", "dataset_fingerprint.json", "splits_final.json"}


def available_plans(dataset_folder: str):
    if not os.path.isdir(dataset_folder):
        return []
    return sorted(f[:-5] for f in os.listdir(dataset_folder) if f.endswith(".json") and f not in _NOT_PLANS)


def load_plans(preprocessed_root: str, dataset_name: str, plans_name: str, dataset_arg: str = None,
               configuration_hint: str = "3d_fullres") -> dict:
    """The plans dict of a planned dataset, or a one-line UserInputError saying how to plan it."""
    dataset_folder = os.path.join(preprocessed_root, dataset_name)
    plans_file = os.path.join(dataset_folder, plans_name + ".json")
    if not os.path.isfile(plans_file):
        others = available_plans(dataset_folder)
        hint = (f"available plans: {', '.join(others)} (pick one with -p)" if others else
                f"plan it first: nnUNetv2_plan_and_preprocess -d {dataset_arg or dataset_name} -c {configuration_hint}"
                + ("" if plans_name == "nnUNetPlans" else f" (-p / -pl for plans {plans_name})"))
        raise UserInputError(f"{plans_file}: plans file not found, dataset {dataset_name} is not planned with "
                             f"plans {plans_name}; {hint}")
    try:
        with open(plans_file) as f:
            plans = json.load(f)
    except (OSError, ValueError) as e:
        raise UserInputError(f"{plans_file}: cannot be read as JSON ({e})") from None
    if not isinstance(plans, dict) or not isinstance(plans.get("configurations"), dict):
        raise UserInputError(f"{plans_file}: not an nnU-Net plans file (no 'configurations')")
    return plans


def resolve_configuration(plans: dict, configuration: str, plans_file: str = "plans") -> dict:
    """The configuration dict with inheritance resolved (nnU-Net's own PlansManager), as a UserInputError if it is not
    in the plans or does not resolve."""
    configurations = list(plans.get("configurations", {}).keys())
    if configuration not in configurations:
        raise UserInputError(f"configuration {configuration!r}: not in {plans_file}; available configurations: "
                             f"{', '.join(configurations) if configurations else '(none)'}")
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    try:
        resolved = PlansManager(copy.deepcopy(plans))._internal_resolve_configuration_inheritance(configuration)
    except (ValueError, RuntimeError) as e:
        raise UserInputError(f"configuration {configuration!r} in {plans_file}: {first_line(e)}") from None
    missing = [k for k in ("data_identifier", "spacing", "patch_size", "batch_size", "resampling_fn_data",
                           "resampling_fn_data_kwargs") if k not in resolved]
    if missing:
        raise UserInputError(f"configuration {configuration!r} in {plans_file}: lacks {', '.join(missing)}")
    return resolved


def geometry_entries(plans: dict, configuration: str) -> dict:
    """The plans entries that decide what the preprocessed MRI looks like (for the manifest's plans hash).

    The patch and batch size are left out on purpose: configurations that inherit from another one (a small-patch
    configuration for CPU runs, say) share its data identifier and thus its MRI folder."""
    cfg = resolve_configuration(plans, configuration)
    return {
        "format_version": MRI_FORMAT_VERSION,
        "data_identifier": cfg["data_identifier"],
        "transpose_forward": [int(i) for i in plans.get("transpose_forward", [0, 1, 2])],
        "spacing": [float(s) for s in cfg["spacing"]],
        "resampling_fn_data": cfg["resampling_fn_data"],
        "resampling_fn_data_kwargs": cfg["resampling_fn_data_kwargs"],
        "normalization": MRI_NORMALIZATION,
        "use_mask_for_norm": False,
        "image_reader": MRI_IMAGE_READER,
        "preprocessor": MRI_PREPROCESSOR,
    }


def geometry_hash(plans: dict, configuration: str) -> str:
    entries = geometry_entries(plans, configuration)
    return hashlib.sha256(json.dumps(entries, sort_keys=True).encode()).hexdigest()


def mri_plans(plans: dict, configuration: str) -> dict:
    """A deep copy of the plans in which ``configuration`` normalises its one channel per image (z-score, no mask)
    and images are read with SimpleITK. Everything else (spacing, transpose, resampling, data identifier) is the CT's."""
    p = copy.deepcopy(plans)
    p.pop("continue_training", None)
    cfg = p["configurations"][configuration]
    # set on the configuration itself: inheritance resolution lets the child's keys override the parent's
    cfg["normalization_schemes"] = [MRI_NORMALIZATION]
    cfg["use_mask_for_norm"] = [False]
    p["image_reader_writer"] = MRI_IMAGE_READER
    # DefaultPreprocessor._normalize passes foreground_intensity_properties_per_channel['0'] to every normaliser
    # (ZScoreNormalization ignores it, but asserts it is a dict)
    props = p.get("foreground_intensity_properties_per_channel") or {}
    p["foreground_intensity_properties_per_channel"] = {"0": dict(props.get("0") or {})}
    return p


def mri_dataset_json(dataset_json: dict = None) -> dict:
    """A copy of the dataset.json with one input channel, named MRI."""
    d = copy.deepcopy(dataset_json) if dataset_json else {"labels": {"background": 0}, "numTraining": 0,
                                                           "file_ending": ".nii.gz"}
    d.pop("modality", None)
    d["channel_names"] = {"0": MRI_CHANNEL_NAME}
    return d
