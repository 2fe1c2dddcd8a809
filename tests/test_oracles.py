"""The oracles (diagnostics of issue 8, training/oracle.py). The paired-MRI oracle: each phantom CT patient's own MRI,
aligned with its CT and label, and CMEDL trained with its teacher on that MRI through the stock nnUNetv2_train. The
CT-teacher oracle: CMEDL whose teacher is a second CT network started from a plain nnU-Net run."""
import shutil

import numpy as np
import pytest
import torch
from scipy import ndimage

from conftest import BIN, DATASET_ID, REPO, SMALL_2D, SMALL_3D, cli, run

ORACLE = "nnUNetTrainerCMEDL_pairedOracleNoHint_benchSmoke_seed0"
ORACLE_HINT = "nnUNetTrainerCMEDL_pairedOracleAfterOnset_benchSmoke_seed0"
ORACLE_TUMOUR = "nnUNetTrainerCMEDL_pairedOracleTumourAfterOnset_benchSmoke_seed0"  # the hint on the tumours only


@pytest.fixture(scope="module")
def paired(planned_dataset):
    r = run(cli("paired-mri", "-d", DATASET_ID, "-c", SMALL_2D, "--no-progress"), planned_dataset["env"])
    pre = planned_dataset["root"] / "nnUNet_preprocessed" / planned_dataset["dataset_name"]
    return {**planned_dataset, "pre": pre, "folder": pre / "nnUNetPlans_2d__mri_paired_oracle", "stdout": r.stdout}


def _load(b2nd):
    import blosc2
    return blosc2.open(str(b2nd), mode="r")[:]


def test_paired_mri_shows_each_tumour_where_the_label_is(paired):
    cases = sorted(p.name.removesuffix(".b2nd") for p in (paired["pre"] / "nnUNetPlans_2d").glob("*.b2nd")
                   if not p.name.endswith("_seg.b2nd"))
    assert cases and f"paired MRI of {len(cases)} cases" in paired["stdout"]
    for case in cases:
        mri = np.load(paired["folder"] / f"{case}.npy")
        ct = _load(paired["pre"] / "nnUNetPlans_2d" / f"{case}.b2nd")
        seg = _load(paired["pre"] / "nnUNetPlans_2d" / f"{case}_seg.b2nd")
        assert mri.dtype == np.float32 and mri.shape == ct.shape
        assert abs(float(mri.mean())) < 0.05 and abs(float(mri.std()) - 1) < 0.05  # z-scored like unpaired MRI
        tumour = seg[0] == 1
        ring = ndimage.binary_dilation(tumour, iterations=2) & ~tumour & (seg[0] == 0)
        # T2w: the tumours are bright against what surrounds them (the MRI of another patient would not be)
        assert mri[0][tumour].mean() - mri[0][ring].mean() > 1.0, case
        shifted = np.roll(mri[0], 6, axis=-1)
        assert shifted[tumour].mean() - shifted[ring].mean() < mri[0][tumour].mean() - mri[0][ring].mean()


def test_paired_mri_skips_what_it_wrote_and_refuses_bad_input(paired):
    files = sorted(paired["folder"].glob("*.npy"))
    stamps = [f.stat().st_mtime_ns for f in files]
    r = run(cli("paired-mri", "-d", DATASET_ID, "-c", SMALL_2D, "--no-progress"), paired["env"])
    assert "(0 written now; from phantom)" in r.stdout and [f.stat().st_mtime_ns for f in files] == stamps
    for args, says in ((("-d", DATASET_ID, "-c", "3d_nope"), "configuration '3d_nope'"),
                       (("-d", 998, "-c", SMALL_2D), "dataset 998")):
        r = run(cli("paired-mri", *args), paired["env"], check=False)
        assert r.returncode == 2 and says in r.stderr and "Traceback" not in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1


