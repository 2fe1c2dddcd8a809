"""The accuracy benchmark's parts: seeds, exact mid-run resume, hint options, the hard tumours' CT signal, splits,
paired tests pooled over seeds, and the evaluation of a run's checkpoints on test data."""
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from torch import nn

from conftest import SMALL_2D
from test_trainer_cmedl import all_tensors, make_trainer


def tiny(trainer, epochs=2, iterations=2, seed=None):
    trainer.num_epochs, trainer.num_iterations_per_epoch, trainer.num_val_iterations_per_epoch = epochs, iterations, 1
    trainer.seed = seed
    return trainer


# ------------------------------------------------------------------------------------------------ seeds
def test_a_seeded_cmedl_run_repeats_exactly_and_another_seed_differs(planned_dataset, monkeypatch):
    from nnunet_cmedl.training import nnUNetTrainerCMEDL_tinyCPU
    runs = []
    for seed in (3, 3, 4):
        t = tiny(make_trainer(planned_dataset, nnUNetTrainerCMEDL_tinyCPU, SMALL_2D, monkeypatch), seed=seed)
        t.run_training()
        runs.append(all_tensors(t))
    same, other = runs[0], runs[2]
    assert all(torch.equal(same[k], runs[1][k]) for k in same)
    differs = [k for k in same if not torch.equal(same[k], other[k])]
    assert any(k.startswith("student.") for k in differs) and any(k.startswith("i2i.") for k in differs)


def test_generated_benchmark_trainers_seed_plain_nnunet_too(planned_dataset, monkeypatch):
    from nnunet_cmedl.training import benchmark_trainers
    cls = getattr(benchmark_trainers, benchmark_trainers.trainer_name("nnU-Net", "benchCPU", 1))
    assert cls.__name__ == "nnUNetTrainer_benchCPU_seed1"
    weights = []
    for _ in range(2):
        t = make_trainer(planned_dataset, cls, SMALL_2D, monkeypatch)
        assert (t.seed, t.num_epochs, t.num_iterations_per_epoch, t.curve_checkpoint_every) == (1, 40, 30, 10)
        t = tiny(t, epochs=1, seed=1)
        t.run_training()
        weights.append(t.network.state_dict())
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    cmedl = getattr(benchmark_trainers, "nnUNetTrainerCMEDL_noHint_benchCPU_seed2")
    t = make_trainer(planned_dataset, cmedl, SMALL_2D, monkeypatch)
    assert (t.seed, t.lambda_hint, t.generator_features, t.num_epochs) == (2, 0.0, 16, 40)
    # stop 35: one method keeps the trainer's own I2I sizes, which the budget otherwise halves
    full = make_trainer(planned_dataset, getattr(benchmark_trainers, "nnUNetTrainerCMEDL_noHintFullI2I_benchCPU_seed2"),
                        SMALL_2D, monkeypatch)
    assert (full.generator_features, full.generator_res_blocks, full.discriminator_features) == (32, 6, 64)
    assert (t.generator_res_blocks, t.discriminator_features) == (3, 32)
    assert (full.seed, full.lambda_hint, full.num_epochs, full.save_snapshot_every) == (2, 0.0, 40, 10)


def test_with_the_hint_off_the_cmedl_student_is_plain_nnunet_bit_for_bit(planned_dataset, monkeypatch):
    """The benchmark's trainers at one seed: everything CMEDL adds draws from its own random streams, so the student
    starts from plain nnU-Net's weights and sees its batches. Without the hint (noHint; teacherAhead while its gate is
    closed) it ends as plain nnU-Net's network, exactly; with the hint it does not. So a paired comparison at one
    seed measures what the hint does, and nothing else."""
    from nnunet_cmedl.training import benchmark_trainers

    def student_after_training(method, **attributes):
        cls = getattr(benchmark_trainers, benchmark_trainers.trainer_name(method, "benchCPU", 2))
        t = tiny(make_trainer(planned_dataset, cls, SMALL_2D, monkeypatch), epochs=2, iterations=3, seed=2)
        for name, value in attributes.items():
            setattr(t, name, value)
        t.initialize()
        initial = {k: v.clone() for k, v in t.network.state_dict().items()}
        t.run_training()
        return initial, t.network.state_dict(), t.logger.get_checkpoint()

    plain_initial, plain, plain_log = student_after_training("nnU-Net")
    assert any(not torch.equal(plain_initial[k], plain[k]) for k in plain)  # it trained
    for method in ("CMEDL_noHint", "CMEDL_teacherAhead"):
        initial, student, log = student_after_training(method)
        assert all(torch.equal(plain_initial[k], initial[k]) for k in plain), method
        assert not [k for k in plain if not torch.equal(plain[k], student[k])], method
        np.testing.assert_array_equal(plain_log["train_losses"], log["train_losses"])
        assert np.all(np.asarray(log["cmedl_hint"]) > 0)  # computed, weighted 0 (teacherAhead: gate closed)
    _, hinted, _ = student_after_training("CMEDL")
    assert [k for k in plain if not torch.equal(plain[k], hinted[k])]
    # the control: plain nnU-Net reseeded at an epoch follows the seed's run until then, and parts from it there
    _, unreached, _ = student_after_training("nnU-Net_reseed20")  # 2 epochs: epoch 20 never comes
    assert not [k for k in plain if not torch.equal(plain[k], unreached[k])]
    _, reseeded, log = student_after_training("nnU-Net_reseed20", reseed_at_epoch=1)
    assert log["train_losses"][0] == plain_log["train_losses"][0]
    assert log["train_losses"][1] != plain_log["train_losses"][1]
    assert [k for k in plain if not torch.equal(plain[k], reseeded[k])]


