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
                    seed: int, hard_ct_signal: str = None) -> PreparedDataset:
    """Generate (or reuse, if made with the same settings) the synthetic dataset, plan and preprocess it, add the
    small configuration, and preprocess the unpaired MRI onto it."""
    from nnunet_cmedl.synthetic.phantom import HARD_CT_SIGNALS
    raw = Path(steps.env["nnUNet_raw"])
    settings = {"--num-train": num_train, "--num-test": num_test, "--num-mri": num_mri, "--seed": seed,
                "--hard-ct-signal": hard_ct_signal or HARD_CT_SIGNALS[0]}
    existing = sorted(raw.glob(f"Dataset{dataset_id:03d}_*")) if raw.is_dir() else []
    if existing:
        check_reusable_dataset(existing[0], settings)
        steps.skip("generate the synthetic dataset", f"reusing {existing[0]} (made with the same settings)")
    else:
        steps.run("generate the synthetic thorax CT dataset and unpaired MRI of other phantom patients",
                  OURS + ["make-synthetic", "--raw", raw, "-d", dataset_id,
                          *[str(x) for item in settings.items() for x in item]])
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


def check_reusable_dataset(folder: Path, settings: dict) -> None:
    """An existing dataset folder is reused only if make-synthetic made it with ``settings`` (its CLI options)."""
    from nnunet_cmedl.synthetic.dataset import METADATA_NAME, labelled_cases, unpaired_cases
    try:
        meta = json.loads((folder / METADATA_NAME).read_text())
        cases = list(labelled_cases(meta).values())
        found = {"--num-train": sum(c["split"] == "train" for c in cases),
                 "--num-test": sum(c["split"] == "test" for c in cases), "--num-mri": len(unpaired_cases(meta)),
                 "--seed": meta["seed"], "--hard-ct-signal": meta.get("hard_ct_signal", "none")}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        raise UserInputError(f"{folder}: exists, but not as make-synthetic writes it (no readable {METADATA_NAME}); "
                             f"it is not reused: choose another -d or --workdir") from None
    differ = [f"{k} {found[k]} (this run: {v})" for k, v in settings.items() if found[k] != v]
    if differ:
        raise UserInputError(f"{folder}: made with {', '.join(differ)}; it is not reused: choose another -d or "
                             f"--workdir, or remove the folder (and its preprocessed data and results)")


def finished_run(fold_folder: Path, trainer: str, fold: int, plans_file: Path, epochs: int = None) -> bool:
    """Whether ``fold_folder`` holds a finished run to reuse: False if it has no checkpoint_final.pth; True if that
    is ``trainer``'s, on this fold, trained on the configuration ``plans_file`` defines now, for all its epochs
    (``epochs``, else the run's own debug.json); anything else is an error, never silently reused."""
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    from nnunet_cmedl.checkpoint_io import load_checkpoint
    path = fold_folder / "checkpoint_final.pth"
    if not path.is_file():
        return False
    stop = "it is not reused: move it away or use another --workdir"
    checkpoint = load_checkpoint(path)
    kwargs = checkpoint.get("init_args") or {}
    if checkpoint.get("trainer_name") != trainer or kwargs.get("fold") != fold:
        raise UserInputError(f"{path}: written by {checkpoint.get('trainer_name')} fold {kwargs.get('fold')}, not by "
                             f"{trainer} fold {fold}; {stop}")
    configuration = kwargs.get("configuration")
    try:
        trained = PlansManager(kwargs["plans"]).get_configuration(configuration).configuration
        planned = PlansManager(json.loads(plans_file.read_text())).get_configuration(configuration).configuration
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as e:
        raise UserInputError(f"{path}: cannot compare its configuration {configuration} with {plans_file} "
                             f"({type(e).__name__}: {e}); {stop}") from None
    differ = sorted(k for k in set(trained) | set(planned) if trained.get(k) != planned.get(k))
    if differ:
        raise UserInputError(f"{path}: trained with another configuration {configuration} than {plans_file} holds now "
                             f"({', '.join(differ)} differ); {stop}")
    if epochs is None:
        try:
            epochs = int(json.loads((fold_folder / "debug.json").read_text())["num_epochs"])
        except (OSError, ValueError, KeyError, TypeError):
            raise UserInputError(f"{fold_folder / 'debug.json'}: missing or unreadable, so the run's budget is "
                                 f"unknown; {stop}") from None
    if checkpoint.get("current_epoch") != epochs:
        raise UserInputError(f"{path}: trained {checkpoint.get('current_epoch')} epochs, the trainer's budget is "
                             f"{epochs}; {stop}")
    return True


def plans_file(steps: Steps, data: PreparedDataset) -> Path:
    return Path(steps.env["nnUNet_preprocessed"]) / data.dataset_name / "nnUNetPlans.json"


def results_folder(steps: Steps, data: PreparedDataset, trainer: str) -> Path:
    return Path(steps.env["nnUNet_results"]) / data.dataset_name / f"{trainer}__nnUNetPlans__{data.configuration}"


def train(steps: Steps, data: PreparedDataset, trainer: str, device: str) -> Path:
    folder = results_folder(steps, data, trainer)
    if finished_run(folder / "fold_0", trainer, 0, plans_file(steps, data)):
        steps.skip(f"train {trainer}", f"reusing {folder}/fold_0/checkpoint_final.pth (same trainer, configuration "
                                       f"and epochs)")
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
