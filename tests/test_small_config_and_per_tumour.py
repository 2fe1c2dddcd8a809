"""The small-configuration tool and the per-tumour (hard / easy) evaluation."""
import json
import subprocess

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import SMALL_3D, cli


# ---------------------------------------------------------------- add-small-config
def test_small_configuration_follows_nnunet_topology_and_inherits(planned_dataset):
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    pre = planned_dataset["root"] / "nnUNet_preprocessed" / planned_dataset["dataset_name"]
    plans = json.loads((pre / "nnUNetPlans.json").read_text())
    cfg = plans["configurations"][SMALL_3D]
    assert cfg["inherits_from"] == "3d_fullres" and cfg["patch_size"] == [8, 32, 32]
    cm = PlansManager(plans).get_configuration(SMALL_3D)
    kwargs = cm.network_arch_init_kwargs
    assert max(kwargs["features_per_stage"]) <= 16
    # every stage list has the new depth, and the patch is divisible by the product of the strides
    n = kwargs["n_stages"]
    assert len(kwargs["strides"]) == len(kwargs["kernel_sizes"]) == len(kwargs["n_conv_per_stage"]) == n
    assert len(kwargs["n_conv_per_stage_decoder"]) == n - 1
    assert all(p % int(np.prod([s[i] for s in kwargs["strides"]])) == 0 for i, p in enumerate(cfg["patch_size"]))
    # inherited: same preprocessed data, same spacing as the parent
    parent = PlansManager(plans).get_configuration("3d_fullres")
    assert cm.data_identifier == parent.data_identifier and cm.spacing == parent.spacing


@pytest.mark.parametrize("args, message", [
    (["--parent", "3d_lowres_missing", "--name", "x"], "no configuration '3d_lowres_missing'"),
    (["--parent", "3d_fullres", "--name", SMALL_3D], "exists already"),
    (["--parent", "2d", "--name", "y", "--patch-size", "8", "32", "32"], "give 2 numbers"),
    # never replace what nnU-Net planned, never a configuration that inherits from itself
    (["--parent", "3d_fullres", "--name", "2d", "--overwrite"], "planned by nnU-Net"),
    (["--parent", "2d", "--name", "2d", "--overwrite", "--patch-size", "16", "16"], "planned by nnU-Net"),
    (["--parent", SMALL_3D, "--name", SMALL_3D, "--overwrite"], "cannot inherit from"),
    # absurd sizes: zero, negative, beyond the images (16 x 48 x 64 voxels), no batch
    (["--parent", "3d_fullres", "--name", "z", "--patch-size", "0", "32", "32"], "axis 0 must be between 8"),
    (["--parent", "3d_fullres", "--name", "z", "--patch-size", "8", "-32", "32"], "axis 1 must be between 8"),
    (["--parent", "3d_fullres", "--name", "z", "--patch-size", "8", "32", "4096"], "axis 2 must be between 8"),
    (["--parent", "3d_fullres", "--name", "z", "--batch-size", "0"], "--batch-size 0"),
    (["--parent", "3d_fullres", "--name", "z", "--max-features", "-1"], "--max-features -1"),
])
def test_small_configuration_bad_input_changes_nothing(planned_dataset, args, message):
    plans_file = planned_dataset["root"] / "nnUNet_preprocessed" / planned_dataset["dataset_name"] / "nnUNetPlans.json"
    before = plans_file.read_bytes()
    if "--patch-size" not in args:
        args = args + ["--patch-size", "8", "32", "32"]
    r = subprocess.run([str(a) for a in cli("add-small-config", "-d", planned_dataset["dataset_id"], *args)], env=planned_dataset["env"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and message in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert plans_file.read_bytes() == before


def test_small_configuration_overwrites_what_it_added(planned_dataset):
    plans_file = planned_dataset["root"] / "nnUNet_preprocessed" / planned_dataset["dataset_name"] / "nnUNetPlans.json"
    args = ["add-small-config", "-d", planned_dataset["dataset_id"], "--parent", "3d_fullres", "--name", "3d_extra",
            "--patch-size", "8", "32", "32"]
    before = json.loads(plans_file.read_text())
    try:
        for extra in ([], ["--overwrite", "--batch-size", "3"]):
            r = subprocess.run([str(a) for a in cli(*args, *extra)], env=planned_dataset["env"], capture_output=True,
                               text=True)
            assert r.returncode == 0, r.stderr
        after = json.loads(plans_file.read_text())
        assert after["configurations"]["3d_extra"]["batch_size"] == 3
        assert {k: v for k, v in after["configurations"].items() if k != "3d_extra"} == before["configurations"]
    finally:
        plans_file.write_text(json.dumps(before, indent=4))


# ---------------------------------------------------------------- per-tumour evaluation
def write(path, array, spacing=(3.0, 3.0, 5.0)):
    img = sitk.GetImageFromArray(array.astype(np.uint8))
    img.SetSpacing(spacing)
    sitk.WriteImage(img, str(path))


def test_per_tumour_rows_split_hard_and_easy(tmp_path):
    from nnunet_cmedl.evaluation.per_tumour import tumour_rows
    ref = np.zeros((10, 40, 40), np.uint8)
    ref[4:7, 5:12, 5:12] = 1       # tumour 1: hard
    ref[4:7, 25:32, 25:32] = 1     # tumour 2: easy
    (tmp_path / "ref").mkdir()
    write(tmp_path / "ref" / "c1.nii.gz", ref)
    perfect_easy = np.zeros_like(ref)
    perfect_easy[4:7, 25:32, 25:32] = 1                # finds only the easy tumour
    both = ref.copy()
    both[0, 0, 0] = 1                                   # finds both, plus a far false positive
    for name, arr in (("plain", perfect_easy), ("cmedl", both)):
        (tmp_path / name).mkdir()
        write(tmp_path / name / "c1.nii.gz", arr)
    metadata = {"ct_cases": {"c1": {"split": "test", "tumours": [
        {"id": 1, "difficulty": "hard", "location": "mediastinal", "inside_voxel_zyx": [5, 8, 8]},
        {"id": 2, "difficulty": "easy", "location": "lung", "inside_voxel_zyx": [5, 28, 28]}]},
        "c0": {"split": "train", "tumours": []}}}
    rows = tumour_rows(tmp_path / "ref", {"plain": tmp_path / "plain", "cmedl": tmp_path / "cmedl"}, metadata)
    by = {(r["tumour"], r["method"]): r for r in rows}
    assert len(rows) == 4
    assert by[(1, "plain")]["dsc"] == 0 and by[(1, "plain")]["recall"] == 0
    assert by[(1, "cmedl")]["dsc"] == 1 and by[(2, "plain")]["dsc"] == 1
    # the far false positive is outside the 10 mm neighbourhood: it does not lower the tumour's score
    assert by[(2, "cmedl")]["dsc"] == 1
