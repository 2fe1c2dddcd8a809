#!/usr/bin/env bash
# Accuracy benchmark: plain nnU-Net vs CMEDL, same budget/fold/seed, on the synthetic dataset (about 30 min on 2 CPU
# cores with the default --budget cpu). Extra arguments go to `nnunet_cmedl benchmark` (see --help).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$repo/scripts/setup_env.sh"
venv="${CMEDL_VENV:-$repo/.venv}"
exec "$venv/bin/nnunet_cmedl" benchmark "$@"
