"""``nnunet_cmedl preprocess-unpaired`` (and ``preprocess-mri``, the same with ``--modality MRI``): preprocess unpaired
volumes (MRI or CT of other patients, no labels) onto a planned configuration of the labelled dataset.

Each volume goes through nnU-Net's own ``DefaultPreprocessor.run_case`` (transpose, crop to nonzero, normalisation,
resampling to the configuration's spacing) with a copy of the plans whose configuration normalises as the unpaired
modality needs (``mri_unpaired.modality``: MRI z-score per image; CT nnU-Net's CT normalisation with statistics of the
unpaired set, computed on the first run and kept in the manifest) and reads with SimpleITK. Cases are stored like
nnU-Net's Blosc2 dataset (``<case>.b2nd`` + ``<case>.pkl``, chunked for the configuration's patch size; no
segmentation) in a sibling of the configuration's preprocessed folder (see ``mri_unpaired.paths``), with a
``manifest.json``.

Every input is checked before anything is written. A new output folder is built as a hidden temporary sibling and
renamed when complete; an update (new or changed files) preprocesses into a temporary sibling, then renames each
case into place and rewrites the manifest atomically. The input folder is only read.
"""
import argparse
import json
import multiprocessing
import os
import shutil
import tempfile
import time
from datetime import datetime, timezone

from mri_unpaired.errors import UserInputError
from mri_unpaired.atomic import atomic_directory, atomic_file, current_umask, exclusive_output
from mri_unpaired.nnunet_env import find_dataset_name, require_env

from mri_unpaired.modality import (MODALITIES, resolve_unpaired_modality,
                                   unpaired_intensity_statistics)
from mri_unpaired.paths import MANIFEST_NAME, case_files, manifest_path, read_manifest, unpaired_folder_for
from mri_unpaired.plans import (UNPAIRED_FORMAT_VERSION, UNPAIRED_IMAGE_READER, UNPAIRED_PREPROCESSOR,
                                geometry_entries, geometry_hash, load_plans, resolve_configuration,
                                unpaired_dataset_json, unpaired_plans)
from mri_unpaired.validation import check_unpaired_file_task, discover_unpaired_files

AXIS_ORDER_NOTE = ("source_shape/source_spacing: array order as read by SimpleITK, (z, y, x) for 3D; preprocessed_* "
                   "and target_spacing: after transpose_forward, as nnU-Net stores its preprocessed data")


def build_parser(command: str = "preprocess-unpaired") -> argparse.ArgumentParser:
    fixed = command == "preprocess-mri"
    what = "unpaired MRI volumes" if fixed else "unpaired volumes (MRI or CT)"
    norm = ("per-image z-score normalisation" if fixed else
            "the normalisation of their modality (MRI: per-image z-score; CT: nnU-Net's CT normalisation with "
            "percentiles, mean and sd of the unpaired CT set)")
    suffix = "__mri_unpaired" if fixed else "__mri_unpaired or __ct_unpaired"
    p = argparse.ArgumentParser(
        prog=f"nnunet_cmedl {command}",
        description=f"Preprocess a folder of {what} of other patients (no labels, any count, any SimpleITK-readable "
                    f"format) onto the geometry of a planned nnU-Net configuration of the labelled dataset: "
                    f"nnU-Net's own preprocessing with {norm}. Output: $nnUNet_preprocessed/<dataset>/"
                    f"<data_identifier>{suffix}/. Re-running skips up-to-date cases and adds new ones."
                    + (" The same as preprocess-unpaired --modality MRI." if fixed else ""))
    p.add_argument("-d", dest="dataset", required=True, help="dataset name or ID (planned: the plans file must exist)")
    p.add_argument("-c", dest="configuration", required=True,
                   help="configuration in the plans (2d, 3d_fullres, 3d_lowres or one that inherits from these)")
    p.add_argument("-i", dest="input_folder", required=True, metavar="MRI_FOLDER" if fixed else "UNPAIRED_FOLDER",
                   help="folder with the unpaired volumes (.nii.gz, .nii, .mha, .nrrd, ...); it is only read")
    if fixed:
        p.set_defaults(modality="MRI")
    else:
        p.add_argument("--modality", type=str.upper, choices=list(MODALITIES), default=None,
                       help="what the unpaired volumes are; it decides the normalisation (default: the labelled "
                            "dataset.json's \"unpaired_modality\"; an error if neither says)")
    p.add_argument("-p", dest="plans", default="nnUNetPlans", help="plans identifier (default: nnUNetPlans)")
    p.add_argument("-np", dest="num_processes", type=int, default=2,
                   help="worker processes (default: 2; 0 runs everything in this process)")
    p.add_argument("--overwrite", action="store_true",
                   help="rebuild the output folder from scratch if it exists (needed when it was made from another "
                        "input folder or for other plans; for CT it also recomputes the set's intensity statistics)")
    return p


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def resolve_dataset(dataset_arg: str) -> str:
    if not dataset_arg.startswith("Dataset"):
        try:
            int(dataset_arg)
        except ValueError:
            raise UserInputError(f"-d {dataset_arg}: give a dataset ID (e.g. 4) or a dataset name "
                                 f"(e.g. Dataset004_Hippocampus)") from None
    return find_dataset_name(dataset_arg)


