"""Finding the unpaired volumes (MRI or CT) of an input folder and checking each one before anything is written.

Kept light on imports (numpy, SimpleITK, nibabel): the checks run in spawned worker processes, which import this
module only.

Axis order: shapes and spacings of sources are given in array order as SimpleITK reads them, i.e. (z, y, x) for a
3D volume; this is the order nnU-Net's SimpleITKIO uses before ``transpose_forward``.
"""
import gzip
import os
import zlib

import numpy as np

from mri_unpaired.errors import UserInputError, itk_message

# longest first, matched case-insensitively
IMAGE_ENDINGS = (".nii.gz", ".gipl.gz", ".nii", ".mha", ".mhd", ".nrrd", ".nhdr", ".gipl", ".hdr", ".vtk", ".mnc")
_NIFTI_ENDINGS = (".nii.gz", ".nii")
# voxel spacings a medical image can have; anything else is a broken header, which resampling would turn into an
# empty or enormous volume
SPACING_RANGE_MM = (0.01, 100.0)


def image_ending(filename: str):
    low = filename.lower()
    for e in IMAGE_ENDINGS:
        if low.endswith(e) and len(filename) > len(e):
            return e
    return None


def discover_unpaired_files(folder: str, modality: str = "MRI"):
    """``({case: absolute path}, [ignored file names])`` of a folder of unpaired volumes; UserInputError if there is nothing to
    use.

    Case names are the file names without their image ending. Hidden files and subfolders are ignored."""
    if not os.path.exists(folder):
        raise UserInputError(f"{folder}: {modality} folder does not exist")
    if not os.path.isdir(folder):
        raise UserInputError(f"{folder}: is not a folder (-i takes a folder of {modality} volumes)")
    try:
        names = sorted(os.listdir(folder))
    except OSError as e:
        raise UserInputError(f"{folder}: cannot list the {modality} folder ({e.strerror})") from None
    cases, ignored = {}, []
    for n in names:
        path = os.path.join(folder, n)
        if n.startswith(".") or not os.path.isfile(path):
            continue
        e = image_ending(n)
        if e is None:
            ignored.append(n)
            continue
        case = n[:-len(e)]
        if case in cases:
            raise UserInputError(f"{os.path.join(folder, n)}: gives the same case name {case!r} as "
                                 f"{cases[case]}; keep only one of the two files")
        cases[case] = os.path.abspath(path)
    if not cases:
        what = f"; it holds only {', '.join(ignored[:5])}{' ...' if len(ignored) > 5 else ''}" if ignored else \
            " (it is empty)"
        raise UserInputError(f"{folder}: no {modality} image files ({', '.join(IMAGE_ENDINGS)}){what}")
    return cases, ignored


def _gzip_length(path: str) -> int:
    """Length of the decompressed stream; raises on a truncated or corrupt gzip file (CRC included)."""
    n = 0
    with gzip.open(path, "rb") as f:
        while True:
            b = f.read(1 << 22)
            if not b:
                return n
            n += len(b)


def _nonfinite_message(n_nan: int, n_inf: int) -> str:
    return f"contains {n_nan + n_inf} non-finite voxels ({n_nan} NaN, {n_inf} Inf); replace them (e.g. by 0) first"


def file_contents_problem(path: str):
    """An error message for what ITK does not report, else None.

    ITK's NIfTI reader (SimpleITK, hence nnU-Net's SimpleITKIO) reads a truncated .nii / .nii.gz without complaint,
    filling the missing voxels with zeros, and silently turns NaN and Inf voxels into 0. So gzip streams are checked
    to the end, and NIfTI files against their header and, for float data, for non-finite values (with nibabel)."""
    low = path.lower()
    with open(path, "rb") as f:
        magic = f.read(2)
    is_gz = magic == b"\x1f\x8b"
    payload = None
    if is_gz:
        try:
            payload = _gzip_length(path)
        except (EOFError, OSError, zlib.error) as e:
            return f"truncated or corrupt gzip data ({e})"
    if low.endswith(_NIFTI_ENDINGS):
        try:
            import nibabel
            img = nibabel.load(path)
            hdr = img.header
            expected = int(hdr.get_data_offset()) + int(np.prod(hdr.get_data_shape(), dtype=np.int64)) * \
                int(hdr.get_data_dtype().itemsize)
        except Exception:  # nibabel cannot parse it: ITK's verdict decides
            return None
        actual = payload if is_gz else os.path.getsize(path)
        if actual < expected:
            return f"truncated: the NIfTI header announces {expected} bytes, the file holds {actual}"
        slope, inter = hdr.get_slope_inter()
        if np.issubdtype(hdr.get_data_dtype(), np.floating) or \
                any(v is not None and not np.isfinite(v) for v in (slope, inter)):
            a = np.asanyarray(img.dataobj)
            if np.issubdtype(a.dtype, np.floating):
                n_nan = int(np.count_nonzero(np.isnan(a)))
                n_inf = int(np.count_nonzero(np.isinf(a)))
                if n_nan or n_inf:
                    return _nonfinite_message(n_nan, n_inf)
    return None


def refuse_damaged_file(path) -> None:
    """UserInputError naming ``path`` if it is truncated, a corrupt gzip, or holds NaN / Inf voxels: what ITK's and
    nnU-Net's readers take without complaint (``file_contents_problem``). For every CLI that reads an image."""
    problem = file_contents_problem(str(path))
    if problem:
        raise UserInputError(f"{path}: {problem}")


