"""The unpaired modality: which one it is, how its volumes are normalised, and where they are stored.

CMEDL's labelled modality need not be CT. The unpaired volumes (other patients, no labels) are either

    MRI: per-image z-score (nnU-Net's ``ZScoreNormalization``, no mask): MRI intensities have no absolute scale;
    CT:  nnU-Net's ``CTNormalization`` (clip to the 0.5 / 99.5 percentiles, subtract the mean, divide by the sd),
         with statistics of the unpaired CT set itself (``unpaired_intensity_statistics``): the labelled dataset's
         fingerprint describes another modality, and unlabelled CT has no foreground to restrict them to.

The modality is chosen by ``--modality`` or by the labelled dataset's ``dataset.json`` key ``"unpaired_modality"``,
never guessed (``resolve_unpaired_modality``). Each modality has its own folder beside the configuration's
preprocessed data (``<data_identifier>__mri_unpaired``, ``<data_identifier>__ct_unpaired``).
"""
from dataclasses import dataclass

import numpy as np

from mri_unpaired.errors import UserInputError

DATASET_JSON_KEY = "unpaired_modality"
# voxels drawn per unpaired CT volume for the set's intensity statistics (seeded by the case name: a re-run gives the
# same statistics)
CT_STATISTICS_SAMPLES_PER_VOLUME = 100_000


@dataclass(frozen=True)
class UnpairedModality:
    name: str               # as the user writes it: MRI, CT
    normalization: str      # nnU-Net normalisation scheme (nnunetv2.preprocessing.normalization)
    set_statistics: bool    # the scheme needs intensity statistics of the whole unpaired set
    description: str

    @property
    def folder_suffix(self) -> str:
        return f"__{self.name.lower()}_unpaired"


MODALITIES = {
    "MRI": UnpairedModality("MRI", "ZScoreNormalization", False, "per-image z-score"),
    "CT": UnpairedModality("CT", "CTNormalization", True,
                           "nnU-Net's CT normalisation with percentiles, mean and sd of the unpaired CT set"),
}
DEFAULT_MODALITY = "MRI"     # folders and manifests written before the modality was recorded hold MRI


def get_modality(name: str, setting: str = "--modality") -> UnpairedModality:
    m = MODALITIES.get(str(name).upper()) if name is not None else None
    if m is None:
        raise UserInputError(f"{setting} {name!r}: expected one of {', '.join(MODALITIES)}")
    return m


def resolve_unpaired_modality(option, dataset_json: dict, dataset_json_file: str) -> tuple:
    """``(UnpairedModality, where it came from)``: the option, else dataset.json's ``unpaired_modality``, else a
    one-line error saying how to choose."""
    if option is not None:
        return get_modality(option), "--modality"
    value = (dataset_json or {}).get(DATASET_JSON_KEY)
    if value is not None:
        return get_modality(value, f"{dataset_json_file}: \"{DATASET_JSON_KEY}\""), dataset_json_file
    raise UserInputError(f"the unpaired modality is not given: pass --modality {' or '.join(MODALITIES)} (or set "
                         f"\"{DATASET_JSON_KEY}\" in {dataset_json_file}); it decides the normalisation")


def other_modality(name: str) -> str:
    """The modality of the other side: MRI for CT, CT for anything else (CMEDL pairs CT with MRI)."""
    return "MRI" if name == "CT" else "CT"


def labelled_modality_guess(normalization_schemes) -> str:
    """What the planned (labelled) data's first channel is, from its normalisation: CT for nnU-Net's CT scheme."""
    return "CT" if normalization_schemes and normalization_schemes[0] == "CTNormalization" else "MRI"


def statistics_sample(cropped: np.ndarray, case: str, n: int = CT_STATISTICS_SAMPLES_PER_VOLUME) -> np.ndarray:
    """Up to ``n`` voxels of an image already cropped to its nonzero bounding box (what nnU-Net crops to before
    normalising), drawn with a seed from the case name, as float32."""
    import zlib
    flat = np.asarray(cropped).reshape(-1)
    if flat.size > n:
        flat = flat[np.random.default_rng(zlib.crc32(case.encode())).choice(flat.size, n, replace=False)]
    return flat.astype(np.float32)


def unpaired_intensity_statistics(samples) -> dict:
    """The intensity properties nnU-Net's fingerprint stores per channel (mean, median, std, min, max,
    percentile_00_5, percentile_99_5), over the pooled samples of every unpaired volume."""
    v = np.concatenate([np.asarray(s, dtype=np.float64).reshape(-1) for s in samples])
    p = np.percentile(v, [50.0, 0.5, 99.5])
    return {"mean": float(v.mean()), "median": float(p[0]), "std": float(v.std()), "min": float(v.min()),
            "max": float(v.max()), "percentile_00_5": float(p[1]), "percentile_99_5": float(p[2]),
            "num_voxels": int(v.size)}
