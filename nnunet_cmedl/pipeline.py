"""The job's steps through nnU-Net's stock commands, shared by ``demo`` and ``benchmark``.

Each step runs a command in a subprocess with one environment (nnU-Net's folders, ``nnUNet_extTrainer`` pointing at
our trainers), prints what it runs and how long it took, and keeps the full output in ``<workdir>/logs``. A step
whose result exists already is skipped, so a second run goes straight to what is missing.
"""
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from nnunet_cmedl.env import ext_trainer_value, resolve_device as resolve_torch_device
from nnunet_cmedl.errors import UserInputError

BIN = Path(sys.executable).parent
OURS = [sys.executable, "-m", "nnunet_cmedl.cli"]

# --dim -> (configuration planned by nnU-Net, our small configuration inheriting from it, patch size, batch size,
# feature cap). None: train the planned configuration itself (GPU-sized runs). On 2 CPU cores a 64x64 patch with at
# most 64 feature maps costs ~0.1 s per plain nnU-Net iteration and ~0.4 s per CMEDL iteration.
SMALL_CONFIGURATIONS = {"2d": ("2d", "2d_demo", ["64", "64"], "8", "64"),
                        "2d_bench": ("2d", "2d_bench", ["64", "64"], "8", "32"),
                        "3d": ("3d_fullres", "3d_demo", ["16", "64", "64"], "2", "64"),
                        "3d_fullres": ("3d_fullres", None, None, None, None)}


