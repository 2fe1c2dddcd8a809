#!/usr/bin/env python
"""Train `nnunet_cmedl benchmark` runs side by side on one GPU, predict the test cases with every checkpoint, and
pack what the benchmark's evaluation needs into tarballs that `nnunet_cmedl benchmark --no-train` reads elsewhere.

Why side by side: the benchmark's runs (64x64 patches, batch 8, in-process data augmentation) keep a GPU mostly
idle, so a dozen of them train at once on a 16-core GPU machine. Why elsewhere: the metrics read images with
SimpleITK, which a bare GPU machine may lack; the predictions are what the GPU is for. (Without SimpleITK, nnU-Net
must read and write images with nibabel: set "image_reader_writer": "NibabelIO" in the plans.json of W before
training; dataset.json's "overwrite_image_reader_writer" alone does not reach nnU-Net's final validation.)

Usage:
  here:     nnunet_cmedl benchmark --workdir W --prepare-only          (data, plans, MRI, splits_final.json)
  GPU:      python scripts/gpu_benchmark.py --workdir W --out OUT --deadline 480 \\
                --runs nnU-Net:benchCPU:0 CMEDL:benchCPU:0 nnU-Net_4xLabels:benchCPU:0:5 ...
  here:     for t in OUT/bundle_*.tgz; do tar xzf $t -C W; done   (a run's tarballs, any order)
            python scripts/gpu_benchmark.py --join W                 (files that travelled in chunks, put back)
            nnunet_cmedl benchmark --workdir W --no-train --methods nnU-Net CMEDL ... --seeds 0 1 2

A run is METHOD:BUDGET:SEED[:NICE] (METHOD from training/benchmark_trainers.py's METHODS, or nnU-Net_4xLabels for
the 4x-label reference on fold 1; BUDGET benchCPU, benchLong, benchSmoke, ...; NICE: CPU priority, higher runs
later when the CPU is short). Each run trains through the stock nnUNetv2_train (nnUNet_n_proc_DA=0: batches in the
trainer's process, seeded; no torch.compile; no nnU-Net validation of the fold), then its checkpoints predict the
test images, the final one first.
At --deadline seconds whatever still runs is stopped and reported as unfinished; then the bundles are written into
W/gpu_benchmark_bundles/, in parts of at most ~14 MB (a GPU machine returns files of limited size), most needed first:
  bundle_1_results_<N>.tgz   predictions/<trainer>_fold<F>/<checkpoint>/ with their completion markers (and, of a
                             CMEDL run, teacher_on_pmri_final/: its teacher on the pMRI of the test CTs),
                             gpu_benchmark_logs/ (each run's output), per run nnU-Net's logs and validation summary,
                             and its checkpoint_final.pth (or, stopped while training, checkpoint_latest.pth) stripped
                             to what the evaluation reads (epoch, logs, trainer; the student's weights only where its
                             predictions did not finish);
  bundle_2_curves_<N>.tgz    the light curve checkpoints whose predictions did not finish, progress plots;
  bundle_3_resume_<N>.tgz    of a run stopped while training, its whole checkpoint_latest.pth (`benchmark` resumes it
                             with --c; a file larger than a part travels in chunks: --join);
and copied into --out in that order while they fit the machine's return limits (--return-files, --return-mib;
gpu_benchmark.json and the console log count as two files); gpu_benchmark.json says which parts came back and which
stayed on the machine (fetch them with a further call while it is warm).
  gpu_benchmark.json      device, timings, the state of every run, returned and left-behind parts.
"""
import argparse
import glob
import io
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

STRIPPED_KEYS = ("trainer_name", "init_args", "current_epoch", "logging", "_best_ema",
                 "inference_allowed_mirroring_axes")


def parse_run(spec: str):
    parts = spec.split(":")
    if len(parts) not in (3, 4):
        raise SystemExit(f"--runs {spec}: expected METHOD:BUDGET:SEED[:NICE]")
    return parts[0], parts[1], int(parts[2]), int(parts[3]) if len(parts) == 4 else 0


