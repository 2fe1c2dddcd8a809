"""``nnunet_cmedl benchmark-speed``: seconds per training iteration and peak memory, plain nnU-Net vs. CMEDL variants.

All trainers run in ONE process, one after the other, with the same plans and configuration:
  - each is built like ``nnUNetv2_train`` builds it (``__init__`` + ``initialize()``, nnU-Net's compile rule and
    thread settings) and then times ``train_step`` on a fixed in-memory batch of the planned shapes (random CT,
    int16 labels with a foreground blob at every deep-supervision scale; CMEDL trainers get a random MRI batch of
    the same shape). Warm-up iterations are not timed; the table gives the median seconds per iteration.
  - peak memory per trainer: on CUDA the peak of ``torch.cuda.max_memory_allocated`` over building + iterations; on
    the CPU the peak increase of the process's anonymous resident memory (heap, tensors) over building +
    iterations (sampled every 5 ms).
  - ``--dataloaders``: also the median seconds per iteration with the trainer's real nnU-Net data loaders
    (``on_train_start``, incl. CMEDL's unpaired-MRI loader) and its ratio to the in-memory time; a ratio above
    1.05 means that data loading slows training down (flagged in the table).
  - ``--predict``: also the seconds of stock ``nnUNetv2_predict`` (no TTA) on a few raw images with each trainer's
    checkpoint: CMEDL checkpoints hold only the student for inference, so they should cost what plain nnU-Net costs.
    The seconds are those of the whole command, Python start-up and nnU-Net's worker processes included. The exit
    status is 1 if a prediction failed (its output is shown).

Plans come from ``-d DATASET [-p PLANS]`` ($nnUNet_preprocessed/DatasetXXX_Name/PLANS.json and dataset.json) or
from ``--plans FILE [--dataset-json FILE]`` (no data needed, e.g. plans written by nnUNetv2_plan_experiment for a
fingerprint). Nothing is written to your nnUNet_results: the trainers' output goes to a temporary folder that is
removed at the end. Ratios are relative to ``plain`` (or, without it, to the first method that ran). On the CPU,
torch uses all cores like nnUNetv2_train does, or OMP_NUM_THREADS threads where that is set; give the benchmark an
otherwise idle machine, since the trainers' times are only comparable under the same load.

Examples:
  nnunet_cmedl benchmark-speed -d 501 -c 3d_fullres --json speed_3d.json
  nnunet_cmedl benchmark-speed --plans nnUNetPlans.json -c 2d --methods plain cmedl --device cpu --iterations 3
"""
import argparse
import contextlib
import gc
import itertools
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from nnunet_cmedl.env import ext_trainer_value
from nnunet_cmedl.errors import UserInputError, first_line
from nnunet_cmedl.evaluation.tables import fmt, read_json, write_json
from mri_unpaired.nnunet_env import check_nnunet_version, find_dataset_name, require_env

METHODS = {"plain": "nnUNetTrainer", "cmedl": "nnUNetTrainerCMEDL", "cut": "nnUNetTrainerCMEDL_CUT",
           "fastcut": "nnUNetTrainerCMEDL_FastCUT"}
DEFAULT_METHODS = ["plain", "cmedl", "cut", "fastcut"]
LOADER_SLOW_RATIO = 1.05  # loader s/iter above this multiple of the in-memory s/iter: data loading is a bottleneck
GIB = 2 ** 30


# ---------------------------------------------------------------------------------------------------------- inputs
@dataclass
class PlansSource:
    plans_file: Path
    dataset_json_file: Path
    dataset_name: Optional[str]          # None with --plans: no data, no predict
    preprocessed_base: Optional[Path]    # $nnUNet_preprocessed/DatasetXXX_Name (with -d)