def _stats(a: np.ndarray) -> dict:
    a = a.astype(np.float64, copy=False)
    p = np.percentile(a, [0.5, 99.5])
    return {"mean": float(a.mean()), "sd": float(a.std()), "percentile_00_5": float(p[0]),
            "percentile_99_5": float(p[1]), "min": float(a.min()), "max": float(a.max())}


def check_unpaired_file(path: str, allow_2d: bool, modality: str = "MRI", case: str = None):
    """``(info, None)`` for a usable volume of the unpaired ``modality`` (MRI, CT), ``(None, message)`` otherwise
    (the message names the file).

    info: source_file, source_size, source_mtime_ns, source_shape, source_spacing (array order), dimension,
    pixel_type, intensity_before (mean, sd, percentile_00_5, percentile_99_5, min, max over the whole image); for a
    modality normalised with statistics of the whole set (CT), also ``statistics_sample``: voxels of the nonzero
    region (``mri_unpaired.modality.statistics_sample``), which the caller pools and removes."""
    import SimpleITK as sitk
    sitk.ProcessObject.SetGlobalWarningDisplay(False)

    def bad(what):
        return None, f"{path}: {what}"

    try:
        st = os.stat(path)
    except OSError as e:
        return bad(f"cannot be read ({e.strerror})")
    reader = sitk.ImageFileReader()
    reader.SetFileName(path)
    try:
        reader.ReadImageInformation()
    except RuntimeError as e:
        return bad(f"cannot be read as an image ({itk_message(e)})")
    dim = reader.GetDimension()
    size = list(reader.GetSize())
    shape = size[::-1]
    ncomp = reader.GetNumberOfComponents()
    if ncomp != 1:
        return bad(f"has {ncomp} values per voxel (a vector or colour image); expected a scalar {modality} volume")
    if dim == 4 and size[3] == 1:
        pass  # one volume in a 4D file: nnU-Net's SimpleITKIO reads it as one channel
    elif dim >= 4:
        return bad(f"is a {dim}D image of shape {shape}; expected one 3D {modality} volume per file "
                   f"(split the series into one file per volume)")
    elif dim == 2 and not allow_2d:
        return bad(f"is a 2D image of shape {shape}; this configuration needs 3D {modality} volumes")
    elif dim < 2:
        return bad(f"is a {dim}D image; expected a 3D {modality} volume")
    if any(s < 1 for s in size):
        return bad(f"has an empty shape {shape}")
    spacing = list(reader.GetSpacing())
    if not all(np.isfinite(s) and s > 0 for s in spacing):
        return bad(f"has an invalid voxel spacing {spacing}")
    if not all(SPACING_RANGE_MM[0] <= s <= SPACING_RANGE_MM[1] for s in spacing[:3]):
        return bad(f"has an implausible voxel spacing {spacing} mm (expected {SPACING_RANGE_MM[0]:g} to "
                   f"{SPACING_RANGE_MM[1]:g} mm per axis); fix the file's header")
    problem = file_contents_problem(path)
    if problem:
        return bad(problem)
    try:
        img = reader.Execute()
    except RuntimeError as e:
        return bad(f"cannot be read as an image ({itk_message(e)})")
    a = sitk.GetArrayViewFromImage(img)
    if np.issubdtype(a.dtype, np.floating):
        n_bad = int(a.size - np.count_nonzero(np.isfinite(a)))
        if n_bad:
            n_nan = int(np.count_nonzero(np.isnan(a)))
            return bad(_nonfinite_message(n_nan, n_bad - n_nan))
    lo, hi = a.min(), a.max()
    if lo == hi:
        return bad(f"is constant (every voxel is {float(lo):g}); normalisation needs contrast")
    nz = a != 0
    bbox = []
    for i in range(a.ndim):
        idx = np.flatnonzero(np.any(nz, axis=tuple(j for j in range(a.ndim) if j != i)))
        bbox.append(slice(int(idx[0]), int(idx[-1]) + 1))
    cropped = a[tuple(bbox)]
    if np.all(cropped == cropped.flat[0]):
        return bad("is constant inside its nonzero region (what nnU-Net crops to before normalising); "
                   "normalisation needs contrast")
    sp = spacing[::-1]
    if dim == 4:
        shape, sp = shape[1:], sp[1:]
    info = {
        "source_file": path,
        "source_size": int(st.st_size),
        "source_mtime_ns": int(st.st_mtime_ns),
        "source_shape": [int(s) for s in shape],
        "source_spacing": [float(s) for s in sp],
        "dimension": int(dim),
        "pixel_type": img.GetPixelIDTypeAsString(),
        "intensity_before": _stats(np.asarray(a)),
    }
    from mri_unpaired.modality import get_modality, statistics_sample
    if get_modality(modality).set_statistics:
        info["statistics_sample"] = statistics_sample(cropped, case or os.path.basename(path))
    return info, None


def check_unpaired_file_task(args):
    """Pool entry point (module level, so spawned workers can unpickle it)."""
    case, path, allow_2d, modality = args
    try:
        info, err = check_unpaired_file(path, allow_2d, modality, case)
    except MemoryError:
        info, err = None, f"{path}: too large to read into memory"
    except Exception as e:  # noqa: BLE001 - anything unexpected still names the file
        info, err = None, f"{path}: cannot be checked ({type(e).__name__}: {' '.join(str(e).split())[:200]})"
    return case, info, err
