"""Networks and configurations (issue 9): CMEDL through the stock CLI with nnU-Net's U-Nets and configurations.

- PlainConvUNet (nnUNetPlans): tests/test_trainer_cmedl.py (3d) and tests/test_strategies.py (2d);
- ResidualEncoderUNet: plans from ``nnUNetv2_plan_experiment -pl nnUNetPlannerResEncM``;
- ResidualUNet (dynamic-network-architectures' U-Net with residual encoder *and* decoder): the ResEnc-M plans with
  ``architecture.network_class_name`` changed, the only edit it needs;
- a network without the decoder layout the hint needs: one line at initialisation, no traceback;
- 3d_lowres (data at another spacing, its own preprocessed MRI) and 3d_cascade_fullres (only the image channel
  translated; the previous stage's segmentation goes to student and teacher alike). nnU-Net plans no 3d_lowres for
  the tiny dataset (its images fit the patch), so both are written into a copy of the plans as the planner writes
  them (``next_stage`` / ``previous_stage``), small.

Each model trains nnUNetTrainerCMEDL_tinyCPU (2 epochs x 2 iterations) with the stock ``nnUNetv2_train``, is killed
once its first checkpoint is written, resumes with ``--c``, and predicts with ``nnUNetv2_predict -p <plans>``. The
runs are mostly Python start-up (nnU-Net's trainer lookup, its validation's worker processes), so they go in two
chains side by side (one per CPU core in one process, CMEDL_TEST_WORKERS=0; under pytest-xdist both share the
worker's core): the two networks (their commands two at a time), then 3d_lowres and the cascade after it. The networks' configuration takes whole 48x64 slices: one sliding-window tile per slice.
"""
import json
import os
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from conftest import BIN, REPO, cli, run
from test_fast_cmedl import tap_and_hooks

TINY = "nnUNetTrainerCMEDL_tinyCPU"
RESENC_PLANS = "nnUNetResEncUNetMPlans"       # what nnUNetPlannerResEncM writes
RESUNET_PLANS = "nnUNetResidualUNetMPlans"    # the same plans, network ResidualUNet
NETWORKS = {RESENC_PLANS: "ResidualEncoderUNet", RESUNET_PLANS: "ResidualUNet"}
CASCADE_PLANS = "nnUNetCascadePlans"          # nnUNetPlans with a small 3d_lowres and 3d_cascade_fullres
BAD_PLANS = "nnUNetInterpolatingPlans"        # nnUNetPlans whose 2d_tiny is a network without the layout
NETWORK_CONFIG = "2d_slice"
DNA = "dynamic_network_architectures.architectures.unet."
HINT_DECODER_STAGES = (-2, -1)  # nnUNetTrainerCMEDL.hint_decoder_stages
TIMEOUT = 900


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=4))


def train_command(did, configuration, fold, plans, trainer=TINY) -> list:
    return [BIN / "nnUNetv2_train", did, configuration, fold, "-tr", trainer, "-p", plans, "-device", "cpu"]


def predict_command(planned, configuration, plans, fold, out, *extra) -> list:
    # -npp 0 -nps 0: nnU-Net's sequential prediction, no worker processes
    return [BIN / "nnUNetv2_predict", "-i", planned["raw_folder"] / "imagesTs", "-o", out, "-d",
            planned["dataset_id"], "-c", configuration, "-p", plans, "-f", fold, "-tr", TINY, "--disable_tta",
            "-device", "cpu", "-npp", "0", "-nps", "0", *extra]


def fold_folder(planned, plans, configuration, fold) -> Path:
    return (Path(planned["env"]["nnUNet_results"]) / planned["dataset_name"] / f"{TINY}__{plans}__{configuration}" /
            f"fold_{fold}")


