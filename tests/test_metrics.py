"""Tests of nnunet_cmedl.evaluation (metrics, `nnunet_cmedl evaluate`, `nnunet_cmedl compare`).

Analytic reference used below: two spheres of radius r whose centres are d apart (d < r). A point of sphere A's
surface at direction u lies at distance |sqrt(r² + d² - 2 r d u_x) - r| from sphere B's surface; on a sphere u_x is
uniformly distributed on [-1, 1] by area (Archimedes), and the area fraction whose distance exceeds δ works out to
exactly (d - δ)/d. Hence, for the continuous surfaces: Hausdorff distance = d, HD95 = 0.95 d, and surface Dice at
tolerance τ <= d is τ/d. Voxelisation moves every surface element by at most half a voxel diagonal D/2 (each surface
element sits at the centre of a 2x2x2 voxel neighbourhood containing voxel centres on both sides of the true
surface), so every surface-to-surface distance moves by at most D; the tests allow that much. The DSC of the two
balls is V_lens / V_ball with V_lens = π (4r + d)(2r - d)² / 12.
"""
import csv
import json
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage
from scipy.spatial import cKDTree

from nnunet_cmedl.errors import UserInputError
from nnunet_cmedl.evaluation import compare_cli, evaluate_cli
from nnunet_cmedl.evaluation.compare_cli import compare_methods
from nnunet_cmedl.evaluation.statistics import paired_wilcoxon
from nnunet_cmedl.evaluation.metrics import case_metrics, evaluate_folders, mask_metrics

SPACING = (2.0, 0.7, 0.7)  # array-axis order (z, y, x): anisotropic, offsets along an in-plane axis
DIAG = math.sqrt(sum(s * s for s in SPACING))  # voxel diagonal D


def ball(shape, centre_mm, radius_mm, spacing=SPACING):
    grids = np.meshgrid(*[np.arange(n) * s for n, s in zip(shape, spacing)], indexing="ij")
    return sum((g - c) ** 2 for g, c in zip(grids, centre_mm)) <= radius_mm ** 2


@pytest.fixture(scope="module")
def spheres():
    r, d = 20.0, 8.0
    shape = (25, 69, 80)
    c = np.array([24.13, 24.21, 24.37])  # off the voxel grid on purpose
    a = ball(shape, c, r)
    b = ball(shape, c + np.array([0.0, 0.0, d]), r)
    return a, b, r, d


# ------------------------------------------------------------------------------------------------ analytic checks

def test_offset_spheres_dsc_matches_lens_volume(spheres):
    a, b, r, d = spheres
    lens = math.pi * (4 * r + d) * (2 * r - d) ** 2 / 12
    dsc_true = lens / (4 / 3 * math.pi * r ** 3)
    m = mask_metrics(a, b, SPACING, 2.0)
    # voxelisation: the voxel volume of one ball is within 0.5 % of 4/3 π r³ here; allow 0.01 in DSC
    assert abs(a.sum() * np.prod(SPACING) / (4 / 3 * math.pi * r ** 3) - 1) < 0.005
    assert m["dsc"] == pytest.approx(dsc_true, abs=0.01)


def test_offset_spheres_hd95_and_surface_dice(spheres):
    a, b, r, d = spheres
    m = mask_metrics(a, b, SPACING, 2.0)
    # continuous HD95 is 0.95 d (see module docstring); each distance moves by at most D with voxelisation
    assert 0.95 * d - DIAG <= m["hd95"] <= 0.95 * d + DIAG
    assert m["hd95"] <= d + DIAG  # never above the Hausdorff distance (+ voxelisation)
    assert not m["hd95_undefined"]
    # surface Dice: 1 once the tolerance covers every distance (d, plus the voxelisation margin D)
    assert mask_metrics(a, b, SPACING, d + DIAG)["sdsc"] == pytest.approx(1.0, abs=1e-12)
    # below d it is < 1 and within the voxelisation band around the analytic tau/d
    values = []
    for tau in (d / 4, d / 2, 3 * d / 4):
        s = mask_metrics(a, b, SPACING, tau)["sdsc"]
        assert s < 1.0
        assert (tau - DIAG) / d <= s <= (tau + DIAG) / d
        values.append(s)
    assert values == sorted(values)
    # identical masks: perfect scores
    same = mask_metrics(a, a, SPACING, 0.0)
    assert (same["dsc"], same["sdsc"], same["hd95"]) == (1.0, 1.0, 0.0)