def _same_path(a, b) -> bool:
    return a is not None and b is not None and os.path.realpath(a) == os.path.realpath(b)


def _is_within(path: str, folder: str) -> bool:
    path, folder = os.path.realpath(path), os.path.realpath(folder)
    return path == folder or path.startswith(folder + os.sep)


class Job:
    """Everything decided before any image is read: the plans, the files, what to do with the output."""

    def __init__(self, args):
        self.num_processes = args.num_processes
        if self.num_processes < 0:
            raise UserInputError(f"-np {self.num_processes}: the number of worker processes cannot be negative")
        root = require_env("nnUNet_preprocessed")["nnUNet_preprocessed"]
        if not os.path.isdir(root):
            raise UserInputError(f"nnUNet_preprocessed={root}: folder does not exist")
        self.dataset_name = resolve_dataset(args.dataset)
        self.plans_name = args.plans
        self.configuration = args.configuration
        self.dataset_folder = os.path.join(root, self.dataset_name)
        plans_file = os.path.join(self.dataset_folder, self.plans_name + ".json")
        self.plans = load_plans(root, self.dataset_name, self.plans_name, dataset_arg=args.dataset,
                                configuration_hint=self.configuration)
        self.cfg = resolve_configuration(self.plans, self.configuration, plans_file)
        self.is_2d = len(self.cfg["patch_size"]) == 2
        dataset_json = None
        dj_file = os.path.join(self.dataset_folder, "dataset.json")
        if os.path.isfile(dj_file):
            try:
                with open(dj_file) as f:
                    dataset_json = json.load(f)
            except (OSError, ValueError) as e:
                raise UserInputError(f"{dj_file}: cannot be read as JSON ({e})") from None
        self.modality, self.modality_source = resolve_unpaired_modality(args.modality, dataset_json, dj_file)
        m = self.modality.name
        self.geometry = geometry_entries(self.plans, self.configuration, m)
        self.plans_hash = geometry_hash(self.plans, self.configuration, m)
        self.dataset_json = unpaired_dataset_json(dataset_json, m)
        self.out_folder = unpaired_folder_for(root, self.dataset_name, self.cfg["data_identifier"], m)

        self.input_folder = os.path.abspath(args.input_folder)
        if os.path.isdir(self.out_folder) and _is_within(self.input_folder, self.out_folder):
            raise UserInputError(f"{args.input_folder}: is (inside) the output folder {self.out_folder}; -i takes "
                                 f"the folder of unpaired {m} source volumes")
        self.files, self.ignored = discover_unpaired_files(self.input_folder, m)

        # what exists already
        self.old_manifest = None
        exists = os.path.lexists(self.out_folder)
        if exists and not args.overwrite:
            if not os.path.isdir(self.out_folder):
                raise UserInputError(f"{self.out_folder}: exists and is not a folder; remove it or pass --overwrite")
            m = read_manifest(self.out_folder)
            if m is None:
                raise UserInputError(f"{self.out_folder}: exists but has no readable {MANIFEST_NAME} (not made by "
                                     f"preprocess-unpaired, or an interrupted copy); pass --overwrite to rebuild it")
            if not _same_path(m.get("source_folder"), self.input_folder):
                raise UserInputError(f"{self.out_folder}: was made from folder {m.get('source_folder')}, not "
                                     f"{self.input_folder}; pass --overwrite to rebuild it from {self.input_folder}")
            if m.get("plans_hash") != self.plans_hash:
                raise UserInputError(f"{self.out_folder}: was made for other plans geometry (plans hash "
                                     f"{str(m.get('plans_hash'))[:12]}, now {self.plans_hash[:12]}: spacing, "
                                     f"transpose or resampling changed); pass --overwrite to rebuild it")
            self.old_manifest = m
        self.fresh = self.old_manifest is None
        # the set's intensity statistics (CT): computed on a fresh run, kept on an update (every case keeps the
        # normalisation it was made with)
        self.intensity_statistics = None
        if self.modality.set_statistics and not self.fresh:
            self.intensity_statistics = self.old_manifest.get("intensity_statistics")
            if not self.intensity_statistics:
                raise UserInputError(f"{self.out_folder}: its {MANIFEST_NAME} has no intensity statistics of the "
                                     f"unpaired {self.modality.name} set; pass --overwrite to rebuild it")

        self.todo, self.skipped, self.new, self.changed = [], [], [], []
        old_cases = {} if self.fresh else self.old_manifest["cases"]
        for case, path in self.files.items():
            e = old_cases.get(case)
            if e is not None and self._up_to_date(case, path, e):
                self.skipped.append(case)
            else:
                self.todo.append(case)
                (self.changed if e is not None else self.new).append(case)
        self.orphaned = sorted(c for c in old_cases if c not in self.files)

    def reader_note(self):
        reader = self.plans.get("image_reader_writer")
        if reader in (None, UNPAIRED_IMAGE_READER, "NibabelIO"):
            return None
        return (f"note: the labelled images were read with {reader}, the unpaired ones are read with "
                f"{UNPAIRED_IMAGE_READER}; check that both give the same axis order (transpose_forward "
                f"{self.geometry['transpose_forward']} is applied to both)")

    def _up_to_date(self, case, path, entry) -> bool:
        try:
            st = os.stat(path)
        except OSError:
            return False
        return (_same_path(entry.get("source_file"), path) and entry.get("source_size") == st.st_size
                and entry.get("source_mtime_ns") == st.st_mtime_ns and _outputs_intact(self.out_folder, case, entry))


