#!/usr/bin/env bash
# The test command: sets up the environment (scripts/setup_env.sh) and runs the test suite on the CPU.
# Extra arguments go to pytest (e.g. scripts/run_tests.sh -k synthetic).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$repo/scripts/setup_env.sh"
venv="${CMEDL_VENV:-$repo/.venv}"
cd "$repo"
export nnUNet_n_proc_DA="${nnUNet_n_proc_DA:-0}" nnUNet_def_n_proc="${nnUNet_def_n_proc:-1}" nnUNet_compile=false
exec "$venv/bin/python" -m pytest -q -p no:cacheprovider "$@" tests