@pytest.mark.parametrize("trainer_name", ["nnUNetTrainerCMEDL_tinyCPU", "nnUNetTrainer_benchCPU_seed1"])
def test_resume_mid_run_continues_exactly_like_the_uninterrupted_run(planned_dataset, monkeypatch, tmp_path,
                                                                     trainer_name):
    """3 epochs straight vs 1 epoch, a new process-like trainer loading checkpoint_latest.pth, then 2 more: CMEDL, and
    plain nnU-Net as the benchmark seeds it (a resumed benchmark run must be the uninterrupted one: benchmark-merge
    compares seeds across sessions)."""
    from nnunet_cmedl import training
    from nnunet_cmedl.training import benchmark_trainers
    cls = getattr(training, trainer_name, None) or getattr(benchmark_trainers, trainer_name)

    def trainer():
        t = tiny(make_trainer(planned_dataset, cls, SMALL_2D, monkeypatch), 3, seed=5)
        t.save_every, t.curve_checkpoint_every = 1, 0
        return t
    straight = trainer()
    straight.run_training()
    expected = all_tensors(straight)

    first = trainer()
    start_epoch = first.on_train_epoch_start

    def killed_after_epoch_0():  # like a kill: epoch 0 wrote checkpoint_latest (save_every = 1), nothing after
        if first.current_epoch == 1:
            raise KeyboardInterrupt
        start_epoch()
    first.on_train_epoch_start = killed_after_epoch_0
    with pytest.raises(KeyboardInterrupt):
        first.run_training()
    latest = tmp_path / "checkpoint_latest.pth"
    latest.write_bytes((Path(first.output_folder) / "checkpoint_latest.pth").read_bytes())
    torch.manual_seed(123), np.random.seed(123)  # whatever happened in between
    resumed = trainer()
    resumed.load_checkpoint(str(latest))
    assert resumed.current_epoch == 1
    resumed.run_training()
    got = all_tensors(resumed)
    assert got.keys() == expected.keys()
    mismatched = [k for k in expected if not torch.equal(expected[k], got[k])]
    assert not mismatched, mismatched[:5]
    log_a, log_b = (t.logger.get_checkpoint() for t in (straight, resumed))
    np.testing.assert_array_equal(log_a["train_losses"], log_b["train_losses"])
    if "cmedl_hint" in log_a:
        np.testing.assert_array_equal(log_a["cmedl_hint"], log_b["cmedl_hint"])


def test_channel_normalised_hint_ignores_scale_and_offset_but_not_pattern():
    from nnunet_cmedl.distillation.hint import hint_loss
    torch.manual_seed(0)
    teacher = [torch.randn(2, 4, 8, 8), torch.randn(2, 3, 16, 16)]
    scaled = [10 * t + 3 for t in teacher]
    assert hint_loss(scaled, teacher, normalisation="none") > 1
    assert hint_loss(scaled, teacher, normalisation="channel") < 1e-4
    assert hint_loss([torch.randn_like(t) for t in teacher], teacher, normalisation="channel") > 1
    with pytest.raises(ValueError, match="normalisation"):
        hint_loss(teacher, teacher, normalisation="layer")


def test_masked_hint_counts_only_the_voxels_the_teacher_segments_correctly():
    from nnunet_cmedl.distillation.hint import hint_loss, teacher_correct_mask
    torch.manual_seed(0)
    target = torch.zeros(2, 1, 16, 16)
    target[:, :, 4:8, 4:8] = 1                                   # a tumour
    logits = torch.zeros(2, 2, 16, 16)
    logits[:, 0] = 5                                             # the teacher sees background everywhere
    mask = teacher_correct_mask([logits, logits[:, :, ::2, ::2]], [target, target[:, :, ::2, ::2]])
    assert mask.shape == (2, 1, 16, 16)
    assert mask[:, :, 4:8, 4:8].sum() == 0 and mask.sum() == 2 * (256 - 16)  # wrong on the tumour only
    teacher = [torch.randn(2, 4, 8, 8), torch.randn(2, 3, 16, 16)]  # a half- and a full-resolution stage
    student = [t + torch.randn_like(t) for t in teacher]
    # every voxel correct: the plain mean squared difference
    torch.testing.assert_close(hint_loss(student, teacher, mask=torch.ones_like(mask)), hint_loss(student, teacher))
    # where the teacher is wrong, the student's features neither count nor get a gradient
    moved = [s.clone() for s in student]
    moved[0][:, :, 2:4, 2:4] += 100
    moved[1][:, :, 4:8, 4:8] += 100
    torch.testing.assert_close(hint_loss(moved, teacher, mask=mask), hint_loss(student, teacher, mask=mask))
    assert hint_loss(moved, teacher) > 100 * hint_loss(student, teacher)  # unmasked, they count
    leaf = [s.clone().requires_grad_() for s in student]
    hint_loss(leaf, teacher, mask=mask).backward()
    assert leaf[1].grad[:, :, 4:8, 4:8].abs().sum() == 0 and leaf[1].grad.abs().sum() > 0
    assert leaf[0].grad[:, :, 2:4, 2:4].abs().sum() == 0 and leaf[0].grad.abs().sum() > 0
    # nnU-Net regions (sigmoid per region): correct where every region agrees
    regions = torch.cat([target, torch.zeros_like(target)], 1)
    region_logits = torch.full((2, 2, 16, 16), -5.0)
    region_logits[:, 0, 4:6] = 5                                 # region 0 right on rows 4-5, wrong on 6-7
    m = teacher_correct_mask(region_logits, regions, has_regions=True)
    assert m[:, :, 4:6, 4:8].all() and not m[:, :, 6:8, 4:8].any() and not m[:, :, 4:6, :4].any()
    # 'teacher_correct_foreground': only the tumour voxels the teacher finds (not the background it gets right, nor
    # the tumour it misses, nor the ignore label)
    logits[:, 1, 4:6, 4:8] = 10                                  # the teacher finds rows 4-5 of the tumour
    target[:, :, 0, :] = 2                                       # row 0: nnU-Net's ignore label (2 here)
    logits[:, 1, 0, :] = 10
    found = teacher_correct_mask(logits, target, foreground_only=True)
    assert found[:, :, 4:6, 4:8].all() and found.sum() == 2 * 8
    r = teacher_correct_mask(region_logits, regions, has_regions=True, foreground_only=True)
    assert r[:, :, 4:6, 4:8].all() and r.sum() == 2 * 8


