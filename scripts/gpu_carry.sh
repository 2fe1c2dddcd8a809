#!/usr/bin/env bash
# Build .gpu/, what a bare GPU machine of the `device` tool needs to run scripts/gpu_session.sh (carry: [".gpu"]), within
# its 64 MiB limit (the repo's tracked files count too). It has Python 3.12 and torch, no nnunetv2 and no SimpleITK
# (docs: ../shared/GPU_NOTES.md):
#   .gpu/whl/        wheels for Python 3.12 of nnunetv2 and what it needs beyond the machine's image
#   .gpu/site/       acvl_utils (no wheel: its sdist's package), stand-ins for SimpleITK and cc3d that raise on use
#   .gpu/bench.tar.xz of a `nnunet_cmedl benchmark --prepare-only` workdir W: fold 0's cases, the unpaired MRI, the
#                    test images, the plans with nnU-Net's NibabelIO (no SimpleITK there), and each finished
#                    warm-start source run (benchmark_trainers.WARM_STARTS, any fold) stripped to the networks it gives
#                    (their weights rounded to float16 to fit: a relative change below 1e-3)
#   .gpu/testdata/   the tiny planned dataset of tests/conftest.py (CMEDL_TEST_PREBUILT_DATASET for gpu_check.sh)
# Usage: scripts/gpu_carry.sh W     (run from anywhere; the repo's .venv builds what it builds; prints the size)
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
work="${1:?usage: scripts/gpu_carry.sh WORKDIR (of nnunet_cmedl benchmark --prepare-only)}"
py="$repo/.venv/bin/python"
out="$repo/.gpu"
grep -qx '/.gpu/' "$repo/.git/info/exclude" 2>/dev/null || { mkdir -p "$repo/.git/info"; echo '/.gpu/' >> "$repo/.git/info/exclude"; }
rm -rf "$out" && mkdir -p "$out/whl" "$out/site"

# 1. wheels (the versions of this project's environment)
platforms="--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64
           --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64"
version() { "$py" -c "import importlib.metadata as m; print(m.version('$1'))"; }
wheel() {
    "$py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp $platforms \
        -d "$out/whl" "$1" 2>&1 | grep -v "^WARNING: Location" || true
}
for pkg in nnunetv2 dynamic_network_architectures batchgenerators batchgeneratorsv2 blosc2 pydantic pydantic_core \
           nibabel yacs graphviz; do
    wheel "$pkg==$(version $pkg)"
done
for pkg in ndindex numexpr annotated-types typing-inspection; do  # batchgenerators' future, unittest2: unused
    wheel "$pkg"
done

# 2. acvl_utils from its sdist; stand-ins
tmp="$(mktemp -d)"
"$py" -m pip download -q --no-deps --no-binary=:all: -d "$tmp" "acvl-utils==$(version acvl-utils)" 2>&1 \
    | grep -v "^WARNING: Location" || true
tar xzf "$tmp"/acvl_utils-*.tar.gz -C "$tmp"
cp -r "$tmp"/acvl_utils-*/acvl_utils "$out/site/"
rm -rf "$tmp"
for mod in SimpleITK cc3d; do
    mkdir -p "$out/site/$mod"
    cat > "$out/site/$mod/__init__.py" <<EOF
"""A stand-in (scripts/gpu_carry.sh): $mod is not installed on this GPU machine; importing works, using it fails."""


def __getattr__(name):
    if name.startswith("__"):
        raise AttributeError(name)
    raise RuntimeError(f"$mod.{name}: $mod is not installed here (a stand-in of scripts/gpu_carry.sh); "
                       f"use nnU-Net's NibabelIO")
EOF
done

# 3. the benchmark workdir, fold 0 only, NibabelIO
"$py" - "$work" "$out/bench" <<'EOF'
import json, shutil, sys
from pathlib import Path
import torch
src, dst = Path(sys.argv[1]).resolve(), Path(sys.argv[2])
pre = next((src / "nnUNet_preprocessed").glob("Dataset*"))
raw = src / "nnUNet_raw" / pre.name
splits = json.loads((pre / "splits_final.json").read_text())
keep = set(splits[0]["train"]) | set(splits[0]["val"])
d = dst / "nnUNet_preprocessed" / pre.name
d.mkdir(parents=True)
for f in pre.iterdir():
    if f.is_file():
        shutil.copy2(f, d / f.name)
    elif f.name.endswith("__mri_paired_oracle"):  # the oracle's MRI (paired_mri.py): tens of MB, CPU runs only
        continue
    elif f.name == "gt_segmentations" or "__" in f.name:  # the evaluation's labels, the unpaired MRI
        shutil.copytree(f, d / f.name)
    else:  # a configuration's cases: fold 0's
        (d / f.name).mkdir()
        for c in f.iterdir():
            if c.name.split(".")[0].removesuffix("_seg") in keep:
                shutil.copy2(c, d / f.name / c.name)