def _outputs_intact(folder: str, case: str, entry: dict) -> bool:
    """The case's files exist with the sizes written (a truncated or replaced file is preprocessed again) and its
    array's header reads."""
    files = case_files(folder, case)
    try:
        sizes = [os.path.getsize(f) for f in files]
        if "output_bytes" in entry and sizes != entry["output_bytes"]:
            return False
        import blosc2
        blosc2.open(files[0], mode="r")
    except Exception:  # noqa: BLE001 - missing, unreadable or corrupt: not up to date
        return False
    return True


def _run_tasks(pool, fn, tasks, progress_desc=None):
    """Results of fn(task) in task order, in the pool (or in this process if pool is None), with an optional tqdm
    bar. Like nnU-Net's preprocessor, a worker that dies (killed for memory, say) stops the run with an error."""
    from tqdm import tqdm
    bar = tqdm(total=len(tasks), desc=progress_desc, disable=progress_desc is None)
    try:
        if pool is None:
            out = []
            for t in tasks:
                out.append(fn(t))
                bar.update()
            return out
        workers = list(pool._pool)
        pending = {i: pool.apply_async(fn, (t,)) for i, t in enumerate(tasks)}
        out = [None] * len(tasks)
        while pending:
            done = [i for i, r in pending.items() if r.ready()]
            for i in done:
                out[i] = pending.pop(i).get()
                bar.update()
            if pending and not done:
                if not all(w.is_alive() for w in workers):
                    raise RuntimeError("a preprocess-unpaired worker process died (out of memory?); try a smaller -np")
                time.sleep(0.05)
        return out
    finally:
        bar.close()


def preprocess_case_task(args):
    """Preprocess one unpaired file into ``out_dir`` (module level: spawned workers unpickle it by name)."""
    case, source_file, out_dir, plans, configuration, dataset_json, modality = args
    import numpy as np
    from batchgenerators.utilities.file_and_folder_operations import write_pickle
    from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    pm = PlansManager(plans)
    cm = pm.get_configuration(configuration)
    data, _seg, props = DefaultPreprocessor(verbose=False).run_case([source_file], None, pm, cm, dataset_json)
    del _seg
    data = np.ascontiguousarray(data, dtype=np.float32)
    original_spacing = [float(props["spacing"][i]) for i in pm.transpose_forward]
    target = [float(s) for s in cm.spacing]
    if len(target) < len(original_spacing):  # 2d: the slice axis keeps its spacing, as in run_case_npy
        target = [original_spacing[0]] + target
    props["spacing_after_resampling"] = target
    props["shape_after_resampling"] = [int(s) for s in data.shape[1:]]
    props["source_file"] = source_file
    props["modality"] = modality
    save_unpaired_case(data, props, out_dir, case, cm.patch_size, write_pickle)
    d64 = data.astype(np.float64)
    return case, {
        "preprocessed_shape": [int(s) for s in data.shape[1:]],
        "preprocessed_spacing": target,
        "shape_before_cropping": [int(s) for s in props["shape_before_cropping"]],
        "bbox_used_for_cropping": [[int(a), int(b)] for a, b in props["bbox_used_for_cropping"]],
        "shape_after_cropping_and_before_resampling": [int(s) for s in
                                                       props["shape_after_cropping_and_before_resampling"]],
        "intensity_after": {"mean": float(d64.mean()), "sd": float(d64.std())},
    }