def test_paired_mri_reads_registered_mri_and_refuses_one_off_the_ct_grid(paired, tmp_path):
    """A real dataset's paired MRI (MR simulator): files registered onto each CT. Here the phantom's own MRI written
    as such files, so the result must equal the phantom path's."""
    import SimpleITK as sitk
    from nnunet_cmedl.synthetic.paired_mri import PhantomMRI, render_paired_mri
    raw, name = paired["raw_folder"], paired["dataset_name"]
    metadata = PhantomMRI(raw).metadata
    registered = tmp_path / "registered"
    registered.mkdir()
    cases = sorted(p.name.removesuffix("_0000.nii.gz") for p in (raw / "imagesTr").glob("*_0000.nii.gz"))
    for case in cases:
        image = sitk.GetImageFromArray(render_paired_mri(metadata, case).astype(np.float32))
        image.CopyInformation(sitk.ReadImage(str(raw / "imagesTr" / f"{case}_0000.nii.gz")))
        sitk.WriteImage(image, str(registered / f"{case}.nii.gz"))

    def preprocessed_copy(root):  # the planned dataset without the phantom's paired MRI
        shutil.copytree(paired["pre"], root / name, ignore=shutil.ignore_patterns("*__mri_paired_oracle"))
        return dict(paired["env"], nnUNet_preprocessed=str(root)), root / name / "nnUNetPlans_2d__mri_paired_oracle"

    env, out = preprocessed_copy(tmp_path / "pre")
    r = run(cli("paired-mri", "-d", DATASET_ID, "-c", SMALL_2D, "--mri-folder", registered, "--no-progress"), env)
    assert f"paired MRI of {len(cases)} cases" in r.stdout and str(registered) in r.stdout
    for case in cases:
        np.testing.assert_allclose(np.load(out / f"{case}.npy"), np.load(paired["folder"] / f"{case}.npy"), atol=1e-5)
    # a folder written from one source refuses another, and keeps what it has
    stamps = [f.stat().st_mtime_ns for f in sorted(out.glob("*.npy"))]
    r = run(cli("paired-mri", "-d", DATASET_ID, "-c", SMALL_2D), env, check=False)
    assert r.returncode == 2 and f"holds paired MRI from {registered}" in r.stderr and "Traceback" not in r.stderr
    assert [f.stat().st_mtime_ns for f in sorted(out.glob("*.npy"))] == stamps

    # one MRI off its CT's grid (origin 5 mm away), one missing: one line naming the file, nothing written
    env, out = preprocessed_copy(tmp_path / "pre2")
    moved = sitk.ReadImage(str(registered / f"{cases[-1]}.nii.gz"))
    moved.SetOrigin(tuple(o + 5.0 for o in moved.GetOrigin()))
    sitk.WriteImage(moved, str(registered / f"{cases[-1]}.nii.gz"))
    r = run(cli("paired-mri", "-d", DATASET_ID, "-c", SMALL_2D, "--mri-folder", registered), env, check=False)
    assert r.returncode == 2 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert f"{cases[-1]}.nii.gz: origin" in r.stderr and "resample the registered MRI onto the CT grid" in r.stderr
    assert not list(out.glob("*.npy"))
    (registered / f"{cases[0]}.nii.gz").unlink()
    r = run(cli("paired-mri", "-d", DATASET_ID, "-c", SMALL_2D, "--mri-folder", registered), env, check=False)
    assert r.returncode == 2 and f"no registered MRI of case {cases[0]}" in r.stderr and "Traceback" not in r.stderr


def test_channel_stack_crops_as_the_concatenated_case_would():
    from acvl_utils.cropping_and_padding.bounding_boxes import crop_and_pad_nd
    from nnunet_cmedl.training.oracle import ChannelStack
    rng = np.random.default_rng(0)
    ct, mri = rng.standard_normal((1, 5, 12, 9)).astype(np.float32), rng.standard_normal((1, 5, 12, 9))
    stack, whole = ChannelStack(ct, mri), np.concatenate([ct, mri.astype(np.float32)])
    assert stack.shape == whole.shape and np.array_equal(np.asarray(stack), whole)
    for bbox in ([[0, 5], [2, 10], [1, 9]], [[-2, 3], [8, 16], [-4, 4]]):  # inside; over the edges (padded)
        assert np.array_equal(crop_and_pad_nd(stack, bbox, 0), crop_and_pad_nd(whole, bbox, 0))
    assert np.array_equal(stack[1:, :2], whole[1:, :2])
    with pytest.raises(ValueError, match="spatial shapes differ"):
        ChannelStack(ct, mri[:, :4])


