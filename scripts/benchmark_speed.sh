#!/usr/bin/env bash
# Training speed and peak memory, plain nnU-Net vs. the CMEDL variants, side by side in one process on the same plans
# (fixed in-memory batches of the planned shapes). Sets up the environment (scripts/setup_env.sh), then runs
# `nnunet_cmedl benchmark-speed`; extra arguments go to it (see --help), e.g.
#   scripts/benchmark_speed.sh -d 501 -c 3d_fullres --json speed_3d_fullres.json
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$repo/scripts/setup_env.sh"
venv="${CMEDL_VENV:-$repo/.venv}"
exec "$venv/bin/nnunet_cmedl" benchmark-speed "$@"
