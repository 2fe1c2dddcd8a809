"""The paper's other strategies as trainers (issue 9): pMRI-only and CT+pMRI train, resume and predict through the
stock CLI, and their checkpoints predict with nothing but the trainer class (generator + segmenter in one network)."""
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from conftest import BIN, SMALL_2D, resume_mid_run, run, without_final_validation

STRATEGIES = {"nnUNetTrainerPseudoMRI_tinyCPU": 1, "nnUNetTrainerCTPseudoMRI_tinyCPU": 2}  # segmenter input channels
# through the stock CLI here: CT+pMRI, which differs from pMRI-only by one attribute (segment_with_ct) and takes every
# path pMRI-only takes; pMRI-only trains (nnU-Net's trainer lookup, run_training) and predicts with stock
# nnU-Net in tests/test_ddp.py
CLI_STRATEGIES = ["nnUNetTrainerCTPseudoMRI_tinyCPU"]


def predict(planned, trainer, out, *extra):
    run([BIN / "nnUNetv2_predict", "-i", planned["raw_folder"] / "imagesTs", "-o", out, "-d",
         planned["dataset_id"], "-c", SMALL_2D, "-f", "0", "-tr", trainer, "--disable_tta", "-device", "cpu",
         "-npp", "0", "-nps", "0", *extra], planned["env"])


@pytest.mark.parametrize("trainer", CLI_STRATEGIES)
def test_strategy_trains_resumes_and_predicts_through_the_stock_cli(planned_dataset, trainer, tmp_path):
    env, did = planned_dataset["env"], planned_dataset["dataset_id"]
    run([BIN / "nnUNetv2_train", did, SMALL_2D, "0", "-tr", trainer, "-device", "cpu"], without_final_validation(env))
    fold = Path(env["nnUNet_results"]) / planned_dataset["dataset_name"] / f"{trainer}__nnUNetPlans__{SMALL_2D}" / \
        "fold_0"
    ckpt = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    weights = ckpt["network_weights"]
    # the deployed network is the generator followed by the segmenter; the segmenter sees pMRI (and CT)
    assert any(k.startswith("generator.") for k in weights) and any(k.startswith("segmenter.") for k in weights)
    first_conv = next(v for k, v in weights.items() if k.startswith("segmenter.encoder") and v.ndim == 4)
    assert first_conv.shape[1] == STRATEGIES[trainer]
    assert ckpt["current_epoch"] == 2 and np.isfinite(ckpt["logging"]["cmedl_seg"]).all()
    assert len(ckpt["logging"]["cmedl_G_cycle"]) == 2 and "cmedl_hint" not in ckpt["logging"]
    # the I2I's generator is the network's own (one set of weights, trained by the I2I's Adam)
    i2i_generator = {k[len("ct_to_mri."):]: v for k, v in ckpt["cmedl_i2i_weights"].items() if k.startswith("ct_to_mri.")}
    assert all(torch.equal(v, weights["generator." + k]) for k, v in i2i_generator.items()) and i2i_generator

    # resume mid-run: from the epoch-1 checkpoint, one more epoch to go
    resumed = resume_mid_run(fold, [BIN / "nnUNetv2_train", did, SMALL_2D, "0", "-tr", trainer, "-device", "cpu"], env)
    assert resumed["current_epoch"] == 2 and len(resumed["logging"]["cmedl_seg"]) == 2

    # stock predict builds generator + segmenter from the trainer class; the generator is used: other generator
    # weights give other probabilities
    out = tmp_path / "pred"
    predict(planned_dataset, trainer, out, "--save_probabilities")
    cases = sorted(out.glob("*.nii.gz"))
    assert len(cases) == 2
    image = sitk.ReadImage(str(planned_dataset["raw_folder"] / "imagesTs" / cases[0].name.replace(".nii.gz",
                                                                                                    "_0000.nii.gz")))
    assert sitk.ReadImage(str(cases[0])).GetSize() == image.GetSize()
    probabilities = np.load(str(cases[0]).replace(".nii.gz", ".npz"))["probabilities"]
    changed = dict(resumed)
    changed["network_weights"] = {k: (torch.zeros_like(v) if k.startswith("generator.") and v.ndim > 1 else v)
                                  for k, v in resumed["network_weights"].items()}
    torch.save(changed, fold / "checkpoint_final.pth")
    out2 = tmp_path / "pred_other_generator"
    predict(planned_dataset, trainer, out2, "--save_probabilities")
    other = np.load(str(out2 / cases[0].name).replace(".nii.gz", ".npz"))["probabilities"]
    assert not np.allclose(probabilities, other, atol=1e-4)