def resolve_source(a) -> PlansSource:
    if a.dataset is not None:
        root = Path(require_env("nnUNet_preprocessed")["nnUNet_preprocessed"])
        try:
            name = find_dataset_name(a.dataset)
        except ValueError:
            raise UserInputError(f"dataset {a.dataset!r}: give a dataset id (e.g. 4) or name (Dataset004_Name)") \
                from None
        base = root / name
        plans = base / f"{a.plans_identifier}.json"
        if not plans.is_file():
            raise UserInputError(f"{plans}: plans file not found (plans identifier {a.plans_identifier!r}); run "
                                 f"nnUNetv2_plan_and_preprocess -d {a.dataset} first or pass the right -p")
        return PlansSource(plans, base / "dataset.json", name, base)
    plans = Path(a.plans_file)
    if not plans.is_file():
        raise UserInputError(f"{plans}: plans file not found")
    dataset_json = Path(a.dataset_json) if a.dataset_json else plans.parent / "dataset.json"
    if not dataset_json.is_file():
        raise UserInputError(f"{dataset_json}: dataset.json not found"
                             + ("" if a.dataset_json else " beside the plans file; pass --dataset-json FILE"))
    return PlansSource(plans, dataset_json, None, None)


def load_plans(source: PlansSource, configuration: str) -> tuple:
    plans = read_json(source.plans_file, "plans file")
    dataset_json = read_json(source.dataset_json_file, "dataset.json")
    if not isinstance(plans, dict) or not isinstance(plans.get("configurations"), dict):
        raise UserInputError(f"{source.plans_file}: not an nnU-Net plans file (no 'configurations')")
    if configuration not in plans["configurations"]:
        raise UserInputError(f"{source.plans_file}: no configuration {configuration!r} "
                             f"(available: {', '.join(plans['configurations'])})")
    return plans, dataset_json


def find_trainer_class(name: str):
    """(class, None) or (None, why), by method alias or trainer class name (our trainers first, then nnU-Net's)."""
    from nnunet_cmedl.inference.cmedl_model import find_trainer_class as lookup
    class_name = METHODS.get(name, name)
    cls = lookup(class_name)
    return (cls, None) if cls is not None else (None, f"trainer class {class_name} not found in nnunet_cmedl.training "
                                                      f"or nnU-Net's trainer lookup")


class PeakMemory:
    """Peak memory increase over the start: CUDA allocator peak, or resident memory sampled by a thread (CPU)."""

    def __init__(self, device):
        import torch
        self.torch, self.cuda = torch, device.type == "cuda"
        self.peak = self.base = 0
        self._stop = threading.Event()
        self._thread = None

    @staticmethod
    def rss() -> Optional[int]:
        """Anonymous resident memory (resident - shared pages of /proc/self/statm): the heap and tensors, without the
        pages of shared libraries that the first use of a kernel maps in."""
        try:
            with open("/proc/self/statm") as f:
                fields = f.read().split()
            return (int(fields[1]) - int(fields[2])) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, IndexError):
            return None

    def start(self):
        if self.cuda:
            self.torch.cuda.synchronize()
            self.base = self.torch.cuda.memory_allocated()
            self.torch.cuda.reset_peak_memory_stats()
        else:
            self.base = self.peak = self.rss()
            if self.base is not None:
                self._thread = threading.Thread(target=self._sample, daemon=True)
                self._thread.start()
        return self

    def _sample(self):
        while not self._stop.wait(0.005):
            r = self.rss()
            if r is not None and r > self.peak:
                self.peak = r

    def stop(self) -> Optional[float]:
        """Peak increase in GiB (None where it cannot be measured); it can be called more than once."""
        if self.cuda:
            self.torch.cuda.synchronize()
            return (self.torch.cuda.max_memory_allocated() - self.base) / GIB
        if self._thread is None:
            return None
        self._stop.set()
        self._thread.join()
        r = self.rss()
        return (max(self.peak, r or 0) - self.base) / GIB


def release_memory(device) -> None:
    """Give the memory of a freed trainer back, so that the next trainer's peak starts from a clean slate."""
    import torch
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    try:  # glibc keeps freed heap memory in the process; hand it back to the OS so that RSS peaks stay comparable
        import ctypes
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    try:  # dynamo caches compiled code per code object and does not guard on forward hooks (pytorch issue 117758):
        # a CMEDL trainer built after a compiled plain one would lose its hint hooks. Start each trainer afresh.
        torch._dynamo.reset()
    except Exception:
        pass


def timed_steps(trainer, batches, warmup: int, iterations: int, cuda: bool) -> list:
    """Seconds per ``train_step`` (with fetching the batch from ``batches``) for the timed iterations."""
    import torch
    times = []
    for i in range(warmup + iterations):
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        trainer.train_step(next(batches))
        if cuda:
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return times


