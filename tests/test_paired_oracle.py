"""The paired-MRI oracle (a diagnostic of issue 8): each phantom CT patient's own MRI, aligned with its CT and label,
and CMEDL trained with its teacher on that MRI through the stock nnUNetv2_train."""
import numpy as np
import pytest
import torch
from scipy import ndimage

from conftest import BIN, DATASET_ID, SMALL_2D, SMALL_3D, cli, run

ORACLE = "nnUNetTrainerCMEDL_pairedOracleNoHint_benchSmoke_seed0"
ORACLE_HINT = "nnUNetTrainerCMEDL_pairedOracleAfterOnset_benchSmoke_seed0"


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
    assert "(0 written now)" in r.stdout and [f.stat().st_mtime_ns for f in files] == stamps
    for args, says in ((("-d", DATASET_ID, "-c", "3d_nope"), "configuration '3d_nope'"),
                       (("-d", 998, "-c", SMALL_2D), "dataset 998")):
        r = run(cli("paired-mri", *args), paired["env"], check=False)
        assert r.returncode == 2 and says in r.stderr and "Traceback" not in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1


def test_oracle_trains_through_the_stock_cli_and_its_student_is_a_ct_network(paired):
    env = dict(paired["env"], nnUNet_cmedl_skip_final_validation="1")
    results = paired["root"] / "nnUNet_results" / paired["dataset_name"]
    for trainer in (ORACLE, ORACLE_HINT):  # the second warm-starts from the first (benchmark_trainers.WARM_STARTS)
        r = run([BIN / "nnUNetv2_train", DATASET_ID, SMALL_2D, 0, "-tr", trainer, "-device", "cpu"], env)
        assert "Training done" in r.stdout
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
    assert "no paired MRI" in r.stderr and f"nnunet_cmedl paired-mri -d {paired['dataset_name']} -c {SMALL_3D}" in r.stderr
