"""``nnunet_cmedl export-pmri`` and ``load_cmedl_model``: pseudo-MRI (and teacher / student segmentations) of tiny
CMEDL models, in the input's geometry; the student's segmentation equals stock nnUNetv2_predict's; clear errors."""
import contextlib
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from conftest import BIN, SMALL_2D, SMALL_3D, cli, run

TINY = "nnUNetTrainerCMEDL_tinyCPU"
RESULTS = "nnUNet_results_inference"  # our own results folder: other test modules retrain theirs

# nnU-Net's trainer as nnUNetv2_train builds it, trained with run_training(); the final validation that
# nnUNetv2_train adds (minutes on CPU: every validation case with mirroring) is skipped.
_TRAIN = """
import sys, torch
from nnunetv2.run.run_training import get_trainer_from_args
for configuration in sys.argv[2:]:
    trainer = get_trainer_from_args(sys.argv[1], configuration, 0, "{trainer}", "nnUNetPlans",
                                    device=torch.device("cpu"))
    trainer.run_training()
"""


def tiny_models(planned: dict) -> dict:
    """Results folders of tiny CMEDL models on 3d_tiny and 2d_tiny (trained once per session, ~1 min) and the env."""
    # one OpenMP thread: on a shared 2-core machine two threads stall for seconds on small tensors
    env = dict(planned["env"], nnUNet_results=str(planned["root"] / RESULTS), OMP_NUM_THREADS="1")
    base = Path(env["nnUNet_results"]) / planned["dataset_name"]
    folders = {c: base / f"{TINY}__nnUNetPlans__{c}" for c in (SMALL_3D, SMALL_2D)}
    missing = [c for c, f in folders.items() if not (f / "fold_0" / "checkpoint_final.pth").is_file()]
    if missing:
        run([sys.executable, "-c", _TRAIN.format(trainer=TINY), planned["dataset_id"], *missing], env)
    return {"env": env, "3d": folders[SMALL_3D], "2d": folders[SMALL_2D]}


