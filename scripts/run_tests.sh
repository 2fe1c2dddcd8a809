#!/usr/bin/env bash
# The test command: sets up the environment (scripts/setup_env.sh) and runs the test suite on the CPU.
# Extra arguments go to pytest (e.g. scripts/run_tests.sh -k synthetic; -n 0 for one process).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$repo/scripts/setup_env.sh"
venv="${CMEDL_VENV:-$repo/.venv}"
cd "$repo"
export nnUNet_n_proc_DA="${nnUNet_n_proc_DA:-0}" nnUNet_def_n_proc="${nnUNet_def_n_proc:-1}" nnUNet_compile=false
# one pytest-xdist worker per core (at most 4; CMEDL_TEST_WORKERS overrides, 0: one process), a test file per worker
# (module fixtures are built once); tests/conftest.py pins each worker to its core
cores="$(nproc 2>/dev/null || echo 1)"
workers="${CMEDL_TEST_WORKERS:-$(( cores < 2 ? 0 : cores < 4 ? cores : 4 ))}"
exec "$venv/bin/python" -m pytest -q -p no:cacheprovider -n "$workers" --dist loadfile "$@" tests
