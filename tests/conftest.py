"""Shared fixtures: a tiny synthetic dataset, planned and preprocessed by nnU-Net, with small configurations and
the unpaired MRI prepared for them. Built once per test session (about a minute on 2 CPU cores)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
DATASET_ID = 990
SMALL_3D = "3d_tiny"
SMALL_2D = "2d_tiny"


def pin_xdist_worker_to_one_core() -> None:
    """Under pytest-xdist (scripts/run_tests.sh runs one worker per core): each worker and the processes it starts
    keep to one core, with one torch thread in the worker. nnU-Net's CPU training sets as many threads as the machine
    has cores; unpinned, two workers' threads would spin against each other (measured: 4x slower, not 2x)."""
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if not worker or not hasattr(os, "sched_setaffinity"):
        return
    cores = sorted(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cores[int(worker.removeprefix("gw")) % len(cores)]})
    import torch
    torch.set_num_threads(1)


pin_xdist_worker_to_one_core()


def nnunet_env(root: Path, **extra) -> dict:
    """Environment for subprocesses: nnU-Net's folders, our trainer folder, CPU-friendly settings."""
    from nnunet_cmedl.env import ext_trainer_value
    env = dict(os.environ)
    env.update(nnUNet_raw=str(root / "nnUNet_raw"), nnUNet_preprocessed=str(root / "nnUNet_preprocessed"),
               nnUNet_results=str(root / "nnUNet_results"), nnUNet_n_proc_DA="0", nnUNet_def_n_proc="1",
               nnUNet_compile="false", nnUNet_extTrainer=ext_trainer_value(os.environ.get("nnUNet_extTrainer")),
               OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE", PYTHONPATH=str(REPO))
    env.update(extra)
    return env


def run(cmd, env, timeout=900, check=True) -> subprocess.CompletedProcess:
    r = subprocess.run([str(c) for c in cmd], env=env, capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, cmd))} failed ({r.returncode}):\n{r.stdout[-4000:]}\n"
                             f"{r.stderr[-4000:]}")
    return r


def without_final_validation(env) -> dict:
    """For a training that resume_mid_run resumes later: nnUNetv2_train's final validation (about 10 s on the CPU,
    mostly its two spawned worker pools) runs after the resumed run, where resume_mid_run checks it, not twice."""
    return dict(env, nnUNet_cmedl_skip_final_validation="1")


def resume_mid_run(fold: Path, train_cmd: list, env) -> dict:
    """Rewind a finished 2-epoch run to its state after epoch 1 (checkpoint_latest.pth), resume it with the stock
    ``--c`` and return the new final checkpoint."""
    import torch
    final = fold / "checkpoint_final.pth"
    torch.save(dict(torch.load(final, weights_only=False), current_epoch=1), fold / "checkpoint_latest.pth")
    final.rename(fold / "checkpoint_final_first.pth")
    r = run([str(c) for c in train_cmd] + ["--c"], env)
    assert "Mean Validation Dice" in r.stdout
    return torch.load(final, map_location="cpu", weights_only=False)


def cli(*args) -> list:
    return [sys.executable, "-m", "nnunet_cmedl.cli", *args]


def cli_chain(*commands) -> list:
    """Several ``nnunet_cmedl`` commands run one after the other in one interpreter (each subprocess pays seconds of
    imports); stops at the first that fails, with its exit status."""
    script = ("import sys\nfrom nnunet_cmedl.cli import main\n"
              f"for argv in {[[str(a) for a in c] for c in commands]!r}:\n"
              "    rc = main(argv)\n    if rc:\n        sys.exit(rc)\n")
    return [sys.executable, "-c", script]


def build_planned_dataset(root: Path) -> dict:
    """The tiny dataset, planned and preprocessed by nnU-Net, with the small configurations and the unpaired MRI."""
    from nnunet_cmedl.synthetic.dataset import make_synthetic_dataset

    env = nnunet_env(root)
    paths = make_synthetic_dataset(root / "nnUNet_raw", dataset_id=DATASET_ID, dataset_name="TinyThorax",
                                   num_train=5, num_test=2, num_unpaired=3, ct_shape=(16, 48, 64), seed=1,
                                   preview=False, show_progress=False)
    # nnU-Net's planner calls torch.set_num_threads(nnUNet_n_proc_DA), which fails on 0
    run([BIN / "nnUNetv2_plan_and_preprocess", "-d", DATASET_ID, "-c", "3d_fullres", "2d", "-np", "1"],
        dict(env, nnUNet_n_proc_DA="1"))
    run(cli_chain(["add-small-config", "-d", DATASET_ID, "--parent", "3d_fullres", "--name", SMALL_3D,
                   "--patch-size", "8", "32", "32", "--batch-size", "2", "--max-features", "16"],
                  ["add-small-config", "-d", DATASET_ID, "--parent", "2d", "--name", SMALL_2D,
                   "--patch-size", "32", "32", "--batch-size", "2", "--max-features", "16"],
                  *(["preprocess-mri", "-d", DATASET_ID, "-c", config, "-i", paths.unpaired_folder, "-np", "0"]
                    for config in ("3d_fullres", "2d"))), env)
    return {"root": root, "env": env, "dataset_id": DATASET_ID, "dataset_name": paths.dataset_folder.name,
            "raw_folder": paths.dataset_folder}


@pytest.fixture(scope="session")
def planned_dataset(tmp_path_factory):
    """Dict with 'root', 'env', 'dataset_id', 'dataset_name', 'raw_folder' of a tiny planned synthetic dataset.
    CMEDL_TEST_PREBUILT_DATASET=<root>: a copy of a root built before by build_planned_dataset (e.g. carried to a
    GPU machine that cannot build one: scripts/gpu_check.sh)."""
    root = tmp_path_factory.mktemp("nnunet")
    prebuilt = os.environ.get("CMEDL_TEST_PREBUILT_DATASET")
    if not prebuilt:
        return build_planned_dataset(root)
    import shutil
    for k in ("nnUNet_raw", "nnUNet_preprocessed"):
        shutil.copytree(Path(prebuilt) / k, root / k)
    raw_folder = next((root / "nnUNet_raw").glob(f"Dataset{DATASET_ID}_*"))
    return {"root": root, "env": nnunet_env(root), "dataset_id": DATASET_ID, "dataset_name": raw_folder.name,
            "raw_folder": raw_folder}
