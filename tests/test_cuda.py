"""The CUDA path (AMP, the shared and the discriminators' grad scalers, compile of every network, resume): run where
a GPU is present (`scripts/run_tests.sh -k cuda` on a GPU machine); skipped on CPU-only machines such as CI."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import SMALL_2D, SMALL_3D

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def cuda_trainer(planned, cls, configuration, monkeypatch):
    for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        monkeypatch.setenv(k, planned["env"][k])
    monkeypatch.setenv("nnUNet_n_proc_DA", "0")
    monkeypatch.setenv("nnUNet_compile", "true")
    pre = Path(planned["env"]["nnUNet_preprocessed"]) / planned["dataset_name"]
    plans = json.loads((pre / "nnUNetPlans.json").read_text())
    plans["continue_training"] = False
    return cls(plans, configuration, 0, json.loads((pre / "dataset.json").read_text()), device=torch.device("cuda"))


@pytest.mark.parametrize("name", ["nnUNetTrainerCMEDL_tinyCPU", "nnUNetTrainerCMEDL_CUT_tinyCPU",
                                  "nnUNetTrainerCMEDL_FastCUT_tinyCPU"])
@pytest.mark.parametrize("configuration", [SMALL_2D, SMALL_3D])
def test_cuda_amp_compile_train_resume_and_load_on_cpu(planned_dataset, monkeypatch, name, configuration):
    from nnunet_cmedl import training
    cls = getattr(training, name)
    a = cuda_trainer(planned_dataset, cls, configuration, monkeypatch)
    a.run_training()
    assert a.grad_scaler is not None and a.grad_scaler_discriminators is not None
    assert a.student_tap._compiled_call_impl is not None
    logs = a.logger.local_logger.my_fantastic_logging
    for key in ["cmedl_" + n for n in a.train_loss_names()]:
        assert np.all(np.isfinite(logs[key])), key
    final = Path(a.output_folder) / "checkpoint_final.pth"
    b = cuda_trainer(planned_dataset, cls, configuration, monkeypatch)
    b.load_checkpoint(str(final))
    for x, y in zip(a.i2i.state_dict().values(), b.i2i.state_dict().values()):
        assert torch.equal(x, y)
    assert b.grad_scaler.state_dict() == a.grad_scaler.state_dict()
    # a CUDA checkpoint loads on the CPU
    c = cls(dict(json.loads((Path(a.preprocessed_dataset_folder_base) / "nnUNetPlans.json").read_text()),
                 continue_training=False), configuration, 0, a.dataset_json, device=torch.device("cpu"))
    c.load_checkpoint(str(final))
    assert next(c.teacher.parameters()).device.type == "cpu"