def deep_supervision_targets(full, scales) -> list:
    """A target (B, C, *patch) at every deep-supervision scale, exactly as nnU-Net's DownsampleSegForDSTransform
    makes them: nearest-exact to round(patch * scale), in the target's dtype (``full`` itself at scale 1)."""
    from torch.nn.functional import interpolate
    return [full if all(s == 1 for s in scale) else
            interpolate(full.float(), [round(p * s) for p, s in zip(full.shape[2:], scale)],
                        mode="nearest-exact").to(full.dtype)
            for scale in scales]


def make_batch(trainer, seed: int = 0) -> dict:
    """A batch like nnU-Net's loader gives: float32 data (B, C, *patch), int16 targets per deep-supervision scale."""
    import torch
    g = torch.Generator().manual_seed(seed)
    patch = [int(p) for p in trainer.configuration_manager.patch_size]
    b = trainer.batch_size
    data = torch.randn((b, trainer.num_input_channels, *patch), generator=g)
    lm = trainer.label_manager
    channels = len(lm.foreground_regions) if lm.has_regions else 1
    label = 1 if lm.has_regions else lm.foreground_labels[0]
    axes = torch.meshgrid(*[torch.linspace(-1, 1, p) for p in patch], indexing="ij")
    blob = sum(x ** 2 for x in axes) <= 0.5 ** 2  # an ellipsoid, half the patch wide: Dice is not degenerate
    full = (blob.to(torch.int16) * label).expand(b, channels, *patch).contiguous()
    scales = trainer._get_deep_supervision_scales()
    target = full if scales is None else deep_supervision_targets(full, scales)
    batch = {"data": data, "target": target}
    if trainer.device.type == "cuda":  # nnU-Net's loaders pin memory on CUDA
        batch = {"data": data.pin_memory(),
                 "target": [t.pin_memory() for t in target] if isinstance(target, list) else target.pin_memory()}
    return batch


def is_cmedl(trainer) -> bool:
    return hasattr(trainer, "dataloader_mri")


def mri_batch(trainer, seed: int = 1):
    import torch
    g = torch.Generator().manual_seed(seed)
    patch = [int(p) for p in trainer.configuration_manager.patch_size]
    mri = torch.randn((trainer.batch_size, getattr(trainer, "mri_num_channels", 1), *patch), generator=g)
    return mri.pin_memory() if trainer.device.type == "cuda" else mri


def has_preprocessed_data(folder) -> bool:
    return folder is not None and os.path.isdir(folder) and any(os.scandir(folder))


@contextlib.contextmanager
def quiet(verbose: bool):
    """nnU-Net's trainers print a lot (citation, plans, log lines): keep stdout for the table unless --verbose."""
    if verbose:
        with contextlib.redirect_stdout(sys.stderr):
            yield
        return
    with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
        yield