def test_case_metrics_on_label_arrays_and_2d(spheres):
    a, b, _, _ = spheres
    ref = a.astype(np.uint8) * 3
    pred = b.astype(np.uint8) * 3
    pred[0, 0, 0] = 5  # another label elsewhere does not matter
    m = case_metrics(ref, pred, SPACING, 3, 2.0)
    assert m["label"] == 3
    assert m["dsc"] == pytest.approx(mask_metrics(a, b, SPACING, 2.0)["dsc"])
    # 2D works too (contours instead of surfaces): two discs offset by 4 mm
    disc_a = ball((60, 70), (20.0, 20.0), 12.0, spacing=(0.7, 0.7))
    disc_b = ball((60, 70), (20.0, 24.0), 12.0, spacing=(0.7, 0.7))
    m2 = mask_metrics(disc_a, disc_b, (0.7, 0.7), 1.0)
    assert 0 < m2["sdsc"] < 1 and 0 < m2["hd95"] <= 4.0 + math.hypot(0.7, 0.7)


# ------------------------------------------------------------------------------------------------ cross-checks

def interior_blob_pair(seed, shape=(20, 56, 56)):
    """Two overlapping random smooth blobs that do not touch the array border."""
    rng = np.random.default_rng(seed)
    base = ndimage.gaussian_filter(rng.standard_normal(shape), (1.5, 4, 4))
    noise = ndimage.gaussian_filter(rng.standard_normal(shape), (1.5, 4, 4))
    inner = np.zeros(shape, bool)
    inner[2:-2, 4:-4, 4:-4] = True
    return (base > 0) & inner, (base + 0.6 * noise > 0) & inner


def boundary_points_mm(mask):
    padded = np.pad(mask, 1)
    edge = padded & ~ndimage.binary_erosion(padded)
    return (np.argwhere(edge) - 1) * np.asarray(SPACING)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_hd95_cross_check_against_brute_force_kdtree(seed):
    """Independent of surface-distance: boundary voxel centres + k-d tree nearest neighbours, plain percentiles.

    Those points are within D/2 of the surface-distance surfels (each surfel is the centre of a 2x2x2 neighbourhood
    holding a boundary voxel), so the two HD95 may differ by up to D."""
    a, b = interior_blob_pair(seed)
    m = mask_metrics(a, b, SPACING, 2.0)
    pa, pb = boundary_points_mm(a), boundary_points_mm(b)
    d_ab, d_ba = cKDTree(pb).query(pa)[0], cKDTree(pa).query(pb)[0]
    hd95_brute = max(np.percentile(d_ab, 95), np.percentile(d_ba, 95))
    assert m["hd95"] > 0
    assert abs(m["hd95"] - hd95_brute) <= DIAG
    assert m["dsc"] == pytest.approx(2 * (a & b).sum() / (a.sum() + b.sum()))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_surface_dice_and_hd95_cross_check_against_monai(seed):
    import monai.metrics as monai_metrics  # the 'test' extra: an independent implementation, never skipped
    import torch
    a, b = interior_blob_pair(seed)

    def onehot(m):
        return torch.from_numpy(np.stack([~m, m])[None].astype(np.float32))

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for tol in (1.0, 2.0):
            nsd = monai_metrics.compute_surface_dice(onehot(b), onehot(a), [tol], spacing=SPACING,
                                                     use_subvoxels=True).item()
            assert mask_metrics(a, b, SPACING, tol)["sdsc"] == pytest.approx(nsd, abs=1e-4)
        hd95_monai = monai_metrics.compute_hausdorff_distance(onehot(b), onehot(a), percentile=95,
                                                              spacing=SPACING).item()
    # MONAI's HD95 is an unweighted percentile over boundary voxels (not area-weighted surfels): within D
    assert abs(mask_metrics(a, b, SPACING, 2.0)["hd95"] - hd95_monai) <= DIAG


def deepmind_surface_distance():
    """DeepMind's reference ``surface_distance.metrics`` (0.1, the PyPI release) made to run on NumPy 2 / SciPy 2:
    inside that module only, ``np`` gains the removed ``Inf``/``NaN`` aliases and ``ndimage`` the removed
    ``filters``/``morphology`` namespaces. The test oracle for the product's MONAI-based surfaces."""
    import types
    import scipy.ndimage
    import surface_distance.metrics as sdm

    class Numpy(types.ModuleType):
        Inf, NaN = np.inf, np.nan

        def __getattr__(self, name):
            return getattr(np, name)

    class Ndimage(types.ModuleType):
        filters = morphology = scipy.ndimage

        def __getattr__(self, name):
            return getattr(scipy.ndimage, name)

    sdm.np, sdm.ndimage = Numpy("numpy"), Ndimage("scipy.ndimage")
    return sdm