# ---------------------------------------------------------------- running stock commands side by side
class Started:
    """A stock command running in its own process group, its output in files."""

    def __init__(self, cmd, env, logs: Path):
        self.cmd = [str(c) for c in cmd]
        logs.parent.mkdir(parents=True, exist_ok=True)
        self.stdout, self.stderr = logs.with_suffix(".out"), logs.with_suffix(".err")
        with open(self.stdout, "w") as out, open(self.stderr, "w") as err:
            self.process = subprocess.Popen(self.cmd, env=env, stdout=out, stderr=err, start_new_session=True)

    def finish(self, check=True) -> subprocess.CompletedProcess:
        try:
            self.process.wait(TIMEOUT)
        except subprocess.TimeoutExpired:
            self.kill()
            raise
        r = subprocess.CompletedProcess(self.cmd, self.process.returncode, self.stdout.read_text(),
                                        self.stderr.read_text())
        if check and r.returncode != 0:
            raise AssertionError(f"{' '.join(self.cmd)} failed ({r.returncode}):\n{r.stdout[-4000:]}\n"
                                 f"{r.stderr[-4000:]}")
        return r

    def kill(self) -> None:
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:  # ended already
            pass
        self.process.wait()


def run_together(commands: dict, env, logs: Path) -> dict:
    """Every command of ``{key: cmd}`` at once; their results once all ended (each must succeed)."""
    started = {key: Started(cmd, env, logs / key) for key, cmd in commands.items()}
    return {key: s.finish() for key, s in started.items()}


def train_until_first_checkpoint(commands: dict, folds: dict, env, logs: Path) -> dict:
    """Start the trainings of ``{key: cmd}`` at once and kill each (SIGKILL, its whole process group) as soon as its
    first checkpoint, checkpoint_latest.pth after epoch 0, is in place: the run that --c has to finish. Returns that
    checkpoint per key."""
    started = {key: Started(cmd, env, logs / key) for key, cmd in commands.items()}
    checkpoints, deadline = {}, time.time() + TIMEOUT
    while len(checkpoints) < len(started) and time.time() < deadline:
        for key, s in started.items():
            if key in checkpoints:
                continue
            latest = folds[key] / "checkpoint_latest.pth"
            if latest.exists():
                s.kill()
                checkpoints[key] = torch.load(latest, map_location="cpu", weights_only=False)
            elif s.process.poll() is not None:
                s.finish()
                final = folds[key] / "checkpoint_final.pth"
                if not final.is_file():
                    raise AssertionError(f"{' '.join(s.cmd)} ended before its first checkpoint")
                # it finished between two looks (a loaded machine starves this loop): rewind it to its state after
                # epoch 0 instead, as conftest.resume_mid_run does
                checkpoints[key] = dict(torch.load(final, map_location="cpu", weights_only=False), current_epoch=1)
                torch.save(checkpoints[key], latest)
                final.rename(folds[key] / "checkpoint_final_first.pth")
        time.sleep(0.1)
    for key, s in started.items():
        if key not in checkpoints:
            s.kill()
            raise AssertionError(f"{' '.join(s.cmd)}: no checkpoint after {TIMEOUT} s")
    for key, checkpoint in checkpoints.items():
        assert checkpoint["current_epoch"] == 1, key
        assert not (folds[key] / "checkpoint_final.pth").exists(), f"{key}: killed too late, the run had finished"
    return checkpoints


