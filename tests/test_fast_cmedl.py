"""Fast CMEDL: CUT/FastCUT as I2I methods, one teacher pass for two gradients, features that survive compile."""
import functools
import itertools
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from conftest import BIN, SMALL_2D, resume_mid_run, run, without_final_validation
from test_trainer_cmedl import all_tensors, grads, make_trainer

CUT_TINY = "nnUNetTrainerCMEDL_CUT_tinyCPU"
FASTCUT_TINY = "nnUNetTrainerCMEDL_FastCUT_tinyCPU"


# ---------------------------------------------------------------- PatchNCE, against a direct reading of the paper
def naive_patch_nce(q, k, batch_size, tau):
    """Per query: -log softmax over [positive, negatives of the same image] (InfoNCE), written out with loops."""
    q, k = q.view(batch_size, -1, q.shape[1]), k.view(batch_size, -1, k.shape[1])
    out = []
    for b in range(batch_size):
        for i in range(q.shape[1]):
            logits = [float(q[b, i] @ k[b, i]) / tau] + [float(q[b, i] @ k[b, j]) / tau
                                                          for j in range(q.shape[1]) if j != i]
            out.append(-logits[0] + np.log(np.sum(np.exp(logits))))
    return np.array(out)


def test_patch_nce_matches_infonce_and_rewards_matching_locations():
    from nnunet_cmedl.i2i.losses import patch_nce_loss
    g = torch.Generator().manual_seed(0)
    k = nn.functional.normalize(torch.randn(2 * 6, 8, generator=g), dim=1)
    q = nn.functional.normalize(k + 0.3 * torch.randn(2 * 6, 8, generator=g), dim=1)
    ours = patch_nce_loss(q, k, batch_size=2, temperature=0.07).numpy()
    # CUT fills the diagonal of the negatives with -10 / tau instead of dropping it: exp(-143) is 0 in float32
    assert np.allclose(ours, naive_patch_nce(q, k, 2, 0.07), rtol=1e-4, atol=1e-4)
    shuffled = patch_nce_loss(q[torch.randperm(12, generator=g)], k, 2, 0.07)
    assert ours.mean() < shuffled.mean().item()
    assert not patch_nce_loss(q.requires_grad_(), k.requires_grad_(), 2, 0.07).sum().backward() and k.grad is None


def test_patch_sampler_uses_the_same_locations_for_queries_and_keys():
    from nnunet_cmedl.i2i.networks import PatchSampleMLP
    sampler = PatchSampleMLP([3, 5], mlp_features=16, num_patches=10)
    feats = [torch.randn(2, 3, 4, 6), torch.randn(2, 5, 2, 3)]  # 24 and 6 locations: 10 and all 6 sampled
    keys, ids = sampler(feats)
    assert [k.shape for k in keys] == [(20, 16), (12, 16)] and [len(i) for i in ids] == [10, 6]
    assert all(torch.allclose(k.norm(dim=1), torch.ones(len(k))) for k in keys)
    queries, ids2 = sampler(feats, ids)
    assert all(torch.equal(a, b) for a, b in zip(ids, ids2)) and all(torch.allclose(a, b) for a, b in zip(keys, queries))


# ---------------------------------------------------------------- trainers: every part trains, state resumes exactly
@pytest.fixture
def started(planned_dataset, monkeypatch, request):
    from nnunet_cmedl import training
    trainer = make_trainer(planned_dataset, getattr(training, request.param), SMALL_2D, monkeypatch)
    trainer.on_train_start()
    batch = next(trainer.dataloader_train)
    trainer.dataloader_mri = itertools.repeat(next(trainer.dataloader_mri))
    trainer.on_train_epoch_start()
    yield trainer, batch
    trainer.on_train_end()


@pytest.mark.parametrize("started,terms", [(CUT_TINY, {"G_nce", "G_nce_identity"}), (FASTCUT_TINY, {"G_nce"})],
                         indirect=["started"])
