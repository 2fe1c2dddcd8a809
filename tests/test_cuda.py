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


def test_cpu_checkpoint_resumes_on_cuda(planned_dataset, monkeypatch):
    """A run started on the CPU goes on on a GPU with --c: every network, optimiser state and image pool moves to
    CUDA (the checkpoint has no grad-scaler state; AMP's scalers start fresh), and training continues finitely."""
    from nnunet_cmedl.training import nnUNetTrainerCMEDL_tinyCPU as cls
    a = cuda_trainer(planned_dataset, cls, SMALL_2D, monkeypatch)
    cpu = cls(dict(a.plans_manager.plans, continue_training=False), SMALL_2D, 0, a.dataset_json,
              device=torch.device("cpu"))
    cpu.run_training()
    assert cpu.grad_scaler is None
    final = Path(cpu.output_folder) / "checkpoint_final.pth"
    b = cuda_trainer(planned_dataset, cls, SMALL_2D, monkeypatch)
    b.num_epochs = cpu.num_epochs + 1
    b.load_checkpoint(str(final))
    assert b.current_epoch == cpu.num_epochs
    for net in (b.network, b.teacher, b.i2i):
        assert all(p.device.type == "cuda" for p in net.parameters())
    for optimizer in (b.optimizer, b.optimizer_teacher, b.optimizer_generators, b.optimizer_discriminators):
        for state in optimizer.state.values():
            assert all(v.device.type == "cuda" for v in state.values() if torch.is_tensor(v) and v.ndim > 0)
    b.run_training()
    logs = b.logger.local_logger.my_fantastic_logging
    assert len(logs["cmedl_student_seg"]) == cpu.num_epochs + 1 and np.all(np.isfinite(logs["cmedl_student_seg"]))
    assert b.grad_scaler is not None and b.grad_scaler.get_scale() > 0


@pytest.mark.parametrize("name", ["nnUNetTrainerPseudoMRI_tinyCPU", "nnUNetTrainerCTPseudoMRI_tinyCPU"])
def test_cuda_strategies_amp_train_and_predict_on_cpu(planned_dataset, monkeypatch, name):
    """pMRI-only and CT+pMRI with AMP on CUDA: finite losses, and the checkpoint's generator + segmenter network,
    built from the class alone as nnU-Net's predictor does, gives the CUDA network's output on the CPU."""
    from nnunet_cmedl import training
    cls = getattr(training, name)
    a = cuda_trainer(planned_dataset, cls, SMALL_2D, monkeypatch)
    monkeypatch.setenv("nnUNet_compile", "false")  # compile is checked above; here the AMP path and the network
    a.run_training()
    logs = a.logger.local_logger.my_fantastic_logging
    for key in ["cmedl_" + n for n in a.train_loss_names()]:
        assert np.all(np.isfinite(logs[key])), key
    checkpoint = torch.load(Path(a.output_folder) / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    network = cls.build_network_architecture(a.plans_manager, a.configuration_manager,
                                             a.num_input_channels, a.label_manager.num_segmentation_heads,
                                             enable_deep_supervision=False)
    network.load_state_dict(checkpoint["network_weights"])
    x = torch.randn(1, 1, *a.configuration_manager.patch_size)
    a.network.eval()
    # full float32 on CUDA for the comparison: cuDNN's default TF32 convolutions round to ~1e-3 per layer, and the
    # generator + segmenter stacks enough of them to leave 1e-3 on an H200 (stop 22) without anything being wrong
    tf32 = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        with torch.no_grad():
            cuda_out = a.network(x.cuda())
            cuda_out = (cuda_out[0] if isinstance(cuda_out, (list, tuple)) else cuda_out).float().cpu()
            cpu_out = network.eval()(x)
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = tf32
    assert cpu_out.shape == cuda_out.shape and torch.allclose(cpu_out, cuda_out, atol=1e-3, rtol=1e-3)
