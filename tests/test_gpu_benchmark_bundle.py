"""scripts/gpu_benchmark.py's transfer format: checkpoints stripped to what the benchmark's evaluation reads, and
tarballs split into parts a GPU machine can return. (Its whole path, train -> predict -> bundle -> `benchmark
--no-train`, was run on an H200: docs/BENCHMARK.md.)"""
import importlib.util
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def load_script():
    spec = importlib.util.spec_from_file_location("gpu_benchmark", REPO / "scripts" / "gpu_benchmark.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_stripped_checkpoint_keeps_what_the_evaluation_reads(tmp_path):
    g = load_script()
    full = {"trainer_name": "nnUNetTrainerCMEDL_benchCPU_seed1", "init_args": {"fold": 0}, "current_epoch": 40,
            "logging": {"mean_fg_dice": [0.1, 0.2]}, "network_weights": {"w": torch.ones(3)},
            "optimizer_state": {"big": torch.zeros(1000)}, "cmedl_teacher": {"w": torch.ones(5)},
            "inference_allowed_mirroring_axes": (0, 1)}
    torch.save(full, tmp_path / "full.pth")
    for keep in (True, False):
        g.strip_checkpoint(tmp_path / "full.pth", tmp_path / f"light_{keep}.pth", keep_weights=keep)
        light = torch.load(tmp_path / f"light_{keep}.pth", weights_only=False)
        assert light["current_epoch"] == 40 and light["logging"] == full["logging"]
        assert light["trainer_name"] == full["trainer_name"] and light["init_args"] == {"fold": 0}
        assert "optimizer_state" not in light and "cmedl_teacher" not in light
        assert ("network_weights" in light) == keep and "scripts/gpu_benchmark.py" in light["stripped_by"]


def test_split_tar_parts_stay_under_the_limit_and_hold_every_file(tmp_path):
    g = load_script()
    rng = np.random.default_rng(0)
    files = []
    for i, size in enumerate([300_000] * 7 + [1_900_000]):  # incompressible; the last larger than a part
        p = tmp_path / "in" / f"f{i}.bin"
        p.parent.mkdir(exist_ok=True)
        p.write_bytes(rng.bytes(size))
        files.append(p)
    tar = g.SplitTar(tmp_path / "out" / "bundle", limit=700_000)
    (tmp_path / "out").mkdir()
    for p in files:
        tar.add(p, f"x/{p.name}")
    tar.close()
    parts = sorted((tmp_path / "out").glob("bundle_*.tgz"))
    assert len(parts) >= 3 and all(p.stat().st_size < 700_000 + 100_000 for p in parts)
    names = [m.name for p in parts for m in tarfile.open(p).getmembers()]
    # the large file travels as chunks of half a part each
    assert sorted(names) == sorted([f"x/{p.name}" for p in files[:7]] + [f"x/f7.bin.split_{k:03d}" for k in range(6)])
    out = tmp_path / "extracted"
    for p in reversed(parts):  # any order
        tarfile.open(p).extractall(out, filter="data")
    assert g.join_split_files(out) == [out / "x" / "f7.bin"]
    assert all((out / "x" / p.name).read_bytes() == p.read_bytes() for p in files)
    assert sorted(q.name for q in (out / "x").iterdir()) == sorted(p.name for p in files)  # no chunk left


def test_join_refuses_incomplete_chunks(tmp_path):
    g = load_script()
    (tmp_path / "a.pth.split_000").write_bytes(b"x")
    (tmp_path / "a.pth.split_002").write_bytes(b"z")
    with pytest.raises(SystemExit, match="not complete"):
        g.join_split_files(tmp_path)
    assert not (tmp_path / "a.pth").exists() and (tmp_path / "a.pth.split_000").exists()


def test_hand_back_returns_parts_in_order_within_the_machines_limits(tmp_path):
    g = load_script()
    parts = []
    for name, size in [("bundle_1_results_1", 500), ("bundle_1_results_2", 400), ("bundle_2_curves_1", 300),
                       ("bundle_3_resume_1", 200), ("bundle_3_resume_2", 100)]:
        parts.append(tmp_path / f"{name}.tgz")
        parts[-1].write_bytes(b"x" * size)
    (tmp_path / "out").mkdir()
    # the byte limit stops at the third part; nothing after a part left behind comes back (the order is priority)
    returned, left = g.hand_back(parts, tmp_path / "out", max_files=6, max_bytes=1000)
    assert returned == ["bundle_1_results_1.tgz", "bundle_1_results_2.tgz"]
    assert left == [str(p) for p in parts[2:]]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == returned
    (tmp_path / "out2").mkdir()
    returned, left = g.hand_back(parts, tmp_path / "out2", max_files=3, max_bytes=1e9)  # the file limit
    assert returned == [p.name for p in parts[:3]] and left == [str(p) for p in parts[3:]]


def test_a_warm_started_run_trains_after_the_run_it_starts_from(tmp_path, monkeypatch):
    """Runs train side by side, but CMEDL_teacherAheadWarm waits for its pre-training run (CMEDL_noHint seed 0) and
    does not start where that one did not finish."""
    import argparse
    import threading
    gpu = load_script()
    order, lock = [], threading.Lock()

    class FakeRun:
        def __init__(self, method, seed):
            self.method, self.seed, self.budget, self.fold = method, seed, "benchCPU", 0
            self.trainer = f"{method}_{seed}"
            self.folder = tmp_path / self.trainer
            self.folder.mkdir()

    def fake_call(job, cmd, log):
        if "--predict" in map(str, cmd):
            return 0
        with lock:
            order.append(job.run_.trainer)
        if job.run_.method == "CMEDL_noHint" and not job.fail:
            time.sleep(0.3)  # the warm run would overtake it if it did not wait
            (job.run_.folder / "checkpoint_final.pth").write_text("x")
        return 0 if not job.fail else 1
    monkeypatch.setattr(gpu.Job, "_call", fake_call)
    a = argparse.Namespace(dataset_id=502, configuration="2d_bench", device="cpu", workdir=tmp_path)
    for fail in (False, True):
        order.clear()
        source = gpu.Job("CMEDL_noHint:benchCPU:0", FakeRun("CMEDL_noHint", 0), {}, tmp_path / f"s{fail}.log", a)
        warm = gpu.Job("CMEDL_teacherAheadWarm:benchCPU:3", FakeRun("CMEDL_teacherAheadWarm", 3 + fail), {},
                       tmp_path / f"w{fail}.log", a)
        source.fail = warm.fail = fail
        warm.after = source
        source.start()  # as main() does: the runs others wait for first
        warm.start()
        warm.join(5)
        source.join(5)
        if not fail:
            assert order == ["CMEDL_noHint_0", "CMEDL_teacherAheadWarm_3"] and warm.state == "done", warm.state
        else:
            assert order == ["CMEDL_noHint_0"] and warm.state.startswith("not started: its warm start")
        (tmp_path / "CMEDL_noHint_0").rename(tmp_path / f"old{fail}")


def test_final_validation_is_skipped_only_when_asked(monkeypatch):
    """gpu_benchmark.py's runs skip nnU-Net's validation of the fold (the environment variable); every other run of a
    benchmark trainer validates as nnU-Net does."""
    from nnunet_cmedl.training.experiment import ExperimentMixin

    class Base:
        def __init__(self):
            self.validated, self.log = [], []

        def perform_actual_validation(self, save_probabilities=False):
            self.validated.append(save_probabilities)

        def print_to_log_file(self, *args):
            self.log.append(" ".join(map(str, args)))

    class Trainer(ExperimentMixin, Base):
        pass

    for value, validates in ((None, True), ("0", True), ("1", False)):
        if value is None:
            monkeypatch.delenv("nnUNet_cmedl_skip_final_validation", raising=False)
        else:
            monkeypatch.setenv("nnUNet_cmedl_skip_final_validation", value)
        t = Trainer()
        t.perform_actual_validation(True)
        assert t.validated == ([True] if validates else []), value
        assert any("skipped" in line for line in t.log) != validates