def setting(workdir: Path, device: str, dataset_id: int, configuration: str):
    from nnunet_cmedl import pipeline
    steps = pipeline.make_steps(workdir, device)
    raw = next(Path(steps.env["nnUNet_raw"]).glob(f"Dataset{dataset_id:03d}_*"))
    return steps, pipeline.PreparedDataset(dataset_id, raw.name, raw, configuration)


def make_run(spec, steps, data):
    from nnunet_cmedl.benchmark import REFERENCE, Run
    method, budget, seed, _ = parse_run(spec)
    return Run(method, seed, 1 if method == REFERENCE else 0, budget, data, steps)


def predict(a) -> int:
    """--predict SPEC: every checkpoint of one finished run on the test images, the final one first."""
    from nnunet_cmedl.evaluation import benchmark_report
    steps, data = setting(a.workdir, a.device, a.dataset_id, a.configuration)
    run = make_run(a.predict, steps, data)
    for i, (epoch, ck) in enumerate(reversed(benchmark_report.checkpoints(run, a.workdir))):
        t = time.time()
        benchmark_report.predict_checkpoint(run, ck, data.raw_folder / "imagesTs",
                                            benchmark_report.prediction_folder(a.workdir, run, ck), a.device)
        print(f"{run.trainer} fold {run.fold} {ck} (epoch {epoch}): predicted in {time.time() - t:.1f} s", flush=True)
        if i == 0:  # after the final checkpoint: a CMEDL run's teacher on pMRI (its weights do not travel back)
            t = time.time()
            teacher = benchmark_report.predict_teacher_on_pmri(run, data.raw_folder / "imagesTs", a.workdir, a.device)
            if teacher is not None:
                shutil.rmtree(teacher / "pmri_and_teacher", ignore_errors=True)  # the pMRI images: too big to return
                print(f"{run.trainer} fold {run.fold} teacher on pMRI: predicted in {time.time() - t:.1f} s", flush=True)
    return 0


class Job(threading.Thread):
    def __init__(self, spec, run, env, log: Path, a):
        super().__init__(daemon=True)
        self.spec, self.run_, self.env, self.log, self.a = spec, run, env, log, a
        self.nice = parse_run(spec)[3]
        self.proc, self.state, self.times, self.stopped = None, "waiting", {}, False
        self.after = None  # the job whose run this one warm-starts from (benchmark_trainers.WARM_STARTS)

    def _call(self, cmd, f) -> int:
        if self.stopped:
            return -1
        self.proc = subprocess.Popen([str(c) for c in cmd], env=self.env, stdout=f, stderr=subprocess.STDOUT,
                                     start_new_session=True, preexec_fn=lambda: os.nice(self.nice))
        return self.proc.wait()

    def run(self):
        r, a = self.run_, self.a
        if self.after is not None:  # a warm-started run trains once the run it starts from has finished
            self.state = "waiting for its warm start"
            self.after.join()
            if not (self.after.run_.folder / "checkpoint_final.pth").is_file():
                self.state = f"not started: its warm start {self.after.spec} did not finish"
                return
        with open(self.log, "w") as f:
            self.state, t = "training", time.time()
            train = shutil.which("nnUNetv2_train") or Path(sys.executable).parent / "nnUNetv2_train"
            rc = self._call([train, a.dataset_id, a.configuration, r.fold,
                             "-tr", r.trainer, "-device", a.device], f)
            self.times["train_s"] = time.time() - t
            if rc != 0 and not self.stopped and (r.folder / "checkpoint_final.pth").is_file():
                # trained; what failed came after checkpoint_final.pth (nnU-Net's final validation, e.g. an image
                # writer the machine lacks): the test predictions can still be made
                self.times["failed_after_checkpoint_final"] = rc
            elif rc != 0:
                self.state = "stopped while training" if self.stopped else f"training failed ({rc})"
                return
            self.state, t = "predicting", time.time()
            rc = self._call([sys.executable, __file__, "--predict", self.spec, "--workdir", a.workdir,
                             "--device", a.device, "-d", a.dataset_id, "-c", a.configuration], f)
            self.times["predict_s"] = time.time() - t
            self.state = "done" if rc == 0 else ("stopped while predicting" if self.stopped
                                                 else f"prediction failed ({rc})")

    def stop(self):
        self.stopped = True
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)