def test_cut_step_trains_generator_heads_discriminator_teacher_student(started, terms):
    trainer, batch = started
    assert trainer.i2i_method == "cut" and not hasattr(trainer.i2i, "mri_to_ct")  # one generator, no pool
    out = trainer.train_step(batch)
    assert set(out) == {"loss", "G_adversarial", "G_nce", "G_nce_identity", "D", "teacher_seg", "student_seg", "hint"}
    assert all(np.isfinite(v) for v in out.values()) and all(out[t] > 0 for t in terms)
    assert (out["G_nce_identity"] == 0) == ("G_nce_identity" not in terms)
    for module in (trainer.i2i.ct_to_mri, trainer.i2i.patch_sampler, trainer.i2i.discriminator_mri):
        g = grads(module)
        assert all(v is not None and torch.isfinite(v).all() for v in g.values()), type(module).__name__
        assert sum(float(v.abs().sum()) for v in g.values()) > 0
    # the MLP heads are trained by the generator optimiser, with CUT's Adam settings
    head_params = {id(p) for p in trainer.i2i.patch_sampler.parameters()}
    assert head_params <= {id(p) for group in trainer.optimizer_generators.param_groups for p in group["params"]}
    assert trainer.lambda_nce == (1.0 if "G_nce_identity" in terms else 10.0)


def test_cut_checkpoint_restores_generator_heads_and_their_optimiser(planned_dataset, monkeypatch):
    from nnunet_cmedl.training import nnUNetTrainerCMEDL_CUT_tinyCPU
    a = make_trainer(planned_dataset, nnUNetTrainerCMEDL_CUT_tinyCPU, SMALL_2D, monkeypatch)
    a.run_training()
    torch.manual_seed(7)
    b = make_trainer(planned_dataset, nnUNetTrainerCMEDL_CUT_tinyCPU, SMALL_2D, monkeypatch)
    b.load_checkpoint(str(Path(a.output_folder) / "checkpoint_final.pth"))
    ta, tb = all_tensors(a), all_tensors(b)
    assert ta.keys() == tb.keys() and any(k.startswith("i2i.patch_sampler.") for k in ta)
    assert all(torch.equal(ta[k], tb[k]) for k in ta)
    heads = {id(p) for p in a.i2i.patch_sampler.parameters()}
    state_a = a.optimizer_generators.state_dict()["state"]
    assert sum(1 for i, p in enumerate(a.optimizer_generators.param_groups[0]["params"]) if id(p) in heads
               and "exp_avg" in state_a[i]) == len(heads)  # Adam moments of the heads are saved and restored
    # a CycleGAN trainer refuses a CUT checkpoint with a clear message
    from nnunet_cmedl.training import nnUNetTrainerCMEDL_tinyCPU
    from nnunet_cmedl.training.nnUNetTrainerCMEDL import TrainingStopped
    c = make_trainer(planned_dataset, nnUNetTrainerCMEDL_tinyCPU, SMALL_2D, monkeypatch)
    with pytest.raises(TrainingStopped, match="checkpoint_final.pth: its I2I method is cut, this trainer's is cyclegan"):
        c.load_checkpoint(str(Path(a.output_folder) / "checkpoint_final.pth"))


# CUT through the stock CLI; FastCUT (CUT without the identity NCE term, test_cut_step_... above) trains and predicts
# with stock nnU-Net in tests/test_ddp.py
@pytest.mark.parametrize("trainer_name", [CUT_TINY])
def test_cut_trainers_train_resume_predict_through_the_stock_cli(planned_dataset, trainer_name, tmp_path):
    env, did = planned_dataset["env"], planned_dataset["dataset_id"]
    run([BIN / "nnUNetv2_train", did, SMALL_2D, "0", "-tr", trainer_name, "-device", "cpu"],
        without_final_validation(env))
    fold = (Path(env["nnUNet_results"]) / planned_dataset["dataset_name"] / f"{trainer_name}__nnUNetPlans__{SMALL_2D}"
            / "fold_0")
    ckpt = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert ckpt["cmedl_i2i_method"] == "cut" and ckpt["current_epoch"] == 2
    assert all(np.isfinite(ckpt["logging"]["cmedl_G_nce"]))
    # resume mid-run: from the epoch-1 checkpoint, with one more epoch to go
    resumed = resume_mid_run(fold, [BIN / "nnUNetv2_train", did, SMALL_2D, "0", "-tr", trainer_name, "-device", "cpu"],
                             env)
    assert resumed["current_epoch"] == 2 and len(resumed["logging"]["cmedl_G_nce"]) == 2
    out = tmp_path / "pred"
    run([BIN / "nnUNetv2_predict", "-i", planned_dataset["raw_folder"] / "imagesTs", "-o", out, "-d", did,
         "-c", SMALL_2D, "-f", "0", "-tr", trainer_name, "--disable_tta", "-device", "cpu", "-npp", "0", "-nps", "0"],
        env)
    assert len(list(out.glob("*.nii.gz"))) == 2