def save_unpaired_case(data, properties, out_dir, case, patch_size, write_pickle=None):
    """Store one case like ``nnUNetDatasetBlosc2.save_case`` does with the preprocessor's chunking (chunks and blocks
    from ``comp_blosc2_params`` for the configuration's patch size, LZ4HC level 5, filter picked by trial), without a
    segmentation."""
    import blosc2
    import numpy as np
    from nnunetv2.training.dataloading.nnunet_dataset import comp_blosc2_params, nnUNetDatasetBlosc2
    if write_pickle is None:
        from batchgenerators.utilities.file_and_folder_operations import write_pickle
    blosc2.set_nthreads(1)
    blocks, chunks = comp_blosc2_params(data.shape, tuple(patch_size), data.itemsize)
    codec, clevel = blosc2.Codec.LZ4HC, 5
    filters = [nnUNetDatasetBlosc2._select_filter(data, blocks, chunks, codec, clevel)]
    data_file, pkl_file = case_files(out_dir, case)
    for f in (data_file, pkl_file):
        if os.path.lexists(f):
            os.remove(f)
    blosc2.asarray(np.ascontiguousarray(data), urlpath=data_file, chunks=chunks, blocks=blocks,
                   cparams={"codec": codec, "filters": filters, "nthreads": 4, "clevel": clevel})
    write_pickle(properties, pkl_file)


def _manifest(job, cases: dict, created: str) -> dict:
    from importlib.metadata import version
    return {
        "tool": "nnunet_cmedl preprocess-unpaired",
        "format_version": UNPAIRED_FORMAT_VERSION,
        "modality": job.modality.name,
        "modality_from": job.modality_source,
        "dataset": job.dataset_name,
        "plans": job.plans_name,
        "configuration": job.configuration,
        "data_identifier": job.cfg["data_identifier"],
        "source_folder": job.input_folder,
        "target_spacing": [float(s) for s in job.cfg["spacing"]],
        "transpose_forward": job.geometry["transpose_forward"],
        "patch_size_for_chunking": [int(s) for s in job.cfg["patch_size"]],
        "normalization": job.modality.normalization,
        "use_mask_for_norm": False,
        "image_reader": UNPAIRED_IMAGE_READER,
        "labelled_image_reader": job.plans.get("image_reader_writer"),
        "preprocessor": UNPAIRED_PREPROCESSOR,
        **({"intensity_statistics": job.intensity_statistics} if job.intensity_statistics else {}),
        "plans_hash": job.plans_hash,
        "plans_entries": job.geometry,
        "nnunetv2_version": version("nnunetv2"),
        "created": created,
        "updated": _now(),
        "axis_order": AXIS_ORDER_NOTE,
        "cases": {c: cases[c] for c in sorted(cases)},
    }


def _write_manifest(path, manifest):
    with atomic_file(path) as f:
        os.fchmod(f.fileno(), 0o666 & ~current_umask())  # mkstemp makes 0600; give it the permissions of a normal file
        json.dump(manifest, f, indent=1)
        f.write("\n")