# ---------------------------------------------------------------- the plans, and every stock-CLI run of this file
@pytest.fixture(scope="module")
def prepared(planned_dataset, tmp_path_factory):
    """The plans of this file, written and preprocessed before any training (nnU-Net's planner and preprocessing
    rewrite dataset.json and gt_segmentations, which running trainings read)."""
    from nnunetv2.utilities.crossval_split import generate_crossval_split
    from nnunet_cmedl.small_config import add_small_configuration
    env, did = planned_dataset["env"], planned_dataset["dataset_id"]
    pre = Path(env["nnUNet_preprocessed"]) / planned_dataset["dataset_name"]

    # ResEnc-M by nnU-Net's planner, a small configuration of whole slices; ResidualUNet takes ResidualEncoderUNet's
    # arguments (n_blocks_per_stage, n_conv_per_stage_decoder, ...): only network_class_name changes
    run([BIN / "nnUNetv2_plan_experiment", "-d", did, "-pl", "nnUNetPlannerResEncM"], dict(env, nnUNet_n_proc_DA="1"))
    resenc_file = pre / f"{RESENC_PLANS}.json"
    add_small_configuration(str(resenc_file), NETWORK_CONFIG, "2d", [48, 64], 2, max_features=8)
    resunet = dict(read_json(resenc_file), plans_name=RESUNET_PLANS)
    for configuration in resunet["configurations"].values():
        if "architecture" in configuration:
            configuration["architecture"]["network_class_name"] = DNA + "ResidualUNet"
    write_json(pre / f"{RESUNET_PLANS}.json", resunet)

    # 3d_lowres: twice the in-plane spacing, data of its own; 3d_cascade_fullres after it (3d_fullres's data)
    cascade_file = pre / f"{CASCADE_PLANS}.json"
    write_json(cascade_file, dict(read_json(pre / "nnUNetPlans.json"), plans_name=CASCADE_PLANS))
    add_small_configuration(str(cascade_file), "3d_lowres", "3d_fullres", [16, 24, 32], 2, max_features=8)
    add_small_configuration(str(cascade_file), "3d_cascade_fullres", "3d_fullres", [16, 48, 64], 2, max_features=8)
    cascade = read_json(cascade_file)
    z, y, x = cascade["configurations"]["3d_fullres"]["spacing"]
    cascade["configurations"]["3d_lowres"].update(
        data_identifier=f"{CASCADE_PLANS}_3d_lowres", spacing=[z, 2 * y, 2 * x],
        median_image_size_in_voxels=[16, 24, 32], next_stage="3d_cascade_fullres", batch_dice=False)
    cascade["configurations"]["3d_cascade_fullres"]["previous_stage"] = "3d_lowres"
    write_json(cascade_file, cascade)

    # a network that nnU-Net builds but the hint cannot tap
    bad = dict(read_json(pre / "nnUNetPlans.json"), plans_name=BAD_PLANS)
    bad["configurations"]["2d_tiny"]["architecture"]["network_class_name"] = "cmedl_test_networks.InterpolatingUNet"
    write_json(pre / f"{BAD_PLANS}.json", bad)
    network_module = tmp_path_factory.mktemp("network_module")
    (network_module / "cmedl_test_networks.py").write_text(INTERPOLATING_UNET)

    mri = planned_dataset["raw_folder"] / "unpairedMRI"
    run_together({
        "lowres_ct": [BIN / "nnUNetv2_preprocess", "-d", did, "-plans_name", CASCADE_PLANS, "-c", "3d_lowres",
                      "-np", "1"],
        "lowres_mri": cli("preprocess-mri", "-d", did, "-c", "3d_lowres", "-p", CASCADE_PLANS, "-i", mri, "-np", "1")},
        env, tmp_path_factory.mktemp("logs"))
    # the split nnU-Net's first training would write, written once here: trainings running side by side would race
    splits = pre / "splits_final.json"
    if not splits.exists():
        cases = sorted(p.name[:-len(".pkl")] for p in (pre / "nnUNetPlans_3d_fullres").glob("*.pkl"))
        write_json(splits, generate_crossval_split(cases, seed=12345, n_splits=5))
    return dict(planned_dataset, pre=pre, plans={"resenc": read_json(resenc_file), "cascade": cascade},
                network_module=network_module)


def network_chain(planned, work: Path) -> dict:
    """ResEnc-M and ResidualUNet, each command of the two at the same time; the network without the layout beside
    their predictions."""
    env, did = planned["env"], planned["dataset_id"]
    train = {plans: train_command(did, NETWORK_CONFIG, "0", plans) for plans in NETWORKS}
    folds = {plans: fold_folder(planned, plans, NETWORK_CONFIG, 0) for plans in NETWORKS}
    killed = train_until_first_checkpoint(train, folds, env, work / "train")
    resumed = run_together({p: cmd + ["--c"] for p, cmd in train.items()}, env, work / "resume")
    bad = Started(train_command(did, "2d_tiny", "0", BAD_PLANS),
                  dict(env, PYTHONPATH=f"{REPO}{os.pathsep}{planned['network_module']}"), work / "bad")
    predictions = {plans: work / f"prediction_{plans}" for plans in NETWORKS}
    run_together({p: predict_command(planned, NETWORK_CONFIG, p, "0", predictions[p]) for p in NETWORKS}, env,
                 work / "predict")
    bad = bad.finish(check=False)
    return {"folds": folds, "killed": killed, "resumed": resumed, "predictions": predictions, "bad": bad}