def test_oracle_trains_through_the_stock_cli_and_its_student_is_a_ct_network(paired):
    env = dict(paired["env"], nnUNet_cmedl_skip_final_validation="1")
    results = paired["root"] / "nnUNet_results" / paired["dataset_name"]
    for trainer in (ORACLE, ORACLE_TUMOUR, ORACLE_HINT):  # the hinted ones warm-start from the first (WARM_STARTS)
        r = run([BIN / "nnUNetv2_train", DATASET_ID, SMALL_2D, 0, "-tr", trainer, "-device", "cpu"], env)
        assert "Training done" in r.stdout
        if trainer != ORACLE:
            assert "warm start: generators, discriminators and teacher from" in r.stdout and ORACLE in r.stdout
    ckpt = torch.load(results / f"{ORACLE_HINT}__nnUNetPlans__{SMALL_2D}" / "fold_0" / "checkpoint_final.pth",
                      map_location="cpu", weights_only=False)
    assert ckpt["cmedl_i2i_method"] == "paired_oracle"
    first = lambda w: next(v for k, v in w.items() if k.endswith(".weight") and v.ndim == 4)  # noqa: E731
    assert first(ckpt["network_weights"]).shape[1] == 1  # the student: CT in, as any nnU-Net network
    assert first(ckpt["cmedl_teacher_weights"]).shape[1] == 1  # the teacher: the MRI channel
    teacher_dice = ckpt["logging"]["cmedl_teacher_pseudo_dice_pmri"]
    assert len(teacher_dice) == 2 and all(np.isfinite(teacher_dice))

    # the benchmark scores the oracle's teacher on the test cases' own MRI: label maps in each test CT's geometry
    import SimpleITK as sitk
    from nnunet_cmedl.synthetic.paired_mri import predict_teacher_on_paired_mri
    images = paired["raw_folder"] / "imagesTs"
    written = predict_teacher_on_paired_mri(results / f"{ORACLE_HINT}__nnUNetPlans__{SMALL_2D}", 0, images,
                                            paired["root"] / "oracle_teacher")
    assert [f.name for f in written] == sorted(p.name.replace("_0000", "") for p in images.glob("*_0000.nii.gz"))
    for f in written:
        seg, ct = sitk.ReadImage(str(f)), sitk.ReadImage(str(images / f.name.replace(".nii.gz", "_0000.nii.gz")))
        assert seg.GetSize() == ct.GetSize() and seg.GetSpacing() == ct.GetSpacing()
        assert set(np.unique(sitk.GetArrayFromImage(seg))) <= {0, 1}


def test_oracle_without_paired_mri_stops_with_the_command_that_makes_it(paired):
    r = run([BIN / "nnUNetv2_train", DATASET_ID, SMALL_3D, 0, "-tr", ORACLE, "-device", "cpu"], paired["env"],
            check=False)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "no paired MRI" in r.stderr
    assert f"nnunet_cmedl paired-mri -d {paired['dataset_name']} -c {SMALL_3D}" in r.stderr


CT_TEACHER = "nnUNetTrainerCMEDL_ctTeacherAfterOnset_benchSmoke_seed1"  # its source: seed 0 (WARM_STARTS)