def test_output_hint_is_the_teachers_kl_divergence_where_the_mask_allows():
    """hint_target 'outputs': Hinton's knowledge distillation on the highest-resolution output, masked."""
    from nnunet_cmedl.distillation.hint import output_hint_loss
    torch.manual_seed(0)
    teacher = torch.randn(2, 3, 8, 8)
    student = torch.randn(2, 3, 8, 8, requires_grad=True)
    T = 2.0
    expected = nn.functional.kl_div(torch.log_softmax(student / T, 1), torch.softmax(teacher / T, 1),
                                    reduction="none").sum(1).mean() * T ** 2
    torch.testing.assert_close(output_hint_loss([student, student[:, :, ::2, ::2]], [teacher], T), expected)
    assert output_hint_loss(teacher, teacher, T) < 1e-6  # the student that says what the teacher says
    mask = torch.zeros(2, 1, 8, 8)
    mask[:, :, :4] = 1
    loss = output_hint_loss(student, teacher, T, mask=mask)
    loss.backward()
    assert student.grad[:, :, 4:].abs().sum() == 0 and student.grad[:, :, :4].abs().sum() > 0  # only where allowed
    moved = student.detach().clone()
    moved[:, :, 4:] += 100                                        # outside the mask: no effect
    torch.testing.assert_close(output_hint_loss(moved, teacher, T, mask=mask), loss.detach())
    # regions: a binary KL per region, zero where the student agrees
    assert output_hint_loss(teacher, teacher, T, has_regions=True) < 1e-6
    assert output_hint_loss(student.detach(), teacher, T, has_regions=True) > 0.01


def test_hint_warm_up_ramps_and_the_gate_waits_for_the_teacher(planned_dataset, monkeypatch):
    from nnunet_cmedl.training import nnUNetTrainerCMEDL_hintWarmup, nnUNetTrainerCMEDL_teacherAhead
    t = make_trainer(planned_dataset, nnUNetTrainerCMEDL_hintWarmup, SMALL_2D, monkeypatch)
    t.num_epochs = 30
    assert [t.hint_weight(e) for e in (0, 5, 10, 20)] == [0.0, 0.5, 1.0, 1.0]
    g = make_trainer(planned_dataset, nnUNetTrainerCMEDL_teacherAhead, SMALL_2D, monkeypatch)
    g.initialize()
    logs = g.logger.get_checkpoint()
    assert g.hint_weight(0) == 0.0  # no validation yet
    logs["dice_per_class_or_region"] = [[0.4]]
    logs["cmedl_teacher_pseudo_dice_pmri"] = [0.3]
    assert g.hint_weight(1) == 0.0
    logs["dice_per_class_or_region"].append([0.4])
    logs["cmedl_teacher_pseudo_dice_pmri"].append(0.5)
    assert g.hint_weight(2) == 1.0
    # 'teacher_ahead_after_onset' (_warmAfterOnset): also waits until the student has begun to segment
    g.hint_gate = "teacher_ahead_after_onset"
    logs["dice_per_class_or_region"] = [[0.0], [0.0]]
    logs["cmedl_teacher_pseudo_dice_pmri"] = [0.6, 0.6]
    assert g.hint_weight(2) == 0.0                         # the teacher is ahead, the student has not started
    logs["dice_per_class_or_region"].append([0.3])
    logs["cmedl_teacher_pseudo_dice_pmri"].append(0.6)
    assert g.hint_weight(3) == 1.0
    logs["dice_per_class_or_region"].append([0.0])          # started once: the onset stays
    logs["cmedl_teacher_pseudo_dice_pmri"].append(0.6)
    assert g.hint_weight(4) == 1.0
    logs["cmedl_teacher_pseudo_dice_pmri"].append(0.0)      # the teacher behind: off, as teacher_ahead
    logs["dice_per_class_or_region"].append([0.3])
    assert g.hint_weight(5) == 0.0
    g.hint_gate = "sometimes"
    with pytest.raises(ValueError, match="hint_gate"):
        g.hint_weight(5)


def test_hint_gate_rule_is_one_function_for_the_trainer_and_the_validation_script():
    from nnunet_cmedl.distillation.hint import hint_gate_open
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    from validation_blocks import teacher_ahead_epochs
    nan = float("nan")
    assert not hint_gate_open("teacher_ahead", [nan], [0.2], 0.05)           # a teacher without a value is not ahead
    assert not hint_gate_open("teacher_ahead", [0.5], [nan], 0.05)
    assert hint_gate_open("always", [], [], 0.05)
    teacher, student = [0.3, 0.6, 0.6, 0.6, 0.1, 0.7], [0.0, 0.0, 0.3, 0.0, 0.3, 0.3]
    # epoch e is gated by the validations of epochs < e: the teacher ahead at 0-3, behind at 4; the student's onset at 2
    assert [e for e in range(1, 6) if hint_gate_open("teacher_ahead", teacher[:e], student[:e], 0.05)] == [1, 2, 3, 4]
    assert teacher_ahead_epochs(teacher, student) == [3, 4]