def cascade_chain(planned, work: Path) -> dict:
    """3d_lowres on fold 'all' (its final validation exports every training case's segmentation for the next
    stage), then 3d_cascade_fullres on fold 0 while 3d_lowres predicts the test images (the cascade's prediction
    needs them)."""
    env, did = planned["env"], planned["dataset_id"]
    runs = {c: {"fold": fold_folder(planned, CASCADE_PLANS, c, fold), "prediction": work / f"prediction_{c}",
                "train": train_command(did, c, fold, CASCADE_PLANS)}
            for c, fold in (("3d_lowres", "all"), ("3d_cascade_fullres", "0"))}
    lowres, cascade = runs["3d_lowres"], runs["3d_cascade_fullres"]
    lowres["killed"] = train_until_first_checkpoint({"lowres": lowres["train"]}, {"lowres": lowres["fold"]}, env,
                                                    work / "train")["lowres"]
    lowres["resumed"] = run(lowres["train"] + ["--c"], env)
    predicting = Started(predict_command(planned, "3d_lowres", CASCADE_PLANS, "all", lowres["prediction"]), env,
                         work / "predict_lowres")
    cascade["killed"] = train_until_first_checkpoint({"cascade": cascade["train"]}, {"cascade": cascade["fold"]}, env,
                                                     work / "train")["cascade"]
    predicting.finish()
    cascade["resumed"] = run(cascade["train"] + ["--c"], env)
    run(predict_command(planned, "3d_cascade_fullres", CASCADE_PLANS, "0", cascade["prediction"],
                        "-prev_stage_predictions", lowres["prediction"]), env)
    return runs


@pytest.fixture(scope="module")
def stock_cli_runs(prepared, tmp_path_factory):
    """The two chains, started together; each test waits for the one it reads."""
    with ThreadPoolExecutor(2) as pool:
        yield {"networks": pool.submit(network_chain, prepared, tmp_path_factory.mktemp("networks")),
               "cascade": pool.submit(cascade_chain, prepared, tmp_path_factory.mktemp("cascade"))}


# ---------------------------------------------------------------- what a user checks
def assert_predictions_in_input_geometry(raw_folder: Path, out: Path) -> None:
    inputs = sorted((raw_folder / "imagesTs").glob("*_0000.nii.gz"))
    preds = sorted(out.glob("*.nii.gz"))
    assert [p.name for p in preds] == [i.name.replace("_0000", "") for i in inputs] and preds
    for i, p in zip(inputs, preds):
        a, b = sitk.ReadImage(str(i)), sitk.ReadImage(str(p))
        assert a.GetSize() == b.GetSize(), p.name
        for get in ("GetSpacing", "GetOrigin", "GetDirection"):
            assert np.allclose(getattr(a, get)(), getattr(b, get)()), (p.name, get)
        assert set(np.unique(sitk.GetArrayFromImage(b))) <= {0, 1}, p.name


