"""Issue 10: training survives SIGKILL at any moment and resumes exactly with --c; a non-finite loss or gradient
skips only that network's step, and too many in a row stop training with the last good checkpoint kept."""
import importlib
import math
import subprocess
from pathlib import Path

import pytest
import torch

from conftest import BIN, SMALL_2D, nnunet_env, without_final_validation
from test_accuracy_benchmark import tiny
from test_trainer_cmedl import make_trainer

KILL_TRAINER = "nnUNetTrainerCMEDL_killAt"
KILL_TRAINER_FOLDER = Path(__file__).parent / "kill_trainer"
# in the order a run reaches them (tests/kill_trainer/cmedl_kill_trainer.py says where each is); each kill is followed
# by nnUNetv2_train --c, which goes on from the last complete checkpoint (or starts again where there is none)
KILLS = ["start:0", "iteration:0", "save_partial:0", "save_written:0", "validation:1", "epoch_end:1", "iteration:2",
         "save_partial:2", "save_written:3", "save_partial:4", "final_validation:4"]


def train(planned, results: Path, kill_at=None, resume=False, final_validation=True) -> subprocess.CompletedProcess:
    from nnunet_cmedl.env import ext_trainer_value
    env = nnunet_env(planned["root"], nnUNet_results=str(results),
                     nnUNet_extTrainer=ext_trainer_value(str(KILL_TRAINER_FOLDER)))
    if not final_validation:
        env = without_final_validation(env)
    env.pop("CMEDL_TEST_KILL_AT", None)
    if kill_at:
        env["CMEDL_TEST_KILL_AT"] = kill_at
    cmd = [BIN / "nnUNetv2_train", planned["dataset_id"], SMALL_2D, "0", "-tr", KILL_TRAINER, "-device", "cpu"]
    return subprocess.run([str(c) for c in cmd + (["--c"] if resume else [])], env=env, capture_output=True,
                          text=True, timeout=600)


def fold_folder(planned, results: Path) -> Path:
    return results / planned["dataset_name"] / f"{KILL_TRAINER}__nnUNetPlans__{SMALL_2D}" / "fold_0"


def test_sigkill_at_eleven_moments_then_resume_ends_like_the_uninterrupted_run(planned_dataset, tmp_path):
    straight = train(planned_dataset, tmp_path / "straight", final_validation=False)  # its checkpoints are compared
    assert straight.returncode == 0, straight.stderr[-3000:]
    folder = fold_folder(planned_dataset, tmp_path / "killed")
    last_epoch = 0
    for trial, kill_at in enumerate(KILLS):
        r = train(planned_dataset, tmp_path / "killed", kill_at, resume=trial > 0)
        assert r.returncode == -9, f"{kill_at}: the run was not killed ({r.returncode}): {r.stderr[-3000:]}"
        # every checkpoint under its real name is complete and consistent: weights, epoch, one log entry per epoch
        for name in ("checkpoint_latest.pth", "checkpoint_best.pth", "checkpoint_final.pth"):
            if (folder / name).exists():
                ckpt = torch.load(folder / name, map_location="cpu", weights_only=False)
                logs = ckpt["logging"]
                assert len(logs["train_losses"]) == len(logs["cmedl_hint"]) == ckpt["current_epoch"], (kill_at, name)
                assert {"network_weights", "cmedl_teacher_weights", "cmedl_i2i_weights"} <= ckpt.keys()
        latest = folder / ("checkpoint_final.pth" if (folder / "checkpoint_final.pth").exists()
                           else "checkpoint_latest.pth")
        epoch = torch.load(latest, map_location="cpu", weights_only=False)["current_epoch"] if latest.exists() else 0
        assert epoch >= last_epoch, f"{kill_at}: the run went back from epoch {last_epoch} to {epoch}"
        last_epoch = epoch
    assert last_epoch == 5  # the last kill came after checkpoint_final.pth
    done = train(planned_dataset, tmp_path / "killed", resume=True)
    assert done.returncode == 0, done.stderr[-3000:]

    assert (folder / "validation" / "summary.json").exists()
    assert not list(folder.glob(".checkpoint_*")), "temporary files of killed saves were left behind"
    a, b = (torch.load(fold_folder(planned_dataset, tmp_path / d) / "checkpoint_final.pth", map_location="cpu",
                       weights_only=False) for d in ("straight", "killed"))
    assert a["current_epoch"] == b["current_epoch"] == 5
    for key in ("network_weights", "cmedl_teacher_weights", "cmedl_i2i_weights"):
        different = [k for k in a[key] if not torch.equal(a[key][k], b[key][k])]
        assert not different, (key, different[:3])
    assert a["logging"]["train_losses"] == b["logging"]["train_losses"]


# ---------------------------------------------------------------- non-finite losses and gradients
def params(trainer) -> dict:
    return {"generators": list(trainer.i2i.generator_parameters()), "teacher": list(trainer.teacher.parameters()),
            "student": list(trainer.network.parameters()),
            "discriminators": list(trainer.i2i.discriminator_parameters())}


def inject(trainer, part, monkeypatch):
    """A NaN gradient in one network's first weight, or (hint) a NaN hint loss."""
    if part == "hint":
        module = importlib.import_module("nnunet_cmedl.training.nnUNetTrainerCMEDL")
        real = module.hint_loss
        monkeypatch.setattr(module, "hint_loss", lambda *a, **k: real(*a, **k) * math.nan)
    else:
        params(trainer)[part][0].register_hook(lambda g: torch.full_like(g, math.nan))


