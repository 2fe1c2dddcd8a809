#!/usr/bin/env bash
# Accuracy benchmark: plain nnU-Net vs CMEDL and its ablations, same data/fold/budget, seeds 0-2, learning curves and
# a 4x-label reference, on the synthetic dataset (docs/BENCHMARK.md). Extra arguments go to `nnunet_cmedl benchmark`
# (see --help): --budget gpu for the GPU-sized setting, --methods / --seeds to choose. Finished runs are reused.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$repo/scripts/setup_env.sh"
venv="${CMEDL_VENV:-$repo/.venv}"
exec "$venv/bin/nnunet_cmedl" benchmark "$@"