def strip_checkpoint(src: Path, dst: Path, keep_weights: bool) -> None:
    import torch
    from nnunet_cmedl.checkpoint_io import load_checkpoint
    checkpoint = load_checkpoint(src)
    light = {k: checkpoint[k] for k in STRIPPED_KEYS if k in checkpoint}
    if keep_weights:
        light["network_weights"] = checkpoint["network_weights"]
    light["stripped_by"] = ("scripts/gpu_benchmark.py: optimiser, scaler and CMEDL's other networks removed for "
                            "transfer" + ("" if keep_weights else "; the student's weights too (its test "
                                                                 "predictions are in predictions/)"))
    dst.parent.mkdir(parents=True, exist_ok=True)
    torch.save(light, dst)


SPLIT_SUFFIX = ".split_"


class SplitTar:
    """tar.gz parts of at most about ``limit`` bytes each (a GPU machine returns files of limited size). A file larger
    than a part travels as chunks ``<name>.split_000``, ``.split_001``, ... (``join_split_files`` puts it back)."""

    def __init__(self, stem: Path, limit: float = 14e6):
        self.stem, self.limit, self.n, self.tar = stem, limit, 0, None

    def _add(self, name: str, size: int, add) -> None:
        if self.tar is None or os.path.getsize(self.tar.name) + size > self.limit:
            self.close()
            self.n += 1
            self.tar = tarfile.open(f"{self.stem}_{self.n}.tgz", "w:gz")
        add(self.tar)
        self.tar.fileobj.flush()

    def add(self, path: Path, name: str) -> None:
        size = path.stat().st_size
        if size <= self.limit:
            self._add(name, size, lambda tar: tar.add(path, name))
            return
        chunk = int(self.limit) // 2
        with open(path, "rb") as f:
            for k in range(math.ceil(size / chunk)):
                data = f.read(chunk)
                info = tarfile.TarInfo(f"{name}{SPLIT_SUFFIX}{k:03d}")
                info.size, info.mtime, info.mode = len(data), int(path.stat().st_mtime), 0o644
                self._add(info.name, len(data), lambda tar: tar.addfile(info, io.BytesIO(data)))

    def close(self) -> None:
        if self.tar is not None:
            self.tar.close()


def join_split_files(folder: Path) -> list:
    """Put back every file that SplitTar sent in chunks (after all parts were extracted into ``folder``)."""
    from mri_unpaired.atomic import atomic_file
    joined = []
    for first in sorted(folder.rglob(f"*{SPLIT_SUFFIX}000")):
        target = first.with_name(first.name[:-len(SPLIT_SUFFIX + "000")])
        chunks = sorted(first.parent.glob(glob.escape(target.name) + SPLIT_SUFFIX + "[0-9][0-9][0-9]"))
        if [c.name[-3:] for c in chunks] != [f"{k:03d}" for k in range(len(chunks))]:
            raise SystemExit(f"{target}: chunks {[c.name for c in chunks]} are not complete; extract every part first")
        with atomic_file(target, mode="wb") as out:
            for c in chunks:
                out.write(c.read_bytes())
        for c in chunks:
            c.unlink()
        joined.append(target)
    return joined


