"""nnUNetTrainerCMEDL: stock-CLI discovery, train / predict / resume, checkpoints, and where gradients go."""
import itertools
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from conftest import BIN, SMALL_2D, SMALL_3D, cli, run

TINY = "nnUNetTrainerCMEDL_tinyCPU"


# ---------------------------------------------------------------- discovery
def test_env_command_prints_export_line_and_keeps_existing_value(tmp_path):
    from nnunet_cmedl.env import ext_trainer_folder
    env = {"PATH": "/usr/bin:/bin", "nnUNet_extTrainer": "/some/other/trainers"}
    r = subprocess.run(cli("env"), env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    line = r.stdout.strip()
    assert line.startswith("export nnUNet_extTrainer=")
    assert ext_trainer_folder() in line and "/some/other/trainers" in line
    r = subprocess.run(cli("env", "--check"), env={"PATH": "/usr/bin:/bin"}, capture_output=True, text=True)
    assert r.returncode == 1 and "nnUNet_extTrainer" in r.stdout


def test_stock_lookup_returns_the_installed_class_which_pickles(planned_dataset):
    code = ("import pickle; from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name as f\n"
            f"c = f('{TINY}'); import nnunet_cmedl.training.variants as v\n"
            "assert c is v.nnUNetTrainerCMEDL_tinyCPU, (c.__module__, c)\n"
            "assert pickle.loads(pickle.dumps(c)) is c\n"
            "print('MODULE', c.__module__)")
    r = run([sys.executable, "-c", code], planned_dataset["env"])
    assert "MODULE nnunet_cmedl.training.variants" in r.stdout


def test_lookup_fails_clearly_without_the_variable(planned_dataset):
    env = dict(planned_dataset["env"])
    env.pop("nnUNet_extTrainer")
    r = run([BIN / "nnUNetv2_train", planned_dataset["dataset_id"], SMALL_2D, "0", "-tr", TINY, "-device", "cpu"],
            env, check=False)
    assert r.returncode != 0 and "nnUNet_extTrainer" in (r.stdout + r.stderr)


# ---------------------------------------------------------------- the stock CLI, end to end
@pytest.fixture(scope="module")
def trained_3d(planned_dataset):
    env = planned_dataset["env"]
    r = run([BIN / "nnUNetv2_train", planned_dataset["dataset_id"], SMALL_3D, "0", "-tr", TINY, "-device", "cpu"],
            env)
    fold = Path(env["nnUNet_results"]) / planned_dataset["dataset_name"] / f"{TINY}__nnUNetPlans__{SMALL_3D}" / "fold_0"
    return {"fold": fold, "stdout": r.stdout, **planned_dataset}


def test_stock_train_uses_our_trainer_and_writes_every_output(trained_3d):
    fold = trained_3d["fold"]
    assert f"Using trainer '{TINY}' from" in trained_3d["stdout"]
    for name in ("checkpoint_final.pth", "checkpoint_best.pth", "progress.png", "progress_cmedl.png",
                 "validation/summary.json"):
        assert (fold / name).is_file(), name
    assert sorted(p.name for p in (fold / "cmedl_snapshots").glob("*.png")) == ["epoch_0000.png", "epoch_0001.png"]
    # the results folder's plans carry the small configuration, so prediction uses the trained patch size
    plans = json.loads((fold.parent / "plans.json").read_text())
    assert plans["configurations"][SMALL_3D]["patch_size"] == [8, 32, 32]


def test_checkpoint_keys_and_every_loss_logged_finite(trained_3d):
    ckpt = torch.load(trained_3d["fold"] / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    stock = {"network_weights", "optimizer_state", "grad_scaler_state", "logging", "_best_ema", "current_epoch",
             "init_args", "trainer_name", "inference_allowed_mirroring_axes"}
    extra = {"cmedl_teacher_weights", "cmedl_i2i_method", "cmedl_i2i_weights", "cmedl_i2i_kwargs", "cmedl_i2i_state",
             "cmedl_optimizer_states", "cmedl_lr_scheduler_states", "cmedl_grad_scaler_states", "cmedl_rng_state",
             "cmedl_modalities"}
    assert stock | extra == set(ckpt)
    assert ckpt["trainer_name"] == TINY and ckpt["cmedl_i2i_method"] == "cyclegan"
    assert ckpt["cmedl_modalities"] == ["CT", "MRI"]  # (labelled, unpaired) as the run found them
    assert set(ckpt["cmedl_optimizer_states"]) == {"teacher", "generators", "discriminators"}
    assert any(k.startswith("ct_to_mri.") for k in ckpt["cmedl_i2i_weights"])
    logs = ckpt["logging"]
    from nnunet_cmedl.training.nnUNetTrainerCMEDL import VAL_LOG_NAMES
    for name in ("G_adversarial", "G_cycle", "G_identity", "D", "teacher_seg", "student_seg", "hint") + VAL_LOG_NAMES:
        values = logs["cmedl_" + name]
        assert len(values) == 2 and np.all(np.isfinite(values)), (name, values)


def test_student_weights_load_strictly_into_a_stock_nnunet_network(trained_3d):
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    ckpt = torch.load(trained_3d["fold"] / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    pm = PlansManager(json.loads((trained_3d["fold"].parent / "plans.json").read_text()))
    cm = pm.get_configuration(SMALL_3D)
    net = nnUNetTrainer.build_network_architecture(pm, cm, 1, 2, False)
    net.load_state_dict(ckpt["network_weights"], strict=True)
    teacher = nnUNetTrainer.build_network_architecture(pm, cm, 1, 2, False)
    teacher.load_state_dict(ckpt["cmedl_teacher_weights"], strict=True)
    assert not torch.equal(next(iter(net.state_dict().values())), next(iter(teacher.state_dict().values())))


def test_stock_predict_with_the_student(trained_3d, tmp_path):
    env, raw = trained_3d["env"], trained_3d["raw_folder"]
    out = tmp_path / "pred"
    # nnU-Net's worker processes for preprocessing and export, as a user's prediction runs; the other tests predict
    # sequentially (-npp 0 -nps 0), which saves the workers' start-up (about 5 s a prediction)
    run([BIN / "nnUNetv2_predict", "-i", raw / "imagesTs", "-o", out, "-d", trained_3d["dataset_id"], "-c", SMALL_3D,
         "-f", "0", "-tr", TINY, "--disable_tta", "-device", "cpu", "-npp", "1", "-nps", "1"], env)
    inputs = sorted((raw / "imagesTs").glob("*_0000.nii.gz"))
    preds = sorted(out.glob("*.nii.gz"))
    assert [p.name for p in preds] == [i.name.replace("_0000", "") for i in inputs]
    for i, p in zip(inputs, preds):
        a, b = sitk.ReadImage(str(i)), sitk.ReadImage(str(p))
        assert a.GetSize() == b.GetSize() and np.allclose(a.GetSpacing(), b.GetSpacing())
        assert set(np.unique(sitk.GetArrayFromImage(b))) <= {0, 1}


def shift_head(weights: dict, foreground_bias: float) -> None:
    """Adds ``foreground_bias`` to the foreground logit of a network's full-resolution segmentation head."""
    import re
    head = max((k for k in weights if re.fullmatch(r"decoder\.seg_layers\.\d+\.bias", k)),
               key=lambda k: int(k.split(".")[2]))
    weights[head][1] += foreground_bias


def test_stock_predict_runs_the_student_not_the_teacher(trained_3d, tmp_path):
    """A copy of the model whose student head says 'foreground everywhere' and whose teacher head says 'background
    everywhere': stock nnUNetv2_predict must segment everything (it runs network_weights, the student); swapped or
    ignored weights give an empty or a different mask."""
    import shutil
    env = dict(trained_3d["env"], nnUNet_results=str(tmp_path / "results"))
    src = trained_3d["fold"].parent
    dst = tmp_path / "results" / trained_3d["dataset_name"] / src.name
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("checkpoint_best.pth", "checkpoint_latest.pth"))
    ckpt_file = dst / "fold_0" / "checkpoint_final.pth"
    ckpt = torch.load(ckpt_file, map_location="cpu", weights_only=False)
    shift_head(ckpt["network_weights"], 50.0)  # nnU-Net accumulates logits in float16: no larger
    shift_head(ckpt["cmedl_teacher_weights"], -50.0)
    torch.save(ckpt, ckpt_file)
    out = tmp_path / "pred"
    run([BIN / "nnUNetv2_predict", "-i", trained_3d["raw_folder"] / "imagesTs", "-o", out, "-d",
         trained_3d["dataset_id"], "-c", SMALL_3D, "-f", "0", "-tr", TINY, "--disable_tta", "-device", "cpu",
         "-npp", "0", "-nps", "0"], env)
    preds = sorted(out.glob("*.nii.gz"))
    assert len(preds) == len(list((trained_3d["raw_folder"] / "imagesTs").glob("*_0000.nii.gz"))) > 0
    for p in preds:
        seg = sitk.GetArrayFromImage(sitk.ReadImage(str(p)))
        # nnU-Net's crop to the nonzero region leaves a background border; inside it, all foreground
        assert (seg == 1).mean() > 0.5, p.name


def test_stock_continue_and_val_flags(trained_3d):
    env, did = trained_3d["env"], trained_3d["dataset_id"]
    r = run([BIN / "nnUNetv2_train", did, SMALL_3D, "0", "-tr", TINY, "-device", "cpu", "--c"], env)
    assert "Mean Validation Dice" in r.stdout
    r = run([BIN / "nnUNetv2_train", did, SMALL_3D, "0", "-tr", TINY, "-device", "cpu", "--val"], env)
    assert "Mean Validation Dice" in r.stdout


def test_missing_mri_names_the_command_to_run(planned_dataset, tmp_path):
    """A configuration whose data identifier has no prepared MRI: the error says how to prepare it."""
    env = planned_dataset["env"]
    pre = Path(env["nnUNet_preprocessed"]) / planned_dataset["dataset_name"]
    plans = json.loads((pre / "nnUNetPlans.json").read_text())
    plans["plans_name"] = "nnUNetPlansNoMRI"
    (pre / "nnUNetPlansNoMRI.json").write_text(json.dumps(plans))
    # its data identifier is new: link the CT data so that only the MRI is missing
    ident = plans["configurations"]["2d"]["data_identifier"]
    plans["configurations"]["2d"]["data_identifier"] = ident + "_nomri"
    (pre / "nnUNetPlansNoMRI.json").write_text(json.dumps(plans))
    (pre / (ident + "_nomri")).symlink_to(pre / ident)
    r = run([BIN / "nnUNetv2_train", planned_dataset["dataset_id"], SMALL_2D, "0", "-tr", TINY, "-device", "cpu",
             "-p", "nnUNetPlansNoMRI"], env, check=False)
    assert r.returncode != 0
    assert "nnunet_cmedl preprocess-unpaired" in (r.stdout + r.stderr)


# ---------------------------------------------------------------- in-process: resume and gradients
def make_trainer(planned, cls, configuration, monkeypatch):
    for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results", "nnUNet_n_proc_DA"):
        monkeypatch.setenv(k, planned["env"][k])
    pre = Path(planned["env"]["nnUNet_preprocessed"]) / planned["dataset_name"]
    plans = json.loads((pre / "nnUNetPlans.json").read_text())
    plans["continue_training"] = False
    return cls(plans, configuration, 0, json.loads((pre / "dataset.json").read_text()), device=torch.device("cpu"))


def all_tensors(trainer) -> dict:
    """Every weight and optimizer state of every CMEDL part (of the network alone for plain nnU-Net), flattened."""
    out = {}
    cmedl = hasattr(trainer, "teacher")
    parts = (("student", trainer.network), ("teacher", trainer.teacher), ("i2i", trainer.i2i)) if cmedl else \
        (("student", trainer.network),)
    for name, module in parts:
        out.update({f"{name}.{k}": v for k, v in module.state_dict().items()})
    for name, opt in {"student": trainer.optimizer, **(trainer._cmedl_optimizers() if cmedl else {})}.items():
        for pid, st in opt.state_dict()["state"].items():
            out.update({f"opt.{name}.{pid}.{k}": v for k, v in st.items() if torch.is_tensor(v)})
    return out


def test_load_checkpoint_restores_every_part_exactly(planned_dataset, monkeypatch):
    from nnunet_cmedl.training import nnUNetTrainerCMEDL_tinyCPU
    a = make_trainer(planned_dataset, nnUNetTrainerCMEDL_tinyCPU, SMALL_2D, monkeypatch)
    a.run_training()
    final = Path(a.output_folder) / "checkpoint_final.pth"
    torch.manual_seed(123)  # b starts from other weights
    b = make_trainer(planned_dataset, nnUNetTrainerCMEDL_tinyCPU, SMALL_2D, monkeypatch)
    b.load_checkpoint(str(final))
    ta, tb = all_tensors(a), all_tensors(b)
    assert ta.keys() == tb.keys() and len(ta) > 100
    assert all(torch.equal(ta[k], tb[k].to(ta[k].device)) for k in ta)
    assert b.current_epoch == a.num_epochs
    assert len(b.i2i.pool_pseudo_mri.images) == len(a.i2i.pool_pseudo_mri.images) > 0
    assert b.lr_scheduler_generators.state_dict() == a.lr_scheduler_generators.state_dict()
    # a dict works too (nnU-Net 2.8.1's own load_checkpoint fails on one)
    c = make_trainer(planned_dataset, nnUNetTrainerCMEDL_tinyCPU, SMALL_2D, monkeypatch)
    c.load_checkpoint(torch.load(final, map_location="cpu", weights_only=False))
    assert all(torch.equal(ta[k], v) for k, v in all_tensors(c).items())


def test_warm_start_takes_the_i2i_networks_and_the_teacher_not_the_student(planned_dataset, monkeypatch, tmp_path):
    """warm_start (nnUNetTrainerCMEDL_teacherAheadWarm): generators, discriminators and teacher come from another CMEDL
    run's checkpoint; the student starts where a plain run of its seed starts, and every optimiser starts fresh."""
    from nnunet_cmedl.training import nnUNetTrainerCMEDL_tinyCPU, nnUNetTrainerCMEDL_teacherAheadWarm
    from nnunet_cmedl.training.nnUNetTrainerCMEDL import TrainingStopped
    source = make_trainer(planned_dataset, nnUNetTrainerCMEDL_tinyCPU, SMALL_2D, monkeypatch)
    source.seed = 1
    source.on_train_start()
    source.on_train_epoch_start()
    source.train_step(next(source.dataloader_train))  # optimiser states that a warm start must not take
    pre = tmp_path / "pre.pth"
    source.save_checkpoint(str(pre))
    source.on_train_end()

    def fresh(warm_start=None, seed=2):
        trainer = make_trainer(planned_dataset, nnUNetTrainerCMEDL_tinyCPU, SMALL_2D, monkeypatch)
        trainer.seed, trainer.warm_start = seed, warm_start
        return trainer
    plain = fresh()
    plain.initialize()
    warm = fresh(str(pre))
    warm.on_train_start()
    try:
        for part in ("teacher", "i2i"):
            assert weights_equal(getattr(source, part).state_dict(), getattr(warm, part).state_dict()), part
            assert not weights_equal(getattr(plain, part).state_dict(), getattr(warm, part).state_dict()), part
        assert weights_equal(plain.network.state_dict(), warm.network.state_dict())
        assert not weights_equal(source.network.state_dict(), warm.network.state_dict())
        assert all(not o.state_dict()["state"] for o in (warm.optimizer, *warm._cmedl_optimizers().values()))
        assert len(warm.i2i.pool_pseudo_mri.images) == len(source.i2i.pool_pseudo_mri.images) > 0
        assert warm.current_epoch == 0
    finally:
        warm.on_train_end()
    # a trainer name: that trainer's final checkpoint of the same dataset, plans, configuration and fold
    named = make_trainer(planned_dataset, nnUNetTrainerCMEDL_teacherAheadWarm, SMALL_2D, monkeypatch)
    assert Path(named.warm_start_checkpoint()) == Path(named.output_folder_base).parent / \
        f"nnUNetTrainerCMEDL_noHint__nnUNetPlans__{SMALL_2D}" / "fold_0" / "checkpoint_final.pth"
    from nnunet_cmedl.training.benchmark_trainers import nnUNetTrainerCMEDL_teacherAheadWarm_benchCPU_seed3 as Bench
    assert make_trainer(planned_dataset, Bench, SMALL_2D, monkeypatch).warm_start == \
        "nnUNetTrainerCMEDL_noHint_benchCPU_seed0"  # the benchmark's pre-training run of the same budget
    from nnunet_cmedl.training.benchmark_trainers import nnUNetTrainerCMEDL_longWarmAfterOnset_benchCPU_seed4 as Long
    long_warm = make_trainer(planned_dataset, Long, SMALL_2D, monkeypatch)
    assert long_warm.warm_start == "nnUNetTrainerCMEDL_noHint_benchLong_seed3"  # 3x longer pre-training (stop 23)
    assert long_warm.hint_gate == "teacher_ahead_after_onset" and long_warm.num_epochs == 40
    # the stock CLI: the environment variable
    monkeypatch.setenv("nnUNet_cmedl_warm_start", str(pre))
    assert make_trainer(planned_dataset, nnUNetTrainerCMEDL_tinyCPU, SMALL_2D, monkeypatch).warm_start == str(pre)
    monkeypatch.delenv("nnUNet_cmedl_warm_start")
    # what cannot be warm-started from stops with one line that names the file
    plain_ckpt = tmp_path / "plain.pth"
    torch.save({"network_weights": plain.network.state_dict(), "trainer_name": "nnUNetTrainer"}, plain_ckpt)
    for path, message in ((tmp_path / "missing.pth", "no such checkpoint"),
                          (plain_ckpt, "not a CMEDL checkpoint .* nnUNetTrainer")):
        trainer = fresh(str(path))
        trainer.initialize()
        with pytest.raises(TrainingStopped, match=f"{path}: {message}"):
            trainer.load_warm_start()


@pytest.fixture
def started_trainer(planned_dataset, monkeypatch, request):
    from nnunet_cmedl import training
    trainer = make_trainer(planned_dataset, getattr(training, request.param), SMALL_2D, monkeypatch)
    trainer.on_train_start()
    batch = next(trainer.dataloader_train)
    mri = next(trainer.dataloader_mri)
    trainer.dataloader_mri = itertools.repeat(mri)  # the same MRI batch for every step of the test
    trainer.on_train_epoch_start()
    yield trainer, batch
    trainer.on_train_end()


def grads(module) -> dict:
    return {n: (None if p.grad is None else p.grad.detach().clone()) for n, p in module.named_parameters()}


@pytest.mark.parametrize("started_trainer", [TINY], indirect=True)
def test_one_step_every_part_gets_gradients_and_losses_are_finite(started_trainer):
    trainer, batch = started_trainer
    out = trainer.train_step(batch)
    assert set(out) == {"loss", "G_adversarial", "G_cycle", "G_identity", "D", "teacher_seg", "student_seg", "hint"}
    assert all(np.isfinite(v) for v in out.values()), out
    assert out["hint"] > 0
    for name, module in (("student", trainer.network), ("teacher", trainer.teacher),
                         ("ct_to_mri", trainer.i2i.ct_to_mri), ("mri_to_ct", trainer.i2i.mri_to_ct),
                         ("discriminator_mri", trainer.i2i.discriminator_mri),
                         ("discriminator_ct", trainer.i2i.discriminator_ct)):
        g = grads(module)
        if name in ("student", "teacher"):
            # nnU-Net gives the lowest-resolution deep-supervision output weight 0: that head never gets gradients
            # (in plain nnU-Net either); every other parameter must
            assert all(g.pop(k) is None for k in [k for k in g if k.startswith("decoder.seg_layers.0.")]), name
        assert all(v is not None and torch.isfinite(v).all() for v in g.values()), name
        assert sum(float(v.abs().sum()) for v in g.values()) > 0, name


@pytest.mark.parametrize("started_trainer", [TINY], indirect=True)
def test_generator_pass_leaves_the_discriminators_alone(started_trainer):
    trainer, batch = started_trainer
    ct, target = trainer._batch_to_device(batch)
    mri = next(trainer.dataloader_mri)["data"]
    trainer.i2i.zero_grad(set_to_none=True)
    trainer.i2i.generator_pass(ct, mri).loss.backward()
    assert all(v is None for m in trainer.i2i.discriminator_modules() for v in grads(m).values())
    assert all(v is not None for m in trainer.i2i.generator_modules() for v in grads(m).values())
    assert all(p.requires_grad for p in trainer.i2i.discriminator_parameters())  # unfrozen again afterwards


@pytest.mark.parametrize("started_trainer", [TINY], indirect=True)
def test_the_teacher_trains_with_adamw_where_asked_and_a_checkpoint_keeps_its_moments(started_trainer, planned_dataset,
                                                                                      monkeypatch, tmp_path):
    """_teacherAdamW (issue 8, the teacher's optimiser): the teacher steps with nnUNetTrainerAdam1en3's AdamW, the
    student keeps nnU-Net's SGD, and a resumed run gets the teacher's AdamW moments back."""
    from nnunet_cmedl.training import nnUNetTrainerCMEDL_teacherAdamW, nnUNetTrainerCMEDL_tinyCPU
    variant = make_trainer(planned_dataset, nnUNetTrainerCMEDL_teacherAdamW, SMALL_2D, monkeypatch)
    assert (variant.teacher_optimizer, variant.teacher_initial_lr) == ("adamw", 1e-3)
    trainer, batch = started_trainer
    assert isinstance(trainer.optimizer_teacher, torch.optim.SGD)  # the default: the student's optimiser
    trainer.teacher_optimizer, trainer.teacher_initial_lr = "adamw", 1e-3
    trainer.configure_cmedl_optimizers()
    assert isinstance(trainer.optimizer_teacher, torch.optim.AdamW) and isinstance(trainer.optimizer, torch.optim.SGD)
    assert trainer.optimizer_teacher.param_groups[0]["lr"] == pytest.approx(1e-3)
    teacher_before = {k: v.clone() for k, v in trainer.teacher.state_dict().items()}
    trainer.train_step(batch)
    assert not weights_equal(teacher_before, trainer.teacher.state_dict())
    moments = trainer.optimizer_teacher.state_dict()["state"]
    assert moments and all({"exp_avg", "max_exp_avg_sq"} <= set(m) for m in moments.values())  # AdamW, amsgrad
    checkpoint = tmp_path / "adamw.pth"
    trainer.save_checkpoint(str(checkpoint))
    resumed = make_trainer(planned_dataset, nnUNetTrainerCMEDL_tinyCPU, SMALL_2D, monkeypatch)
    resumed.teacher_optimizer, resumed.teacher_initial_lr = "adamw", 1e-3
    resumed.load_checkpoint(str(checkpoint))
    again = resumed.optimizer_teacher.state_dict()["state"]
    assert isinstance(resumed.optimizer_teacher, torch.optim.AdamW) and again.keys() == moments.keys()
    assert all(torch.equal(again[i]["max_exp_avg_sq"], moments[i]["max_exp_avg_sq"]) for i in moments)
    trainer.teacher_optimizer = "adam"
    with pytest.raises(ValueError, match="teacher_optimizer must be 'sgd' or 'adamw'"):
        trainer.configure_cmedl_optimizers()
    trainer.teacher_optimizer = "sgd"


def step_from(trainer, checkpoint, batch, lambda_hint):
    """One train_step from the state saved in ``checkpoint``; returns the teacher's and student's new weights."""
    trainer.load_checkpoint(str(checkpoint))
    trainer.lambda_hint = lambda_hint
    trainer.train_step(batch)
    return ({k: v.clone() for k, v in trainer.teacher.state_dict().items()},
            {k: v.clone() for k, v in trainer.network.state_dict().items()})


def weights_equal(a, b) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("started_trainer", [TINY], indirect=True)
def test_hint_moves_the_student_not_the_teacher(started_trainer, tmp_path):
    """On decoder features (CMEDL) and on outputs (hint_target 'outputs', _warmOutputHint) alike."""
    trainer, batch = started_trainer
    ckpt = tmp_path / "state.pth"
    trainer.save_checkpoint(str(ckpt))
    teacher_0, student_0 = step_from(trainer, ckpt, batch, lambda_hint=0.0)
    students = []
    for target in ("features", "outputs"):
        trainer.hint_target = target
        teacher_1, student_1 = step_from(trainer, ckpt, batch, lambda_hint=10.0)
        assert weights_equal(teacher_0, teacher_1), target
        assert not weights_equal(student_0, student_1), target
        students.append(student_1)
    assert not weights_equal(*students)
    trainer.hint_target = "logits"
    with pytest.raises(ValueError, match="hint_target"):
        trainer.train_step(batch)
    trainer.hint_target = "features"


@pytest.mark.parametrize("started_trainer", [TINY], indirect=True)
def test_a_masked_hint_does_not_pull_the_student_toward_a_teacher_that_is_wrong(started_trainer, tmp_path):
    """hint_mask 'teacher_correct' (nnUNetTrainerCMEDL_teacherAheadMasked): a teacher that segments tumour everywhere
    on a batch without tumour is wrong on every voxel, so the hint moves the student nowhere; unmasked, it does.
    'teacher_correct_foreground' (nnUNetTrainerCMEDL_warmTumourMasked) likewise: there is no tumour to find."""
    trainer, batch = started_trainer
    batch = dict(batch, target=[torch.zeros_like(t) for t in batch["target"]])  # background only
    for layer in trainer.teacher.decoder.seg_layers:  # the teacher says "tumour" everywhere
        torch.nn.init.zeros_(layer.weight)
        layer.bias.data = torch.tensor([-10.0, 10.0])
    ckpt = tmp_path / "state.pth"
    trainer.save_checkpoint(str(ckpt))
    _, without_hint = step_from(trainer, ckpt, batch, lambda_hint=0.0)
    trainer.hint_mask = "teacher_correct"
    _, masked = step_from(trainer, ckpt, batch, lambda_hint=10.0)
    trainer.hint_mask = "teacher_correct_foreground"  # _warmTumourMasked: no tumour found, no hint
    _, tumour_masked = step_from(trainer, ckpt, batch, lambda_hint=10.0)
    trainer.hint_mask = "none"
    _, unmasked = step_from(trainer, ckpt, batch, lambda_hint=10.0)
    assert weights_equal(without_hint, masked) and weights_equal(without_hint, tumour_masked)
    assert not weights_equal(without_hint, unmasked)
    trainer.hint_mask = "everywhere"
    with pytest.raises(ValueError, match="hint_mask"):
        trainer.train_step(batch)


@pytest.mark.parametrize("name, sizes", [("nnUNetTrainerCMEDL", [32, 64]),
                                         ("nnUNetTrainerCMEDL_hintDeepStages", [8, 16]),
                                         ("nnUNetTrainerCMEDL_hintLastStage", [64])])
def test_the_hint_stage_variants_tap_the_stages_they_name(planned_dataset, monkeypatch, name, sizes):
    """Issue 8, section 2 (which stages): on a U-Net with 4 decoder stages and a 64x64 input, CMEDL's hint taps the
    stages at 32 and 64 pixels, hintDeepStages the two below (8, 16), hintLastStage the last alone; a network with
    fewer stages than a variant names stops at initialisation with one line."""
    from dynamic_network_architectures.architectures.unet import PlainConvUNet
    from nnunet_cmedl import training
    from nnunet_cmedl.distillation.hint import DecoderFeatureTap
    from nnunet_cmedl.errors import UnsupportedSetup
    trainer = make_trainer(planned_dataset, getattr(training, name), SMALL_2D, monkeypatch)
    net = PlainConvUNet(1, 5, [4] * 5, torch.nn.Conv2d, 3, [1, 2, 2, 2, 2], 2, 2, [1] * 4, True,
                        torch.nn.InstanceNorm2d, {"affine": True}, nonlin=torch.nn.LeakyReLU, deep_supervision=True)
    with torch.no_grad():
        _, features = DecoderFeatureTap(net, trainer.hint_decoder_stages)(torch.randn(1, 1, 64, 64))
    assert [f.shape[-1] for f in features] == sizes
    if name.endswith("DeepStages"):  # the tiny configuration's U-Net has 3 decoder stages
        with pytest.raises(UnsupportedSetup, match=r"hint_decoder_stages \(-4, -3\): .* 3 stages"):
            trainer.initialize()



@pytest.mark.parametrize("started_trainer", [TINY], indirect=True)
@pytest.mark.parametrize("name, weight", [("nnUNetTrainerCMEDL_lambdaHint0p3", 0.3),
                                          ("nnUNetTrainerCMEDL_lambdaHint0p1", 0.1)])
def test_the_hint_weight_variants_scale_the_hints_pull_on_the_student(started_trainer, planned_dataset, monkeypatch,
                                                                      tmp_path, name, weight):
    """Issue 8, section 2 (hint scale; stop 40's dose-response): a variant's lambda_hint scales what the hint adds to
    the student's first update, and nothing else: from the same state, (step at its weight - step without hint) =
    weight x (step at CMEDL's 1 - step without hint), and the teacher's step is the same at every weight."""
    from nnunet_cmedl import training
    assert make_trainer(planned_dataset, getattr(training, name), SMALL_2D, monkeypatch).lambda_hint == weight
    trainer, batch = started_trainer
    ckpt = tmp_path / "state.pth"
    trainer.save_checkpoint(str(ckpt))
    teacher_0, student_0 = step_from(trainer, ckpt, batch, lambda_hint=0.0)
    teacher_1, student_1 = step_from(trainer, ckpt, batch, lambda_hint=1.0)
    teacher_w, student_w = step_from(trainer, ckpt, batch, lambda_hint=weight)
    assert weights_equal(teacher_0, teacher_1) and weights_equal(teacher_0, teacher_w)
    moved = [k for k in student_0 if student_0[k].is_floating_point() and not torch.equal(student_0[k], student_1[k])]
    assert len(moved) > len(student_0) // 2  # the hint reaches most of the student (the decoder and what feeds it)
    pull_1 = torch.cat([(student_1[k] - student_0[k]).flatten() for k in moved])
    pull_w = torch.cat([(student_w[k] - student_0[k]).flatten() for k in moved])
    assert torch.allclose(pull_w, weight * pull_1, rtol=1e-3, atol=1e-3 * pull_1.abs().max().item())

# region-based labels (a sigmoid per region) and labels with nnU-Net's ignore label; 3 is the ignore label (the highest)
LABELS_WITH_IGNORE = {"regions": {"labels": {"background": 0, "whole": [1, 2], "core": 1, "ignore": 3},
                                  "regions_class_order": [2, 1]},
                      "labels": {"labels": {"background": 0, "tumour": 1, "rim": 2, "ignore": 3}}}


@pytest.mark.parametrize("kind", sorted(LABELS_WITH_IGNORE))
def test_every_hint_mask_trains_on_datasets_with_regions_or_an_ignore_label(planned_dataset, monkeypatch, tmp_path,
                                                                            kind):
    """Any nnU-Net dataset: with region-based labels and an ignore label, nnU-Net's batches carry one target channel
    more than the outputs (the ignore mask, last: ConvertSegmentationToRegionsTransform); with plain labels the
    ignore label is a value no output has. Every part trains under every hint mask, and the masks never count an
    ignored voxel as one the teacher got right. (Batches as nnU-Net's transforms give them: the tiny dataset was not
    preprocessed with these labels, so its loaders cannot serve them.)"""
    from nnunet_cmedl.speed import deep_supervision_targets
    from nnunet_cmedl.training import nnUNetTrainerCMEDL_tinyCPU
    for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_n_proc_DA"):
        monkeypatch.setenv(k, planned_dataset["env"][k])
    monkeypatch.setenv("nnUNet_results", str(tmp_path))  # its dataset.json is not the dataset's: a folder of its own
    pre = Path(planned_dataset["env"]["nnUNet_preprocessed"]) / planned_dataset["dataset_name"]
    plans = dict(json.loads((pre / "nnUNetPlans.json").read_text()), continue_training=False)
    dataset_json = dict(json.loads((pre / "dataset.json").read_text()), **LABELS_WITH_IGNORE[kind])
    trainer = nnUNetTrainerCMEDL_tinyCPU(plans, SMALL_2D, 0, dataset_json, device=torch.device("cpu"))
    assert trainer.label_manager.has_ignore_label and trainer.label_manager.has_regions == (kind == "regions")
    trainer.initialize()
    patch = [int(p) for p in trainer.configuration_manager.patch_size]
    g = torch.Generator().manual_seed(0)
    b = trainer.batch_size
    trainer.dataloader_mri = itertools.repeat({"data": torch.randn((b, 1, *patch), generator=g)})
    # a label map: tumour (1) in a disc, its rim (2) around it, the first rows unlabelled (3, the ignore label)
    yy, xx = torch.meshgrid(*[torch.linspace(-1, 1, p) for p in patch], indexing="ij")
    r = (yy ** 2 + xx ** 2).sqrt()
    seg = torch.where(r < 0.35, 1, torch.where(r < 0.5, 2, 0))
    seg[: patch[0] // 4] = 3
    seg = seg.expand(b, 1, *patch)
    if kind == "regions":  # channels: whole (1 or 2), core (1), then the ignore mask
        full = torch.cat([(seg == 1) | (seg == 2), seg == 1, seg == 3], 1)
    else:
        full = seg.to(torch.int16)
    targets = deep_supervision_targets(full, trainer._get_deep_supervision_scales())
    batch = {"data": torch.randn((b, 1, *patch), generator=g), "target": targets}
    trainer.on_train_epoch_start()
    trainer.lambda_hint = 1.0
    for mask in ("none", "teacher_correct", "teacher_correct_foreground"):
        trainer.hint_mask = mask
        out = trainer.train_step(batch)
        assert all(np.isfinite(v) for v in out.values()), (mask, out)
        assert out["hint"] > 0 or mask != "none", mask  # masked: a random teacher may find no voxel yet
    # a teacher right on every labelled voxel: the masks are every labelled voxel (its tumour voxels), no ignored one
    target = targets[0]
    if kind == "regions":
        logits, ignored, tumour = torch.where(target[:, :-1], 10.0, -10.0), target[:, -1:], target[:, :1]
    else:
        logits = torch.nn.functional.one_hot(target[:, 0].long().clamp(max=2), 3).movedim(-1, 1) * 20.0 - 10
        ignored, tumour = target == 3, (target == 1) | (target == 2)
    trainer.hint_mask = "teacher_correct"
    assert torch.equal(trainer.hint_voxels(logits, target).bool(), ~ignored)
    trainer.hint_mask = "teacher_correct_foreground"
    assert torch.equal(trainer.hint_voxels(logits, target).bool(), tumour & ~ignored)


@pytest.mark.parametrize("started_trainer", [TINY], indirect=True)
def test_amp_the_student_keeps_a_loss_scaler_of_its_own(started_trainer, tmp_path):
    """On CUDA every loss is scaled by an AMP grad scaler (here CPU scalers run the same code). The student's part of
    CMEDL's loss sum (its segmentation loss and the hint) has nnU-Net's scaler to itself, as in plain nnU-Net: when
    the generators' and the teacher's scaled part overflows, they skip their steps, and the student takes the step it
    takes without any scaling, exactly (a power-of-two scale)."""
    from torch.amp import GradScaler
    trainer, batch = started_trainer
    ckpt = tmp_path / "state.pth"
    trainer.save_checkpoint(str(ckpt))
    teacher_before = {k: v.clone() for k, v in trainer.teacher.state_dict().items()}
    student_before = {k: v.clone() for k, v in trainer.network.state_dict().items()}
    _, student_unscaled = step_from(trainer, ckpt, batch, lambda_hint=1.0)

    trainer.load_checkpoint(str(ckpt))
    trainer.grad_scaler = GradScaler("cpu", init_scale=2.0 ** 10)
    trainer.grad_scaler_translation = GradScaler("cpu", init_scale=float("inf"))  # every scaled gradient overflows
    trainer._nonfinite_skips = {}
    trainer.train_step(batch)
    assert set(trainer._nonfinite_skips) == {"generators", "teacher"}
    assert weights_equal(teacher_before, trainer.teacher.state_dict())
    assert weights_equal(student_unscaled, trainer.network.state_dict())
    assert not weights_equal(student_before, student_unscaled)  # the step moved it
    assert trainer.grad_scaler.get_scale() == 2.0 ** 10


@pytest.mark.parametrize("started_trainer", ["nnUNetTrainerCMEDL_hintBothWays"], indirect=True)
def test_hint_both_ways_variant_moves_the_teacher_too(started_trainer, tmp_path):
    trainer, batch = started_trainer
    trainer.num_iterations_per_epoch = 1
    ckpt = tmp_path / "state.pth"
    trainer.save_checkpoint(str(ckpt))
    teacher_0, student_0 = step_from(trainer, ckpt, batch, lambda_hint=0.0)
    teacher_1, student_1 = step_from(trainer, ckpt, batch, lambda_hint=10.0)
    assert not weights_equal(teacher_0, teacher_1)
    assert not weights_equal(student_0, student_1)


@pytest.mark.parametrize("started_trainer", [TINY], indirect=True)
def test_a_gated_hint_weight_is_computed_once_per_epoch_not_per_step(started_trainer, monkeypatch):
    """The gate reads the pseudo-Dice of every epoch so far: train_step takes the epoch's weight, computed when the
    epoch starts (or again when lambda_hint or the gate changes), not once per iteration."""
    trainer, batch = started_trainer
    trainer.hint_gate, trainer.hint_mask = "teacher_ahead_after_onset", "teacher_correct_foreground"  # _warmTumour...
    logs = trainer.logger.local_logger.my_fantastic_logging
    calls = []
    original = trainer.hint_weight
    monkeypatch.setattr(trainer, "hint_weight", lambda epoch: calls.append(epoch) or original(epoch))
    trainer.current_epoch = 2
    logs["dice_per_class_or_region"] = [[0.0], [0.3]]      # the student has started ...
    logs["cmedl_teacher_pseudo_dice_pmri"] = [0.5, 0.6]    # ... and the teacher is ahead: the gate is open
    trainer.on_train_epoch_start()
    for _ in range(3):
        assert np.isfinite(trainer.train_step(batch)["hint"])
    assert calls == [2] and trainer.epoch_hint_weight() == 1.0
    trainer.lambda_hint = 0.5
    assert trainer.epoch_hint_weight() == 0.5 and calls == [2, 2]
    logs["cmedl_teacher_pseudo_dice_pmri"].append(0.0)     # the next validation: the teacher behind, the gate closes
    logs["dice_per_class_or_region"].append([0.3])
    trainer.current_epoch = 3
    trainer.on_train_epoch_start()
    assert trainer.epoch_hint_weight() == 0.0 and calls == [2, 2, 3]