# ------------------------------------------------------------------------------------------------ data
def test_enhancing_atelectasis_gives_hard_tumours_a_subtle_lung_side_edge_only():
    from nnunet_cmedl.synthetic import phantom
    grid = phantom.Grid((32, 96, 128), (5.0, 3.0, 3.0))
    for index in range(3):
        signal, none = (phantom.make_ct_volume(0, index, grid, s) for s in ("enhancing-atelectasis", "none"))
        assert np.array_equal(signal.maps.tissue, none.maps.tissue)  # same patient, same anatomy
        for t, m_signal, m_none in zip(signal.anatomy.tumours, phantom.measure_tumours(signal),
                                       phantom.measure_tumours(none)):
            if t.location != "mediastinal":
                continue
            assert 10 <= t.atelectasis_enhancement_hu <= 25
            # measured on the noisy image: the tumour is darker than its collapsed lung by about the enhancement,
            # and as close to the mediastinum as without the signal
            assert m_signal["contrast_vs_atelectasis"] < -6
            assert abs(m_none["contrast_vs_atelectasis"]) < 8
            assert m_signal["contrast_vs_mediastinum"] == pytest.approx(m_none["contrast_vs_mediastinum"], abs=1.0)
    with pytest.raises(Exception, match="hard tumour CT signal"):
        phantom.make_ct_volume(0, 0, grid, "bright")


# ------------------------------------------------------------------------------------------------ benchmark parts
def test_benchmark_splits_give_the_reference_four_times_the_labels_and_never_overwrite(tmp_path):
    from nnunet_cmedl.benchmark import benchmark_splits, write_splits
    from nnunet_cmedl.errors import UserInputError
    cases = [f"c{i:02d}" for i in range(14)]
    splits = benchmark_splits(cases, n_labelled=3, n_val=2, reference_factor=4)
    assert splits[0]["train"] == cases[:3] and splits[1]["train"] == cases[:12]
    assert splits[0]["val"] == splits[1]["val"] == cases[-2:]
    assert not set(splits[1]["train"]) & set(splits[1]["val"])
    path = write_splits(tmp_path, splits)
    assert json.loads(path.read_text()) == splits
    write_splits(tmp_path, splits)  # the same splits: fine
    with pytest.raises(UserInputError, match="other splits"):
        write_splits(tmp_path, benchmark_splits(cases, 2, 2, 4))
    assert json.loads(path.read_text()) == splits
    with pytest.raises(UserInputError, match="needs 14"):
        benchmark_splits(cases[:13], 3, 2, 4)


def test_paired_tests_pool_over_seeds_both_ways():
    from nnunet_cmedl.evaluation.benchmark_report import paired_tests
    rng = np.random.default_rng(0)
    units = [("case", i) for i in range(12)]
    base = {s: {u: float(rng.uniform(0.2, 0.6)) for u in units} for s in range(3)}
    better = {s: {u: v + 0.1 + 0.01 * s for u, v in base[s].items()} for s in range(3)}
    t = paired_tests(base, better)
    assert t["seed_averaged"]["n"] == 12 and t["pooled"]["n"] == 36
    assert t["seed_averaged"]["mean_difference"] == pytest.approx(0.11)
    assert t["seed_averaged"]["p_value"] < 0.001 and t["pooled"]["p_value"] < 1e-6
    same = paired_tests(base, base)
    assert same["pooled"]["mean_difference"] == 0 and "zero" in same["pooled"]["note"]
    # a run effect (each seed's run shifted by 0, 0.2, 0.4) larger than the method's +0.05: the tests over tumours
    # call it certain, the test over runs does not (3 runs a side)
    shifted = {s: {u: float(rng.uniform(0.2, 0.3)) + 0.2 * s for u in units} for s in range(3)}
    plus = {s: {u: v + 0.05 for u, v in shifted[s].items()} for s in range(3)}
    t = paired_tests(shifted, plus)
    assert t["seed_averaged"]["p_value"] < 0.001 and t["pooled"]["p_value"] < 1e-6
    assert t["runs"]["mean_difference"] == pytest.approx(0.05) and t["runs"]["p_value"] > 0.5
    assert (t["runs"]["n_a"], t["runs"]["n_b"]) == (3, 3)
    # paired by seed, the run effect cancels: every seed +0.05, no spread to test against
    assert t["runs_paired"]["n"] == 3 and t["runs_paired"]["mean_difference"] == pytest.approx(0.05)
    assert "same amount" in t["runs_paired"]["note"]
    # matched runs, one seed's pair missing on one side: only the seeds both have are paired
    noisy = {s: {u: v + 0.05 + 0.01 * (-1) ** s * s for u, v in shifted[s].items()} for s in range(3)}
    t = paired_tests(shifted, {s: noisy[s] for s in (0, 1)} | {5: noisy[2]})
    assert t["runs_paired"]["n"] == 2 and t["runs"]["n_a"] == 3
    t = paired_tests(shifted, noisy)
    assert t["runs_paired"]["n_better"] == 3 and t["runs_paired"]["p_value"] < 0.05 < t["runs"]["p_value"]