# ---------------------------------------------------------------- one teacher pass gives the two-pass gradients
@pytest.mark.parametrize("started", ["nnUNetTrainerCMEDL_tinyCPU"], indirect=True)
def test_merged_teacher_pass_gives_the_gradients_of_two_separate_passes(started):
    """Before: the teacher ran once frozen inside the generator step (its loss x lambda trained G) and once on the
    detached pMRI in its own step. Now one forward and one backward; both networks' gradients must be unchanged."""
    trainer, batch = started
    trainer.lambda_teacher_seg_on_generator = 5.0  # PSIGAN's weight: the scaling is exercised, not just lambda=1
    trainer.lambda_hint = 1.0
    ct, target = trainer._batch_to_device(batch)
    mri = next(trainer.dataloader_mri)["data"]
    gen, teacher = trainer.i2i.generator_modules(), trainer.teacher

    def collect():
        return {**{f"G{i}.{k}": v for i, m in enumerate(gen) for k, v in grads(m).items()},
                **{f"T.{k}": v for k, v in grads(teacher).items()}}

    # today's way: two passes of the teacher
    from nnunet_cmedl.i2i.base import frozen
    for m in gen + [teacher]:
        m.zero_grad(set_to_none=True)
    g = trainer.i2i.generator_pass(ct, mri)
    with frozen(teacher):
        (g.loss + 5.0 * trainer.loss(teacher(g.pseudo_mri), target)).backward()
    trainer.loss(teacher(g.pseudo_mri.detach()), target).backward()
    reference = collect()

    # the trainer's way: capture the gradients of its one backward instead of stepping
    captured = {}

    def capture(*groups):
        if not captured:
            for m in gen + [teacher]:
                m.zero_grad(set_to_none=True)
            sum(loss for loss, _, _ in groups).backward()
            captured.update(collect())
    trainer._optimize = capture
    trainer.train_step(batch)
    assert reference.keys() == captured.keys()
    nonzero = 0
    for k, ref in reference.items():
        if ref is None:
            assert captured[k] is None, k
            continue
        # float32: the lambda multiplies at another point of the chain rule, so sums are rounded differently
        error = float((ref - captured[k]).abs().max() / ref.abs().max().clamp_min(1e-12))
        assert error < 1e-4, (k, error)
        nonzero += int(ref.abs().sum() > 0)
    assert nonzero > 20


# ---------------------------------------------------------------- decoder features without hooks, also compiled
def unets():
    from dynamic_network_architectures.architectures.unet import PlainConvUNet, ResidualEncoderUNet, ResidualUNet
    common = dict(input_channels=1, n_stages=3, features_per_stage=[4, 8, 16], conv_op=nn.Conv2d, kernel_sizes=3,
                  strides=[1, 2, 2], num_classes=2, conv_bias=True, norm_op=nn.InstanceNorm2d,
                  norm_op_kwargs={"affine": True}, nonlin=nn.LeakyReLU, n_conv_per_stage_decoder=1)
    torch.manual_seed(0)
    return [PlainConvUNet(n_conv_per_stage=2, deep_supervision=True, **common),
            ResidualEncoderUNet(n_blocks_per_stage=[1, 1, 1], deep_supervision=False, **common),
            ResidualUNet(n_blocks_per_stage=[1, 1, 1], deep_supervision=True, **common)]


