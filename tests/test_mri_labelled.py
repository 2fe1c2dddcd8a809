"""Either modality as the student: an MRI-labelled dataset with unpaired CT, through the stock commands.

make-synthetic --labelled-modality MRI -> nnUNetv2_plan_and_preprocess -> preprocess-unpaired (the modality read from
dataset.json) -> nnUNetv2_train with nnUNetTrainerCMEDL_tinyCPU (and --c) -> nnUNetv2_predict, export-translated,
panels. About 4 minutes on 2 CPU cores (CI: 60 s to build, 177 s to train, resume, predict, export, draw).
"""
import json
import pickle

import numpy as np
import pytest

from conftest import BIN, cli, cli_chain, nnunet_env, resume_mid_run, run, without_final_validation

DATASET_ID = 992
SMALL_2D = "2d_tiny"
TRAINER = "nnUNetTrainerCMEDL_tinyCPU"


def read(path):
    import SimpleITK as sitk
    img = sitk.ReadImage(str(path))
    return sitk.GetArrayFromImage(img), img


@pytest.fixture(scope="module")
def mri_labelled(tmp_path_factory):
    root = tmp_path_factory.mktemp("mri_labelled")
    env = nnunet_env(root)
    made = run(cli("make-synthetic", "--raw", root / "nnUNet_raw", "-d", DATASET_ID, "--name", "TinyMRIThorax",
                   "--labelled-modality", "MRI", "--num-train", 5, "--num-test", 1, "--num-unpaired", 3,
                   "--shape", 16, 48, 64, "--seed", 2, "--no-preview"), env)
    raw = next((root / "nnUNet_raw").glob(f"Dataset{DATASET_ID}_*"))
    run([BIN / "nnUNetv2_plan_and_preprocess", "-d", DATASET_ID, "-c", "2d", "-np", "1"],
        dict(env, nnUNet_n_proc_DA="1"))
    prep = run(cli_chain(["add-small-config", "-d", DATASET_ID, "--parent", "2d", "--name", SMALL_2D,
                          "--patch-size", "32", "32", "--batch-size", "2", "--max-features", "16"],
                         ["preprocess-unpaired", "-d", DATASET_ID, "-c", SMALL_2D, "-i", raw / "unpairedCT",
                          "-np", "1"]),
               env)
    return {"root": root, "env": env, "raw": raw, "made": made, "prep": prep,
            "pp": root / "nnUNet_preprocessed" / raw.name}


def test_make_synthetic_writes_labelled_mri_and_unpaired_ct(mri_labelled):
    raw = mri_labelled["raw"]
    dj = json.loads((raw / "dataset.json").read_text())
    assert dj["channel_names"] == {"0": "T2w"} and dj["unpaired_modality"] == "CT"
    assert "unpaired CT (no labels)" in mri_labelled["made"].stdout
    assert sorted(p.name for p in (raw / "unpairedCT").iterdir()) == ["ct_000.nii.gz", "ct_001.nii.gz",
                                                                       "ct_002.nii.gz"]
    assert not (raw / "unpairedMRI").exists()
    meta = json.loads((raw / "phantom_metadata.json").read_text())
    assert (meta["labelled_modality"], meta["unpaired_modality"]) == ("MRI", "CT")
    assert sorted(meta["labelled_cases"]) == [f"thorax_{i:03d}" for i in range(6)]
    # the labelled images are MRI (non-negative, no HU) and their labels mark the tumours; the unpaired ones are CT
    mri, mri_img = read(raw / "imagesTr" / "thorax_000_0000.nii.gz")
    label, label_img = read(raw / "labelsTr" / "thorax_000.nii.gz")
    ct, ct_img = read(raw / "unpairedCT" / "ct_000.nii.gz")
    assert mri.min() >= 0 and label.shape == mri.shape and label.max() == 1
    assert mri_img.GetSpacing() == label_img.GetSpacing() != ct_img.GetSpacing()
    assert mri[label > 0].mean() > mri[label == 0].mean()  # T2w: the tumours are bright
    assert ct.min() < -900 and np.percentile(ct, 99) > 0   # air and soft tissue in HU
    # nnU-Net normalises the labelled MRI per image (z-score), not with its CT scheme
    plans = json.loads((mri_labelled["pp"] / "nnUNetPlans.json").read_text())
    assert plans["configurations"]["2d"]["normalization_schemes"] == ["ZScoreNormalization"]