# ---------------------------------------------------------------------------------------------------------- one row
def benchmark_trainer(cls, method: str, source: PlansSource, configuration: str, device, a, dummy_folder: Path,
                      checkpoint_needed: bool) -> dict:
    import torch
    row = {"method": method, "trainer": cls.__name__, "status": "ok", "note": None}
    plans, dataset_json = load_plans(source, configuration)
    plans["continue_training"] = False  # run_training's key, popped by nnUNetTrainer.__init__
    cuda = device.type == "cuda"
    release_memory(device)
    memory = PeakMemory(device).start()
    trainer = None
    try:
        with quiet(a.verbose):
            trainer = cls(plans, configuration, 0, dataset_json, device=device)
            if a.dataset is None or not has_preprocessed_data(trainer.preprocessed_dataset_folder):
                # initialize() only reads the file type of the preprocessed folder; no data is needed in memory
                trainer.preprocessed_dataset_folder = str(dummy_folder)
            trainer.initialize()
            row["compiled"] = bool(trainer._do_i_compile())
            row["batch_size"] = int(trainer.batch_size)
            row["patch_size"] = [int(p) for p in trainer.configuration_manager.patch_size]
            batch = make_batch(trainer)
            if is_cmedl(trainer):
                trainer.dataloader_mri = itertools.repeat({"data": mri_batch(trainer)})
            trainer.on_train_epoch_start()
            times = timed_steps(trainer, itertools.repeat(batch), a.warmup, a.iterations, cuda)
        row["peak_memory_gib"] = memory.stop()
        row["s_per_iter"] = statistics.median(times)
        row["times"] = times
        del batch
        if a.dataloaders:
            with quiet(a.verbose):
                trainer.on_train_start()  # nnU-Net's loaders (and CMEDL's MRI loader); writes into the temp results
                try:
                    loader_times = timed_steps(trainer, trainer.dataloader_train, a.warmup, a.iterations, cuda)
                finally:
                    trainer.on_train_end()  # stops the workers (and writes checkpoint_final.pth, in the temp folder)
            row["loader_s_per_iter"] = statistics.median(loader_times)
            row["loader_times"] = loader_times
            row["loader_ratio"] = row["loader_s_per_iter"] / row["s_per_iter"]
            row["loader_bound"] = row["loader_ratio"] > LOADER_SLOW_RATIO
        if checkpoint_needed:
            with quiet(a.verbose):
                os.makedirs(trainer.output_folder, exist_ok=True)
                trainer.save_checkpoint(os.path.join(trainer.output_folder, "checkpoint_final.pth"))
                with open(os.path.join(trainer.output_folder_base, "plans.json"), "w") as f:
                    json.dump(trainer.plans_manager.plans, f, indent=4, sort_keys=False)
                with open(os.path.join(trainer.output_folder_base, "dataset.json"), "w") as f:
                    json.dump(trainer.dataset_json, f, indent=4, sort_keys=False)
            row["plans_name"] = trainer.plans_manager.plans_name
            row["dataset_name"] = trainer.plans_manager.dataset_name
    except getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError) as e:  # "does not fit" is a result
        row.update(status="out of memory", note=first_line(e))
    finally:
        memory.stop()
        del trainer
        release_memory(device)
    return row


# ---------------------------------------------------------------------------------------------------------- predict
def pick_cases(raw_dataset: Path, dataset_json: dict, n: int, dest: Path) -> list:
    images = next((raw_dataset / f for f in ("imagesTs", "imagesTr") if (raw_dataset / f).is_dir()), None)
    if images is None:
        raise UserInputError(f"{raw_dataset}: no imagesTs or imagesTr folder for --predict")
    ending = dataset_json.get("file_ending", ".nii.gz")
    files = sorted(p for p in images.iterdir() if p.name.endswith(ending) and len(p.name) > len(ending) + 5)
    cases = sorted({p.name[:-len(ending) - 5] for p in files})[:n]
    if not cases:
        raise UserInputError(f"{images}: no images ending in {ending} (dataset.json's file_ending) for --predict")
    dest.mkdir(parents=True)
    for p in files:
        if p.name[:-len(ending) - 5] in cases:
            shutil.copy2(p, dest / p.name)
    return cases


def predict_seconds(row: dict, source: PlansSource, configuration: str, device, inputs: Path, out: Path,
                    results: Path) -> None:
    exe = Path(sys.executable).parent / "nnUNetv2_predict"
    cmd = [str(exe) if exe.exists() else (shutil.which("nnUNetv2_predict") or "nnUNetv2_predict"),
           "-i", str(inputs), "-o", str(out), "-d", row["dataset_name"], "-c", configuration, "-f", "0",
           "-tr", row["trainer"], "-p", row["plans_name"], "--disable_tta", "-device", device.type,
           "-npp", "1", "-nps", "1", "-chk", "checkpoint_final.pth"]
    env = dict(os.environ, nnUNet_results=str(results),
               nnUNet_extTrainer=ext_trainer_value(os.environ.get("nnUNet_extTrainer")))
    t0 = time.perf_counter()
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if r.returncode != 0:
        tail = (r.stderr.strip() or r.stdout.strip()).splitlines()[-1:] or ["no output"]
        row["predict_error"] = f"nnUNetv2_predict exited with {r.returncode}: {tail[0]}"
        print(f"    predict {row['method']}: FAILED ({row['predict_error']})\n    $ {' '.join(cmd)}\n"
              + "\n".join("    | " + line for line in (r.stdout + r.stderr).strip().splitlines()[-15:]),
              file=sys.stderr, flush=True)
    else:
        row["predict_s"] = seconds
        row["predict_command"] = " ".join(cmd)