plans = json.loads((d / "nnUNetPlans.json").read_text())
plans["image_reader_writer"] = "NibabelIO"  # dataset.json's overwrite_image_reader_writer does not reach the final validation
(d / "nnUNetPlans.json").write_text(json.dumps(plans, indent=1))
r = dst / "nnUNet_raw" / pre.name
r.mkdir(parents=True)
shutil.copy2(raw / "dataset.json", r)
shutil.copytree(raw / "imagesTs", r / "imagesTs")
from nnunet_cmedl.training.benchmark_trainers import WARM_STARTS, BUDGETS, trainer_name, warm_start_source
for method, seed, budget, fold in {warm_start_source(m, b) for m in WARM_STARTS for b in BUDGETS}:
    for run in (src / "nnUNet_results" / pre.name).glob(f"{trainer_name(method, budget, seed)}__*"):
        ck = run / f"fold_{fold}" / "checkpoint_final.pth"
        if ck.is_file():
            c = torch.load(ck, map_location="cpu", weights_only=False)
            keys = ("trainer_name", "current_epoch", "init_args", "cmedl_teacher_weights", "cmedl_i2i_method",
                    "cmedl_i2i_weights", "cmedl_i2i_kwargs", "cmedl_i2i_state")
            if "cmedl_teacher_weights" not in c:  # a plain nnU-Net source (the CT-teacher oracle): its network
                keys = ("trainer_name", "current_epoch", "init_args", "network_weights")
            (dst / ck.relative_to(src)).parent.mkdir(parents=True)
            light = {k: c[k] for k in keys if k in c}
            for k in ("cmedl_teacher_weights", "cmedl_i2i_weights", "network_weights"):  # half the bytes;
                if k in light:                                                          # load_state_dict casts back
                    light[k] = {n: t.half() if t.is_floating_point() else t for n, t in light[k].items()}
            light["stripped_by"] = "scripts/gpu_carry.sh: the networks a warm start reads only, weights in float16"
            torch.save(light, dst / ck.relative_to(src))
            print(f"warm-start source: {ck.relative_to(src)} ({', '.join(k for k in light if 'weights' in k)}, "
                  f"float16)")
EOF

tar cf - -C "$out" bench | xz -T2 -9 > "$out/bench.tar.xz" && rm -rf "$out/bench"  # xz: about 10% less

# 4. the tests' tiny dataset, NibabelIO
PYTHONPATH="$repo/tests${PYTHONPATH:+:$PYTHONPATH}" "$py" - "$out/testdata" <<'EOF'
import json, sys
from pathlib import Path
import conftest
root = Path(sys.argv[1])
root.mkdir()
conftest.build_planned_dataset(root)
for plans in root.glob("nnUNet_preprocessed/*/nnUNetPlans.json"):
    p = json.loads(plans.read_text())
    p["image_reader_writer"] = "NibabelIO"
    plans.write_text(json.dumps(p, indent=1))
EOF
# the tests train from the preprocessed data: of the raw folder only dataset.json
rm -rf "$out/testdata/nnUNet_results" && find "$out/testdata/nnUNet_raw" -mindepth 2 -maxdepth 2 ! -name dataset.json \
    -exec rm -rf {} +
travels=$(( $(du -sb "$out" | cut -f1) + $(cd "$repo" && { git ls-files -z; git ls-files -o --exclude-standard -z; } \
    | xargs -0 du -cb | awk '/total$/ {s += $1} END {print s}') ))
echo "[gpu_carry] $(du -sh "$out" | cut -f1) in $out; a call carries $travels bytes with the repo's files (limit 67108864)"
[ "$travels" -lt 67108864 ] || { echo "[gpu_carry] too large for a call"; exit 1; }