def nnunet_paths(workdir: Path) -> dict:
    """nnU-Net's three folders: the user's where set, else inside the work folder."""
    return {k: os.environ.get(k) or str(workdir / k) for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")}


def resolve_device(device: str) -> str:
    """--device of demo and benchmark: 'auto', 'cpu' or 'cuda' -> 'cpu' or 'cuda' (nnUNetv2_train's -device)."""
    return resolve_torch_device(device).type


class Steps:
    """Runs commands with a shared environment, printing each step and its duration."""

    def __init__(self, env: dict, log_folder: Path):
        self.env, self.log_folder, self.n = env, log_folder, 0
        log_folder.mkdir(parents=True, exist_ok=True)

    def run(self, title: str, cmd: list, **env_overrides) -> Path:
        self.n += 1
        print(f"\n=== step {self.n}: {title}\n    $ {' '.join(map(str, cmd))}", flush=True)
        t0 = time.time()
        log = self.log_folder / f"step{self.n:02d}.log"
        with open(log, "w") as f:
            r = subprocess.run([str(c) for c in cmd], env={**self.env, **env_overrides}, stdout=f,
                               stderr=subprocess.STDOUT)
        if r.returncode != 0:
            tail = log.read_text(errors="replace").strip().splitlines()[-15:]
            print("\n".join("    | " + line for line in tail))
            raise UserInputError(f"step {self.n} ({title}) failed with exit code {r.returncode}; full log: {log}")
        print(f"    done in {time.time() - t0:.0f} s (log: {log})", flush=True)
        return log

    def skip(self, title: str, why: str) -> None:
        self.n += 1
        print(f"\n=== step {self.n}: {title}: skipped, {why}", flush=True)


@dataclass
class PreparedDataset:
    dataset_id: int
    dataset_name: str
    raw_folder: Path          # nnUNet_raw/DatasetXXX_Name (imagesTs, labelsTs, unpairedMRI, phantom_metadata.json)
    configuration: str        # what to train and predict with


def make_steps(workdir: Path, device: str) -> Steps:
    paths = nnunet_paths(workdir)
    env = dict(os.environ, **paths, nnUNet_extTrainer=ext_trainer_value(os.environ.get("nnUNet_extTrainer")))
    env.setdefault("nnUNet_def_n_proc", "2")
    env.setdefault("nnUNet_n_proc_DA", "2" if device == "cpu" else "8")
    return Steps(env, workdir / "logs")


def prepare_dataset(steps: Steps, dataset_id: int, dim: str, num_train: int, num_test: int, num_mri: int,
                    seed: int, synthetic_args: tuple = ()) -> PreparedDataset:
    """Generate (or reuse) the synthetic dataset, plan and preprocess it, add the small configuration, and
    preprocess the unpaired MRI onto it."""
    raw = Path(steps.env["nnUNet_raw"])
    existing = sorted(raw.glob(f"Dataset{dataset_id:03d}_*")) if raw.is_dir() else []
    if existing:
        steps.skip("generate the synthetic dataset", f"{existing[0]} exists")
    else:
        steps.run("generate the synthetic thorax CT dataset and unpaired MRI of other phantom patients",
                  OURS + ["make-synthetic", "--raw", raw, "-d", dataset_id, "--num-train", num_train,
                          "--num-test", num_test, "--num-mri", num_mri, "--seed", seed, *synthetic_args])
    raw_folder = next(raw.glob(f"Dataset{dataset_id:03d}_*"))
    dataset_name = raw_folder.name  # DatasetNNN_Name: nnU-Net's name for the id
    parent, small, patch, batch, max_features = SMALL_CONFIGURATIONS[dim]
    plans_file = Path(steps.env["nnUNet_preprocessed"]) / dataset_name / "nnUNetPlans.json"
    if plans_file.is_file() and (plans_file.parent / f"nnUNetPlans_{parent}").is_dir():
        steps.skip("plan and preprocess", f"{plans_file} exists")
    else:
        steps.run("plan and preprocess (nnU-Net's self-configuration)",
                  [BIN / "nnUNetv2_plan_and_preprocess", "-d", dataset_id, "-c", parent, "-np", "2"],
                  # nnU-Net's planner calls torch.set_num_threads(nnUNet_n_proc_DA), which fails on 0
                  nnUNet_n_proc_DA=str(max(1, int(steps.env["nnUNet_n_proc_DA"]))))
    configuration = small or parent
    if small is not None:
        if small in json.loads(plans_file.read_text())["configurations"]:
            steps.skip("add the small configuration", f"{small} is in the plans")
        else:
            steps.run(f"add configuration {small} (patch {'x'.join(patch)}, inherits {parent})",
                      OURS + ["add-small-config", "-d", dataset_id, "--parent", parent, "--name", small,
                              "--patch-size", *patch, "--batch-size", batch, "--max-features", max_features])
    steps.run("preprocess the unpaired MRI onto the configuration (skips up-to-date cases)",
              OURS + ["preprocess-mri", "-d", dataset_id, "-c", configuration, "-i", raw_folder / "unpairedMRI",
                      "-np", "2"])
    return PreparedDataset(dataset_id, dataset_name, raw_folder, configuration)


def results_folder(steps: Steps, data: PreparedDataset, trainer: str) -> Path:
    return Path(steps.env["nnUNet_results"]) / data.dataset_name / f"{trainer}__nnUNetPlans__{data.configuration}"


def train(steps: Steps, data: PreparedDataset, trainer: str, device: str) -> Path:
    folder = results_folder(steps, data, trainer)
    if (folder / "fold_0" / "checkpoint_final.pth").is_file():
        steps.skip(f"train {trainer}", f"{folder}/fold_0/checkpoint_final.pth exists")
    else:
        steps.run(f"train {trainer} (stock nnUNetv2_train)",
                  [BIN / "nnUNetv2_train", data.dataset_id, data.configuration, "0", "-tr", trainer, "-device", device])
    return folder


def predict(steps: Steps, data: PreparedDataset, trainer: str, device: str, output: Path) -> Path:
    steps.run(f"predict the test images with {trainer} (stock nnUNetv2_predict; CMEDL: the student only)",
              [BIN / "nnUNetv2_predict", "-i", data.raw_folder / "imagesTs", "-o", output, "-d", data.dataset_id,
               "-c", data.configuration, "-f", "0", "-tr", trainer, "-device", device, "--disable_tta",
               "-npp", "1", "-nps", "1"])
    return output
