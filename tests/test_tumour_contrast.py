"""``nnunet_cmedl tumour-contrast``: does a pseudo-MRI show the tumours better than the CT?

On a small phantom, three stand-ins for a generator's output, each written as export-pmri names it:
- a perfect generator (the patient's own MRI): every tumour stands out, far more than the hard ones in the CT;
- the CT copied: exactly the CT's separation, no gain;
- a generator blind to the tumours (the MRI with each tumour's voxels drawn from its surroundings): near 0.5.
"""
import json
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from nnunet_cmedl.synthetic.dataset import make_synthetic_dataset
from nnunet_cmedl.synthetic.paired_mri import phantom_settings, render_paired_mri
from nnunet_cmedl.evaluation.tumour_contrast import padded_box, ring_of

RING_MM = "8"  # the small phantom's voxels are 6 mm in-plane


def write_like(array: np.ndarray, reference: sitk.Image, path) -> None:
    image = sitk.GetImageFromArray(array.astype(np.float32))
    image.CopyInformation(reference)
    sitk.WriteImage(image, str(path))


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    root = tmp_path_factory.mktemp("contrast")
    paths = make_synthetic_dataset(root / "raw", dataset_id=503, dataset_name="Contrast", num_train=1, num_test=3,
                                   num_unpaired=1, ct_shape=(16, 48, 64), seed=5, preview=False, show_progress=False)
    folder = paths.dataset_folder
    metadata = json.loads((folder / "phantom_metadata.json").read_text())
    grid = phantom_settings(folder)
    rng = np.random.default_rng(0)
    stand_ins = {name: root / name for name in ("perfect", "ct_copy", "blind")}
    for d in stand_ins.values():
        d.mkdir()
    for case, info in metadata["labelled_cases"].items():
        if info["split"] != "test":
            continue
        ct = sitk.ReadImage(str(folder / "imagesTs" / f"{case}_0000.nii.gz"))
        label = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "labelsTs" / f"{case}.nii.gz"))) > 0
        mri = render_paired_mri(grid, case)
        write_like(mri, ct, stand_ins["perfect"] / f"{case}_pMRI.nii.gz")
        write_like(sitk.GetArrayFromImage(ct), ct, stand_ins["ct_copy"] / f"{case}_pMRI.nii.gz")
        blind, (components, n) = mri.copy(), ndimage.label(label)
        for index in range(1, n + 1):  # each tumour drawn from its own surroundings
            tumour = components == index
            blind[tumour] = rng.choice(mri[ring_of(tumour, label, (10.0, 6.0, 6.0), 8.0)], size=int(tumour.sum()))
        write_like(blind, ct, stand_ins["blind"] / f"{case}_pMRI.nii.gz")
    return {"folder": folder, "root": root, **stand_ins}


def contrast(phantom, *extra, pmri=None, output="contrast"):
    pmri = pmri or [f"{n}={phantom[n]}" for n in ("perfect", "ct_copy", "blind")]
    f = phantom["folder"]
    return subprocess.run([sys.executable, "-m", "nnunet_cmedl.cli", "tumour-contrast", "--labels", f / "labelsTs",
                           "--ct", f / "imagesTs", "--pmri", *pmri, "--ring-mm", RING_MM,
                           "-o", phantom["root"] / output, *extra], capture_output=True, text=True, timeout=300)


def test_a_rendering_generator_shows_the_hard_tumours_better_than_the_ct_and_a_blind_one_does_not(phantom):
    r = contrast(phantom, "--phantom-metadata", phantom["folder"] / "phantom_metadata.json", "--mri", "phantom")
    assert r.returncode == 0, r.stderr
    assert "hard" in r.stdout and "easy" in r.stdout
    result = json.loads((phantom["root"] / "contrast.json").read_text())
    hard, easy = result["summary"]["hard"], result["summary"]["easy"]
    assert hard["n_tumours"] >= 3 and easy["n_tumours"] >= 3
    # the phantom's premise: the MRI shows the hard tumours, the CT barely
    assert hard["auc"]["MRI"]["mean"] > 0.95 and hard["auc"]["CT"]["mean"] < 0.85
    assert easy["auc"]["CT"]["mean"] > 0.9
    # a perfect generator beats the CT on every hard tumour; the CT copy equals it; a blind one shows nothing
    perfect = hard["pmri_vs_ct"]["perfect"]
    assert perfect["mean_difference"] > 0.15 and perfect["n_higher"] == perfect["n"] == hard["n_tumours"]
    assert hard["pmri_vs_ct"]["ct_copy"]["mean_difference"] == 0.0
    assert result["summary"]["all"]["auc"]["ct_copy"]["mean"] == result["summary"]["all"]["auc"]["CT"]["mean"]
    for kind in ("hard", "easy"):
        assert result["summary"][kind]["auc"]["blind"]["mean"] < 0.7
        assert result["summary"][kind]["pmri_vs_mri"]["blind"]["mean_difference"] < -0.25
    rows = result["per_tumour"]
    assert len(rows) == hard["n_tumours"] + easy["n_tumours"]
    assert all(0.5 <= row[f"{n}_auc"] <= 1.0 for row in rows for n in ("CT", "perfect", "ct_copy", "blind", "MRI"))
    header = (phantom["root"] / "contrast.csv").read_text().splitlines()[0]
    assert header.startswith("case,tumour,difficulty,tumour_voxels,ring_voxels,CT_auc,CT_cnr,perfect_auc")
    assert (phantom["root"] / "contrast.png").stat().st_size > 10_000
    assert (phantom["root"] / "contrast_crops.png").stat().st_size > 10_000  # 3 hard + 3 easy tumours x 5 images