def blob(rng, shape, threshold):
    return ndimage.gaussian_filter(rng.normal(size=shape), 2.0) > threshold


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_surface_dice_and_hd95_equal_deepminds_reference(seed):
    """The product's MONAI surfels with DeepMind's definitions give DeepMind's numbers (float noise), on irregular
    3d and 2d shapes with anisotropic spacing, touching the border, one inside the other, far apart."""
    sd = deepmind_surface_distance()
    rng = np.random.default_rng(seed)
    shape3, shape2 = (14, 40, 36), (48, 40)
    cases = [(blob(rng, shape3, 0.05), blob(rng, shape3, 0.1), SPACING),
             (blob(rng, shape2, 0.0), blob(rng, shape2, 0.15), (0.8, 1.3))]
    a = np.zeros(shape3, bool)
    a[3:10, 5:30, 4:20] = True
    cases.append((a, ndimage.binary_erosion(a, iterations=2), SPACING))
    far = np.zeros(shape3, bool)
    far[1:4, 30:38, 28:35] = True
    cases.append((a, far, SPACING))
    for ref, pred, spacing in cases:
        assert ref.any() and pred.any()
        dists = sd.compute_surface_distances(ref, pred, spacing)
        ours = {t: mask_metrics(ref, pred, spacing, t) for t in (1.0, 2.0, 3.5)}
        for t, m in ours.items():
            assert m["sdsc"] == pytest.approx(sd.compute_surface_dice_at_tolerance(dists, t), abs=1e-6)
        # MONAI's distances are float32: equal up to float32 rounding
        assert ours[2.0]["hd95"] == pytest.approx(sd.compute_robust_hausdorff(dists, 95), rel=1e-6)


# ------------------------------------------------------------------------------------------------ edge cases

def test_empty_masks_have_documented_values():
    z = np.zeros((6, 8, 8), bool)
    one = z.copy()
    one[2:4, 3:5, 3:5] = True
    both = mask_metrics(z, z, SPACING, 2.0)
    assert (both["dsc"], both["sdsc"], both["hd95"], both["hd95_undefined"]) == (1.0, 1.0, 0.0, False)
    for ref, pred in ((z, one), (one, z)):
        m = mask_metrics(ref, pred, SPACING, 2.0)
        assert (m["dsc"], m["sdsc"], m["hd95_undefined"]) == (0.0, 0.0, True)
        assert math.isnan(m["hd95"])
    with pytest.raises(ValueError):
        mask_metrics(one, one[:-1], SPACING, 2.0)
    with pytest.raises(ValueError):
        mask_metrics(one, one, SPACING, -1.0)


# ------------------------------------------------------------------------------------------------ files and CLIs

def write_label(path, arr, spacing_zyx=SPACING, origin=(0.0, 0.0, 0.0)):
    img = sitk.GetImageFromArray(np.asarray(arr, dtype=np.uint8))
    img.SetSpacing(tuple(float(s) for s in reversed(spacing_zyx)))
    img.SetOrigin(origin)
    sitk.WriteImage(img, str(path))


def make_case(seed, shape=(10, 24, 24)):
    """Reference with labels 1 (a box) and 2 (a smaller box)."""
    rng = np.random.default_rng(seed)
    ref = np.zeros(shape, np.uint8)
    z0, y0, x0 = rng.integers(1, 3), rng.integers(2, 6), rng.integers(2, 6)
    ref[z0:z0 + 6, y0:y0 + 12, x0:x0 + 12] = 1
    ref[z0 + 1:z0 + 4, y0 + 2:y0 + 6, x0 + 2:x0 + 6] = 2
    return ref


@pytest.fixture()
def folders(tmp_path):
    """refs for 9 cases; "good" = reference shifted by 1 voxel (0.7 mm) in x, "bad" = by 3 in x and 2 in y."""
    ref_dir, good, bad = tmp_path / "ref", tmp_path / "good", tmp_path / "bad"
    for d in (ref_dir, good, bad):
        d.mkdir()
    for i in range(9):
        ref = make_case(i)
        write_label(ref_dir / f"case_{i:03d}.nii.gz", ref)
        write_label(good / f"case_{i:03d}.nii.gz", np.roll(ref, 1, axis=2))
        write_label(bad / f"case_{i:03d}.nii.gz", np.roll(np.roll(ref, 3, axis=2), 2, axis=1))
    return tmp_path, ref_dir, good, bad


