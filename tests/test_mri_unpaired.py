"""Unpaired MRI: `nnunet_cmedl preprocess-mri` and the MRI patch loader, on a tiny CT dataset planned by nnU-Net.

The module fixture writes 6 small random CT volumes with a blob label as an nnU-Net raw dataset, runs
nnUNetv2_plan_and_preprocess (3d_fullres and 2d), adds a configuration inheriting from 3d_fullres, writes MRI volumes
with another spacing and size, and preprocesses them for 3d_fullres and 2d through the CLI (with nnUNet_raw and
nnUNet_results unset: the command only needs nnUNet_preprocessed). About a minute on 2 CPU cores.
"""
import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

DATASET_ID = 981
DATASET_NAME = f"Dataset{DATASET_ID:03d}_TinyCTMRI"
CT_SHAPE = (20, 40, 48)          # z, y, x
CT_SPACING = (3.0, 1.5, 1.5)     # z, y, x (mm)
MRI_SHAPE = (30, 60, 70)
MRI_SPACING = (4.0, 2.0, 2.0)
MRI_OFFSET = 300.0
SMALL = "3d_small"               # inherits_from 3d_fullres, smaller patch
SMALL_PATCH = [16, 32, 32]
ERROR_PREFIX = "nnunet_cmedl preprocess-mri: error: "


# ----------------------------------------------------------------------------------------------------------- helpers
def write_image(path, array, spacing_zyx):
    import SimpleITK as sitk
    img = sitk.GetImageFromArray(array)
    img.SetSpacing(tuple(float(s) for s in spacing_zyx[::-1]))
    sitk.WriteImage(img, str(path))


def write_mri(path, seed, shape=MRI_SHAPE, spacing=MRI_SPACING, zero_border=0):
    """A smooth random volume with a positive offset (MRI-like: no negative intensities on average)."""
    from scipy.ndimage import gaussian_filter
    rng = np.random.default_rng(seed)
    a = gaussian_filter(rng.normal(size=shape), 3)
    a = (MRI_OFFSET + 80 * a / a.std()).astype(np.float32)
    if zero_border:
        b = zero_border
        mask = np.zeros(shape, bool)
        mask[b:-b, b:-b, b:-b] = True
        a[~mask] = 0
    write_image(path, a, spacing)
    return a


def snapshot(folder):
    """{relative path: (size, mtime_ns)} of everything under folder (hidden files included)."""
    folder = Path(folder)
    if not folder.exists():
        return None
    out = {}
    for p in sorted(folder.rglob("*")):
        st = p.stat()
        out[str(p.relative_to(folder))] = (st.st_size if p.is_file() else -1, st.st_mtime_ns)
    return out