def test_benchmark_evaluates_every_checkpoint_of_a_run_on_the_test_set(planned_dataset, monkeypatch, tmp_path):
    """A seeded run with light checkpoints, then the benchmark's evaluation: predictions from each checkpoint,
    per-case and per-tumour metrics (hard/easy from the phantom metadata), curves, figures, tables."""
    from nnunet_cmedl import pipeline
    from nnunet_cmedl.evaluation import benchmark_report
    from nnunet_cmedl.training import benchmark_trainers
    cls = getattr(benchmark_trainers, "nnUNetTrainerCMEDL_benchCPU_seed0")
    t = tiny(make_trainer(planned_dataset, cls, SMALL_2D, monkeypatch), epochs=3, iterations=2, seed=0)
    t.curve_checkpoint_every, t.generator_features, t.generator_res_blocks, t.discriminator_features = 1, 4, 1, 4
    t.run_training()
    folder = Path(t.output_folder)
    assert sorted(p.name for p in folder.glob("checkpoint_epoch_*.pth")) == \
        [f"checkpoint_epoch_{e:04d}.pth" for e in (1, 2, 3)]
    light = torch.load(folder / "checkpoint_epoch_0002.pth", map_location="cpu", weights_only=False)
    assert light["trainer_name"] == cls.__name__ and "optimizer_state" not in light

    class FakeRun:
        name, seed, fold, trainer = "CMEDL", 0, 0, cls.__name__
    run = FakeRun()
    run.folder = folder
    assert [e for e, _ in benchmark_report.checkpoints(run, tmp_path)] == [1, 2, 3]
    # a teacher that says "tumour" everywhere, so that its scores cannot be mistaken for the student's
    final = torch.load(folder / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    for k, v in final["cmedl_teacher_weights"].items():
        if k.startswith("decoder.seg_layers."):
            final["cmedl_teacher_weights"][k] = torch.zeros_like(v) if k.endswith("weight") else torch.tensor([-9., 9.])
    torch.save(final, folder / "checkpoint_final.pth")
    monkeypatch.delenv("nnUNet_extTrainer", raising=False)  # the evaluation finds our trainers by itself
    data = pipeline.PreparedDataset(planned_dataset["dataset_id"], planned_dataset["dataset_name"],
                                    Path(planned_dataset["raw_folder"]), SMALL_2D)
    summary = benchmark_report.evaluate([run], data, tmp_path, "cpu", baseline="CMEDL", budget_name="test",
                                        train_seconds={}, command="test")
    n_cases = len(list((data.raw_folder / "labelsTs").glob("*.nii.gz")))
    assert summary["n_test_cases"] == n_cases
    metadata = json.loads((data.raw_folder / "phantom_metadata.json").read_text())
    hard = sum(r["difficulty"] == "hard" for c in metadata["labelled_cases"].values() if c["split"] == "test"
               for r in c["tumours"] if r["voxels"])
    assert summary["n_tumours"]["hard"] == hard
    curves = summary["curves"]["CMEDL"]["all"]
    assert curves["epochs"] == [1, 2, 3] and len(curves["dsc"]) == 3
    for name in ("learning_curves_iterations", "learning_curves_minutes", "teacher_vs_student"):
        assert Path(summary["figures"][name]).stat().st_size > 5000
    for e in (1, 2, 3):  # every checkpoint predicted every test case
        ck = "checkpoint_final" if e == 3 else f"checkpoint_epoch_{e:04d}"
        assert len(list((tmp_path / "predictions" / f"{cls.__name__}_fold0" / ck).glob("*.nii.gz"))) == n_cases
    # the teacher on the pMRI of its own generator, final checkpoint, every test case, scored per tumour
    teacher_segs = sorted((tmp_path / "predictions" / f"{cls.__name__}_fold0" / "teacher_on_pmri_final").glob("*.nii.gz"))
    assert len(teacher_segs) == n_cases and all(sitk.GetArrayFromImage(sitk.ReadImage(str(f))).min() == 1
                                                  for f in teacher_segs[:2])
    premise = summary["teacher_on_pmri"]["CMEDL"]
    assert premise["seeds"] == [0]
    assert 0 < premise["hard"]["teacher"][0] < 0.9  # everything "tumour": the 10 mm around each tumour too
    assert premise["hard"]["teacher"][0] != premise["hard"]["student"][0]
    assert premise["hard"]["student"] == summary["tumours"]["hard"]["dsc"]["CMEDL"]["per_seed"]
    # how well the pMRI the teacher segmented, and the CT, set the tumours apart (tumour-contrast's AUC)
    for difficulty in ("hard", "easy"):
        assert 0.5 <= premise[difficulty]["pMRI tumour AUC"][0] <= 1.0
        assert premise[difficulty]["pMRI tumour AUC"][0] != premise[difficulty]["CT tumour AUC"][0]
    assert premise["easy"]["CT tumour AUC"][0] > premise["hard"]["CT tumour AUC"][0]  # lung vs mediastinum
    benchmark_report.write_summary(summary, tmp_path)
    assert "hard (n=" in (tmp_path / "benchmark_summary.md").read_text()
    assert "teacher on pMRI" in (tmp_path / "benchmark_summary.md").read_text()
    assert "tumour AUC in pMRI (CT)" in (tmp_path / "benchmark_summary.md").read_text()
    # another run whose student has the same weights (CMEDL_noHint vs plain nnU-Net at one seed, on the CPU): its
    # predictions are copied, not predicted again; a single changed weight is predicted
    predicted = tmp_path / "predictions" / f"{cls.__name__}_fold0" / "checkpoint_final"
    import shutil
    twin = FakeRun()
    twin.trainer = "nnUNetTrainerCMEDL_noHint_benchCPU_seed0"
    twin.folder = tmp_path / "twin" / folder.parent.name.replace(cls.__name__, twin.trainer) / "fold_0"
    shutil.copytree(folder.parent, twin.folder.parent)

    class NoPredictor:
        def __init__(self, *args, **kwargs):
            raise AssertionError("predicted again")
    import nnunetv2.inference.predict_from_raw_data as nnunet_predict
    monkeypatch.setattr(nnunet_predict, "nnUNetPredictor", NoPredictor)
    twin_out = tmp_path / "predictions" / f"{twin.trainer}_fold0" / "checkpoint_final"
    benchmark_report.predict_checkpoint(twin, "checkpoint_final.pth", data.raw_folder / "imagesTs", twin_out, "cpu")
    cases = sorted(p.name for p in predicted.glob("*.nii.gz"))
    assert sorted(p.name for p in twin_out.glob("*.nii.gz")) == cases and len(cases) == n_cases
    assert all((twin_out / c).read_bytes() == (predicted / c).read_bytes() for c in cases)
    assert "copied from" in (twin_out / benchmark_report.COMPLETE).read_text()
    changed = torch.load(twin.folder / "checkpoint_epoch_0002.pth", map_location="cpu", weights_only=False)
    key = next(k for k in changed["network_weights"] if k.endswith("weight"))
    changed["network_weights"][key].view(-1)[0] += 1e-3
    torch.save(changed, twin.folder / "checkpoint_epoch_0002.pth")
    with pytest.raises(AssertionError, match="predicted again"):
        benchmark_report.predict_checkpoint(twin, "checkpoint_epoch_0002.pth", data.raw_folder / "imagesTs",
                                            twin_out.parent / "checkpoint_epoch_0002", "cpu")
    # a run predicted elsewhere (scripts/gpu_benchmark.py brings back predictions, not curve checkpoints): its
    # complete prediction folders stand for the checkpoints; an incomplete one does not
    (folder / "checkpoint_epoch_0002.pth").unlink()
    (folder / "checkpoint_epoch_0001.pth").unlink()
    (tmp_path / "predictions" / f"{cls.__name__}_fold0" / "checkpoint_epoch_0001" / benchmark_report.COMPLETE).unlink()
    assert [e for e, _ in benchmark_report.checkpoints(run, tmp_path)] == [2, 3]


def test_the_teacher_is_scored_for_cmedl_runs_only(tmp_path):
    """pMRI-only / CT+pMRI keep a 'teacher' (their segmenter) in the checkpoint, but it is the deployed network, which
    the benchmark scores already; plain nnU-Net has none. Neither gets a teacher-on-pMRI prediction."""
    from nnunet_cmedl.evaluation.benchmark_report import predict_teacher_on_pmri

    class FakeRun:
        fold, folder = 0, tmp_path / "results" / "run"
    FakeRun.folder.mkdir(parents=True)
    for name in ("plans.json", "dataset.json"):  # as in every nnU-Net results folder
        (FakeRun.folder.parent / name).write_text("{}")
    for trainer, cmedl_keys in (("nnUNetTrainerPseudoMRI_benchCPU_seed0", True),
                                ("nnUNetTrainerCTPseudoMRI_benchCPU_seed0", True), ("nnUNetTrainer_benchCPU_seed0", False)):
        FakeRun.trainer = trainer
        torch.save({"trainer_name": trainer, "network_weights": {},
                    **({"cmedl_teacher_weights": {}} if cmedl_keys else {})}, FakeRun.folder / "checkpoint_final.pth")
        assert predict_teacher_on_pmri(FakeRun, tmp_path / "images", tmp_path, "cpu") is None


def test_cached_scores_are_reused_only_for_the_predictions_they_were_computed_from(tmp_path, monkeypatch):
    """Stop 22: a GPU bundle unpacked over a run's older predictions kept the old benchmark_metrics.json, and the
    summary reported the old run's scores. A cache now holds only for the very files it scored."""
    from nnunet_cmedl.evaluation import benchmark_report as br
    folder = tmp_path / "checkpoint_final"
    folder.mkdir()
    (folder / "case_000.nii.gz").write_bytes(b"first prediction")
    scored = []

    def fake_evaluate_folders(reference, pred, **kwargs):  # the real scorers need images; the caching is tested
        content = (pred / "case_000.nii.gz").read_bytes()
        scored.append(content)
        return {"per_case": [{"case": "case_000", "label": 1, "dsc": len(content) / 100, "sdsc": 0.0, "hd95": 1.0}]}

    monkeypatch.setattr(br, "evaluate_folders", fake_evaluate_folders)
    monkeypatch.setattr(br.per_tumour, "tumour_rows", lambda labels, folders, metadata: [])
    first = br.evaluate_prediction(tmp_path, folder, {}, "run")
    assert br.evaluate_prediction(tmp_path, folder, {}, "run")["cases"] == first["cases"] and len(scored) == 1
    (folder / "case_000.nii.gz").write_bytes(b"a replaced, longer prediction")  # same name, other content
    second = br.evaluate_prediction(tmp_path, folder, {}, "run")
    assert len(scored) == 2 and second["cases"][0]["dsc"] == len(b"a replaced, longer prediction") / 100
    assert second["cases"][0]["dsc"] != first["cases"][0]["dsc"]
    # a cache from before the fingerprint (no predictions_sha1) is scored again too
    cache = folder / br.METRICS_CACHE
    cache.write_text(json.dumps({"cases": first["cases"], "tumours": []}))
    assert br.evaluate_prediction(tmp_path, folder, {}, "run")["cases"] == second["cases"] and len(scored) == 3


def test_predictions_of_an_earlier_training_of_the_run_are_predicted_again(tmp_path, monkeypatch):
    """Stop 33: a run trained again under the same trainer name (its folder moved away, the benchmark run again) was
    scored with the test predictions of the earlier training. Complete predictions count only for the checkpoint
    whose student they were made from."""
    from types import SimpleNamespace
    from nnunet_cmedl.evaluation import benchmark_report as br
    fold = tmp_path / "results" / "nnUNetTrainer_x__nnUNetPlans__2d" / "fold_0"
    fold.mkdir(parents=True)
    for name in ("plans.json", "dataset.json"):
        (fold.parent / name).write_text("{}")
    run = SimpleNamespace(folder=fold, trainer="nnUNetTrainer_x", fold=0)
    made = []

    class Predictor:  # nnU-Net's predictor needs a real model; what is tested is when it is called
        def __init__(self, **kwargs):
            pass

        def initialize_from_trained_model_folder(self, *args, **kwargs):
            pass

        def predict_from_files_sequential(self, images, output, **kwargs):
            made.append(output)
            (Path(output) / "case_000.nii.gz").write_text(f"prediction {len(made)}")
    monkeypatch.setattr("nnunetv2.inference.predict_from_raw_data.nnUNetPredictor", Predictor)
    out = tmp_path / "predictions" / "nnUNetTrainer_x_fold0" / "checkpoint_final"
    for weights, predictions in ((1.0, 1), (1.0, 1), (2.0, 2)):  # trained, evaluated again, trained again
        torch.save({"network_weights": {"w": torch.full((2,), weights)}}, fold / "checkpoint_final.pth")
        assert br.predict_checkpoint(run, "checkpoint_final.pth", tmp_path, out, "cpu") == out
        assert len(made) == predictions and (out / "case_000.nii.gz").read_text() == f"prediction {predictions}"
    assert (out / br.STUDENT_SHA1).read_text().strip() == br.student_fingerprint(run, "checkpoint_final.pth")
    # predictions made elsewhere (no checkpoint here, e.g. a GPU bundle) count as they are
    (fold / "checkpoint_final.pth").unlink()
    (out / br.STUDENT_SHA1).unlink()
    assert br.predict_checkpoint(run, "checkpoint_final.pth", tmp_path, out, "cpu") == out and len(made) == 2


def test_per_seed_table_gives_each_method_its_difference_to_the_baseline_at_the_same_seed():
    from nnunet_cmedl.evaluation.benchmark_report import per_seed_differences
    dsc = {"nnU-Net": {"seeds": [3, 4, 5], "per_seed": [0.2, 0.4, 0.3]},
           "CMEDL": {"seeds": [4, 3], "per_seed": [0.5, 0.1]}}  # seed 5 missing, another order
    summary = {"baseline": "nnU-Net", "tumours": {d: {"dsc": dsc} for d in ("hard", "easy", "all")}}
    seeds, rows = per_seed_differences(summary)
    assert seeds == [3, 4, 5] and len(rows) == 6
    _, name, cells = rows[1]
    assert name == "Δ CMEDL"
    assert np.allclose(cells[:2], [-0.1, 0.1]) and np.isnan(cells[2]) and np.isclose(cells[3], 0.0)
    assert np.allclose(rows[0][2], [0.2, 0.4, 0.3, 0.3])


def test_benchmark_and_demo_reuse_only_a_finished_run_of_the_same_trainer_configuration_and_budget(tmp_path):
    from nnunet_cmedl import benchmark, pipeline
    from nnunet_cmedl.errors import UserInputError

    class Data:
        dataset_name, configuration = "Dataset502_X", "2d_bench"

    class Steps:
        env = {"nnUNet_results": str(tmp_path / "results"), "nnUNet_preprocessed": str(tmp_path / "pre")}
    arch = {"network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
            "arch_kwargs": {"n_stages": 3}, "_kw_requires_import": []}
    plans = {"configurations": {"2d": {"patch_size": [96, 128], "batch_size": 8, "architecture": arch},
                                "2d_bench": {"inherits_from": "2d", "patch_size": [64, 64]}}}
    plans_file = pipeline.plans_file(Steps, Data)
    plans_file.parent.mkdir(parents=True)
    plans_file.write_text(json.dumps(plans))
    run = benchmark.Run("CMEDL", 1, 0, "benchCPU", Data, Steps)
    assert run.trainer == "nnUNetTrainerCMEDL_benchCPU_seed1"
    assert run.folder == tmp_path / "results" / "Dataset502_X" / f"{run.trainer}__nnUNetPlans__2d_bench" / "fold_0"
    assert not benchmark.finished(run, Data, Steps)
    run.folder.mkdir(parents=True)
    final = run.folder / "checkpoint_final.pth"

    def save(trainer=run.trainer, epochs=40, trained_plans=plans):
        torch.save({"trainer_name": trainer, "current_epoch": epochs,
                    "init_args": {"fold": 0, "configuration": "2d_bench", "plans": trained_plans}}, final)
    save()
    assert benchmark.finished(run, Data, Steps)
    # another configuration added to the plans later changes nothing for this one
    plans_file.write_text(json.dumps({"configurations": {**plans["configurations"], "2d_demo": {"inherits_from": "2d"}}}))
    assert benchmark.finished(run, Data, Steps)
    save(epochs=30)
    with pytest.raises(UserInputError, match="trained 30 epochs, the trainer's budget is 40"):
        benchmark.finished(run, Data, Steps)
    save(trainer="nnUNetTrainerCMEDL_benchCPU_seed2")
    with pytest.raises(UserInputError, match="not by nnUNetTrainerCMEDL_benchCPU_seed1"):
        benchmark.finished(run, Data, Steps)
    other = json.loads(json.dumps(plans))
    other["configurations"]["2d"]["batch_size"] = 4  # the parent the run's configuration inherits from
    save(trained_plans=other)
    with pytest.raises(UserInputError, match="batch_size differ"):
        benchmark.finished(run, Data, Steps)
    # the demo's trainers: the budget is what the run itself recorded at its start (debug.json)
    save()
    with pytest.raises(UserInputError, match="debug.json"):
        pipeline.finished_run(run.folder, run.trainer, 0, plans_file)
    (run.folder / "debug.json").write_text(json.dumps({"num_epochs": "40"}))
    assert pipeline.finished_run(run.folder, run.trainer, 0, plans_file)
    reference = benchmark.Run(benchmark.REFERENCE, 0, 1, "benchCPU", Data, Steps)
    assert (reference.name, reference.trainer, reference.folder.name) == \
        ("nnU-Net_4xLabels", "nnUNetTrainer_benchCPU_seed0", "fold_1")
    # a warm-started method trains after its pre-training run (CMEDL_noHint, seed 0), which trains once
    runs = benchmark.plan_runs(["nnU-Net", "CMEDL_teacherAheadWarm"], [3, 0], [], "benchCPU", Data, Steps)
    assert [r.trainer for r in benchmark.with_warm_starts(runs, Data, Steps)] == [
        "nnUNetTrainer_benchCPU_seed3", "nnUNetTrainerCMEDL_noHint_benchCPU_seed0",
        "nnUNetTrainerCMEDL_teacherAheadWarm_benchCPU_seed3", "nnUNetTrainer_benchCPU_seed0",
        "nnUNetTrainerCMEDL_teacherAheadWarm_benchCPU_seed0"]
    # one whose pre-training ran at another budget (3x longer): that run first, at its own budget
    runs = benchmark.plan_runs(["CMEDL_longWarmAfterOnset"], [4, 5], [], "benchCPU", Data, Steps)
    ordered = benchmark.with_warm_starts(runs, Data, Steps)
    assert [(r.trainer, r.budget) for r in ordered] == [
        ("nnUNetTrainerCMEDL_noHint_benchLong_seed3", "benchLong"),
        ("nnUNetTrainerCMEDL_longWarmAfterOnset_benchCPU_seed4", "benchCPU"),
        ("nnUNetTrainerCMEDL_longWarmAfterOnset_benchCPU_seed5", "benchCPU")]
    # one that starts from plain nnU-Net on the reference fold (4x the labels) at another budget: that run, fold 1
    runs = benchmark.plan_runs(["CMEDL_ctTeacherAfterOnset"], [2], [], "benchCPU", Data, Steps)
    assert [(r.trainer, r.fold, r.name) for r in benchmark.with_warm_starts(runs, Data, Steps)] == [
        ("nnUNetTrainer_benchLong_seed0", 1, "nnU-Net_4xLabels"),
        ("nnUNetTrainerCMEDL_ctTeacherAfterOnset_benchCPU_seed2", 0, "CMEDL_ctTeacherAfterOnset")]
    # the two-step trainer's control: its teacher plain nnU-Net seed 0 on the student's fold at the same budget, the
    # CT network of CMEDL_warmTumourAfterOnset's pre-training (CMEDL_noHint seed 0), trained before the control
    runs = benchmark.plan_runs(["CMEDL_warmTumourAfterOnset", "CMEDL_ctTeacherSameRunTumourAfterOnset"], [3], [],
                               "benchLong", Data, Steps)
    assert [(r.trainer, r.fold) for r in benchmark.with_warm_starts(runs, Data, Steps)] == [
        ("nnUNetTrainerCMEDL_noHint_benchLong_seed0", 0),
        ("nnUNetTrainerCMEDL_warmTumourAfterOnset_benchLong_seed3", 0),
        ("nnUNetTrainer_benchLong_seed0", 0),
        ("nnUNetTrainerCMEDL_ctTeacherSameRunTumourAfterOnset_benchLong_seed3", 0)]


def test_demo_and_benchmark_reuse_a_synthetic_dataset_only_with_the_same_settings(tmp_path):
    from nnunet_cmedl import pipeline
    from nnunet_cmedl.errors import UserInputError
    from nnunet_cmedl.synthetic.dataset import make_synthetic_dataset
    paths = make_synthetic_dataset(tmp_path, dataset_id=503, num_train=2, num_test=1, num_unpaired=1,
                                   ct_shape=(16, 48, 64), seed=4, preview=False, show_progress=False)
    same = {"--num-train": 2, "--num-test": 1, "--num-mri": 1, "--seed": 4, "--hard-ct-signal": "enhancing-atelectasis"}
    pipeline.check_reusable_dataset(paths.dataset_folder, same)
    with pytest.raises(UserInputError, match=r"--num-train 2 \(this run: 12\), --seed 4 \(this run: 0\)"):
        pipeline.check_reusable_dataset(paths.dataset_folder, {**same, "--num-train": 12, "--seed": 0})
    with pytest.raises(UserInputError, match="--hard-ct-signal enhancing-atelectasis \\(this run: none\\)"):
        pipeline.check_reusable_dataset(paths.dataset_folder, {**same, "--hard-ct-signal": "none"})
    (paths.dataset_folder / "phantom_metadata.json").unlink()
    with pytest.raises(UserInputError, match="not as make-synthetic writes it"):
        pipeline.check_reusable_dataset(paths.dataset_folder, same)


def test_benchmark_cli_refuses_seeds_without_trainers(capsys):
    from nnunet_cmedl.cli import main
    from nnunet_cmedl.training.benchmark_trainers import SEEDS
    # a seed just past the generated trainers (a valid one would start a real, hours-long benchmark)
    assert main(["benchmark", "--seeds", "0", str(SEEDS.stop), "--workdir", "/nonexistent/x"]) != 0
    err = capsys.readouterr().err
    assert f"seeds {SEEDS.start}-{SEEDS.stop - 1}" in err and "Traceback" not in err


def test_benchmark_skips_nnunets_final_validation_unless_asked(monkeypatch, tmp_path):
    """The benchmark scores the test cases; nnU-Net's validation after training is read by nothing and cost about
    40 s per CPU run (9 of the default benchmark's minutes). --final-validation keeps it."""
    from nnunet_cmedl import benchmark, pipeline

    class Stop(Exception):
        pass
    seen = []

    def fake_prepare(steps, *args, **kwargs):
        seen.append(steps.env.get("nnUNet_cmedl_skip_final_validation"))
        raise Stop
    monkeypatch.setattr(pipeline, "prepare_dataset", fake_prepare)
    monkeypatch.setenv("nnUNet_cmedl_skip_final_validation", "1")  # exported by the user: the flag still decides
    for extra in ([], ["--final-validation"]):
        with pytest.raises(Stop):
            benchmark.main(["--workdir", str(tmp_path / "w"), "--device", "cpu"] + extra)
    assert seen == ["1", "0"]


def test_the_pmri_tumour_aucs_are_left_out_with_a_warning_where_they_cannot_be_measured(tmp_path, capsys):
    from nnunet_cmedl.evaluation import benchmark_report
    (tmp_path / "teacher" / "pmri_and_teacher").mkdir(parents=True)
    assert benchmark_report.pmri_contrast(tmp_path, tmp_path, tmp_path / "teacher", tmp_path / "missing.json") is None
    assert "pmri_and_teacher: no tumour AUCs" in capsys.readouterr().err
    # the paired-MRI oracle keeps no pMRI: nothing to measure, nothing to say
    assert benchmark_report.pmri_contrast(tmp_path, tmp_path, tmp_path / "oracle", tmp_path / "missing.json") is None
    assert capsys.readouterr().err == ""