def tap_and_hooks(net, x, stages=(-2, -1)):
    """(network output, decoder stage outputs recorded with forward hooks, tap output, tap features) on ``x``."""
    from nnunet_cmedl.distillation.hint import DecoderFeatureTap
    recorded = []
    handles = [net.decoder.stages[s].register_forward_hook(lambda m, i, o: recorded.append(o)) for s in stages]
    with torch.no_grad():
        expected = net(x)
        for h in handles:
            h.remove()
        out, features = DecoderFeatureTap(net, stages)(x)
    return expected, recorded, out, features


@pytest.mark.parametrize("index", [0, 1, 2], ids=["PlainConvUNet", "ResidualEncoderUNet", "ResidualUNet"])
def test_feature_tap_output_equals_the_network_and_features_are_the_decoder_stages(index):
    net = unets()[index].eval()
    expected, recorded, out, features = tap_and_hooks(net, torch.randn(2, 1, 32, 32))
    expected, out = (expected, out) if isinstance(out, list) else ([expected], [out])
    assert len(out) == len(expected) and all(torch.equal(a, b) for a, b in zip(out, expected))
    assert len(features) == 2 and all(torch.equal(a, b) for a, b in zip(features, recorded))


def test_feature_tap_names_what_a_network_lacks():
    from nnunet_cmedl.distillation.hint import DecoderFeatureTap
    from nnunet_cmedl.errors import UnsupportedSetup
    with pytest.raises(UnsupportedSetup, match="decoder"):
        DecoderFeatureTap(nn.Sequential(nn.Conv2d(1, 2, 3)), (-1,))


@pytest.mark.parametrize("backend", ["eager", "aot_eager"])
def test_two_trainers_in_one_process_compiled_get_their_features(planned_dataset, monkeypatch, backend):
    """The failure seen on the GPU: a compiled plain nnU-Net first, then a CMEDL trainer in the same process, whose
    hooks dynamo never ran. With compile forced on (CPU: backend eager/aot_eager), the second trainer's compiled
    taps give exactly the eager features and its training step a real hint."""
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunet_cmedl.training import nnUNetTrainerCMEDL_tinyCPU
    torch._dynamo.reset()
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend=backend))
    monkeypatch.setattr(nnUNetTrainer, "_do_i_compile", lambda self: True)
    plain = make_trainer(planned_dataset, nnUNetTrainer, SMALL_2D, monkeypatch)
    plain.initialize()
    assert isinstance(plain.network, torch._dynamo.eval_frame.OptimizedModule)
    x = torch.randn(2, 1, 32, 32)
    plain.network(x)
    for _ in range(2):  # two CMEDL trainers, one after the other
        cmedl = make_trainer(planned_dataset, nnUNetTrainerCMEDL_tinyCPU, SMALL_2D, monkeypatch)
        cmedl.initialize()
        assert cmedl.student_tap._compiled_call_impl is not None and cmedl.teacher._compiled_call_impl is not None
        assert all(m._compiled_call_impl is not None for m in cmedl.i2i.generator_modules())
        eager_out, eager_features = cmedl.student_tap.forward(x)  # forward() bypasses the compiled __call__
        out, features = cmedl.student_tap(x)
        assert len(features) == 2 and all(torch.allclose(a, b, atol=1e-6) for a, b in zip(features, eager_features))
        # the state dict keys are nnU-Net's own (no _orig_mod.): stock inference loads them
        assert not any("_orig_mod" in k for k in cmedl.i2i.state_dict()) and not any(
            "_orig_mod" in k for k in cmedl.teacher.state_dict())
        batch = {"data": torch.randn(2, 1, 32, 32),
                 "target": [torch.randint(0, 2, (2, 1, 32 // 2 ** i, 32 // 2 ** i)).float() for i in range(3)]}
        cmedl.dataloader_mri = itertools.repeat({"data": torch.randn(2, 1, 32, 32)})
        cmedl.on_train_epoch_start()
        result = cmedl.train_step(batch)
        assert np.isfinite(result["hint"]) and result["hint"] > 0
    torch._dynamo.reset()
