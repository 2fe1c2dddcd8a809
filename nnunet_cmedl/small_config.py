"""``nnunet_cmedl add-small-config``: add a small-patch configuration that inherits from a planned one.

For CPU demos and tests. nnU-Net's plans support configurations that ``inherits_from`` another: the new one reuses
the parent's preprocessed data (same data identifier, so also the same unpaired MRI), and being part of the plans
it is copied into the results folder, so ``nnUNetv2_predict -c NAME`` uses exactly what was trained. The network
topology for the new patch comes from nnU-Net's own rule (``get_pool_and_conv_props``, as its planner uses it);
only the width is capped.
"""
import argparse
import json
import os
from copy import deepcopy

from nnunet_cmedl.errors import UserInputError
from mri_unpaired.atomic import atomic_file
from mri_unpaired.nnunet_env import find_dataset_name, require_env

FEATURE_MAP_MIN_EDGE_LENGTH = 4  # nnU-Net's ExperimentPlanner.UNet_featuremap_min_edge_length
MARKER = "nnunet_cmedl_added_by"  # in each configuration this tool adds: --overwrite replaces only those
TOOL = "nnunet_cmedl add-small-config"


def check_sizes(plans: dict, parent: str, patch_size, batch_size: int, max_features: int, where: str) -> None:
    """Sizes a network can use: at least two resolution stages, no patch axis beyond the parent's images (or its
    own patch, which nnU-Net's planner may round up past them), a batch and feature maps of at least 1."""
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    cm = PlansManager(plans).get_configuration(parent)
    smallest = 2 * FEATURE_MAP_MIN_EDGE_LENGTH
    largest = [max(int(m), int(p)) for m, p in zip(cm.median_image_size_in_voxels, cm.patch_size)]
    if len(patch_size) != len(largest):
        raise UserInputError(f"{where}: --patch-size {list(patch_size)}: configuration {parent} is "
                             f"{len(largest)}d, give {len(largest)} numbers")
    for axis, (size, limit) in enumerate(zip(patch_size, largest)):
        if not smallest <= size <= limit:
            raise UserInputError(f"{where}: --patch-size {list(patch_size)}: axis {axis} must be between {smallest} "
                                 f"(two resolution stages) and {limit} (configuration {parent}'s images: median "
                                 f"{[int(m) for m in cm.median_image_size_in_voxels]}, patch {list(cm.patch_size)})")
    if batch_size < 1:
        raise UserInputError(f"{where}: --batch-size {batch_size}: must be at least 1")
    if max_features < 1:
        raise UserInputError(f"{where}: --max-features {max_features}: must be at least 1")


def small_configuration(plans: dict, parent: str, patch_size, batch_size: int, max_features: int) -> dict:
    from nnunetv2.experiment_planning.experiment_planners.network_topology import get_pool_and_conv_props
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    parent_cm = PlansManager(plans).get_configuration(parent)
    spacing = parent_cm.spacing
    _, pool_kernels, conv_kernels, fitted_patch, _ = get_pool_and_conv_props(
        spacing, list(patch_size), FEATURE_MAP_MIN_EDGE_LENGTH, 999999)
    n_stages = len(pool_kernels)
    arch = deepcopy(plans["configurations"][parent].get("architecture")
                    or {"network_class_name": parent_cm.network_arch_class_name,
                        "arch_kwargs": parent_cm.network_arch_init_kwargs,
                        "_kw_requires_import": parent_cm.network_arch_init_kwargs_req_import})
    kwargs = arch["arch_kwargs"]
    old_stages = kwargs["n_stages"]
    base = kwargs["features_per_stage"][0]
    # per-stage lists follow the new depth (decoder lists have one entry fewer)
    for key, value in list(kwargs.items()):
        if isinstance(value, list) and key not in ("kernel_sizes", "strides", "features_per_stage"):
            if len(value) == old_stages:
                kwargs[key] = (value + [value[-1]] * n_stages)[:n_stages]
            elif len(value) == old_stages - 1:
                kwargs[key] = (value + [value[-1]] * n_stages)[:n_stages - 1]
    kwargs.update(n_stages=n_stages, kernel_sizes=[list(k) for k in conv_kernels],
                  strides=[list(s) for s in pool_kernels],
                  features_per_stage=[min(base * 2 ** i, max_features) for i in range(n_stages)])
    return {"inherits_from": parent, "patch_size": [int(p) for p in fitted_patch], "batch_size": int(batch_size),
            "architecture": arch, MARKER: TOOL}


def add_small_configuration(plans_file: str, name: str, parent: str, patch_size, batch_size: int,
                            max_features: int = 64, overwrite: bool = False) -> dict:
    if not os.path.isfile(plans_file):
        raise UserInputError(f"{plans_file}: plans file not found; run nnUNetv2_plan_and_preprocess first")
    with open(plans_file) as f:
        plans = json.load(f)
    configurations = plans["configurations"]
    if parent not in configurations:
        raise UserInputError(f"{plans_file}: no configuration {parent!r} (available: {', '.join(configurations)})")
    if name in configurations and not overwrite:
        raise UserInputError(f"{plans_file}: configuration {name!r} exists already; pass --overwrite to replace it")
    if name in configurations and configurations[name].get(MARKER) != TOOL:
        raise UserInputError(f"{plans_file}: configuration {name!r} was planned by nnU-Net (or written by hand), not "
                             f"added by {TOOL}; --overwrite replaces only configurations it added: choose another "
                             f"--name")
    if parent == name or name in inheritance_chain(configurations, parent):
        raise UserInputError(f"{plans_file}: configuration {name!r} cannot inherit from {parent!r}, which is or "
                             f"inherits from {name!r}; choose another --name or --parent")
    check_sizes(plans, parent, patch_size, batch_size, max_features, plans_file)
    configurations[name] = small_configuration(plans, parent, patch_size, batch_size, max_features)
    with atomic_file(plans_file, overwrite=True) as f:
        json.dump(plans, f, indent=4, sort_keys=False)
    return configurations[name]


def inheritance_chain(configurations: dict, name: str) -> list:
    """``name`` and the configurations it inherits from, nearest first."""
    chain = [name]
    while "inherits_from" in configurations.get(chain[-1], {}) and len(chain) <= len(configurations):
        chain.append(configurations[chain[-1]]["inherits_from"])
    return chain


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="nnunet_cmedl add-small-config", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-d", "--dataset", required=True, help="dataset id or name (DatasetXXX_Name)")
    p.add_argument("-p", "--plans", default="nnUNetPlans", help="plans identifier (default nnUNetPlans)")
    p.add_argument("--parent", default="3d_fullres", help="configuration to inherit from (default 3d_fullres)")
    p.add_argument("--name", required=True, help="name of the new configuration, e.g. 3d_small")
    p.add_argument("--patch-size", type=int, nargs="+", required=True, help="patch size (z y x, or y x for 2d)")
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--max-features", type=int, default=64, help="cap on the feature maps per stage (default 64)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing configuration of that name")
    a = p.parse_args(argv)
    root = require_env("nnUNet_preprocessed")["nnUNet_preprocessed"]
    plans_file = os.path.join(root, find_dataset_name(a.dataset), a.plans + ".json")
    cfg = add_small_configuration(plans_file, a.name, a.parent, a.patch_size, a.batch_size, a.max_features,
                                  a.overwrite)
    print(f"added configuration {a.name!r} to {plans_file}: patch {cfg['patch_size']}, batch {cfg['batch_size']}, "
          f"{cfg['architecture']['arch_kwargs']['n_stages']} stages, features "
          f"{cfg['architecture']['arch_kwargs']['features_per_stage']}")
    return 0