def bundle(jobs, a, staging: Path, bundles: Path) -> list:
    """Tarball parts in ``bundles``, most needed first: 1 results (predictions, logs, metadata, checkpoints stripped
    to the student's weights where predictions are missing), 2 curves (unpredicted curve checkpoints, progress
    plots), 3 resume (whole checkpoint_latest.pth of runs stopped while training). Returns the parts in that order."""
    from nnunet_cmedl.evaluation import benchmark_report
    results, curves, resume = (SplitTar(bundles / f"bundle_{k}") for k in ("1_results", "2_curves", "3_resume"))
    complete = lambda r, ck: (benchmark_report.prediction_folder(a.workdir, r, ck)  # noqa: E731
                              / benchmark_report.COMPLETE).is_file()
    for job in jobs:
        r = job.run_
        rel = r.folder.relative_to(a.workdir)
        if r.folder.is_dir():
            for p in sorted(r.folder.parent.glob("*.json")):  # dataset.json, plans.json: the predictor's
                results.add(p, str(rel.parent / p.name))
            for p in sorted(r.folder.iterdir()):
                if p.is_file() and p.suffix in (".json", ".txt"):
                    results.add(p, str(rel / p.name))
                elif p.is_file() and p.suffix == ".png":
                    curves.add(p, str(rel / p.name))
            summary = r.folder / "validation" / "summary.json"
            if summary.is_file():
                results.add(summary, str(rel / "validation" / "summary.json"))
            final, latest = r.folder / "checkpoint_final.pth", r.folder / "checkpoint_latest.pth"
            last = final if final.is_file() else latest
            if last.is_file():  # what the run ended with; the student's weights where its predictions are missing
                strip_checkpoint(last, staging / rel / last.name, keep_weights=not complete(r, last.name))
                results.add(staging / rel / last.name, str(rel / last.name))
            for ck in sorted(r.folder.glob("checkpoint_epoch_*.pth")):
                if not complete(r, ck.name):  # a curve checkpoint to be predicted elsewhere
                    curves.add(ck, str(rel / ck.name))
            if not final.is_file() and latest.is_file():
                # stopped while training: the whole latest checkpoint, so that `nnunet_cmedl benchmark` can resume
                # the run elsewhere (nnUNetv2_train --c); it replaces the stripped one when extracted after it
                resume.add(latest, str(rel / latest.name))
        folder = benchmark_report.run_predictions(a.workdir, r)
        for ck in sorted(folder.glob("*")) if folder.is_dir() else []:
            if (ck / benchmark_report.COMPLETE).is_file():
                for p in sorted(ck.iterdir()):
                    results.add(p, str(p.relative_to(a.workdir)))
    for p in sorted((a.workdir / "gpu_benchmark_logs").iterdir()):
        results.add(p, str(p.relative_to(a.workdir)))
    parts = []
    for tar in (results, curves, resume):
        tar.close()
        parts += [Path(f"{tar.stem}_{k}.tgz") for k in range(1, tar.n + 1)]
    return parts


