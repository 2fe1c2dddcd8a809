"""Where the preprocessed unpaired volumes live.

The unpaired volumes of a configuration go into a SIBLING of the configuration's preprocessed (labelled) folder,
never inside it: nnU-Net's ``infer_dataset_class`` asserts a single file type per configuration folder, and its
preprocessing deletes and rebuilds that folder. One sibling per unpaired modality:

    $nnUNet_preprocessed/DatasetXXX_Name/nnUNetPlans_3d_fullres/                  (labelled, nnU-Net's)
    $nnUNet_preprocessed/DatasetXXX_Name/nnUNetPlans_3d_fullres__mri_unpaired/    (unpaired MRI, ours)
    $nnUNet_preprocessed/DatasetXXX_Name/nnUNetPlans_3d_fullres__ct_unpaired/     (unpaired CT, ours)

Configurations that ``inherits_from`` another one share its ``data_identifier`` and therefore its unpaired folders.
"""
import json
import os

from mri_unpaired.modality import DEFAULT_MODALITY, get_modality

MANIFEST_NAME = "manifest.json"
CASE_DATA_ENDING = ".b2nd"
CASE_PROPERTIES_ENDING = ".pkl"


def unpaired_folder(preprocessed_dataset_folder: str, modality: str = DEFAULT_MODALITY) -> str:
    """Map a trainer's ``self.preprocessed_dataset_folder`` ($nnUNet_preprocessed/<dataset>/<data_identifier>) to the
    sibling folder holding the preprocessed unpaired volumes of ``modality`` for that data identifier."""
    folder = os.path.normpath(os.fspath(preprocessed_dataset_folder))
    parent, name = os.path.split(folder)
    if not name:
        raise ValueError(f"{preprocessed_dataset_folder!r} is not a preprocessed configuration folder")
    return os.path.join(parent, name + get_modality(modality).folder_suffix)


def unpaired_folder_for(preprocessed_root: str, dataset_name: str, data_identifier: str,
                        modality: str = DEFAULT_MODALITY) -> str:
    """Same folder, from $nnUNet_preprocessed, the dataset name and the configuration's data identifier."""
    return unpaired_folder(os.path.join(preprocessed_root, dataset_name, data_identifier), modality)


def manifest_path(folder: str) -> str:
    return os.path.join(folder, MANIFEST_NAME)


def case_files(folder: str, case: str):
    """(data file, properties file) of one case."""
    return (os.path.join(folder, case + CASE_DATA_ENDING),
            os.path.join(folder, case + CASE_PROPERTIES_ENDING))


def read_manifest(folder: str):
    """The manifest dict of a preprocessed unpaired folder, or None if it has none or it cannot be parsed."""
    try:
        with open(manifest_path(folder)) as f:
            m = json.load(f)
    except (OSError, ValueError):
        return None
    return m if isinstance(m, dict) and isinstance(m.get("cases"), dict) else None