@contextlib.contextmanager
def one_torch_thread():
    """In-process inference with one thread (see tiny_models), restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def assert_same_geometry(a: sitk.Image, b: sitk.Image):
    assert a.GetSize() == b.GetSize()
    assert np.allclose(a.GetSpacing(), b.GetSpacing())
    assert np.allclose(a.GetOrigin(), b.GetOrigin())
    assert np.allclose(a.GetDirection(), b.GetDirection())


def moved_copy(src: Path, dst: Path) -> Path:
    """The same voxels with another origin and an oblique direction (30 degrees about z, axes flipped)."""
    image = sitk.ReadImage(str(src))
    c, s = np.cos(np.pi / 6), np.sin(np.pi / 6)
    image.SetDirection((-c, -s, 0.0, s, -c, 0.0, 0.0, 0.0, 1.0))
    image.SetOrigin((123.5, -47.25, 310.0))
    sitk.WriteImage(image, str(dst), True)
    return dst


def error_lines(stderr: str) -> list:
    return [ln for ln in stderr.splitlines() if "error:" in ln]


@pytest.fixture(scope="module")
def models(planned_dataset):
    return {**planned_dataset, **tiny_models(planned_dataset)}


@pytest.fixture(scope="module")
def exported_3d(models, tmp_path_factory):
    """The CLI on a folder: the two test CTs plus a moved copy of one; pMRI, teacher and student segmentations."""
    tmp = tmp_path_factory.mktemp("export3d")
    inputs = tmp / "in"
    inputs.mkdir()
    originals = sorted((models["raw_folder"] / "imagesTs").glob("*_0000.nii.gz"))
    for f in originals:
        shutil.copy(f, inputs / f.name)
    moved_copy(originals[0], inputs / "moved_0000.nii.gz")
    out = tmp / "out"
    r = run(cli("export-pmri", "-m", models["3d"], "-i", inputs, "-o", out, "--teacher-seg", "--student-seg"),
            models["env"])
    return {"inputs": inputs, "out": out, "original": originals[0], "stdout": r.stdout, "stderr": r.stderr,
            "tmp": tmp}


# ---------------------------------------------------------------- loading
def test_load_cmedl_model_builds_every_part(models):
    from nnunet_cmedl.inference import load_cmedl_model
    model = load_cmedl_model(models["3d"], fold=0)
    ckpt = torch.load(models["3d"] / "fold_0" / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    plans = json.loads((models["3d"] / "plans.json").read_text())
    assert model.configuration_name == SMALL_3D and model.trainer_name == TINY
    assert list(model.patch_size) == plans["configurations"][SMALL_3D]["patch_size"]
    assert model.inference_allowed_mirroring_axes == tuple(ckpt["inference_allowed_mirroring_axes"])
    for net in (model.generator, model.teacher, model.student):
        assert not net.training
    for net, key in ((model.student, "network_weights"), (model.teacher, "cmedl_teacher_weights")):
        assert all(torch.equal(v, ckpt[key][k]) for k, v in net.state_dict().items())
        assert not net.decoder.deep_supervision
    gen = {k[len("ct_to_mri."):]: v for k, v in ckpt["cmedl_i2i_weights"].items() if k.startswith("ct_to_mri.")}
    assert all(torch.equal(v, gen[k]) for k, v in model.generator.state_dict().items())
    with one_torch_thread(), torch.inference_mode():
        out = model.generator(torch.zeros(1, 1, *model.patch_size))
    assert out.shape == (1, 1, *model.patch_size)


# ---------------------------------------------------------------- 3d, through the CLI
def test_pmri_in_input_geometry_finite_and_not_the_ct(exported_3d):
    out, inputs = exported_3d["out"], exported_3d["inputs"]
    cases = sorted(p.name[:-len("_0000.nii.gz")] for p in inputs.glob("*_0000.nii.gz"))
    assert sorted(p.name for p in out.iterdir()) == sorted(
        f"{c}{s}" for c in cases for s in ("_pMRI.nii.gz", "_teacher_seg.nii.gz", "_student_seg.nii.gz"))
    assert "wrote 3 case(s)" in exported_3d["stdout"]
    for case in cases:
        ct = sitk.ReadImage(str(inputs / f"{case}_0000.nii.gz"))
        pmri = sitk.ReadImage(str(out / f"{case}_pMRI.nii.gz"))
        assert_same_geometry(pmri, ct)
        assert pmri.GetPixelID() == sitk.sitkFloat32
        p, c = sitk.GetArrayFromImage(pmri), sitk.GetArrayFromImage(ct).astype(np.float64)
        assert np.isfinite(p).all() and p.std() > 0
        # another image, not a (rescaled) copy of the CT
        assert abs(np.corrcoef(p.ravel(), c.ravel())[0, 1]) < 0.99
        assert not np.allclose(p, (c - c.mean()) / c.std(), atol=0.05)


def test_moved_copy_keeps_its_geometry_and_gets_the_same_pmri(exported_3d):
    out = exported_3d["out"]
    moved = sitk.ReadImage(str(exported_3d["inputs"] / "moved_0000.nii.gz"))
    for suffix in ("_pMRI.nii.gz", "_teacher_seg.nii.gz", "_student_seg.nii.gz"):
        written = sitk.ReadImage(str(out / f"moved{suffix}"))
        assert_same_geometry(written, moved)
        assert written.GetOrigin() == pytest.approx((123.5, -47.25, 310.0))
    case = exported_3d["original"].name[:-len("_0000.nii.gz")]
    a = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "moved_pMRI.nii.gz")))
    b = sitk.GetArrayFromImage(sitk.ReadImage(str(out / f"{case}_pMRI.nii.gz")))
    np.testing.assert_allclose(a, b, atol=1e-5)  # nnU-Net reads the same array: the header only moved


def test_segmentations_are_label_maps_in_input_geometry(exported_3d):
    out, inputs = exported_3d["out"], exported_3d["inputs"]
    for f in sorted(inputs.glob("*_0000.nii.gz")):
        case = f.name[:-len("_0000.nii.gz")]
        ct = sitk.ReadImage(str(f))
        for who in ("teacher", "student"):
            seg = sitk.ReadImage(str(out / f"{case}_{who}_seg.nii.gz"))
            assert_same_geometry(seg, ct)
            assert set(np.unique(sitk.GetArrayFromImage(seg)).tolist()) <= {0, 1}


def foreground_model(models, tmp_path: Path, fraction: float = 0.3) -> Path:
    """A copy of the tiny 3d model whose student (on CT) and teacher (on pMRI) each segment about ``fraction`` of
    the voxels: the bias of each full-resolution segmentation head is shifted so that the foreground logit wins on
    that share of a test case (a tiny model trained for 4 iterations predicts nothing, and two empty masks agree
    trivially)."""
    import re
    from nnunet_cmedl.inference import load_cmedl_model
    from nnunet_cmedl.inference.export_pmri import generate_pmri_preprocessed, make_predictor, preprocess_case
    folder = tmp_path / models["3d"].name
    shutil.copytree(models["3d"], folder)
    checkpoint_file = folder / "fold_0" / "checkpoint_final.pth"
    checkpoint = torch.load(checkpoint_file, map_location="cpu", weights_only=False)
    model = load_cmedl_model(folder, fold=0)
    image = sorted((models["raw_folder"] / "imagesTs").glob("*_0000.nii.gz"))[0]
    data, _, _ = preprocess_case(model, [str(image)])
    with one_torch_thread():
        inputs = {"network_weights": (model.student, torch.as_tensor(data)),
                  "cmedl_teacher_weights": (model.teacher, generate_pmri_preprocessed(model, data))}
        for key, (network, x) in inputs.items():
            logits = make_predictor(model, network).predict_logits_from_preprocessed_data(torch.as_tensor(x)).float()
            margin = (logits[1] - logits[0]).numpy()
            head = max((k for k in checkpoint[key] if re.fullmatch(r"decoder\.seg_layers\.\d+\.bias", k)),
                       key=lambda k: int(k.split(".")[2]))
            checkpoint[key][head][1] -= float(np.quantile(margin, 1 - fraction))
    torch.save(checkpoint, checkpoint_file)
    return folder


def test_teacher_and_student_segmentations_are_label_maps_with_foreground(models, tmp_path):
    """Label maps in the input's geometry, with foreground where the (shifted) networks segment some: an
    all-background segmentation, or one of the wrong network, fails."""
    folder = foreground_model(models, tmp_path)
    inputs = tmp_path / "in"
    inputs.mkdir()
    ct_file = sorted((models["raw_folder"] / "imagesTs").glob("*_0000.nii.gz"))[0]
    shutil.copy(ct_file, inputs / ct_file.name)
    out = tmp_path / "out"
    run(cli("export-pmri", "-m", folder, "-i", inputs, "-o", out, "--teacher-seg", "--student-seg", "--quiet"),
        models["env"])
    case = ct_file.name[:-len("_0000.nii.gz")]
    ct = sitk.ReadImage(str(ct_file))
    segs = {}
    for who in ("teacher", "student"):
        seg = sitk.ReadImage(str(out / f"{case}_{who}_seg.nii.gz"))
        assert_same_geometry(seg, ct)
        segs[who] = sitk.GetArrayFromImage(seg)
        assert set(np.unique(segs[who]).tolist()) == {0, 1}, who
        assert 0.05 < (segs[who] == 1).mean() < 0.95, (who, (segs[who] == 1).mean())
    assert not np.array_equal(segs["teacher"], segs["student"])  # two networks, two inputs


def test_student_seg_equals_stock_predict(models, tmp_path):
    """Every voxel of export-pmri's student segmentation equals stock nnUNetv2_predict's, on a student that
    segments a good share of each case (not two empty masks)."""
    folder = foreground_model(models, tmp_path)
    env = dict(models["env"], nnUNet_results=str(tmp_path))
    dataset_results = tmp_path / models["dataset_name"]
    dataset_results.mkdir()
    folder.rename(dataset_results / folder.name)
    folder = dataset_results / folder.name
    inputs = models["raw_folder"] / "imagesTs"
    run(cli("export-pmri", "-m", folder, "-i", inputs, "-o", tmp_path / "ours", "--student-seg", "--quiet"), env)
    stock = tmp_path / "stock"
    run([BIN / "nnUNetv2_predict", "-i", inputs, "-o", stock, "-d", models["dataset_id"], "-c", SMALL_3D, "-f", "0",
         "-tr", TINY, "--disable_tta", "-device", "cpu", "-npp", "0", "-nps", "0"], env)
    cases = sorted(f.name[:-len("_0000.nii.gz")] for f in inputs.glob("*_0000.nii.gz"))
    assert cases
    for case in cases:
        ours = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "ours" / f"{case}_student_seg.nii.gz")))
        theirs = sitk.GetArrayFromImage(sitk.ReadImage(str(stock / f"{case}.nii.gz")))
        assert 0.05 < (theirs == 1).mean() < 0.95, (case, (theirs == 1).mean())
        np.testing.assert_array_equal(ours, theirs, err_msg=case)


def test_refuses_existing_outputs_unless_overwrite(models, exported_3d):
    out = exported_3d["out"]
    single = exported_3d["inputs"] / "moved_0000.nii.gz"
    before = (out / "moved_pMRI.nii.gz").stat().st_mtime_ns
    r = run(cli("export-pmri", "-m", models["3d"], "-i", single, "-o", out), models["env"], check=False)
    assert r.returncode == 2
    lines = error_lines(r.stderr)
    assert len(lines) == 1 and "moved_pMRI.nii.gz" in lines[0] and "--overwrite" in lines[0]
    assert (out / "moved_pMRI.nii.gz").stat().st_mtime_ns == before
    r = run(cli("export-pmri", "-m", models["3d"], "-i", single, "-o", out, "--overwrite", "--quiet"),
            models["env"])
    assert (out / "moved_pMRI.nii.gz").stat().st_mtime_ns != before
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary files left


def test_not_a_cmedl_checkpoint_exit_2_one_line(models, tmp_path):
    fake = tmp_path / "nnUNetTrainer__nnUNetPlans__3d_tiny"
    (fake / "fold_0").mkdir(parents=True)
    for name in ("plans.json", "dataset.json"):
        shutil.copy(models["3d"] / name, fake / name)
    ckpt = torch.load(models["3d"] / "fold_0" / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    stock = {k: v for k, v in ckpt.items() if not k.startswith("cmedl_")}
    stock["trainer_name"] = "nnUNetTrainer"
    torch.save(stock, fake / "fold_0" / "checkpoint_final.pth")
    r = run(cli("export-pmri", "-m", fake, "-i", models["raw_folder"] / "imagesTs", "-o", tmp_path / "out"),
            models["env"], check=False)
    assert r.returncode == 2
    lines = error_lines(r.stderr)
    assert len(lines) == 1 and r.stderr.strip().endswith(lines[0].strip())
    assert "checkpoint_final.pth" in lines[0] and "not a CMEDL checkpoint" in lines[0]
    assert "nnUNetTrainer" in lines[0]
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- bad inputs (in-process through the CLI's main)
def _cli_error(capsys, *args) -> str:
    from nnunet_cmedl.cli import main
    capsys.readouterr()
    with one_torch_thread():
        assert main(["export-pmri", *map(str, args), "--quiet"]) == 2
    lines = error_lines(capsys.readouterr().err)
    assert len(lines) == 1, lines
    return lines[0]


def test_bad_inputs_one_line_naming_the_file(models, tmp_path, capsys, monkeypatch):
    for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        monkeypatch.setenv(k, models["env"][k])
    m, out = models["3d"], tmp_path / "out"
    ct = sorted((models["raw_folder"] / "imagesTs").glob("*_0000.nii.gz"))[0]

    line = _cli_error(capsys, "-m", tmp_path / "nope", "-i", ct, "-o", out)
    assert str(tmp_path / "nope") in line and "model folder not found" in line
    line = _cli_error(capsys, "-m", m, "-i", ct, "-o", out, "-chk", "checkpoint_nope.pth")
    assert "checkpoint_nope.pth" in line
    line = _cli_error(capsys, "-m", m, "-i", tmp_path / "missing.nii.gz", "-o", out)
    assert "missing.nii.gz" in line and "not found" in line
    empty = tmp_path / "empty"
    empty.mkdir()
    line = _cli_error(capsys, "-m", m, "-i", empty, "-o", out)
    assert str(empty) in line and ".nii.gz" in line
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "junk_0000.nii.gz").write_text("not an image")
    line = _cli_error(capsys, "-m", m, "-i", broken, "-o", out)
    assert "junk_0000.nii.gz" in line and "cannot read" in line
    two = tmp_path / "two_channels"
    two.mkdir()
    shutil.copy(ct, two / "case_0000.nii.gz")
    shutil.copy(ct, two / "case_0001.nii.gz")
    line = _cli_error(capsys, "-m", m, "-i", two, "-o", out)
    assert str(two) in line and "case" in line and "expects 1" in line
    badname = tmp_path / "badname"
    badname.mkdir()
    shutil.copy(ct, badname / "ct.nii.gz")
    line = _cli_error(capsys, "-m", m, "-i", badname, "-o", out)
    assert "ct.nii.gz" in line and "CASE_XXXX" in line
    four_d = tmp_path / "four_d_0000.nii.gz"
    three_d = sitk.ReadImage(str(ct))
    sitk.WriteImage(sitk.JoinSeries([three_d, three_d]), str(four_d))  # 2 channels in one file
    line = _cli_error(capsys, "-m", m, "-i", four_d, "-o", out)
    assert "four_d_0000.nii.gz" in line and "2 channel(s)" in line
    # what nnU-Net's reader takes without complaint: a truncated file, NaN voxels
    from test_metrics import damaged_copies
    for kind, damaged in damaged_copies(ct, tmp_path / "damaged").items():
        case = damaged.rename(damaged.with_name(f"{kind}_0000.nii.gz"))
        line = _cli_error(capsys, "-m", m, "-i", case, "-o", out)
        assert case.name in line and ("truncated" if kind == "truncated" else "1 non-finite voxels") in line, line
    assert not out.exists() or not any(out.iterdir())


# ---------------------------------------------------------------- 2d, through the Python API
def test_2d_model_single_file_api(models, tmp_path, monkeypatch, request):
    for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        monkeypatch.setenv(k, models["env"][k])
    from nnunet_cmedl.inference import export_pseudo_mri, export_pseudo_mri_batch, load_cmedl_model
    from nnunet_cmedl.errors import UserInputError
    stack = contextlib.ExitStack()
    stack.enter_context(one_torch_thread())
    request.addfinalizer(stack.close)
    model = load_cmedl_model(models["2d"], device="cpu")
    assert model.is_2d and model.configuration_name == SMALL_2D
    ct_file = moved_copy(sorted((models["raw_folder"] / "imagesTs").glob("*_0000.nii.gz"))[1],
                         tmp_path / "oblique_0000.nii.gz")
    out = tmp_path / "oblique_pMRI.nii.gz"
    result = export_pseudo_mri(model, [str(ct_file)], out, teacher_seg_file=tmp_path / "oblique_teacher.nii.gz")
    ct, pmri = sitk.ReadImage(str(ct_file)), sitk.ReadImage(str(out))
    assert_same_geometry(pmri, ct)
    p = sitk.GetArrayFromImage(pmri)
    assert np.isfinite(p).all() and p.std() > 0
    np.testing.assert_allclose(p, result.pmri, atol=1e-6)
    c = sitk.GetArrayFromImage(ct).astype(np.float64)
    assert abs(np.corrcoef(p.ravel(), c.ravel())[0, 1]) < 0.99
    teacher = sitk.ReadImage(str(tmp_path / "oblique_teacher.nii.gz"))
    assert_same_geometry(teacher, ct)
    assert set(np.unique(sitk.GetArrayFromImage(teacher)).tolist()) <= {0, 1}
    with pytest.raises(UserInputError, match="exists already"):
        export_pseudo_mri(model, [str(ct_file)], out)
    # the batch function on the single file: the case name drops the channel suffix
    written = export_pseudo_mri_batch(model, ct_file, tmp_path / "batch", show_progress=False)
    assert [w["pmri"].name for w in written] == ["oblique_pMRI.nii.gz"]
    np.testing.assert_allclose(sitk.GetArrayFromImage(sitk.ReadImage(str(written[0]["pmri"]))), p, atol=1e-6)