def final_checkpoint_of_a_resumed_run(run_: dict) -> dict:
    """checkpoint_final.pth of the run --c finished: 2 epochs, epoch 0 as the killed run left it, the hint logged
    finite and non-zero in both."""
    assert "Mean Validation Dice" in run_["resumed"].stdout
    final = torch.load(run_["fold"] / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    killed = run_["killed"]["logging"]
    assert final["current_epoch"] == 2
    for key in ("train_losses", "cmedl_hint", "cmedl_student_seg"):
        assert len(final["logging"][key]) == 2 and final["logging"][key][0] == killed[key][0], key
    hint = final["logging"]["cmedl_hint"]
    assert np.all(np.isfinite(hint)) and np.all(np.asarray(hint) > 0), hint
    return final


def load_networks(model_folder: Path, checkpoint: dict, configuration: str, student_channels: int,
                  teacher_channels: int):
    """Student and teacher rebuilt from the results folder's plans by nnU-Net, their weights loaded strictly."""
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    pm = PlansManager(read_json(model_folder / "plans.json"))
    cm = pm.get_configuration(configuration)
    networks = []
    for channels, key in ((student_channels, "network_weights"), (teacher_channels, "cmedl_teacher_weights")):
        net = nnUNetTrainer.build_network_architecture(pm, cm, channels, 2, False)
        net.load_state_dict(checkpoint[key], strict=True)
        networks.append(net.eval())
    return networks, cm.patch_size


def assert_tap_reads_the_last_decoder_stages(student, teacher, patch_size, student_channels, teacher_channels):
    """The trainer's tap returns the network's own output and the outputs of its last two decoder stages (recorded
    here with forward hooks), for the teacher in the same shapes as for the student."""
    features = []
    for net, channels in ((student, student_channels), (teacher, teacher_channels)):
        expected, recorded, output, tapped = tap_and_hooks(net, torch.randn(1, channels, *patch_size),
                                                           HINT_DECODER_STAGES)
        assert torch.equal(output, expected)
        assert len(tapped) == 2 and all(torch.equal(a, b) for a, b in zip(tapped, recorded))
        features.append(tapped)
    assert [f.shape for f in features[0]] == [f.shape for f in features[1]]
    assert tuple(features[0][-1].shape[2:]) == tuple(patch_size)  # the last stage: full resolution


# ---------------------------------------------------------------- ResidualEncoderUNet and ResidualUNet
def test_resenc_plans_share_the_default_plans_data_and_mri(prepared):
    resenc = prepared["plans"]["resenc"]["configurations"]
    assert resenc["2d"]["architecture"]["network_class_name"] == DNA + "ResidualEncoderUNet"
    # nnU-Net's ResEnc planners preprocess like the default plans and keep their data identifiers: the CT and the
    # unpaired MRI preprocessed for nnUNetPlans serve these plans too (the trainer checks the MRI's geometry)
    assert resenc["2d"]["data_identifier"] == "nnUNetPlans_2d"
    assert resenc["3d_fullres"]["data_identifier"] == "nnUNetPlans_3d_fullres"


@pytest.mark.parametrize("plans", sorted(NETWORKS))
def test_network_trains_resumes_and_predicts_through_the_stock_cli(stock_cli_runs, prepared, plans):
    runs = stock_cli_runs["networks"].result()
    fold = runs["folds"][plans]
    final = final_checkpoint_of_a_resumed_run({"fold": fold, "killed": runs["killed"][plans],
                                               "resumed": runs["resumed"][plans]})
    (student, teacher), patch_size = load_networks(fold.parent, final, NETWORK_CONFIG, 1, 1)
    assert type(student).__name__ == type(teacher).__name__ == NETWORKS[plans]
    assert_tap_reads_the_last_decoder_stages(student, teacher, patch_size, 1, 1)
    assert_predictions_in_input_geometry(prepared["raw_folder"], runs["predictions"][plans])


# ---------------------------------------------------------------- a network the hint cannot tap
INTERPOLATING_UNET = '''
import torch
from torch import nn


class UpsamplingDecoder(nn.Module):
    def __init__(self, channels, num_classes):
        super().__init__()
        self.stages = nn.ModuleList([nn.Conv2d(2 * channels, channels, 3, padding=1)])
        self.seg_layers = nn.ModuleList([nn.Conv2d(channels, num_classes, 1)])
        self.deep_supervision = False


class InterpolatingUNet(nn.Module):
    """A U-Net whose decoder up-samples by interpolation: no transposed convolutions."""

    def __init__(self, input_channels, num_classes, deep_supervision=False, **plans_arguments):
        super().__init__()
        self.encoder = nn.ModuleList([nn.Conv2d(input_channels, 8, 3, padding=1), nn.Conv2d(8, 8, 3, 2, 1)])
        self.decoder = UpsamplingDecoder(8, num_classes)

    def forward(self, x):
        skip = self.encoder[0](x)
        x = nn.functional.interpolate(self.encoder[1](skip), size=skip.shape[2:])
        return self.decoder.seg_layers[0](self.decoder.stages[0](torch.cat([x, skip], 1)))
'''


def test_a_network_without_the_decoder_layout_stops_at_initialisation_with_one_line(stock_cli_runs, prepared):
    r = stock_cli_runs["networks"].result()["bad"]
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr[-3000:]
    message = [line for line in r.stderr.splitlines() if "InterpolatingUNet" in line]
    assert message == [r.stderr.strip().splitlines()[-1]], r.stderr[-3000:]
    assert message[0].startswith("network cmedl_test_networks.InterpolatingUNet has no decoder.transpconvs: ")
    assert "ResidualEncoderUNet" in message[0] and "network_class_name" in message[0]
    assert not list(fold_folder(prepared, BAD_PLANS, "2d_tiny", 0).glob("checkpoint*.pth"))  # before training


def test_the_layout_check_names_every_missing_part():
    from torch import nn
    from nnunet_cmedl.distillation.hint import DecoderFeatureTap
    from nnunet_cmedl.errors import UnsupportedSetup
    with pytest.raises(UnsupportedSetup, match=r"^network torch\.nn\.modules\.container\.Sequential has no encoder, "
                                               r"decoder, decoder\.stages, decoder\.transpconvs, decoder\.seg_layers, "
                                               r"decoder\.deep_supervision: "):
        DecoderFeatureTap(nn.Sequential(nn.Conv2d(1, 2, 3)), (-1,))
    net = nn.Module()
    net.encoder, net.decoder = nn.Identity(), nn.Module()
    net.decoder.stages, net.decoder.transpconvs = nn.ModuleList([nn.Identity()] * 2), nn.ModuleList([nn.Identity()])
    net.decoder.seg_layers, net.decoder.deep_supervision = nn.ModuleList([nn.Identity()] * 2), False
    with pytest.raises(UnsupportedSetup, match=r"decoder stages: 2, transpconvs: 1, seg_layers: 2\)"):
        DecoderFeatureTap(net, (-1,))


# ---------------------------------------------------------------- 3d_lowres and 3d_cascade_fullres
def test_3d_lowres_trains_at_its_spacing_on_mri_preprocessed_for_it(stock_cli_runs, prepared):
    from mri_unpaired.plans import geometry_hash
    pre, plans = prepared["pre"], prepared["plans"]["cascade"]
    lowres, fullres = (plans["configurations"][c]["spacing"] for c in ("3d_lowres", "3d_fullres"))
    assert lowres != fullres
    # the MRI of 3d_lowres: its own folder, at its spacing. The trainer's loader takes a folder only if its manifest
    # matches the configuration's geometry, which 3d_fullres's MRI does not
    manifest = read_json(pre / f"{CASCADE_PLANS}_3d_lowres__mri_unpaired" / "manifest.json")
    assert manifest["target_spacing"] == lowres and manifest["configuration"] == "3d_lowres"
    assert manifest["plans_hash"] == geometry_hash(plans, "3d_lowres") != geometry_hash(plans, "3d_fullres")
    fullres_cases = read_json(pre / "nnUNetPlans_3d_fullres__mri_unpaired" / "manifest.json")["cases"]
    assert manifest["cases"].keys() == fullres_cases.keys()
    for case, entry in manifest["cases"].items():
        full = fullres_cases[case]["preprocessed_shape"]
        assert entry["preprocessed_shape"] == [full[0]] + [round(s / 2) for s in full[1:]], case

    run_ = stock_cli_runs["cascade"].result()["3d_lowres"]
    final = final_checkpoint_of_a_resumed_run(run_)
    assert final["init_args"]["configuration"] == "3d_lowres"
    (student, teacher), patch_size = load_networks(run_["fold"].parent, final, "3d_lowres", 1, 1)
    assert_tap_reads_the_last_decoder_stages(student, teacher, patch_size, 1, 1)
    # nnU-Net's export for the cascade: every training case's segmentation, at 3d_fullres's shape
    import blosc2
    exported = run_["fold"].parent / "predicted_next_stage" / "3d_cascade_fullres"
    fullres = pre / "nnUNetPlans_3d_fullres"
    cases = sorted(p.name[:-len(".pkl")] for p in fullres.glob("*.pkl"))
    assert sorted(p.name[:-len(".b2nd")] for p in exported.glob("*.b2nd")) == cases
    for case in cases:
        segmentation, image = (blosc2.open(str(f / f"{case}.b2nd"), mode="r") for f in (exported, fullres))
        assert segmentation.shape[-3:] == image.shape[1:], case
    assert_predictions_in_input_geometry(prepared["raw_folder"], run_["prediction"])


def test_3d_cascade_fullres_translates_only_the_image_channel(stock_cli_runs, prepared):
    from nnunet_cmedl.inference.cmedl_model import load_cmedl_model
    run_ = stock_cli_runs["cascade"].result()["3d_cascade_fullres"]
    final = final_checkpoint_of_a_resumed_run(run_)
    # the student sees [CT, the previous stage's foreground], the teacher [pMRI, the same foreground]
    (student, teacher), patch_size = load_networks(run_["fold"].parent, final, "3d_cascade_fullres", 2, 2)
    assert_tap_reads_the_last_decoder_stages(student, teacher, patch_size, 2, 2)
    # the I2I networks see the image channel only: generators CT (1) <-> MRI (1), one channel into each discriminator
    i2i = final["cmedl_i2i_weights"]
    convs = {prefix: [v for k, v in i2i.items() if k.startswith(prefix) and v.ndim == 5]
             for prefix in ("ct_to_mri.", "mri_to_ct.", "discriminator_ct.", "discriminator_mri.")}
    assert all(c[0].shape[1] == 1 for c in convs.values()), {k: c[0].shape for k, c in convs.items()}
    assert convs["mri_to_ct."][-1].shape[0] == 1 and convs["ct_to_mri."][-1].shape[0] == 1

    # the trained generator as the teacher's validation and export-pmri build it: the segmentation channel passes
    # through unchanged and does not change the pseudo-MRI
    cmedl = load_cmedl_model(run_["fold"].parent, fold=0)
    x = torch.randn(1, 2, *patch_size)
    other = torch.cat([x[:, :1], 1 - x[:, 1:]], 1)
    with torch.no_grad():
        a, b = cmedl.generator(x), cmedl.generator(other)
        assert a.shape == x.shape and torch.equal(a[:, 1:], x[:, 1:]) and torch.equal(a[:, :1], b[:, :1])
        assert not torch.equal(a[:, :1], x[:, :1])
        assert cmedl.teacher(a).shape == (1, 2, *patch_size)  # the teacher takes [pMRI, segmentation]
    assert_predictions_in_input_geometry(prepared["raw_folder"], run_["prediction"])


def test_the_pseudo_mri_strategies_refuse_a_cascade_at_once(prepared, monkeypatch):
    from nnunet_cmedl.errors import UnsupportedSetup
    from nnunet_cmedl.training import nnUNetTrainerPseudoMRI_tinyCPU
    for key in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        monkeypatch.setenv(key, prepared["env"][key])
    plans = dict(prepared["plans"]["cascade"], continue_training=False)
    dataset_json = read_json(prepared["pre"] / "dataset.json")
    trainer = nnUNetTrainerPseudoMRI_tinyCPU(plans, "3d_cascade_fullres", 0, dataset_json, device=torch.device("cpu"))
    with pytest.raises(UnsupportedSetup) as stopped:
        trainer.initialize()
    assert str(stopped.value) == (
        "nnUNetTrainerPseudoMRI_tinyCPU: configuration 3d_cascade_fullres is the second stage of a cascade (its input "
        "carries the segmentation of 3d_lowres as extra channels), which the generator would translate with the "
        "image. nnUNetTrainerCMEDL supports it (only the image channels are translated); or train this trainer on "
        "3d_fullres or 3d_lowres")
    assert trainer.network is None  # nothing built