def test_any_labels_without_phantom_metadata_are_one_kind(phantom):
    r = contrast(phantom, "--crops", "0", pmri=[str(phantom["perfect"])], output="plain")
    assert r.returncode == 0, r.stderr
    assert not (phantom["root"] / "plain_crops.png").exists()
    summary = json.loads((phantom["root"] / "plain.json").read_text())["summary"]
    assert list(summary) == ["all"] and summary["all"]["n_tumours"] >= 6
    assert "MRI" not in summary["all"]["auc"] and summary["all"]["pmri_vs_ct"]["pMRI"]["mean_difference"] > 0.05


def test_bad_input_is_one_line_and_nothing_is_overwritten(phantom, tmp_path):
    missing = tmp_path / "missing"
    missing.mkdir()
    first_case = sorted((phantom["perfect"]).iterdir())[0].name
    (missing / first_case).write_bytes((phantom["perfect"] / first_case).read_bytes())
    r = contrast(phantom, pmri=[f"gen={missing}"], output="missing")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    assert "no pMRI (gen) for case" in r.stderr and str(missing) in r.stderr
    assert not (phantom["root"] / "missing.json").exists()

    r = contrast(phantom, "--mri", "phantom", pmri=[str(phantom["perfect"])], output="nometa")
    assert r.returncode == 2 and "--mri phantom: needs --phantom-metadata" in r.stderr

    r = contrast(phantom, pmri=[f"CT={phantom['perfect']}"], output="badname")
    assert r.returncode == 2 and "distinct name" in r.stderr

    existing = phantom["root"] / "kept.csv"
    existing.write_text("a user's file\n")
    r = contrast(phantom, pmri=[str(phantom["perfect"])], output="kept")
    assert r.returncode == 2 and "kept.csv" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert existing.read_text() == "a user's file\n"


def test_the_ring_leaves_out_other_labels_and_the_gap():
    mask = np.zeros((1, 1, 20), bool)
    mask[0, 0, 8:12] = True
    labelled = mask.copy()
    labelled[0, 0, 14] = True  # another structure
    assert np.flatnonzero(ring_of(mask, labelled, (1.0, 1.0, 1.0), 3.0)).tolist() == [5, 6, 7, 12, 13]
    assert np.flatnonzero(ring_of(mask, labelled, (1.0, 1.0, 1.0), 3.0, gap_mm=2.0)).tolist() == [3, 4, 5, 15, 16]
    assert np.flatnonzero(ring_of(mask, labelled, (1.0, 1.0, 2.0), 4.0)).tolist() == [6, 7, 12, 13]


@pytest.mark.parametrize("spacing, ring_mm, gap_mm", [((1.0, 1.0, 1.0), 3.0, 0.0), ((5.0, 0.8, 0.8), 3.0, 1.5),
                                                      ((2.5, 0.7, 0.9), 6.0, 0.0)])
def test_the_ring_in_a_box_around_the_tumour_is_the_ring_in_the_whole_image(spacing, ring_mm, gap_mm):
    """A real CT is 512 x 512 x 300: each tumour's ring is computed in a box around it, and must not differ from
    the whole image's, also for a tumour at the image's edge."""
    rng = np.random.default_rng(0)
    labelled = ndimage.gaussian_filter(rng.random((14, 60, 50)), (1.0, 3.0, 3.0)) > 0.53  # blobs, some at the edge
    components, n = ndimage.label(labelled)
    assert n >= 4
    edge, smaller = False, 0
    for index in range(1, n + 1):
        mask = components == index
        box = padded_box(mask, spacing, gap_mm + ring_mm)
        whole = ring_of(mask, labelled, spacing, ring_mm, gap_mm)
        in_box = np.zeros_like(whole)
        in_box[box] = ring_of(mask[box], labelled[box], spacing, ring_mm, gap_mm)
        assert whole.any() and np.array_equal(in_box, whole)
        smaller += int(np.prod([s.stop - s.start for s in box]) < mask.size)
        edge |= any(s.start == 0 or s.stop == dim for s, dim in zip(box, mask.shape))
    assert edge and smaller == n