def run(job: Job) -> int:
    print(f"preprocess-unpaired: unpaired {job.modality.name} ({job.modality.description}; modality from "
          f"{job.modality_source}), {job.dataset_name}, plans {job.plans_name}, configuration {job.configuration} "
          f"(data identifier {job.cfg['data_identifier']}, target spacing {job.cfg['spacing']})")
    ignored = f" (ignored, not images: {', '.join(job.ignored)})" if job.ignored else ""
    print(f"{job.modality.name} folder {job.input_folder}: {len(job.files)} image file(s){ignored}")
    state = ("rebuilding output folder" if os.path.lexists(job.out_folder) else "new output folder") if job.fresh \
        else "existing output folder"
    print(f"{state} {job.out_folder}: {len(job.skipped)} up to date (skipped), {len(job.new)} new, "
          f"{len(job.changed)} changed")
    if job.orphaned:
        print(f"note: {len(job.orphaned)} case(s) in the output have no source file in the input folder any more and "
              f"are kept: {', '.join(job.orphaned)} (pass --overwrite to rebuild from the folder as it is)")
    if job.reader_note():
        print(job.reader_note())
    if not job.todo:
        print(f"nothing to do: all {len(job.skipped)} case(s) up to date")
        return 0

    n_proc = min(job.num_processes, len(job.todo))
    pool = multiprocessing.get_context("spawn").Pool(n_proc) if n_proc > 0 else None
    try:
        # 1. check every input before writing anything
        print(f"checking {len(job.todo)} {job.modality.name} file(s) ...", flush=True)
        checks = _run_tasks(pool, check_unpaired_file_task, [(c, job.files[c], job.is_2d, job.modality.name)
                                                                for c in job.todo])
        errors = [err for _, _, err in checks if err]
        if errors:
            more = ""
            if len(errors) > 1:
                others = [e.split(": ", 1)[0] for e in errors[1:]]
                more = f" (and {len(errors) - 1} more bad file(s): {', '.join(os.path.basename(o) for o in others)})"
            raise UserInputError(errors[0] + more)
        infos = {c: info for c, info, _ in checks}
        samples = [info.pop("statistics_sample") for info in infos.values() if "statistics_sample" in info]
        if job.modality.set_statistics:
            if job.intensity_statistics is None:
                job.intensity_statistics = unpaired_intensity_statistics(samples)
                st = job.intensity_statistics
                print(f"intensity statistics of the unpaired {job.modality.name} set ({len(samples)} volume(s), "
                      f"{st['num_voxels']} voxels): clip to [{st['percentile_00_5']:.1f}, {st['percentile_99_5']:.1f}]"
                      f", mean {st['mean']:.1f}, sd {st['std']:.1f}")
            else:
                print(f"intensity statistics of the unpaired {job.modality.name} set kept from the first run "
                      f"(--overwrite recomputes them from every file)")
        plans = unpaired_plans(job.plans, job.configuration, job.modality.name, job.intensity_statistics)

        # 2. preprocess
        created = _now() if job.fresh else job.old_manifest.get("created", _now())
        cases = {} if job.fresh else dict(job.old_manifest["cases"])

        def process_into(folder):
            tasks = [(c, job.files[c], folder, plans, job.configuration, job.dataset_json, job.modality.name)
                     for c in job.todo]
            for case, result in _run_tasks(pool, preprocess_case_task, tasks,
                                           progress_desc=f"Preprocessing {job.modality.name}"):
                entry = dict(infos[case])
                entry.update(result)
                entry["files"] = [os.path.basename(f) for f in case_files(job.out_folder, case)]
                entry["output_bytes"] = [os.path.getsize(f) for f in case_files(folder, case)]
                entry["processed"] = _now()
                cases[case] = entry

        t0 = time.time()
        if job.fresh:
            with atomic_directory(job.out_folder, overwrite=True) as tmp:
                os.chmod(tmp, 0o777 & ~current_umask())  # mkdtemp makes 0700; nnU-Net's folders are world-readable
                process_into(str(tmp))
                _write_manifest(manifest_path(str(tmp)), _manifest(job, cases, created))
        else:
            staging = tempfile.mkdtemp(prefix=f".{os.path.basename(job.out_folder)}.tmp-",
                                       dir=os.path.dirname(job.out_folder))
            try:
                process_into(staging)
                for case in job.todo:
                    for src, dst in zip(case_files(staging, case), case_files(job.out_folder, case)):
                        os.replace(src, dst)
                _write_manifest(manifest_path(job.out_folder), _manifest(job, cases, created))
            finally:
                shutil.rmtree(staging, ignore_errors=True)
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()
    print(f"done: {len(job.todo)} case(s) preprocessed in {time.time() - t0:.1f} s, {len(job.skipped)} skipped; "
          f"{len(cases)} case(s) in {job.out_folder}")
    return 0


def main(argv=None, command: str = "preprocess-unpaired") -> int:
    args = build_parser(command).parse_args(argv)
    job = Job(args)
    with exclusive_output(job.out_folder, "nnunet_cmedl preprocess-unpaired"):
        return run(job)



def main_mri(argv=None) -> int:
    """``nnunet_cmedl preprocess-mri``: ``preprocess-unpaired --modality MRI``."""
    return main(argv, "preprocess-mri")
