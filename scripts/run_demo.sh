#!/usr/bin/env bash
# The main job, end to end on the embedded synthetic dataset: sets up the environment (scripts/setup_env.sh), then
# runs `nnunet_cmedl demo` (generate -> plan/preprocess -> MRI -> train CMEDL -> stock predict -> Dice per case).
# Extra arguments go to `nnunet_cmedl demo` (see --help), e.g. scripts/run_demo.sh --workdir /tmp/cmedl_demo
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$repo/scripts/setup_env.sh"
venv="${CMEDL_VENV:-$repo/.venv}"
exec "$venv/bin/nnunet_cmedl" demo "$@"
