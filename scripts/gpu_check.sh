#!/usr/bin/env bash
# The CUDA checks that CPU CI cannot run (tests/test_cuda.py): AMP, the shared and the discriminators' grad scalers,
# torch.compile of every network, reload of a CUDA checkpoint on CUDA and on the CPU, for CMEDL, CUT and FastCUT at a
# 2d and a 3d configuration. Run it on a GPU machine; extra arguments go to pytest (e.g. -k 2d_tiny).
# $PYTHON: a python with nnunetv2 and this project (default: python). CMEDL_TEST_PREBUILT_DATASET=<root> reuses a tiny
# dataset built elsewhere with tests/conftest.py's build_planned_dataset (a GPU machine without SimpleITK).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
py="${PYTHON:-python}"
"$py" -c 'import torch; assert torch.cuda.is_available(), "scripts/gpu_check.sh: no CUDA GPU visible to torch"
print(torch.cuda.get_device_name(0), "torch", torch.__version__)'
cd "$repo"
exec "$py" -m pytest -v -p no:cacheprovider tests/test_cuda.py "$@"