# ---------------------------------------------------------------------------------------------------------- output
def cpu_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def load_average() -> Optional[float]:
    try:
        return os.getloadavg()[0]
    except (OSError, AttributeError):
        return None


def device_description(device) -> str:
    import torch
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            name = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), name)
    except OSError:
        pass
    return f"cpu ({name}, {cpu_cores()} cores, torch threads: {torch.get_num_threads()})"


def ratio(x, base):
    return None if x is None or not base else x / base


def markdown_table(headers, rows) -> str:
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join("---" for _ in headers) + " |"]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def format_report(meta: dict, rows: list, dataloaders: bool, predict: bool) -> str:
    headers = ["method", "trainer", "s/iter (median)", f"ratio to {meta['baseline'] or 'plain'}", "peak memory GiB",
               "memory ratio"]
    if dataloaders:
        headers += ["loader s/iter", "loader / in-memory"]
    if predict:
        headers += ["predict s"]
    headers += ["note"]
    table = []
    for r in rows:
        cells = [r["method"], r["trainer"], fmt(r.get("s_per_iter")), fmt(r.get("time_ratio"), 2),
                 fmt(r.get("peak_memory_gib")), fmt(r.get("memory_ratio"), 2)]
        if dataloaders:
            lr = r.get("loader_ratio")
            cells += [fmt(r.get("loader_s_per_iter")),
                      fmt(lr, 2) + (f" (loader-bound: > {LOADER_SLOW_RATIO})" if r.get("loader_bound") else "")]
        if predict:
            cells += ["failed" if r.get("predict_error") else fmt(r.get("predict_s"), 1)]
        cells += [r.get("note") or r.get("predict_error") or ""]
        table.append(cells)
    m = meta
    header = (f"Training speed, {m['device']}; torch {m['torch']}, nnunetv2 {m['nnunetv2']}; configuration "
              f"{m['configuration']} (patch {m['patch_size']}, batch {m['batch_size']}) from {m['plans_file']}; "
              f"compile {'on' if m['compiled'] else 'off'}, AMP {'on' if m['amp'] else 'off'}; "
              f"{m['warmup']} warm-up + {m['iterations']} timed iterations, in-memory batch; ratios to "
              f"{m['baseline'] or '-'}; peak memory: {m['memory_kind']}")
    busy = m.get("load_average_start")  # (at the end the load is the benchmark's own)
    if busy is not None and busy > 1 + 0.5 * cpu_cores():
        header += f"\n\nNote: the machine was busy at the start (load average {busy:.1f} on {cpu_cores()} cores)."
    return header + "\n\n" + markdown_table(headers, table)


# ---------------------------------------------------------------------------------------------------------- main
def parse_args(argv):
    p = argparse.ArgumentParser(prog="nnunet_cmedl benchmark-speed", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("-d", "--dataset", help="dataset id or name: plans and dataset.json from $nnUNet_preprocessed")
    src.add_argument("--plans", dest="plans_file", help="a plans file (no data needed); instead of -d")
    p.add_argument("-p", "--plans-identifier", default="nnUNetPlans", help="with -d: plans identifier (nnUNetPlans)")
    p.add_argument("--dataset-json", help="with --plans: its dataset.json (default: dataset.json beside the plans)")
    p.add_argument("-c", "--configuration", required=True, help="configuration of the plans, e.g. 3d_fullres")
    p.add_argument("--methods", nargs="+", default=DEFAULT_METHODS,
                   help="what to compare: " + ", ".join(f"{k}={v}" for k, v in METHODS.items())
                        + ", or any trainer class name (default: %(default)s); missing classes are skipped")
    p.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda if available, else cpu")
    p.add_argument("--warmup", type=int, default=3, help="untimed iterations per trainer (default 3)")
    p.add_argument("--iterations", type=int, default=10, help="timed iterations per trainer (default 10)")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="torch.compile on/off (sets nnUNet_compile); default: nnU-Net's rule (nnUNet_compile, on "
                        "unless it says otherwise; never on the CPU)")
    p.add_argument("--dataloaders", action="store_true",
                   help="also time with nnU-Net's real data loaders (needs -d and preprocessed data)")
    p.add_argument("--predict", action="store_true",
                   help="also time stock nnUNetv2_predict (no TTA) with each trainer's checkpoint on a few raw "
                        "images (needs -d and $nnUNet_raw/DatasetXXX/imagesTs or imagesTr)")
    p.add_argument("--predict-cases", type=int, default=2, help="cases for --predict (default 2)")
    p.add_argument("--json", type=Path, help="also write the table and its settings to this JSON file")
    p.add_argument("--verbose", action="store_true", help="show nnU-Net's own output (on stderr)")
    a = p.parse_args(argv)
    if a.warmup < 0 or a.iterations < 1 or a.predict_cases < 1:
        raise UserInputError("--warmup must be >= 0, --iterations and --predict-cases >= 1")
    for flag, given in (("--dataloaders", a.dataloaders), ("--predict", a.predict)):
        if given and a.dataset is None:
            raise UserInputError(f"{flag} needs -d DATASET (preprocessed data / raw images); --plans gives only plans")
    if a.json is not None and a.json.is_dir():
        raise UserInputError(f"--json {a.json}: is a folder; give a file name")
    if a.dataset_json and a.dataset is not None:
        raise UserInputError("--dataset-json goes with --plans; with -d the dataset's own dataset.json is used")
    return a


