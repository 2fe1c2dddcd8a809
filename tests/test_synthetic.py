"""The synthetic thorax dataset: nnU-Net layout, geometry, determinism, the easy/hard contrast design, the CLI."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from mri_unpaired.atomic import MANIFEST_NAME
from nnunet_cmedl.errors import UserInputError
from nnunet_cmedl.synthetic import phantom
from nnunet_cmedl.synthetic.dataset import SyntheticDatasetPaths, make_synthetic_dataset

SHAPE = (16, 48, 64)
SPACING = (10.0, 6.0, 6.0)  # covers the phantom's 160 x 288 x 384 mm field of view
SEED = 3
NUM_TRAIN, NUM_TEST, NUM_MRI = 3, 2, 2


def small_dataset(raw_root, **kwargs) -> SyntheticDatasetPaths:
    settings = dict(dataset_id=501, dataset_name="CMEDLThorax", num_train=NUM_TRAIN, num_test=NUM_TEST,
                    num_unpaired=NUM_MRI, ct_shape=SHAPE, seed=SEED, preview=False, show_progress=False)
    settings.update(kwargs)
    return make_synthetic_dataset(raw_root, **settings)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> SyntheticDatasetPaths:
    return small_dataset(tmp_path_factory.mktemp("raw"), preview=True)


def read(path) -> sitk.Image:
    return sitk.ReadImage(str(path))


def array(path) -> np.ndarray:
    return sitk.GetArrayFromImage(read(path))


def all_arrays(paths: SyntheticDatasetPaths) -> dict:
    folders = [paths.dataset_folder / sub for sub in ("imagesTr", "labelsTr", "imagesTs", "labelsTs")]
    files = [f for folder in folders + [paths.unpaired_folder] for f in sorted(folder.glob("*.nii.gz"))]
    return {f.relative_to(f.parent.parent).as_posix(): array(f) for f in files}


def ct_ids():
    return [f"thorax_{i:03d}" for i in range(NUM_TRAIN + NUM_TEST)]


def test_layout_and_dataset_json_follow_nnunet(dataset):
    folder = dataset.dataset_folder
    assert folder.name == "Dataset501_CMEDLThorax"
    ids = ct_ids()
    for i, case in enumerate(ids):
        images, labels = ("imagesTr", "labelsTr") if i < NUM_TRAIN else ("imagesTs", "labelsTs")
        assert (folder / images / f"{case}_0000.nii.gz").is_file()
        assert (folder / labels / f"{case}.nii.gz").is_file()
    assert len(list((folder / "imagesTr").iterdir())) == NUM_TRAIN
    assert len(list((folder / "imagesTs").iterdir())) == NUM_TEST

    ds = json.loads((folder / "dataset.json").read_text())
    assert ds["numTraining"] == NUM_TRAIN
    assert ds["channel_names"] == {"0": "CT"}
    assert ds["labels"] == {"background": 0, "tumour": 1}
    assert ds["file_ending"] == ".nii.gz"

    assert dataset.unpaired_folder == folder / "unpairedMRI"
    assert sorted(p.name for p in dataset.unpaired_folder.iterdir()) == ["mri_000.nii.gz", "mri_001.nii.gz"]
    assert dataset.metadata_json == folder / "phantom_metadata.json" and dataset.metadata_json.is_file()
    assert dataset.preview_png == folder / "preview.png"
    assert dataset.preview_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(folder.parent.glob(".*tmp*")), "temporary build folder left behind"


def test_nnunet_accepts_the_dataset(dataset):
    from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity
    verify_dataset_integrity(str(dataset.dataset_folder), 1)  # raises on any problem


def test_labels_geometry_and_mri_grid(dataset):
    folder = dataset.dataset_folder
    for case in ct_ids():
        split = "Tr" if int(case[-3:]) < NUM_TRAIN else "Ts"
        image, label = read(folder / f"images{split}/{case}_0000.nii.gz"), read(folder / f"labels{split}/{case}.nii.gz")
        assert image.GetSpacing() == pytest.approx(SPACING[::-1])
        assert label.GetSpacing() == image.GetSpacing() and label.GetOrigin() == image.GetOrigin()
        assert image.GetSize() == SHAPE[::-1]
        values = sitk.GetArrayFromImage(label)
        assert set(np.unique(values)) <= {0, 1}
        assert values.sum() > 0, f"{case} has no tumour voxels"
        hu = sitk.GetArrayFromImage(image)
        assert hu.min() >= -1024 and np.median(hu[values == 1]) > -100  # tumours are soft tissue, in HU

    mri = read(dataset.unpaired_folder / "mri_000.nii.gz")
    ct = read(folder / "imagesTr/thorax_000_0000.nii.gz")
    assert mri.GetSpacing() != ct.GetSpacing() and mri.GetSize() != ct.GetSize()
    assert mri.GetSpacing() == pytest.approx((4.0, 4.0, 8.0))  # 2/3 in-plane and 0.8 x the slice spacing
    fov_mri = np.array(mri.GetSize()) * mri.GetSpacing()
    fov_ct = np.array(ct.GetSize()) * ct.GetSpacing()
    assert fov_mri == pytest.approx(fov_ct, rel=0.05)  # a thorax of the same physical size
    assert sitk.GetArrayFromImage(mri).min() >= 0


def test_same_seed_gives_identical_volumes_and_another_seed_differs(dataset, tmp_path):
    first = all_arrays(dataset)
    again = all_arrays(small_dataset(tmp_path / "again"))
    assert first.keys() == again.keys()
    for name in first:
        assert np.array_equal(first[name], again[name]), name
    other = all_arrays(small_dataset(tmp_path / "other", seed=SEED + 1))
    assert not np.array_equal(first["imagesTr/thorax_000_0000.nii.gz"], other["imagesTr/thorax_000_0000.nii.gz"])
    assert not np.array_equal(first["unpairedMRI/mri_000.nii.gz"], other["unpairedMRI/mri_000.nii.gz"])


def tissue_maps(kind, index, grid) -> phantom.TissueMaps:
    anatomy = (phantom.ct_anatomy if kind == "ct" else phantom.mri_anatomy)(SEED, index, grid.fov_mm)
    return phantom.render_tissues(anatomy, grid.axes()), anatomy


def shell(mask, spacing, mm=phantom.SHELL_MM):
    dist = ndimage.distance_transform_edt(~mask, sampling=spacing)
    return (dist > 0) & (dist <= mm)


def test_hard_tumours_are_invisible_in_ct_and_lung_tumours_obvious(dataset):
    """Measured on the written CT: tumour mean minus the mean of the mediastinum (or lung) within 12 mm of it (two
    voxels of this coarse grid; one would leave a handful of mediastinum voxels, whose mean is mostly noise)."""
    folder = dataset.dataset_folder
    metadata = json.loads(dataset.metadata_json.read_text())
    grid = phantom.Grid(SHAPE, SPACING)
    hard_seen = easy_seen = 0
    for index, case in enumerate(ct_ids()):
        split = "Tr" if index < NUM_TRAIN else "Ts"
        hu = array(folder / f"images{split}/{case}_0000.nii.gz").astype(float)
        label = array(folder / f"labels{split}/{case}.nii.gz")
        maps, anatomy = tissue_maps("ct", index, grid)
        assert np.array_equal(maps.label, label), "the phantom API reproduces the written label"
        records = metadata["labelled_cases"][case]["tumours"]
        assert any(r["difficulty"] == "hard" for r in records), f"{case} has no hard tumour"
        for k, record in enumerate(records, start=1):
            tumour = maps.tumour_id == k
            if not tumour.any():
                continue
            around = shell(tumour, SPACING, mm=12.0)
            if record["location"] == "mediastinal":
                mediastinum = around & np.isin(maps.tissue, [phantom.Tissue.MEDIASTINUM, phantom.Tissue.HEART])
                contrast = hu[tumour].mean() - hu[mediastinum].mean()
                assert abs(contrast) < 6, (case, k, contrast)
                assert record["touches_atelectasis"]
                assert abs(record["design"]["contrast_vs_mediastinum_hu"]) <= 4
                hard_seen += 1
            else:
                lung = around & (maps.tissue == phantom.Tissue.LUNG)
                assert hu[tumour].mean() - hu[lung].mean() > 300
                easy_seen += 1
    assert hard_seen and easy_seen


def test_mri_tumours_are_bright(dataset):
    grid = phantom.default_mri_grid(phantom.Grid(SHAPE, SPACING))
    for index in range(NUM_MRI):
        image = array(dataset.unpaired_folder / f"mri_{index:03d}.nii.gz").astype(float)
        inspection = array(dataset.dataset_folder / f"unpairedMRI_labels_for_inspection/mri_{index:03d}.nii.gz")
        maps, _ = tissue_maps("mri", index, grid)
        assert np.array_equal(maps.label, inspection)
        tumour = image[inspection == 1].mean()
        assert tumour > image[maps.tissue == phantom.Tissue.MEDIASTINUM].mean() + 150
        assert tumour > image[maps.tissue == phantom.Tissue.ATELECTASIS].mean() + 100


def test_design_statistics_and_separate_mri_patients():
    anatomies = [phantom.ct_anatomy(0, i) for i in range(30)]
    locations = [t.location for a in anatomies for t in a.tumours]
    assert all(1 <= len(a.tumours) <= 3 for a in anatomies)
    assert all(any(t.location == "mediastinal" for t in a.tumours) for a in anatomies)
    assert 0.35 <= locations.count("mediastinal") / len(locations) <= 0.7
    assert all(6 <= t.radius <= 20 for a in anatomies for t in a.tumours)
    mri = phantom.mri_anatomy(0, 0)
    assert not np.allclose(mri.heart_centre, anatomies[0].heart_centre)
    assert [t.centre.tolist() for t in mri.tumours] != [t.centre.tolist() for t in anatomies[0].tumours]


def test_existing_output_is_refused_and_left_alone(dataset):
    before = {p: p.stat().st_mtime_ns for p in dataset.dataset_folder.rglob("*")}
    with pytest.raises(UserInputError, match="exists already"):
        small_dataset(dataset.dataset_folder.parent)
    assert {p: p.stat().st_mtime_ns for p in dataset.dataset_folder.rglob("*")} == before


def test_overwrite_and_external_mri_folder(tmp_path):
    mri_out = tmp_path / "mri_elsewhere"
    paths = small_dataset(tmp_path / "raw", num_train=2, num_test=0, num_unpaired=1, unpaired_folder=mri_out)
    assert paths.unpaired_folder == mri_out and (mri_out / "mri_000.nii.gz").is_file()
    assert not (paths.dataset_folder / "unpairedMRI").exists()
    with pytest.raises(UserInputError, match="exists already"):
        small_dataset(tmp_path / "raw2", num_train=2, num_test=0, num_unpaired=1, unpaired_folder=mri_out)
    assert not (tmp_path / "raw2" / "Dataset501_CMEDLThorax").exists()
    # --overwrite replaces what make-synthetic wrote, as long as nobody added anything
    small_dataset(tmp_path / "raw", num_train=2, num_test=0, num_unpaired=1, unpaired_folder=mri_out, overwrite=True)
    assert (mri_out / "mri_000.nii.gz").is_file() and (mri_out / MANIFEST_NAME).is_file()
    # ... and never a file of the user's, nor a folder it did not write: refused before any work, nothing changed
    for folder in (paths.dataset_folder, mri_out):
        (folder / "user_note.txt").write_text("mine")
        before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
        with pytest.raises(UserInputError, match="user_note.txt, not written by nnunet_cmedl make-synthetic"):
            small_dataset(tmp_path / "raw", num_train=2, num_test=0, num_unpaired=1, unpaired_folder=mri_out, overwrite=True)
        assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before
        (folder / "user_note.txt").unlink()
    users = tmp_path / "users_folder"
    users.mkdir()
    (users / "scan.nii.gz").write_bytes(b"precious")
    with pytest.raises(UserInputError, match="not written by nnunet_cmedl make-synthetic"):
        small_dataset(tmp_path / "raw", num_train=2, num_test=0, num_unpaired=1, unpaired_folder=users, overwrite=True)
    assert (users / "scan.nii.gz").read_bytes() == b"precious" and len(list(users.iterdir())) == 1


def test_bad_settings_are_one_line_errors(tmp_path):
    with pytest.raises(UserInputError, match="too small"):
        small_dataset(tmp_path, ct_shape=(16, 48, 64), ct_spacing=(5.0, 3.0, 3.0))
    with pytest.raises(UserInputError, match="too coarse"):
        small_dataset(tmp_path, ct_shape=(8, 20, 20))
    with pytest.raises(UserInputError, match="dataset id"):
        small_dataset(tmp_path, dataset_id=1000)
    small_dataset(tmp_path, dataset_name="Other", num_train=1, num_test=0, num_unpaired=0)
    with pytest.raises(UserInputError, match="same dataset id"):
        small_dataset(tmp_path, num_train=1, num_test=0, num_unpaired=0)


def run_cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "nnunet_cmedl.cli", "make-synthetic", *args],
                          capture_output=True, text=True, env=env, timeout=120)


def test_cli_writes_the_dataset_and_reports_where(tmp_path):
    raw = tmp_path / "raw"
    result = run_cli("--raw", str(raw), "-d", "502", "--name", "Tiny", "--num-train", "2", "--num-test", "1",
                     "--num-mri", "1", "--shape", "20", "48", "64", "--spacing", "8", "6", "6", "--seed", "1")
    assert result.returncode == 0, result.stderr
    folder = raw / "Dataset502_Tiny"
    assert str(folder) in result.stdout and "unpairedMRI" in result.stdout and "preview.png" in result.stdout
    assert read(folder / "imagesTr/thorax_000_0000.nii.gz").GetSpacing() == pytest.approx((6.0, 6.0, 8.0))
    assert (folder / "imagesTs/thorax_002_0000.nii.gz").is_file() and (folder / "preview.png").is_file()

    again = run_cli("--raw", str(raw), "-d", "502", "--name", "Tiny", "--num-train", "2", "--num-test", "1",
                    "--num-mri", "1", "--shape", "20", "48", "64", "--spacing", "8", "6", "6")
    assert again.returncode == 2 and "--overwrite" in again.stderr


def test_cli_without_raw_root_fails_with_one_line(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "nnUNet_raw"}
    result = run_cli("--num-train", "1", env=env)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "nnUNet_raw" in lines[0] and "--raw" in lines[0]


def test_cli_help_explains_the_design():
    result = run_cli("--help")
    assert result.returncode == 0
    assert "mediastin" in result.stdout and "lung" in result.stdout and "MRI" in result.stdout
