"""The planned (labelled) configuration, seen from the unpaired side: where its plans are, the copy of the plans used
to preprocess the unpaired volumes (MRI or CT, ``mri_unpaired.modality``) onto its geometry, and a hash of the plans
entries that decide what they look like."""
import copy
import hashlib
import json
import os

from mri_unpaired.errors import UserInputError, first_line

from mri_unpaired.modality import DEFAULT_MODALITY, get_modality

# bump when the stored volumes change meaning (it invalidates every existing output folder: they are refused until
# rebuilt with --overwrite)
UNPAIRED_FORMAT_VERSION = 1
UNPAIRED_IMAGE_READER = "SimpleITKIO"
UNPAIRED_PREPROCESSOR = "DefaultPreprocessor"

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


def geometry_entries(plans: dict, configuration: str, modality: str = DEFAULT_MODALITY) -> dict:
    """The plans entries that decide what the preprocessed unpaired volumes look like (for the manifest's plans
    hash), and their normalisation.

    The patch and batch size are left out on purpose: configurations that inherit from another one (a small-patch
    configuration for CPU runs, say) share its data identifier and thus its unpaired folder. The unpaired CT's
    intensity statistics are in the manifest, not in the hash (they come from the volumes, not from the plans)."""
    cfg = resolve_configuration(plans, configuration)
    return {
        "format_version": UNPAIRED_FORMAT_VERSION,
        "data_identifier": cfg["data_identifier"],
        "transpose_forward": [int(i) for i in plans.get("transpose_forward", [0, 1, 2])],
        "spacing": [float(s) for s in cfg["spacing"]],
        "resampling_fn_data": cfg["resampling_fn_data"],
        "resampling_fn_data_kwargs": cfg["resampling_fn_data_kwargs"],
        "normalization": get_modality(modality).normalization,
        "use_mask_for_norm": False,
        "image_reader": UNPAIRED_IMAGE_READER,
        "preprocessor": UNPAIRED_PREPROCESSOR,
    }


def geometry_hash(plans: dict, configuration: str, modality: str = DEFAULT_MODALITY) -> str:
    entries = geometry_entries(plans, configuration, modality)
    return hashlib.sha256(json.dumps(entries, sort_keys=True).encode()).hexdigest()


def unpaired_plans(plans: dict, configuration: str, modality: str = DEFAULT_MODALITY,
                   intensity_statistics: dict = None) -> dict:
    """A deep copy of the plans in which ``configuration`` normalises its one channel as the unpaired modality does
    (MRI: z-score per image; CT: nnU-Net's CT normalisation with ``intensity_statistics`` of the unpaired set; no
    mask) and images are read with SimpleITK. Everything else (spacing, transpose, resampling, data identifier) is
    the labelled data's."""
    m = get_modality(modality)
    if m.set_statistics and not intensity_statistics:
        raise ValueError(f"unpaired {m.name}: {m.normalization} needs the intensity statistics of the unpaired set")
    p = copy.deepcopy(plans)
    p.pop("continue_training", None)
    cfg = p["configurations"][configuration]
    # set on the configuration itself: inheritance resolution lets the child's keys override the parent's
    cfg["normalization_schemes"] = [m.normalization]
    cfg["use_mask_for_norm"] = [False]
    p["image_reader_writer"] = UNPAIRED_IMAGE_READER
    # DefaultPreprocessor._normalize passes foreground_intensity_properties_per_channel['0'] to every normaliser
    # (ZScoreNormalization ignores it, but asserts it is a dict; CTNormalization reads it)
    props = p.get("foreground_intensity_properties_per_channel") or {}
    p["foreground_intensity_properties_per_channel"] = {
        "0": dict(intensity_statistics) if m.set_statistics else dict(props.get("0") or {})}
    return p


def unpaired_dataset_json(dataset_json: dict = None, modality: str = DEFAULT_MODALITY) -> dict:
    """A copy of the dataset.json with one input channel, named after the unpaired modality."""
    d = copy.deepcopy(dataset_json) if dataset_json else {"labels": {"background": 0}, "numTraining": 0,
                                                           "file_ending": ".nii.gz"}
    d.pop("modality", None)
    d["channel_names"] = {"0": get_modality(modality).name}
    return d