def main(argv=None) -> int:
    a = parse_args(argv)
    check_nnunet_version()
    source = resolve_source(a)
    plans, dataset_json = load_plans(source, a.configuration)

    import torch
    from importlib.metadata import version
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    if a.device == "cuda" and not torch.cuda.is_available():
        raise UserInputError("--device cuda: torch sees no CUDA device (use --device cpu)")
    device = torch.device(a.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    cm = PlansManager(plans).get_configuration(a.configuration)
    if a.dataloaders:
        folder = source.preprocessed_base / cm.data_identifier
        if not has_preprocessed_data(folder):
            raise UserInputError(f"{folder}: no preprocessed data for configuration {a.configuration} "
                                 f"(--dataloaders); run nnUNetv2_preprocess -d {a.dataset} -c {a.configuration}")
    raw_dataset = None
    if a.predict:
        raw_dataset = Path(require_env("nnUNet_raw")["nnUNet_raw"]) / source.dataset_name
        if not raw_dataset.is_dir():
            raise UserInputError(f"{raw_dataset}: raw dataset folder not found (--predict needs its images)")

    # like nnUNetv2_train: all cores on the CPU (unless OMP_NUM_THREADS says otherwise: on a shared machine torch's
    # threads then do not fight over the cores), one thread and cudnn autotuning on CUDA
    if device.type == "cpu":
        omp = os.environ.get("OMP_NUM_THREADS", "")
        torch.set_num_threads(int(omp) if omp.isdigit() and int(omp) > 0 else (os.cpu_count() or 1))
    else:
        torch.set_num_threads(1)
        with contextlib.suppress(RuntimeError):
            torch.set_num_interop_threads(1)
        torch.backends.cudnn.deterministic = False
        torch.backends.cudnn.benchmark = True

    trainer_classes = [find_trainer_class(m) for m in a.methods]
    if all(cls is None for cls, _ in trainer_classes):
        raise UserInputError(f"--methods {' '.join(a.methods)}: none of these trainer classes exists in "
                             f"nnunet_cmedl.training or nnunetv2 ({trainer_classes[0][1]})")

    saved_env = {k: os.environ.get(k) for k in ("nnUNet_results", "nnUNet_compile")}
    tmp = Path(tempfile.mkdtemp(prefix="nnunet_cmedl_speed_"))
    try:
        os.environ["nnUNet_results"] = str(tmp / "nnUNet_results")  # the trainers write here, never to the user's
        if a.compile is not None:
            os.environ["nnUNet_compile"] = "true" if a.compile else "false"
            if a.compile and device.type == "cpu":
                print("note: --compile has no effect on the CPU (nnU-Net never compiles there)", file=sys.stderr)
        dummy = tmp / "no_data" / cm.data_identifier
        dummy.mkdir(parents=True)
        (dummy / "placeholder.b2nd").touch()

        load_start = load_average()
        if load_start is not None and load_start > 1 + 0.5 * cpu_cores():
            print(f"note: the machine is busy (load average {load_start:.1f} on {cpu_cores()} cores): other processes "
                  f"slow the trainers down unevenly; compare times measured on an otherwise idle machine",
                  file=sys.stderr, flush=True)
        cases = pick_cases(raw_dataset, dataset_json, a.predict_cases, tmp / "predict_input") if a.predict else None
        rows = []
        n = len(a.methods)
        for i, (method, (cls, why)) in enumerate(zip(a.methods, trainer_classes), 1):
            if cls is None:
                print(f"[{i}/{n}] {method}: skipped, {why}", file=sys.stderr, flush=True)
                rows.append({"method": method, "trainer": METHODS.get(method, method), "status": "skipped",
                             "note": why})
                continue
            print(f"[{i}/{n}] {method} ({cls.__name__}): {a.warmup} warm-up + {a.iterations} timed iterations"
                  + (", then with the data loaders" if a.dataloaders else "") + " ...", file=sys.stderr, flush=True)
            t0 = time.time()
            row = benchmark_trainer(cls, method, source, a.configuration, device, a, dummy, a.predict)
            rows.append(row)
            print(f"[{i}/{n}] {method}: {row['status']}, {fmt(row.get('s_per_iter'))} s/iter, peak "
                  f"{fmt(row.get('peak_memory_gib'))} GiB"
                  + (f", with loaders {fmt(row.get('loader_s_per_iter'))} s/iter" if a.dataloaders else "")
                  + f" ({time.time() - t0:.0f} s)", file=sys.stderr, flush=True)
        ran = [r for r in rows if r["status"] == "ok"]
        if a.predict and ran:
            inputs = tmp / "predict_input"
            print(f"predicting {len(cases)} case(s) with stock nnUNetv2_predict per trainer ...", file=sys.stderr,
                  flush=True)
            for r in ran:
                predict_seconds(r, source, a.configuration, device, inputs, tmp / "predictions" / r["method"],
                                tmp / "nnUNet_results")

        base = next((r for r in ran if r["method"] == "plain" or r["trainer"] == "nnUNetTrainer"),
                    ran[0] if ran else None)
        for r in rows:
            r["time_ratio"] = ratio(r.get("s_per_iter"), base and base.get("s_per_iter"))
            r["memory_ratio"] = ratio(r.get("peak_memory_gib"), base and base.get("peak_memory_gib"))
            if a.predict:
                r["predict_ratio"] = ratio(r.get("predict_s"), base and base.get("predict_s"))
        first = ran[0] if ran else {}
        meta = {"device": device_description(device), "device_type": device.type, "torch": torch.__version__,
                "nnunetv2": version("nnunetv2"), "python": platform.python_version(),
                "configuration": a.configuration, "patch_size": first.get("patch_size", list(cm.patch_size)),
                "batch_size": first.get("batch_size", cm.batch_size), "plans_file": str(source.plans_file),
                "dataset": source.dataset_name, "compiled": bool(first.get("compiled")),
                "amp": device.type == "cuda", "warmup": a.warmup, "iterations": a.iterations,
                "baseline": base["method"] if base else None,
                "memory_kind": "CUDA max_memory_allocated" if device.type == "cuda"
                else "increase of anonymous resident memory (RSS)",
                "dataloaders": a.dataloaders, "predict": a.predict,
                "predict_cases": a.predict_cases if a.predict else None,
                "nnUNet_n_proc_DA": os.environ.get("nnUNet_n_proc_DA"),
                "load_average_start": load_start, "load_average_end": load_average(),
                "date": time.strftime("%Y-%m-%d %H:%M:%S"),
                "command": "nnunet_cmedl benchmark-speed " + " ".join(sys.argv[1:] if argv is None else argv)}
        print(format_report(meta, rows, a.dataloaders, a.predict), flush=True)
        if a.json:
            write_json(a.json, {"meta": meta, "rows": rows}, overwrite=True)
            print(f"\nwritten: {a.json}", flush=True)
    finally:
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        shutil.rmtree(tmp, ignore_errors=True)
    return 1 if any(r.get("predict_error") for r in rows) else 0