def test_ct_teacher_starts_from_plain_nnunet_on_the_reference_fold(planned_dataset):
    env = dict(planned_dataset["env"], nnUNet_cmedl_skip_final_validation="1")
    results = planned_dataset["root"] / "nnUNet_results" / planned_dataset["dataset_name"]
    run([BIN / "nnUNetv2_train", DATASET_ID, SMALL_2D, 1, "-tr", "nnUNetTrainer_benchSmoke_seed0", "-device", "cpu"],
        env)
    # the benchmark's source is plain nnU-Net trained 3x as long (benchLong) on fold 1; a smoke run stands in for it
    source = results / f"nnUNetTrainer_benchLong_seed0__nnUNetPlans__{SMALL_2D}" / "fold_1"
    source.mkdir(parents=True)
    smoke = results / f"nnUNetTrainer_benchSmoke_seed0__nnUNetPlans__{SMALL_2D}" / "fold_1"
    shutil.copy(smoke / "checkpoint_final.pth", source / "checkpoint_final.pth")
    r = run([BIN / "nnUNetv2_train", DATASET_ID, SMALL_2D, 0, "-tr", CT_TEACHER, "-device", "cpu"], env)
    assert "Training done" in r.stdout
    assert f"warm start: teacher (a plain nnU-Net network) from {source / 'checkpoint_final.pth'}" in r.stdout
    ckpt = torch.load(results / f"{CT_TEACHER}__nnUNetPlans__{SMALL_2D}" / "fold_0" / "checkpoint_final.pth",
                      map_location="cpu", weights_only=False)
    plain = torch.load(source / "checkpoint_final.pth", map_location="cpu", weights_only=False)["network_weights"]
    assert ckpt["cmedl_i2i_method"] == "no_translation"

    def similarity(weights):  # cosine of all conv weights with the source network's
        a, b = (torch.cat([w[k].flatten() for k in plain if k.endswith(".weight") and plain[k].ndim == 4])
                for w in (weights, plain))
        return float(torch.nn.functional.cosine_similarity(a, b, dim=0))
    # the teacher is the plain run's network after a few steps; the student started fresh (seed 1's initialisation)
    assert similarity(ckpt["cmedl_teacher_weights"]) > 0.95
    assert similarity(ckpt["network_weights"]) < 0.5
    assert all(np.isfinite(ckpt["logging"]["cmedl_teacher_pseudo_dice_pmri"]))

    # scripts/hint_distance.py: the teacher's source network (a few steps from the teacher) is far closer to the
    # teacher than the fresh student is, on training and validation cases alike
    import json
    import sys
    other = planned_dataset["root"] / "source_as_fold_0"
    (other / "fold_0").mkdir(parents=True)
    shutil.copy(source / "checkpoint_final.pth", other / "fold_0" / "checkpoint_final.pth")
    out = planned_dataset["root"] / "hint_distance.json"
    script = [sys.executable, REPO / "scripts" / "hint_distance.py"]
    r = run(script + ["-m", results / f"{CT_TEACHER}__nnUNetPlans__{SMALL_2D}", "--students", f"source={other}",
                      "--out", out], env)
    assert "validation cases" in r.stdout
    figures = json.loads(out.read_text())
    for part in ("train", "val"):
        own, near = figures[part]["own student / all"]["mean"], figures[part]["source / all"]["mean"]
        assert 0 <= near < own / 10, (part, near, own)
        assert set(figures[part]["dice"]) == {"teacher / own head", "own student / own head",
                                              "own student / teacher's head", "source / own head",
                                              "source / teacher's head"}
    r = run(script + ["-m", results / f"{CT_TEACHER}__nnUNetPlans__{SMALL_2D}", "--students", f"x={results}"], env,
            check=False)
    assert r.returncode == 2 and "no final checkpoint" in r.stderr and "Traceback" not in r.stderr

    # scripts/validation_blocks.py: the run's logged validation, block by block (here one epoch a block)
    script = [sys.executable, REPO / "scripts" / "validation_blocks.py", "--workdir", planned_dataset["root"],
              "--budget", "smoke", "-c", SMALL_2D, "--block", 1, "--methods", "CMEDL_ctTeacherAfterOnset", "--seeds"]
    r = run(script + [1], env)
    logged = ckpt["logging"]
    student = ", ".join(f"{np.nanmean(d):.3f}" for d in logged["dice_per_class_or_region"])
    teacher = ", ".join(f"{d:.3f}" for d in logged["cmedl_teacher_pseudo_dice_pmri"])
    assert f"student [{student}]  teacher [{teacher}]  hint loss [" in r.stdout, r.stdout
    r = run(script + [7], env, check=False)
    assert r.returncode == 2 and "no final checkpoint (CMEDL_ctTeacherAfterOnset, seed 7" in r.stderr
    assert "Traceback" not in r.stderr
