"""Where the preprocessed unpaired MRI lives.

The MRI of a configuration goes into a SIBLING of the configuration's preprocessed CT folder, never inside it:
nnU-Net's ``infer_dataset_class`` asserts a single file type per configuration folder, and its preprocessing deletes
and rebuilds that folder.

    $nnUNet_preprocessed/DatasetXXX_Name/nnUNetPlans_3d_fullres/                  (CT, nnU-Net's)
    $nnUNet_preprocessed/DatasetXXX_Name/nnUNetPlans_3d_fullres__mri_unpaired/    (MRI, ours)

Configurations that ``inherits_from`` another one share its ``data_identifier`` and therefore its MRI folder.
"""
import json
import os

MRI_FOLDER_SUFFIX = "__mri_unpaired"
MANIFEST_NAME = "manifest.json"
CASE_DATA_ENDING = ".b2nd"
CASE_PROPERTIES_ENDING = ".pkl"


def unpaired_mri_folder(preprocessed_dataset_folder: str) -> str:
    """Map a trainer's ``self.preprocessed_dataset_folder`` ($nnUNet_preprocessed/<dataset>/<data_identifier>) to the
    sibling folder holding the preprocessed unpaired MRI of that data identifier."""
    folder = os.path.normpath(os.fspath(preprocessed_dataset_folder))
    parent, name = os.path.split(folder)
    if not name:
        raise ValueError(f"{preprocessed_dataset_folder!r} is not a preprocessed configuration folder")
    return os.path.join(parent, name + MRI_FOLDER_SUFFIX)


def unpaired_mri_folder_for(preprocessed_root: str, dataset_name: str, data_identifier: str) -> str:
    """Same folder, from $nnUNet_preprocessed, the dataset name and the configuration's data identifier."""
    return unpaired_mri_folder(os.path.join(preprocessed_root, dataset_name, data_identifier))


def manifest_path(mri_folder: str) -> str:
    return os.path.join(mri_folder, MANIFEST_NAME)


def case_files(mri_folder: str, case: str):
    """(data file, properties file) of one case."""
    return (os.path.join(mri_folder, case + CASE_DATA_ENDING),
            os.path.join(mri_folder, case + CASE_PROPERTIES_ENDING))


def read_manifest(mri_folder: str):
    """The manifest dict of a preprocessed MRI folder, or None if it has none or it cannot be parsed."""
    try:
        with open(manifest_path(mri_folder)) as f:
            m = json.load(f)
    except (OSError, ValueError):
        return None
    return m if isinstance(m, dict) and isinstance(m.get("cases"), dict) else None
