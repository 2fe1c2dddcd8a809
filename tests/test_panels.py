"""``nnunet_cmedl panels`` / ``make_case_panels``: one PNG per case on the slice of largest reference area."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import cli, run
from test_export_pmri import error_lines, one_torch_thread, tiny_models


@pytest.fixture(scope="module")
def models(planned_dataset):
    return {**planned_dataset, **tiny_models(planned_dataset)}


def reference_slices(labels_folder: Path) -> dict:
    out = {}
    for f in sorted(labels_folder.glob("*.nii.gz")):
        a = sitk.GetArrayFromImage(sitk.ReadImage(str(f)))
        out[f.name[:-len(".nii.gz")]] = int(np.argmax((a > 0).sum(axis=(1, 2))))
    return out


def test_largest_area_slice_and_dice():
    from nnunet_cmedl.evaluation.metrics import dice
    from nnunet_cmedl.plotting import largest_area_slice
    ref = np.zeros((5, 4, 4), np.uint8)
    ref[1, :2, :2] = 1
    ref[3, :3, :3] = 1
    assert largest_area_slice(ref) == 3
    assert largest_area_slice(np.zeros((6, 4, 4))) == 3  # none: the middle slice
    assert dice(ref, ref) == 1.0 and dice(ref, np.zeros_like(ref)) == 0.0
    assert dice(np.zeros(3), np.zeros(3)) == 1.0  # as nnunet_cmedl evaluate scores two empty masks


def test_api_panels_student_computed(models, tmp_path):
    from matplotlib.image import imread
    from nnunet_cmedl.evaluation.panels import make_case_panels
    from nnunet_cmedl.inference import load_cmedl_model
    raw = models["raw_folder"]
    with one_torch_thread():
        model = load_cmedl_model(models["3d"])
        pngs = make_case_panels(model, raw / "imagesTs", raw / "labelsTs", tmp_path / "panels")
    expected = reference_slices(raw / "labelsTs")
    assert [p.name for p in pngs] == [f"{c}.png" for c in sorted(expected)]
    for p in pngs:
        image = imread(p)
        assert image.ndim == 3 and image.shape[0] > 300 and image.shape[1] > 1200
        assert image[..., :3].std() > 0.05  # not blank
    index = json.loads((tmp_path / "panels" / "index.json").read_text())
    assert {e["case"]: e["slice"] for e in index["panels"]} == expected
    assert index["ct_window"] == {"width": 400.0, "level": 40.0, "name": "mediastinal"}
    for e in index["panels"]:
        assert e["png"] == f"{e['case']}.png" and e["axis"] == 0 and e["reference_area_voxels"] > 0
        assert e["student_source"] == "computed" and e["mri_file"] is None


def test_cli_panels_with_student_predictions_and_mri(models, tmp_path):
    raw = models["raw_folder"]
    env = models["env"]
    perfect = tmp_path / "student_pred"  # the reference as the student's prediction: DSC 1 shows it is used
    shutil.copytree(raw / "labelsTs", perfect)
    out = tmp_path / "panels"
    args = ["panels", "-m", models["3d"], "-i", raw / "imagesTs", "-ref", raw / "labelsTs", "--student-pred", perfect,
            "--mri", raw / "unpairedMRI", "-o", out, "--quiet"]
    r = run(cli(*args), env)
    assert "wrote 2 panel(s)" in r.stdout
    expected = reference_slices(raw / "labelsTs")
    assert sorted(p.name for p in out.iterdir()) == sorted([f"{c}.png" for c in expected] + ["index.json"])
    index = json.loads((out / "index.json").read_text())
    mri_files = sorted((raw / "unpairedMRI").glob("*.nii.gz"))
    for e in index["panels"]:
        assert e["slice"] == expected[e["case"]]
        assert e["student_source"] == "--student-pred" and e["dice_student"] == pytest.approx(1.0)
        assert Path(e["mri_file"]) in mri_files
        depth = sitk.ReadImage(e["mri_file"]).GetSize()[2]
        assert 0 <= e["mri_slice"] < depth
        assert e["mri_slice"] == round(e["slice"] / (e["num_slices"] - 1) * (depth - 1))

    # existing outputs are refused without --overwrite, kept as they were
    before = (out / "index.json").read_bytes()
    r = run(cli(*args), env, check=False)
    assert r.returncode == 2
    lines = error_lines(r.stderr)
    assert len(lines) == 1 and "--overwrite" in lines[0] and str(out) in lines[0]
    assert (out / "index.json").read_bytes() == before


def test_missing_reference_names_the_file(models, tmp_path, capsys):
    from nnunet_cmedl.cli import main
    raw = models["raw_folder"]
    labels = tmp_path / "labels"
    labels.mkdir()
    first = sorted((raw / "labelsTs").glob("*.nii.gz"))[0]
    shutil.copy(first, labels / first.name)  # the other case's label is missing
    capsys.readouterr()
    with one_torch_thread():
        rc = main(["panels", "-m", str(models["3d"]), "-i", str(raw / "imagesTs"), "-ref", str(labels),
                   "-o", str(tmp_path / "out"), "--quiet"])
    assert rc == 2
    lines = error_lines(capsys.readouterr().err)
    missing = sorted(p.name for p in (raw / "labelsTs").glob("*.nii.gz"))[1]
    assert len(lines) == 1 and str(labels / missing) in lines[0]
    assert not (tmp_path / "out").exists()


def test_hand_built_case_gives_the_known_slice_area_and_dice(models, tmp_path):
    """A case whose answers are known without the code under test: the reference has 36 voxels on slice 5 and 9 on
    slice 2, the student's prediction 18 of the 36: slice 5, area 36, student Dice 2 * 18 / (45 + 18) = 4 / 7."""
    from nnunet_cmedl.evaluation.panels import make_case_panels
    from nnunet_cmedl.inference import load_cmedl_model
    ct_file = sorted((models["raw_folder"] / "imagesTs").glob("*_0000.nii.gz"))[0]
    ct = sitk.ReadImage(str(ct_file))
    for sub in ("images", "labels", "student"):
        (tmp_path / sub).mkdir()
    shutil.copy(ct_file, tmp_path / "images" / "hand_0000.nii.gz")
    shape = sitk.GetArrayViewFromImage(ct).shape
    reference, student = np.zeros(shape, np.uint8), np.zeros(shape, np.uint8)
    reference[5, 20:26, 30:36] = 1
    reference[2, 10:13, 10:13] = 1
    student[5, 20:23, 30:36] = 1
    for folder, array in (("labels", reference), ("student", student)):
        image = sitk.GetImageFromArray(array)
        image.CopyInformation(ct)
        sitk.WriteImage(image, str(tmp_path / folder / "hand.nii.gz"))
    with one_torch_thread():
        pngs = make_case_panels(load_cmedl_model(models["3d"]), tmp_path / "images", tmp_path / "labels",
                                tmp_path / "out", student_pred_folder=tmp_path / "student")
    assert [p.name for p in pngs] == ["hand.png"]
    entry = json.loads((tmp_path / "out" / "index.json").read_text())["panels"][0]
    assert (entry["case"], entry["slice"], entry["reference_area_voxels"], entry["num_slices"]) == \
        ("hand", 5, 36, shape[0])
    assert entry["dice_student"] == pytest.approx(4 / 7) and entry["student_source"] == "--student-pred"
    assert entry["reference_empty"] is False