def test_preprocess_unpaired_reads_ct_from_dataset_json_and_uses_ct_normalisation(mri_labelled):
    out = mri_labelled["pp"] / "nnUNetPlans_2d__ct_unpaired"
    assert "modality from" in mri_labelled["prep"].stdout and "dataset.json" in mri_labelled["prep"].stdout
    m = json.loads((out / "manifest.json").read_text())
    assert (m["modality"], m["normalization"]) == ("CT", "CTNormalization")
    st = m["intensity_statistics"]
    assert st["percentile_00_5"] < -900 < st["mean"] < st["percentile_99_5"]
    assert sorted(m["cases"]) == ["ct_000", "ct_001", "ct_002"]
    assert not (mri_labelled["pp"] / "nnUNetPlans_2d__mri_unpaired").exists()
    with open(out / "ct_000.pkl", "rb") as f:
        assert pickle.load(f)["modality"] == "CT"


def test_cmedl_trains_an_mri_student_with_a_ct_teacher_and_predicts(mri_labelled):
    env, root, raw = mri_labelled["env"], mri_labelled["root"], mri_labelled["raw"]
    import torch
    train_cmd = [BIN / "nnUNetv2_train", DATASET_ID, SMALL_2D, "0", "-tr", TRAINER, "-device", "cpu"]
    run(train_cmd, without_final_validation(env))
    fold = next((root / "nnUNet_results").glob(f"Dataset{DATASET_ID}_*")) / f"{TRAINER}__nnUNetPlans__{SMALL_2D}" / \
        "fold_0"
    log = "".join(p.read_text() for p in sorted(fold.glob("training_log_*.txt")))
    assert "labelled T2w (normalised with ZScoreNormalization), unpaired CT from" in log
    assert "__ct_unpaired" in log
    assert (fold / "progress_cmedl.png").is_file() and list((fold / "cmedl_snapshots").glob("epoch_*.png"))

    # stock --c: resumed after epoch 0 of 2 (rewound), it keeps epoch 0's log and trains epoch 1 again
    first_run = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    ckpt = resume_mid_run(fold, train_cmd, env)
    hint = ckpt["logging"]["cmedl_hint"]
    assert len(hint) == 2 and all(np.isfinite(h) and h > 0 for h in hint)
    assert hint[0] == first_run["logging"]["cmedl_hint"][0]
    assert "unpaired CT from" in (sorted(fold.glob("training_log_*.txt"))[-1]).read_text()
    # the student (network_weights, what nnUNetv2_predict runs) and the teacher on pseudo-CT both take one channel
    first = [k for k in ckpt["network_weights"] if k.endswith("weight")][0]
    assert ckpt["network_weights"][first].shape[1] == ckpt["cmedl_teacher_weights"][first].shape[1] == 1
    assert ckpt["cmedl_i2i_kwargs"]["ct_channels"] == ckpt["cmedl_i2i_kwargs"]["mri_channels"] == 1

    out = root / "pred"
    inp = raw / "imagesTs"
    run([BIN / "nnUNetv2_predict", "-i", inp, "-o", out, "-d", DATASET_ID, "-c", SMALL_2D, "-f", "0", "-tr", TRAINER,
         "-chk", "checkpoint_final.pth", "-device", "cpu", "-npp", "0", "-nps", "0", "--disable_tta"], env)
    pred, pred_img = read(out / "thorax_005.nii.gz")
    image, image_img = read(inp / "thorax_005_0000.nii.gz")
    assert pred.shape == image.shape and pred_img.GetSpacing() == image_img.GetSpacing()
    assert set(np.unique(pred)) <= {0, 1}

    # export-translated names its output after the unpaired modality the run trained with (the checkpoint says CT)
    assert ckpt["cmedl_modalities"] == ["T2w", "CT"]
    exported = root / "exported"
    r = run(cli("export-translated", "-m", fold.parent, "-f", "0", "-i", inp, "-o", exported, "--quiet"), env)
    assert "wrote 1 case(s)" in r.stdout
    pct, pct_img = read(exported / "thorax_005_pCT.nii.gz")
    assert pct.shape == image.shape and pct_img.GetSpacing() == image_img.GetSpacing() and np.isfinite(pct).all()
    assert not (exported / "thorax_005_pMRI.nii.gz").exists()

    # panels: the labelled MRI, its pseudo-CT, a real unpaired CT, contours; index.json names the modalities
    panels = root / "panels"
    run(cli("panels", "-m", fold.parent, "-i", inp, "-ref", raw / "labelsTs", "--unpaired", raw / "unpairedCT",
            "-o", panels, "--quiet"), env)
    index = json.loads((panels / "index.json").read_text())
    assert index["modalities"] == {"labelled": "T2w", "unpaired": "CT"}
    assert [p["png"] for p in index["panels"]] == ["thorax_005.png"] and (panels / "thorax_005.png").is_file()