@pytest.mark.parametrize("part", ["generators", "discriminators", "teacher", "student", "hint"])
def test_a_non_finite_value_in_one_part_skips_only_the_step_it_reaches(planned_dataset, monkeypatch, part):
    from nnunet_cmedl.training import nnUNetTrainerCMEDL_tinyCPU
    trainer = tiny(make_trainer(planned_dataset, nnUNetTrainerCMEDL_tinyCPU, SMALL_2D, monkeypatch), 1, 1, seed=0)
    trainer.on_train_start()
    before = {k: [p.detach().clone() for p in v] for k, v in params(trainer).items()}
    inject(trainer, part, monkeypatch)
    trainer.on_train_epoch_start()
    trainer.on_train_epoch_end([trainer.train_step(next(trainer.dataloader_train))])
    skipped = "student" if part == "hint" else part  # the hint trains the student only (the teacher is detached)
    for network, tensors in params(trainer).items():
        changed = any(not torch.equal(a, b) for a, b in zip(before[network], tensors))
        assert changed == (network != skipped), (part, network, changed)
        assert all(torch.isfinite(t).all() for t in tensors), (part, network)
        logged = trainer.logger.local_logger.my_fantastic_logging["cmedl_nonfinite_skips_" + network]
        assert logged == [int(network == skipped)], (network, logged)
    trainer._finish_mri_loader()


def test_too_many_non_finite_steps_in_a_row_stop_training_and_keep_the_last_good_checkpoint(planned_dataset,
                                                                                           monkeypatch):
    from nnunet_cmedl.training import nnUNetTrainerCMEDL_tinyCPU
    from nnunet_cmedl.training.nnUNetTrainerCMEDL import TrainingStopped
    trainer = tiny(make_trainer(planned_dataset, nnUNetTrainerCMEDL_tinyCPU, SMALL_2D, monkeypatch), 3, 2, seed=0)
    trainer.max_consecutive_nonfinite = 3
    trainer.initialize()
    initial = {k: v.clone() for k, v in trainer.network.state_dict().items()}
    final = Path(trainer.output_folder) / "checkpoint_final.pth"  # the folder is shared with other tests' runs
    final_before = final.stat().st_mtime_ns if final.exists() else None
    inject(trainer, "student", monkeypatch)
    with pytest.raises(TrainingStopped) as stopped:  # SystemExit: the stock CLI prints the message, no traceback
        trainer.run_training()
    message = str(stopped.value)
    assert "student" in message and "3 iterations in a row" in message and "checkpoint_latest.pth" in message
    assert isinstance(stopped.value, SystemExit)
    latest = Path(trainer.output_folder) / "checkpoint_latest.pth"
    ckpt = torch.load(latest, map_location="cpu", weights_only=False)  # epoch 0's, with 2 skipped steps
    assert ckpt["current_epoch"] == 1 and ckpt["logging"]["cmedl_nonfinite_skips_student"] == [2]
    assert all(torch.equal(initial[k], v) for k, v in ckpt["network_weights"].items())
    assert (final.stat().st_mtime_ns if final.exists() else None) == final_before  # no final checkpoint written
    assert message in Path(trainer.log_file).read_text()


# ---------------------------------------------------------------- outputs: one writer at a time, file-system faults
@pytest.fixture
def label_folders(tmp_path):
    import numpy as np
    import SimpleITK as sitk
    for folder in ("ref", "pred"):
        (tmp_path / folder).mkdir()
        for case in ("a", "b"):
            mask = np.zeros((6, 20, 20), np.uint8)
            mask[2:4, 5:10, 5:10 + (folder == "pred")] = 1
            sitk.WriteImage(sitk.GetImageFromArray(mask), str(tmp_path / folder / f"{case}.nii.gz"))
    return tmp_path


def evaluate(capsys, *args) -> tuple:
    from nnunet_cmedl.cli import main
    capsys.readouterr()
    code = main(["evaluate", "-q", *map(str, args)])
    return code, capsys.readouterr().err


def test_a_second_run_writing_the_same_output_fails_at_once(label_folders, capsys):
    from mri_unpaired.atomic import exclusive_output
    t = label_folders
    with exclusive_output(t / "out" / "m.json", "a first run"):
        code, err = evaluate(capsys, "-ref", t / "ref", "-pred", t / "pred", "-o", t / "out" / "m")
        assert code == 2 and err.count("\n") == 1 and "another run (a first run, process" in err, err
        assert not (t / "out" / "m.json").exists()
    code, err = evaluate(capsys, "-ref", t / "ref", "-pred", t / "pred", "-o", t / "out" / "m")  # released
    assert code == 0 and (t / "out" / "m.json").is_file(), err


def test_file_system_faults_are_one_line_and_leave_nothing(label_folders, capsys, monkeypatch):
    import errno
    t = label_folders
    (t / "a_file").write_text("mine")
    code, err = evaluate(capsys, "-ref", t / "ref", "-pred", t / "pred", "-o", t / "a_file" / "m")
    assert code == 1 and err.count("\n") == 1 and "a_file" in err and "Traceback" not in err, err
    assert (t / "a_file").read_text() == "mine"

    from nnunet_cmedl.evaluation import tables

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(tables.json, "dump", disk_full)
    (t / "out").mkdir()
    code, err = evaluate(capsys, "-ref", t / "ref", "-pred", t / "pred", "-o", t / "out" / "m")
    assert code == 1 and err.count("\n") == 1 and "No space left on device" in err, err
    assert [p.name for p in (t / "out").iterdir()] == ["m.csv"]  # written before the JSON; no temporary file left