def hand_back(parts: list, out: Path, max_files: int, max_bytes: float) -> tuple:
    """Copy the parts into ``out`` in order while they fit the machine's return limits; the rest stay behind."""
    returned, left, total = [], [], 0
    for part in parts:
        size = part.stat().st_size
        if not left and len(returned) < max_files and total + size <= max_bytes:
            shutil.copy2(part, out / part.name)
            returned.append(part.name)
            total += size
        else:
            left.append(str(part))
    return returned, left


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", type=Path, help="a workdir of nnunet_cmedl benchmark --prepare-only")
    p.add_argument("--out", type=Path, help="where the bundles go")
    p.add_argument("--runs", nargs="+", default=[], help="METHOD:BUDGET:SEED[:NICE] ...")
    p.add_argument("--deadline", type=float, default=480, help="seconds; runs still going are stopped")
    p.add_argument("--fail-fast", action="store_true", help="stop everything if a training fails in the first 150 s (a broken setup)")
    p.add_argument("--device", default="cuda")
    p.add_argument("-d", "--dataset-id", type=int, default=502)
    p.add_argument("-c", "--configuration", default="2d_bench")
    p.add_argument("--return-files", type=int, default=8, help="files the GPU machine returns from --out")
    p.add_argument("--return-mib", type=float, default=64, help="MiB the GPU machine returns from --out, in all")
    p.add_argument("--join", type=Path, metavar="W", help="after extracting the bundles into W: put back the files "
                   "that travelled in chunks, then exit")
    p.add_argument("--predict", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.join:
        for f in join_split_files(a.join):
            print(f"joined {f}")
        return 0
    if a.workdir is None:
        p.error("--workdir is required")
    a.workdir = a.workdir.resolve()
    if a.predict:
        return predict(a)
    t0 = time.time()
    steps, data = setting(a.workdir, a.device, a.dataset_id, a.configuration)
    a.out.mkdir(parents=True, exist_ok=True)
    env = dict(steps.env, nnUNet_n_proc_DA="0", nnUNet_compile="false", OMP_NUM_THREADS="1",
               nnUNet_cmedl_skip_final_validation="1",  # the test cases are predicted below
               PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    logs = a.workdir / "gpu_benchmark_logs"  # one per run, into bundle_runs.tgz (few files come back from a GPU)
    logs.mkdir(exist_ok=True)
    jobs = [Job(spec, make_run(spec, steps, data), env, logs / f"{spec.replace(':', '_')}.log", a)
            for spec in a.runs]
    from nnunet_cmedl.benchmark import Run
    from nnunet_cmedl.training.benchmark_trainers import warm_start_source
    for job in jobs:
        source = warm_start_source(job.run_.method, job.run_.budget, job.run_.fold)
        if source:  # the job of the same trainer class (method, budget and seed) and fold
            method, seed, budget, fold = source
            trainer = Run(method, seed, fold, budget, data, steps).trainer
            job.after = next((j for j in jobs if (j.run_.trainer, j.run_.fold) == (trainer, fold)), None)
    for job in sorted(jobs, key=lambda j: j.after is not None):  # a thread can be waited for once it has started
        job.start()
    while any(j.is_alive() for j in jobs) and time.time() - t0 < a.deadline:
        time.sleep(5)
        failed = [j.spec for j in jobs if j.state.startswith("training failed")]
        if failed and a.fail_fast and time.time() - t0 < 150:  # a broken setup, not one method's failure
            print(f"--fail-fast: training failed for {', '.join(failed)} (logs: {logs}); stopping", flush=True)
            break
        states = {}
        for j in jobs:
            states[j.state] = states.get(j.state, 0) + 1
        print(f"{time.time() - t0:6.0f} s: " + ", ".join(f"{k} {v}" for k, v in states.items()), flush=True)
    for job in jobs:
        job.stop()
    for job in jobs:
        job.join(timeout=30)
    bundles = a.workdir / "gpu_benchmark_bundles"
    shutil.rmtree(bundles, ignore_errors=True)
    bundles.mkdir()
    parts = bundle(jobs, a, a.workdir / "gpu_benchmark_staging", bundles)
    # the json and the console log come back too: 2 of the files the machine returns
    returned, left = hand_back(parts, a.out, a.return_files - 2, a.return_mib * 2 ** 20 - 2e6)
    import torch
    report = {"device": torch.cuda.get_device_name(0) if a.device.startswith("cuda") else a.device,
              "torch": torch.__version__, "seconds": time.time() - t0, "deadline": a.deadline,
              "runs": {j.spec: {"trainer": j.run_.trainer, "fold": j.run_.fold, "state": j.state, **j.times}
                       for j in jobs},
              "returned": returned, "left_on_machine": left,
              "fetch_the_rest": f"on the still-warm machine: cp <parts> $OUT (at most {a.return_files} per call)"}
    (a.out / "gpu_benchmark.json").write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))
    return 1 if any(j.state.startswith("training failed") for j in jobs) else 0


if __name__ == "__main__":
    sys.exit(main())