def read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_evaluate_cli_writes_csv_json_and_table(folders, capsys):
    tmp, ref_dir, good, _ = folders
    dj = tmp / "dataset.json"
    dj.write_text(json.dumps({"labels": {"background": 0, "tumour": 1, "core": 2}, "file_ending": ".nii.gz"}))
    groups = tmp / "groups.json"
    groups.write_text(json.dumps({"hard": ["case_000", "case_001"], "easy": [f"case_{i:03d}" for i in range(2, 9)]}))
    out = tmp / "out" / "m"
    argv = ["-ref", str(ref_dir), "-pred", str(good), "-o", str(out), "--dataset-json", str(dj),
            "--case-groups", str(groups)]
    assert evaluate_cli.main(argv) == 0
    printed = capsys.readouterr().out
    assert "DSC mean ± sd" in printed and "tumour" in printed and "hard: 1" in printed

    rows = read_csv(tmp / "out" / "m.csv")
    assert len(rows) == 9 * 2
    assert {r["label"] for r in rows} == {"1", "2"} and {r["label_name"] for r in rows} == {"tumour", "core"}
    assert {r["group"] for r in rows} == {"hard", "easy"}
    for r in rows:
        assert 0 < float(r["dsc"]) < 1 and float(r["hd95"]) > 0 and r["hd95_undefined"] == "0"

    res = json.loads((tmp / "out" / "m.json").read_text())
    assert res["tolerance_mm"] == 2.0 and res["labels"] == ["1", "2"]
    assert {"dsc", "sdsc", "hd95", "empty_masks", "aggregates"} <= set(res["definitions"])
    agg = res["aggregates"]["1"]["dsc"]
    assert agg["n"] == 9 and agg["n_nan"] == 0
    assert agg["mean"] == pytest.approx(np.mean([float(r["dsc"]) for r in rows if r["label"] == "1"]))
    assert res["group_aggregates"]["hard"]["2"]["hd95"]["n"] == 2
    assert res["inputs"]["n_cases"] == 9 and len(res["per_case"]) == 18

    # refuses to overwrite; --overwrite replaces
    from nnunet_cmedl.cli import main as cli_main
    assert cli_main(["evaluate"] + argv) == 2
    assert "exists already" in capsys.readouterr().err
    assert evaluate_cli.main(argv + ["--overwrite", "-q"]) == 0


def test_evaluate_empty_label_and_missing_predictions(folders, capsys):
    tmp, ref_dir, good, _ = folders
    # case 0: label 2 missing from the prediction -> dsc 0, hd95 undefined; case 1 prediction missing
    pred = sitk.GetArrayFromImage(sitk.ReadImage(str(good / "case_000.nii.gz")))
    pred[pred == 2] = 1
    write_label(good / "case_000.nii.gz", pred)
    (good / "case_001.nii.gz").unlink()
    with pytest.raises(UserInputError, match="case_001.nii.gz"):
        evaluate_folders(ref_dir, good)
    # case 2: label 2 in neither mask: agreement
    for folder in (ref_dir, good):
        a = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "case_002.nii.gz")))
        a[a == 2] = 1
        write_label(folder / "case_002.nii.gz", a)
    # label 3 is in no file at all: asked for, it is a mistake; from a dataset.json, it is not scored (not 1.0)
    with pytest.raises(UserInputError, match=r"--labels 3: in no reference and no prediction of the 8 cases"):
        evaluate_folders(ref_dir, good, labels=[1, 2, 3], allow_missing=True)
    dj = tmp / "dataset3.json"
    dj.write_text(json.dumps({"labels": {"background": 0, "tumour": 1, "core": 2, "other": 3}}))
    res = evaluate_folders(ref_dir, good, dataset_json=dj, allow_missing=True)
    assert res["inputs"]["missing_predictions"] == ["case_001"]
    assert res["inputs"]["labels_absent_everywhere"] == ["3"]
    assert all(math.isnan(r["dsc"]) and math.isnan(r["hd95"]) for r in res["per_case"] if r["label"] == "3")
    assert res["aggregates"]["3"]["dsc"]["n"] == 0
    by = {(r["case"], r["label"]): r for r in res["per_case"]}
    r = by[("case_000", "2")]
    assert (r["dsc"], r["sdsc"], r["hd95_undefined"]) == (0.0, 0.0, True) and math.isnan(r["hd95"])
    r2 = by[("case_002", "2")]
    assert (r2["dsc"], r2["sdsc"], r2["hd95"], r2["hd95_undefined"]) == (1.0, 1.0, 0.0, False)
    assert res["aggregates"]["2"]["hd95"]["n_nan"] == 1 and res["aggregates"]["2"]["hd95"]["n"] == 7
    # case groups that name a case the reference folder does not have
    with pytest.raises(UserInputError, match="names cases that are not in .*: case_099"):
        evaluate_folders(ref_dir, good, allow_missing=True, case_groups={"hard": ["case_000", "case_099"]})
    # NaN goes to the JSON as null
    out = tmp / "e"
    assert evaluate_cli.main(["-ref", str(ref_dir), "-pred", str(good), "-o", str(out), "--allow-missing",
                              "--labels", "2", "-q"]) == 0
    js = json.loads((tmp / "e.json").read_text())
    assert [r["hd95"] for r in js["per_case"] if r["case"] == "case_000"] == [None]