def cli(env, *args, check=True):
    r = subprocess.run([sys.executable, "-m", "nnunet_cmedl.cli", "preprocess-mri", *map(str, args)], env=env,
                       capture_output=True, text=True, timeout=600)
    if check and r.returncode != 0:
        raise AssertionError(f"preprocess-mri {args} failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    return r


def one_line_error(r, *must_contain):
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith(ERROR_PREFIX), lines[0]
    for s in must_contain:
        assert str(s) in lines[0], (s, lines[0])
    return lines[0]


def make_plans_copy(ds, name, edit=None):
    """An independent plans identifier (own data identifiers, hence own MRI output folders)."""
    plans = json.loads((ds["dataset_folder"] / "nnUNetPlans.json").read_text())
    plans["plans_name"] = name
    for cfg in plans["configurations"].values():
        if "data_identifier" in cfg:
            cfg["data_identifier"] = cfg["data_identifier"].replace("nnUNetPlans", name, 1)
    if edit is not None:
        edit(plans)
    (ds["dataset_folder"] / f"{name}.json").write_text(json.dumps(plans, indent=1))
    return plans


def mri_out(ds, plans="nnUNetPlans", configuration="3d_fullres"):
    plans_dict = json.loads((ds["dataset_folder"] / f"{plans}.json").read_text())
    from mri_unpaired.plans import resolve_configuration
    return ds["dataset_folder"] / (resolve_configuration(plans_dict, configuration)["data_identifier"]
                                   + "__mri_unpaired")


def read_case(folder, case):
    import blosc2
    return blosc2.open(urlpath=str(Path(folder) / f"{case}.b2nd"), mode="r")[:]


# ----------------------------------------------------------------------------------------------------------- fixture
@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    from nnunetv2.dataset_conversion.generate_dataset_json import generate_dataset_json
    root = tmp_path_factory.mktemp("mri_unpaired")
    raw, pp, res = root / "nnUNet_raw", root / "nnUNet_preprocessed", root / "nnUNet_results"
    for f in (raw, pp, res):
        f.mkdir()
    env = dict(os.environ, nnUNet_raw=str(raw), nnUNet_preprocessed=str(pp), nnUNet_results=str(res),
               nnUNet_n_proc_DA="0", OMP_NUM_THREADS="1")

    raw_ds = raw / DATASET_NAME
    (raw_ds / "imagesTr").mkdir(parents=True)
    (raw_ds / "labelsTr").mkdir()
    rng = np.random.default_rng(0)
    z, y, x = np.mgrid[:CT_SHAPE[0], :CT_SHAPE[1], :CT_SHAPE[2]]
    for i in range(6):
        c = rng.uniform([6, 12, 14], [14, 28, 34])
        blob = ((z - c[0]) / 4) ** 2 + ((y - c[1]) / 7) ** 2 + ((x - c[2]) / 8) ** 2 < 1
        ct = (rng.normal(0, 20, CT_SHAPE) - 500 + 400 * blob).astype(np.float32)
        write_image(raw_ds / "imagesTr" / f"ct{i:02d}_0000.nii.gz", ct, CT_SPACING)
        write_image(raw_ds / "labelsTr" / f"ct{i:02d}.nii.gz", blob.astype(np.uint8), CT_SPACING)
    generate_dataset_json(str(raw_ds), {0: "CT"}, {"background": 0, "blob": 1}, 6, ".nii.gz",
                          dataset_name=DATASET_NAME)
    # nnUNet_n_proc_DA=0 crashes nnU-Net's planner (torch.set_num_threads(get_allowed_n_proc_DA()) in
    # static_estimate_VRAM_usage), so plan with 1
    r = subprocess.run([str(Path(sys.executable).parent / "nnUNetv2_plan_and_preprocess"), "-d", str(DATASET_ID),
                        "-c", "3d_fullres", "2d", "-np", "1"], env=dict(env, nnUNet_n_proc_DA="1"),
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]

    dataset_folder = pp / DATASET_NAME
    plans_file = dataset_folder / "nnUNetPlans.json"
    plans = json.loads(plans_file.read_text())
    plans["configurations"][SMALL] = {"inherits_from": "3d_fullres", "patch_size": SMALL_PATCH, "batch_size": 2}
    plans_file.write_text(json.dumps(plans, indent=1))

    mri = root / "mri"
    mri.mkdir()
    for i in range(3):
        write_mri(mri / f"mri{i:02d}.nii.gz", seed=10 + i, zero_border=3 if i == 0 else 0)
    (mri / "README.txt").write_text("not an image\n")

    ct_before = {c: snapshot(dataset_folder / f"nnUNetPlans_{c}") for c in ("3d_fullres", "2d")}
    mri_before = snapshot(mri)
    # only nnUNet_preprocessed is needed
    env_pp_only = {k: v for k, v in env.items() if k not in ("nnUNet_raw", "nnUNet_results")}
    runs = {"3d_fullres": cli(env_pp_only, "-d", DATASET_ID, "-c", "3d_fullres", "-i", mri),
            "2d": cli(env_pp_only, "-d", DATASET_NAME, "-c", "2d", "-i", mri, "-np", "1")}
    return {"root": root, "env": env, "pp": pp, "dataset_folder": dataset_folder, "mri": mri, "runs": runs,
            "ct_before": ct_before, "mri_before": mri_before, "plans": plans}


# -------------------------------------------------------------------------------------------------- preprocessing
def test_output_is_a_sibling_and_ct_folders_are_untouched(ds):
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class, nnUNetDatasetBlosc2
    from mri_unpaired.paths import unpaired_folder
    for c in ("3d_fullres", "2d"):
        ct = ds["dataset_folder"] / f"nnUNetPlans_{c}"
        out = ds["dataset_folder"] / f"nnUNetPlans_{c}__mri_unpaired"
        assert Path(unpaired_folder(str(ct))) == out
        assert Path(unpaired_folder(str(ct) + "/")) == out
        assert out.is_dir() and out.parent == ct.parent
        assert snapshot(ct) == ds["ct_before"][c]  # nothing added, removed or rewritten
        assert infer_dataset_class(str(ct)) is nnUNetDatasetBlosc2
        assert len(nnUNetDatasetBlosc2(str(ct)).identifiers) == 6
        assert oct(out.stat().st_mode & 0o777) == oct(0o777 & ~_umask())
    assert snapshot(ds["mri"]) == ds["mri_before"]  # the MRI input folder is only read
    # no temporary folders left next to the outputs
    assert not [p for p in os.listdir(ds["dataset_folder"]) if p.startswith(".")]


def _umask():
    um = os.umask(0)
    os.umask(um)
    return um


def test_preprocessed_mri_has_configuration_geometry_and_zscore(ds):
    from nnunetv2.preprocessing.resampling.default_resampling import compute_new_shape
    cfgs = ds["plans"]["configurations"]
    for c in ("3d_fullres", "2d"):
        out = mri_out(ds, configuration=c)
        manifest = json.loads((out / "manifest.json").read_text())
        assert sorted(manifest["cases"]) == ["mri00", "mri01", "mri02"]
        for case, entry in manifest["cases"].items():
            with open(out / f"{case}.pkl", "rb") as f:
                props = pickle.load(f)
            data = read_case(out, case)
            assert data.dtype == np.float32 and data.ndim == 4 and data.shape[0] == 1
            expected_spacing = list(cfgs[c]["spacing"]) if c == "3d_fullres" else \
                [MRI_SPACING[0], *cfgs[c]["spacing"]]  # 2d: slices keep their spacing
            assert props["spacing_after_resampling"] == pytest.approx(expected_spacing)
            assert entry["preprocessed_spacing"] == pytest.approx(expected_spacing)
            assert list(props["spacing"]) == pytest.approx(MRI_SPACING)  # nnU-Net's own key: the source spacing
            cropped = props["shape_after_cropping_and_before_resampling"]
            assert list(data.shape[1:]) == entry["preprocessed_shape"] == \
                [int(i) for i in compute_new_shape(cropped, MRI_SPACING, expected_spacing)]
            assert abs(float(data.mean())) < 0.05 and abs(float(data.std()) - 1) < 0.05, (c, case)
            assert entry["intensity_after"]["mean"] == pytest.approx(float(data.mean()), abs=1e-4)
            assert entry["intensity_after"]["sd"] == pytest.approx(float(data.std()), abs=1e-4)
    # the zero border of mri00 was cropped away (nnU-Net's crop to nonzero)
    m = json.loads((mri_out(ds) / "manifest.json").read_text())
    assert m["cases"]["mri00"]["bbox_used_for_cropping"] == [[3, 27], [3, 57], [3, 67]]
    assert m["cases"]["mri01"]["bbox_used_for_cropping"] == [[0, 30], [0, 60], [0, 70]]


def test_manifest_contents(ds):
    from importlib.metadata import version
    from mri_unpaired.plans import geometry_hash
    out = mri_out(ds)
    m = json.loads((out / "manifest.json").read_text())
    assert m["dataset"] == DATASET_NAME and m["plans"] == "nnUNetPlans" and m["configuration"] == "3d_fullres"
    assert m["data_identifier"] == "nnUNetPlans_3d_fullres"
    assert m["source_folder"] == str(ds["mri"])
    assert m["target_spacing"] == pytest.approx(ds["plans"]["configurations"]["3d_fullres"]["spacing"])
    assert m["transpose_forward"] == ds["plans"]["transpose_forward"]
    assert m["plans_hash"] == geometry_hash(ds["plans"], "3d_fullres") == geometry_hash(ds["plans"], SMALL)
    assert m["plans_hash"] != geometry_hash(ds["plans"], "2d")
    assert m["normalization"] == "ZScoreNormalization" and m["use_mask_for_norm"] is False
    assert m["nnunetv2_version"] == version("nnunetv2")
    assert "README.txt" in ds["runs"]["3d_fullres"].stdout  # reported as ignored, not a case
    for i in range(3):
        e = m["cases"][f"mri{i:02d}"]
        src = ds["mri"] / f"mri{i:02d}.nii.gz"
        assert e["source_file"] == str(src) and os.path.isabs(e["source_file"])
        assert e["source_size"] == src.stat().st_size and e["source_mtime_ns"] == src.stat().st_mtime_ns
        assert e["source_shape"] == list(MRI_SHAPE) and e["source_spacing"] == pytest.approx(MRI_SPACING)
        before = e["intensity_before"]
        if i > 0:
            assert before["mean"] == pytest.approx(MRI_OFFSET, abs=40) and before["sd"] == pytest.approx(80, rel=0.1)
        assert before["percentile_00_5"] < before["mean"] < before["percentile_99_5"]
        assert set(e["intensity_after"]) == {"mean", "sd"}
        assert e["files"] == [f"mri{i:02d}.b2nd", f"mri{i:02d}.pkl"]
    assert sorted(os.listdir(out)) == sorted(["manifest.json"] + [f"mri{i:02d}{s}" for i in range(3)
                                                                  for s in (".b2nd", ".pkl")])


def test_inheriting_configuration_shares_the_mri(ds):
    out = mri_out(ds)
    assert mri_out(ds, configuration=SMALL) == out
    before = snapshot(out)
    r = cli(ds["env"], "-d", DATASET_ID, "-c", SMALL, "-i", ds["mri"], "-np", "0")
    assert "3 up to date (skipped), 0 new" in r.stdout
    assert snapshot(out) == before


def test_rerun_skips_and_new_or_changed_files_are_added_incrementally(ds, tmp_path):
    make_plans_copy(ds, "nnUNetPlansIncr")
    mri = tmp_path / "mri"
    shutil.copytree(ds["mri"], mri)
    out = mri_out(ds, "nnUNetPlansIncr")
    args = ("-d", DATASET_ID, "-c", "3d_fullres", "-p", "nnUNetPlansIncr", "-i", mri, "-np", "1")
    r = cli(ds["env"], *args)
    assert "0 up to date (skipped), 3 new" in r.stdout
    first = snapshot(out)

    r = cli(ds["env"], *args)
    assert "3 up to date (skipped), 0 new, 0 changed" in r.stdout and "nothing to do" in r.stdout
    assert snapshot(out) == first  # not one file rewritten, manifest included

    write_mri(mri / "mri_new.nii.gz", seed=99, shape=(24, 50, 66))
    r = cli(ds["env"], *args)
    assert "3 up to date (skipped), 1 new, 0 changed" in r.stdout
    after = snapshot(out)
    for f in ("mri00.b2nd", "mri00.pkl", "mri01.b2nd", "mri02.pkl"):
        assert after[f] == first[f]
    m = json.loads((out / "manifest.json").read_text())
    assert sorted(m["cases"]) == ["mri00", "mri01", "mri02", "mri_new"]
    assert m["cases"]["mri_new"]["source_shape"] == [24, 50, 66]
    assert read_case(out, "mri_new").shape[0] == 1

    # a changed source is preprocessed again, the others are not
    write_mri(mri / "mri01.nii.gz", seed=123)
    r = cli(ds["env"], *args)
    assert "3 up to date (skipped), 0 new, 1 changed" in r.stdout
    again = snapshot(out)
    assert again["mri00.b2nd"] == first["mri00.b2nd"] and again["mri01.b2nd"] != first["mri01.b2nd"]
    m2 = json.loads((out / "manifest.json").read_text())
    assert m2["cases"]["mri01"]["source_mtime_ns"] == (mri / "mri01.nii.gz").stat().st_mtime_ns
    assert m2["created"] == m["created"]
    assert not [p for p in os.listdir(ds["dataset_folder"]) if p.startswith(".")]
    assert not [p for p in os.listdir(out) if p.startswith(".")]

    # a damaged output (truncated by a full disk, say) is not up to date: that case is preprocessed again
    damaged = out / "mri02.b2nd"
    damaged.write_bytes(damaged.read_bytes()[:100])
    r = cli(ds["env"], *args)
    assert "3 up to date (skipped), 0 new, 1 changed" in r.stdout
    assert (out / "mri02.b2nd").stat().st_size == again["mri02.b2nd"][0] and read_case(out, "mri02").shape[0] == 1

    # a source that disappeared: its case is kept and reported
    (mri / "mri_new.nii.gz").unlink()
    r = cli(ds["env"], *args)
    assert "no source file" in r.stdout and "mri_new" in r.stdout
    assert (out / "mri_new.b2nd").exists()


def test_existing_output_from_another_source_or_plans_is_refused_unless_overwrite(ds, tmp_path):
    make_plans_copy(ds, "nnUNetPlansOther")
    mri_a, mri_b = tmp_path / "a", tmp_path / "b"
    mri_a.mkdir()
    mri_b.mkdir()
    write_mri(mri_a / "a.nii.gz", seed=1)
    write_mri(mri_b / "b.nii.gz", seed=2)
    out = mri_out(ds, "nnUNetPlansOther")
    base = ("-d", DATASET_ID, "-c", "3d_fullres", "-p", "nnUNetPlansOther", "-np", "0")
    cli(ds["env"], *base, "-i", mri_a)
    before, inputs = snapshot(out), (snapshot(mri_a), snapshot(mri_b))

    r = cli(ds["env"], *base, "-i", mri_b, check=False)
    one_line_error(r, out, str(mri_a), "--overwrite")
    assert snapshot(out) == before and (snapshot(mri_a), snapshot(mri_b)) == inputs

    # plans geometry changed since (e.g. re-planned with another spacing)
    make_plans_copy(ds, "nnUNetPlansOther",
                    edit=lambda p: p["configurations"]["3d_fullres"].__setitem__("spacing", [2.0, 1.0, 1.0]))
    r = cli(ds["env"], *base, "-i", mri_a, check=False)
    one_line_error(r, out, "plans", "--overwrite")
    assert snapshot(out) == before

    r = cli(ds["env"], *base, "-i", mri_b, "--overwrite")
    m = json.loads((out / "manifest.json").read_text())
    assert sorted(m["cases"]) == ["b"] and m["source_folder"] == str(mri_b)
    assert m["target_spacing"] == [2.0, 1.0, 1.0]
    assert not (out / "a.b2nd").exists()
    assert not [p for p in os.listdir(ds["dataset_folder"]) if p.startswith(".")]

    # a folder without manifest (not ours, or an interrupted copy) is refused too
    (out / "manifest.json").unlink()
    before = snapshot(out)
    r = cli(ds["env"], *base, "-i", mri_b, check=False)
    one_line_error(r, out, "manifest.json", "--overwrite")
    assert snapshot(out) == before


def test_2d_images_are_accepted_for_a_2d_configuration(ds, tmp_path):
    make_plans_copy(ds, "nnUNetPlans2DImg")
    mri = tmp_path / "mri"
    mri.mkdir()
    write_mri(mri / "vol.nii.gz", seed=3)
    from scipy.ndimage import gaussian_filter
    sl = gaussian_filter(np.random.default_rng(0).normal(size=(60, 70)), 3).astype(np.float32) + 5
    write_image(mri / "slice.nii.gz", sl, (2.0, 2.0))
    cli(ds["env"], "-d", DATASET_ID, "-c", "2d", "-p", "nnUNetPlans2DImg", "-i", mri, "-np", "0")
    out = mri_out(ds, "nnUNetPlans2DImg", "2d")
    assert read_case(out, "slice").shape == (1, 1, 80, 93)
    # ... but not for a 3D configuration
    r = cli(ds["env"], "-d", DATASET_ID, "-c", "3d_fullres", "-p", "nnUNetPlans2DImg", "-i", mri, "-np", "0",
            check=False)
    one_line_error(r, mri / "slice.nii.gz", "2D")
    assert not mri_out(ds, "nnUNetPlans2DImg").exists()


# ------------------------------------------------------------------------------------------------------ bad input
def _bad_files(kind, folder):
    """Write a bad MRI file of the given kind into folder (next to a good one) and return its path."""
    import SimpleITK as sitk
    write_mri(folder / "good.nii.gz", seed=5)
    f = folder / "bad.nii.gz"
    if kind == "random_bytes":
        f.write_bytes(np.random.default_rng(0).bytes(4000))
    elif kind == "truncated_gz":
        write_mri(f, seed=6)
        b = f.read_bytes()
        f.write_bytes(b[: len(b) // 2])
    elif kind == "truncated_nii":
        f = folder / "bad.nii"
        write_mri(f, seed=6)
        b = f.read_bytes()
        f.write_bytes(b[: len(b) // 2])
    elif kind == "2d_image":
        write_image(f, np.random.default_rng(0).random((60, 70)).astype(np.float32), (2.0, 2.0))
    elif kind == "4d_image":
        vol = sitk.GetImageFromArray(np.random.default_rng(0).random((10, 12, 14)).astype(np.float32))
        sitk.WriteImage(sitk.JoinSeries([vol, vol, vol]), str(f))
    elif kind in ("nan", "inf", "nan_mha"):
        # (ITK's NIfTI reader turns NaN/Inf into 0 silently; .mha keeps them)
        a = np.random.default_rng(0).random(MRI_SHAPE).astype(np.float32) + 1
        a[5, 6, 7] = np.inf if kind == "inf" else np.nan
        if kind == "nan_mha":
            f = folder / "bad.mha"
        write_image(f, a, MRI_SPACING)
    elif kind in ("tiny_spacing", "huge_spacing"):  # a broken header: resampling would explode or vanish
        write_mri(f, seed=6, spacing=(0.001, 1.0, 1.0) if kind == "tiny_spacing" else (1000.0, 1.0, 1.0))
    elif kind == "constant":
        write_image(f, np.full(MRI_SHAPE, 7.0, np.float32), MRI_SPACING)
    elif kind == "rgb":
        img = sitk.Image([14, 12, 10], sitk.sitkVectorFloat32, 3)
        sitk.WriteImage(img, str(f))
    return f


BAD_FILES = {
    "random_bytes": "cannot be read",
    "truncated_gz": "truncated",
    "truncated_nii": "truncated",
    "2d_image": "2D image",
    "4d_image": "4D image",
    "nan": "NaN",
    "nan_mha": "1 NaN",
    "inf": "1 Inf",
    "constant": "constant",
    "rgb": "values per voxel",
    "tiny_spacing": "implausible voxel spacing",
    "huge_spacing": "implausible voxel spacing",
}


@pytest.fixture(scope="module")
def bad_setup(ds):
    make_plans_copy(ds, "nnUNetPlansBad")
    return {"out": mri_out(ds, "nnUNetPlansBad"), "plans": "nnUNetPlansBad"}


def _run_bad(ds, bad_setup, args, env=None, inputs=None):
    """Run the CLI on bad input; check nothing changed in the dataset folder and the inputs."""
    before_ds = snapshot(ds["dataset_folder"])
    before_in = [snapshot(p) for p in (inputs or [])]
    r = cli(env or ds["env"], *args, check=False)
    assert snapshot(ds["dataset_folder"]) == before_ds  # no output folder, no temporary leftovers
    assert [snapshot(p) for p in (inputs or [])] == before_in
    assert not bad_setup["out"].exists()
    return r


@pytest.mark.parametrize("kind", sorted(BAD_FILES))
def test_bad_mri_file_is_refused_before_anything_is_written(ds, bad_setup, tmp_path, kind):
    folder = tmp_path / "mri"
    folder.mkdir()
    bad = _bad_files(kind, folder)
    np_arg = "2" if kind in ("random_bytes", "nan") else "0"  # the checks run in worker processes, or in-process
    r = _run_bad(ds, bad_setup, ("-d", DATASET_ID, "-c", "3d_fullres", "-p", bad_setup["plans"], "-i", folder,
                                 "-np", np_arg), inputs=[folder])
    one_line_error(r, bad, BAD_FILES[kind])


def test_all_bad_files_are_listed(ds, bad_setup, tmp_path):
    folder = tmp_path / "mri"
    folder.mkdir()
    _bad_files("nan", folder)
    write_image(folder / "also_bad.nii.gz", np.zeros(MRI_SHAPE, np.float32), MRI_SPACING)
    r = _run_bad(ds, bad_setup, ("-d", DATASET_ID, "-c", "3d_fullres", "-p", bad_setup["plans"], "-i", folder,
                                 "-np", "0"), inputs=[folder])
    one_line_error(r, "also_bad.nii.gz", "constant", "1 more bad file(s): bad.nii.gz")


@pytest.mark.parametrize("kind", ["missing", "empty", "no_images", "is_a_file"])
def test_bad_mri_folder(ds, bad_setup, tmp_path, kind):
    folder = tmp_path / "mri"
    if kind in ("empty", "no_images"):
        folder.mkdir()
    if kind == "no_images":
        (folder / "notes.txt").write_text("x")
        (folder / "scan.dcm").write_bytes(b"x")
    if kind == "is_a_file":
        folder.write_text("x")
    r = _run_bad(ds, bad_setup, ("-d", DATASET_ID, "-c", "3d_fullres", "-p", bad_setup["plans"], "-i", folder),
                 inputs=[folder])
    line = one_line_error(r, folder)
    if kind == "no_images":
        assert "notes.txt" in line


def test_dataset_not_planned_or_unknown(ds, bad_setup, tmp_path):
    folder = tmp_path / "mri"
    folder.mkdir()
    write_mri(folder / "m.nii.gz", seed=1)
    # in nnUNet_raw but never planned
    (Path(ds["env"]["nnUNet_raw"]) / "Dataset982_Unplanned").mkdir()
    r = _run_bad(ds, bad_setup, ("-d", "982", "-c", "3d_fullres", "-i", folder), inputs=[folder])
    one_line_error(r, os.path.join(ds["env"]["nnUNet_preprocessed"], "Dataset982_Unplanned", "nnUNetPlans.json"),
                   "not planned", "nnUNetv2_plan_and_preprocess -d 982")
    assert not (ds["pp"] / "Dataset982_Unplanned").exists()
    # no such dataset anywhere
    r = _run_bad(ds, bad_setup, ("-d", "983", "-c", "3d_fullres", "-i", folder), inputs=[folder])
    one_line_error(r, "983")
    r = _run_bad(ds, bad_setup, ("-d", "notanumber", "-c", "3d_fullres", "-i", folder), inputs=[folder])
    one_line_error(r, "notanumber")
    # plans identifier that does not exist: the available ones are listed
    r = _run_bad(ds, bad_setup, ("-d", DATASET_ID, "-c", "3d_fullres", "-p", "NoSuchPlans", "-i", folder),
                 inputs=[folder])
    one_line_error(r, "NoSuchPlans.json", "nnUNetPlans")


def test_configuration_not_in_plans(ds, bad_setup, tmp_path):
    folder = tmp_path / "mri"
    folder.mkdir()
    write_mri(folder / "m.nii.gz", seed=1)
    r = _run_bad(ds, bad_setup, ("-d", DATASET_ID, "-c", "3d_lowres", "-p", bad_setup["plans"], "-i", folder),
                 inputs=[folder])
    one_line_error(r, "'3d_lowres'", "available configurations: 2d, 3d_fullres, 3d_small")


def test_environment_variables(ds, bad_setup, tmp_path):
    folder = tmp_path / "mri"
    folder.mkdir()
    write_mri(folder / "m.nii.gz", seed=1)
    args = ("-d", DATASET_ID, "-c", "3d_fullres", "-p", bad_setup["plans"], "-i", folder)
    env = {k: v for k, v in ds["env"].items() if k != "nnUNet_preprocessed"}
    one_line_error(_run_bad(ds, bad_setup, args, env=env, inputs=[folder]), "nnUNet_preprocessed")
    env = dict(ds["env"], nnUNet_preprocessed=str(tmp_path / "nowhere"))
    one_line_error(_run_bad(ds, bad_setup, args, env=env, inputs=[folder]), "nnUNet_preprocessed", "nowhere")
    # (the module fixture ran preprocess-mri with nnUNet_raw and nnUNet_results unset)


def test_negative_num_processes(ds, bad_setup, tmp_path):
    folder = tmp_path / "mri"
    folder.mkdir()
    write_mri(folder / "m.nii.gz", seed=1)
    r = _run_bad(ds, bad_setup, ("-d", DATASET_ID, "-c", "3d_fullres", "-p", bad_setup["plans"], "-i", folder,
                                 "-np", "-1"))
    one_line_error(r, "-np")


# ----------------------------------------------------------------------------------------------------------- loader
def _trainer(ds, monkeypatch, configuration, plans=None, plans_name="nnUNetPlans", n_proc_da="0"):
    import torch
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        monkeypatch.setenv(k, ds["env"][k])
    monkeypatch.setenv("nnUNet_n_proc_DA", n_proc_da)
    if plans is None:
        plans = json.loads((ds["dataset_folder"] / f"{plans_name}.json").read_text())
    plans["continue_training"] = False  # run_training's key, popped by __init__
    dataset_json = json.loads((ds["dataset_folder"] / "dataset.json").read_text())
    return nnUNetTrainer(plans, configuration, 0, dataset_json, device=torch.device("cpu"))


def _finish(*augmenters):
    for a in augmenters:
        if hasattr(a, "_finish"):
            a._finish()


@pytest.mark.parametrize("configuration,n_proc", [("3d_fullres", "0"), ("2d", "0"), ("3d_fullres", "1"),
                                                  ("2d", "1"), (SMALL, "0")])
def test_loader_batches_match_the_ct_loader(ds, monkeypatch, configuration, n_proc):
    from batchgenerators.dataloading.nondet_multi_threaded_augmenter import NonDetMultiThreadedAugmenter
    from batchgenerators.dataloading.single_threaded_augmenter import SingleThreadedAugmenter
    from mri_unpaired.loader import get_unpaired_dataloader
    t = _trainer(ds, monkeypatch, configuration, n_proc_da=n_proc)
    t.initialize()
    ct_tr, ct_val = t.get_dataloaders()
    mri = None
    try:
        mri = get_unpaired_dataloader(t)
        assert isinstance(mri, SingleThreadedAugmenter if n_proc == "0" else NonDetMultiThreadedAugmenter)
        if n_proc != "0":
            assert mri.num_processes == int(n_proc)
        ct_shape = tuple(next(ct_tr)["data"].shape)
        for _ in range(2):
            b = next(mri)
            data = b["data"]
            assert data.dtype.is_floating_point and data.dtype == __import__("torch").float32
            assert tuple(data.shape) == (ct_shape[0], 1, *ct_shape[2:])
            assert tuple(data.shape[2:]) == tuple(t.configuration_manager.patch_size)
            assert data.shape[0] == t.batch_size
            assert bool(data.isfinite().all()) and float(data.std()) > 0.1
            assert set(b["keys"]) <= {"mri00", "mri01", "mri02"}
    finally:
        _finish(ct_tr, ct_val, mri)


def test_loader_is_pickle_safe_and_usable_without_a_trainer(ds):
    from mri_unpaired.loader import UnpairedDataLoader, UnpairedDataset, make_unpaired_augmenter
    folder = mri_out(ds)
    aug = make_unpaired_augmenter(str(folder), batch_size=3, patch_size=[8, 16, 24], num_processes=0)
    b = next(aug)
    assert tuple(b["data"].shape) == (3, 1, 8, 16, 24)
    # patches larger than the image are padded like nnU-Net pads (with 0)
    big = make_unpaired_augmenter(str(folder), 1, [64, 128, 128], num_processes=0)
    assert tuple(next(big)["data"].shape) == (1, 1, 64, 128, 128)
    # 2d patches from 3d data: random slices
    aug2 = make_unpaired_augmenter(str(mri_out(ds, configuration="2d")), 2, [32, 40], num_processes=0)
    assert tuple(next(aug2)["data"].shape) == (2, 1, 32, 40)
    dl = pickle.loads(pickle.dumps(aug.data_loader))
    assert isinstance(dl, UnpairedDataLoader) and isinstance(dl._data, UnpairedDataset)
    assert tuple(next(dl)["data"].shape) == (3, 1, 8, 16, 24)


def test_loader_transforms_are_the_trainers_and_pickle(ds, monkeypatch):
    """The trainer's training transforms (3d, with rotation / scaling / mirroring) run on an image-only dict, and
    the whole multi-process loader pickles (as it must for spawn-started workers)."""
    from mri_unpaired.loader import get_unpaired_dataloader
    t = _trainer(ds, monkeypatch, "3d_fullres", n_proc_da="1")
    t.initialize()
    mri = get_unpaired_dataloader(t)
    try:
        names = [type(x).__name__ for x in mri.generator.transforms.transforms]
        assert names[0] == "SpatialTransform" and "MirrorTransform" in names
        assert "DownsampleSegForDSTransform" not in names and "MaskImageTransform" not in names
        dl = pickle.loads(pickle.dumps(mri.generator))
        assert tuple(next(dl)["data"].shape) == (t.batch_size, 1, *t.configuration_manager.patch_size)
        assert tuple(next(mri)["data"].shape) == (t.batch_size, 1, *t.configuration_manager.patch_size)
    finally:
        _finish(mri)


def test_loader_without_mri_names_the_command(ds, monkeypatch):
    from nnunet_cmedl.errors import UserInputError
    from mri_unpaired.loader import get_unpaired_dataloader
    make_plans_copy(ds, "nnUNetPlansNoMRI")
    t = _trainer(ds, monkeypatch, "3d_fullres", plans_name="nnUNetPlansNoMRI")
    with pytest.raises(UserInputError) as e:
        get_unpaired_dataloader(t)
    msg = str(e.value)
    assert "\n" not in msg
    assert str(ds["dataset_folder"] / "nnUNetPlansNoMRI_3d_fullres__mri_unpaired") in msg
    assert (f"nnunet_cmedl preprocess-unpaired -d {DATASET_NAME} -c 3d_fullres -p nnUNetPlansNoMRI --modality MRI "
            f"-i /path/to/unpaired_mri_folder") in msg
    # an empty folder is no better
    (ds["dataset_folder"] / "nnUNetPlansNoMRI_3d_fullres__mri_unpaired").mkdir()
    with pytest.raises(UserInputError, match="no preprocessed unpaired MRI cases"):
        get_unpaired_dataloader(t)

    # MRI preprocessed for other plans geometry than the trainer's
    plans = json.loads((ds["dataset_folder"] / "nnUNetPlans.json").read_text())
    plans["configurations"]["3d_fullres"]["spacing"] = [2.0, 1.0, 1.0]
    t2 = _trainer(ds, monkeypatch, "3d_fullres", plans=plans)
    with pytest.raises(UserInputError, match="other plans geometry.*--overwrite"):
        get_unpaired_dataloader(t2)


# ------------------------------------------------------------------------------------------ unpaired CT (either way)
def unpaired_cli(env, *args):
    return subprocess.run([sys.executable, "-m", "nnunet_cmedl.cli", "preprocess-unpaired", *map(str, args)], env=env,
                          capture_output=True, text=True, timeout=600)


def test_unpaired_ct_gets_nnunet_ct_normalisation_with_the_sets_own_statistics(ds, tmp_path):
    """Three CT volumes on the planned grid (no resampling), at different HU levels, one with metal: each is
    clipped to the 0.5/99.5 percentiles of the pooled set and shifted/scaled by the set's mean and sd, as nnU-Net's
    CTNormalization does with fingerprint statistics; not z-scored per image. The MRI folder is untouched."""
    ct_folder = tmp_path / "unpaired_ct"
    ct_folder.mkdir()
    rng = np.random.default_rng(5)
    raws = {}
    for i, level in enumerate((-600.0, 0.0, 300.0)):
        a = (level + rng.normal(0, 120, CT_SHAPE)).astype(np.float32)
        if i == 2:
            a.flat[rng.choice(a.size, 300, replace=False)] = 3000.0  # metal: beyond the 99.5th percentile
        raws[f"ct{i}"] = a
        write_image(ct_folder / f"ct{i}.nii.gz", a, CT_SPACING)
    mri_folder_before = snapshot(mri_out(ds))
    out = ds["dataset_folder"] / "nnUNetPlans_3d_fullres__ct_unpaired"
    assert not out.exists()

    # the modality is never guessed: neither --modality nor dataset.json's "unpaired_modality"
    r = unpaired_cli(ds["env"], "-d", DATASET_ID, "-c", "3d_fullres", "-i", ct_folder)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "--modality" in r.stderr and "dataset.json" in r.stderr and "Traceback" not in r.stderr
    assert not out.exists()

    r = unpaired_cli(ds["env"], "-d", DATASET_ID, "-c", "3d_fullres", "--modality", "CT", "-i", ct_folder,
                     "-np", "0")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "unpaired CT" in r.stdout and "modality from --modality" in r.stdout
    m = json.loads((out / "manifest.json").read_text())
    assert (m["modality"], m["normalization"], m["use_mask_for_norm"]) == ("CT", "CTNormalization", False)
    pooled = np.concatenate([a.ravel() for a in raws.values()]).astype(np.float64)  # < 100k voxels each: all used
    st = m["intensity_statistics"]
    lo, hi = np.percentile(pooled, [0.5, 99.5])
    assert st["percentile_00_5"] == pytest.approx(lo, rel=1e-5) and st["percentile_99_5"] == pytest.approx(hi, rel=1e-5)
    assert st["mean"] == pytest.approx(pooled.mean(), rel=1e-4) and st["std"] == pytest.approx(pooled.std(), rel=1e-4)
    assert hi < 3000.0
    tf = ds["plans"]["transpose_forward"]
    means = []
    for case, raw in raws.items():
        got = read_case(out, case)[0]
        expected = (np.clip(raw, st["percentile_00_5"], st["percentile_99_5"]) - st["mean"]) / st["std"]
        np.testing.assert_allclose(got, expected.transpose(tf), atol=2e-4)
        means.append(float(got.mean()))
    assert means[0] < -1.0 and means[2] > 0.5  # the HU levels survive (a per-image z-score would centre each on 0)
    assert snapshot(mri_out(ds)) == mri_folder_before

    # an update keeps the set's statistics (every case keeps the normalisation it was made with); a manifest that
    # lost them is refused, not silently renormalised
    write_image(ct_folder / "ct3.nii.gz", raws["ct1"] + 50, CT_SPACING)
    r = unpaired_cli(ds["env"], "-d", DATASET_ID, "-c", "3d_fullres", "--modality", "CT", "-i", ct_folder, "-np", "0")
    assert r.returncode == 0 and "kept from the first run" in r.stdout, r.stdout + r.stderr
    m2 = json.loads((out / "manifest.json").read_text())
    assert m2["intensity_statistics"] == st and sorted(m2["cases"]) == ["ct0", "ct1", "ct2", "ct3"]
    broken = dict(m2)
    del broken["intensity_statistics"]
    (out / "manifest.json").write_text(json.dumps(broken))
    before = snapshot(out)
    (ct_folder / "ct3.nii.gz").unlink()
    write_image(ct_folder / "ct4.nii.gz", raws["ct0"], CT_SPACING)
    r = unpaired_cli(ds["env"], "-d", DATASET_ID, "-c", "3d_fullres", "--modality", "CT", "-i", ct_folder, "-np", "0")
    assert r.returncode == 2 and "no intensity statistics" in r.stderr and "--overwrite" in r.stderr, r.stderr
    assert snapshot(out) == before

    # the unpaired loader of a trainer on the CT-labelled dataset: both folders exist, so the modality other than
    # the labelled one (MRI) is read unless the trainer asks for CT
    from mri_unpaired.loader import find_unpaired_folder

    class Stub:
        preprocessed_dataset_folder = str(ds["dataset_folder"] / "nnUNetPlans_3d_fullres")
        configuration_name = "3d_fullres"

        class configuration_manager:
            normalization_schemes = ["CTNormalization"]
    assert find_unpaired_folder(Stub)[:2] == (str(mri_out(ds)), "MRI")
    assert find_unpaired_folder(Stub, "CT")[:2] == (str(out), "CT")
    Stub.configuration_manager.normalization_schemes = ["ZScoreNormalization"]
    folder, modality, why = find_unpaired_folder(Stub)
    assert (folder, modality) == (str(out), "CT") and "both" in why
