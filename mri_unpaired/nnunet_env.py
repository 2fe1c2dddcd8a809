"""Checks of the nnU-Net installation and its environment variables, with one-line errors."""
import os

from mri_unpaired.errors import UserInputError

NNUNET_MIN_VERSION = (2, 8)


def check_nnunet_version() -> str:
    from importlib.metadata import PackageNotFoundError, version
    try:
        v = version("nnunetv2")
    except PackageNotFoundError:
        raise UserInputError("nnunetv2 is not installed; nnunet-cmedl needs nnunetv2>=2.8,<2.9") from None
    parts = tuple(int(p) for p in v.split(".")[:2] if p.isdigit())
    if parts < NNUNET_MIN_VERSION:
        raise UserInputError(f"nnunetv2 {v} is installed, but nnunet-cmedl needs nnunetv2>=2.8 "
                             f"(2.8 introduced the nnUNet_extTrainer hook that finds our trainers)")
    return v


def require_env(*names: str) -> dict:
    """Return the values of the named environment variables; a clear error names the first one unset."""
    values = {}
    for n in names:
        v = os.environ.get(n)
        if not v:
            raise UserInputError(f"environment variable {n} is not set; export {n}=/path/to/folder "
                                 f"(see nnU-Net's documentation/setting_up_paths.md)")
        values[n] = v
    return values


def find_dataset_name(dataset: str) -> str:
    """'4', '004' or 'Dataset004_Name' -> 'Dataset004_Name' (looked up in nnUNet_preprocessed, then nnUNet_raw)."""
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name
    try:
        return maybe_convert_to_dataset_name(dataset)
    except RuntimeError:
        raise UserInputError(f"dataset {dataset}: not found in nnUNet_raw, nnUNet_preprocessed or nnUNet_results "
                             f"(check the id and those environment variables)") from None