def damaged_copies(src: Path, folder: Path) -> dict:
    """A truncated copy of ``src`` (gzip stream cut in half) and a float copy with one NaN voxel (nibabel writes the
    NaN; ITK would read it as 0), as ITK reads both without complaint."""
    import nibabel
    folder.mkdir(exist_ok=True)
    raw = src.read_bytes()
    truncated = folder / "truncated.nii.gz"
    noisy = sitk.ReadImage(str(src))
    arr = sitk.GetArrayFromImage(noisy).astype(np.float32)
    arr += np.random.default_rng(0).random(arr.shape, dtype=np.float32) * 1e-3  # incompressible: cut mid-voxels
    img = sitk.GetImageFromArray(arr)
    img.CopyInformation(noisy)
    sitk.WriteImage(img, str(truncated), True)
    raw = truncated.read_bytes()
    truncated.write_bytes(raw[:len(raw) // 2])
    nan = folder / "nan.nii.gz"
    n = nibabel.load(str(src))
    data = np.asanyarray(n.dataobj).astype(np.float32)
    data.flat[0] = np.nan
    nibabel.save(nibabel.Nifti1Image(data, n.affine), str(nan))
    return {"truncated": truncated, "nan": nan}


def test_damaged_label_files_are_refused_naming_the_file(folders, tmp_path):
    _, ref_dir, good, _ = folders
    for kind, path in damaged_copies(good / "case_004.nii.gz", tmp_path / "damaged").items():
        (good / "case_004.nii.gz").write_bytes(path.read_bytes())
        with pytest.raises(UserInputError, match=r"case_004\.nii\.gz: " + ("(truncated|cannot read)" if kind == "truncated"
                                                                       else "contains 1 non-finite voxels")):
            evaluate_folders(ref_dir, good)


def test_mismatched_geometry_names_the_file(folders):
    tmp, ref_dir, good, _ = folders
    ref = sitk.GetArrayFromImage(sitk.ReadImage(str(ref_dir / "case_003.nii.gz")))
    write_label(good / "case_003.nii.gz", ref, spacing_zyx=(2.5, 0.7, 0.7))
    with pytest.raises(UserInputError, match=r"good/case_003\.nii\.gz: spacing"):
        evaluate_folders(ref_dir, good)
    write_label(good / "case_003.nii.gz", ref, origin=(0.0, 3.0, 0.0))
    with pytest.raises(UserInputError, match=r"case_003\.nii\.gz: origin"):
        evaluate_folders(ref_dir, good)
    write_label(good / "case_003.nii.gz", ref[:, :-1])
    from nnunet_cmedl.cli import main as cli_main
    with pytest.raises(UserInputError, match=r"case_003\.nii\.gz: size"):
        evaluate_folders(ref_dir, good)
    assert cli_main(["evaluate", "-ref", str(ref_dir), "-pred", str(good), "-o", str(tmp / "x")]) == 2


def test_compare_finds_the_better_method(folders, capsys):
    tmp, ref_dir, good, bad = folders
    out = tmp / "cmp"
    argv = ["-ref", str(ref_dir), "--pred", f"good={good}", f"bad={bad}", "-o", str(out), "--labels", "1"]
    assert compare_cli.main(argv) == 0
    printed = capsys.readouterr().out
    assert "good vs bad" in printed and "p (Wilcoxon)" in printed

    res = json.loads((tmp / "cmp.json").read_text())
    tests = {t["metric"]: t for t in res["tests"] if t["subset"] == "all"}
    for m in ("dsc", "sdsc", "hd95"):
        assert tests[m]["better"] == "good", m
        assert tests[m]["n"] == 9
        assert tests[m]["p_value"] < 0.05, m
    assert tests["dsc"]["mean_diff"] > 0 and tests["hd95"]["mean_diff"] < 0
    paired = read_csv(tmp / "cmp.csv")
    assert len(paired) == 9 and float(paired[0]["dsc_diff"]) == pytest.approx(
        float(paired[0]["dsc_a"]) - float(paired[0]["dsc_b"]))
    assert len(read_csv(tmp / "cmp_tests.csv")) == 3
    with pytest.raises(UserInputError, match="exists already"):
        compare_cli.main(argv)
    from nnunet_cmedl.cli import main as cli_main
    assert cli_main(["compare"] + argv) == 2  # the dispatcher prints the one-line error and exits 2
    assert compare_cli.main(argv + ["--overwrite", "-q"]) == 0

    # reuse an evaluation JSON for one method
    assert evaluate_cli.main(["-ref", str(ref_dir), "-pred", str(bad), "-o", str(tmp / "bad_eval"), "-q"]) == 0
    res2 = compare_methods(ref_dir, {"good": str(good), "bad": str(tmp / "bad_eval.json")}, labels=[1, 2])
    t2 = [t for t in res2["tests"] if t["metric"] == "dsc" and t["label"] == "2"][0]
    assert t2["better"] == "good" and t2["p_value"] < 0.05
    assert res2["inputs"]["methods"]["bad"]["kind"] == "evaluation_json"
    with pytest.raises(UserInputError, match="tolerance"):
        compare_methods(ref_dir, {"good": str(good), "bad": str(tmp / "bad_eval.json")}, tolerance_mm=1.0)


def test_paired_wilcoxon_edge_cases():
    same = paired_wilcoxon([0.8, 0.9, 0.7], [0.8, 0.9, 0.7])
    assert math.isnan(same["p_value"]) and "zero" in same["note"]
    few = paired_wilcoxon([1, 2, 3, 4, 5], [0, 1, 2, 3, 4])
    assert few["p_value"] == pytest.approx(0.0625) and "< 6" in few["note"]
    empty = paired_wilcoxon([], [])
    assert math.isnan(empty["p_value"]) and "no test" in empty["note"]
    many = paired_wilcoxon(np.arange(12) + 1.0, np.zeros(12))
    assert many["p_value"] == pytest.approx(2 / 2 ** 12) and many["note"] == ""


def test_default_labels_regions_and_ignore_label(folders):
    tmp, ref_dir, good, _ = folders
    assert evaluate_folders(ref_dir, good)["labels"] == ["1", "2"]  # every nonzero value of the references
    from nnunet_cmedl.evaluation.metrics import labels_from_dataset_json
    dj = tmp / "regions.json"
    dj.write_text(json.dumps({"labels": {"background": 0, "whole": [1, 2], "core": 2, "ignore": 3}}))
    labels, names, ignore = labels_from_dataset_json(dj)
    assert labels == [(1, 2), 2] and names == {"(1, 2)": "whole", "2": "core"} and ignore == 3
    res = evaluate_folders(ref_dir, good, dataset_json=dj)
    assert res["labels"] == ["(1, 2)", "2"] and res["label_names"]["(1, 2)"] == "whole"
    # region = union of the values; prediction voxels where the reference says 'ignore' are dropped
    ref = np.zeros((6, 10, 10), np.uint8)
    ref[1:5, 2:6, 2:6] = 1
    ref[2:4, 3:5, 3:5] = 2
    ref[:, :, 8:] = 3
    pred = (ref > 0).astype(np.uint8)
    pred[ref == 2] = 2
    assert case_metrics(ref, pred, SPACING, (1, 2), 1.0, ignore_value=3)["dsc"] == 1.0
    assert case_metrics(ref, pred, SPACING, (1, 2), 1.0)["dsc"] < 1.0
    bad = tmp / "bad_dataset.json"
    bad.write_text(json.dumps({"labels": {"background": 0, "x": "one"}}))
    with pytest.raises(UserInputError, match="bad_dataset.json"):
        labels_from_dataset_json(bad)
