#!/usr/bin/env bash
# Creates (or reuses) the virtual environment and installs nnunet-cmedl with everything it needs.
#
# torch and torchvision are pinned in the SAME pip command as everything else: installed separately, pip's resolver
# may swap torch when it resolves nnunetv2 -> dynamic-network-architectures -> timm -> torchvision, and a torchvision
# that does not match torch breaks nnU-Net's trainer lookup (it imports timm, which imports torchvision).
#
# Environment switches:
#   CMEDL_VENV=path        where the virtual environment lives (default: .venv in the repository)
#   CMEDL_KEEP_TORCH=1     keep the torch already installed in that environment (e.g. your own CUDA build): it is
#                          passed to pip as a pin of its own version instead of the default pins below
#   CMEDL_TORCH_PINS="..." the torch/torchvision pins to use (default: torch==2.14.1 torchvision==0.29.1)
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${CMEDL_VENV:-$repo/.venv}"
pins="${CMEDL_TORCH_PINS:-torch==2.14.1 torchvision==0.29.1}"

if [ ! -x "$venv/bin/python" ]; then
  echo "[setup] creating virtual environment $venv"
  python3 -m venv "$venv"
fi
py="$venv/bin/python"
if [ "${CMEDL_KEEP_TORCH:-0}" = "1" ]; then
  tv=$("$py" -c 'import torch; print(torch.__version__)' 2>/dev/null) || {
    echo "[setup] CMEDL_KEEP_TORCH=1 but no torch is installed in $venv" >&2; exit 2; }
  pins="torch==$tv"
  echo "[setup] keeping the installed torch $tv"
fi
stamp="$venv/.nnunet_cmedl_installed"
want="$pins $(sha1sum "$repo/pyproject.toml" | cut -c1-12)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  echo "[setup] $venv is up to date"
else
  # torch's PyPI build for x86_64 carries CUDA: about 5.6 GB in the environment. Say so in one line rather than fail
  # half-way with pip's "No space left on device"
  need_mb=6500
  free_mb=$(df -Pm "$(dirname "$venv")" | awk 'NR==2 {print $4}')
  if ! "$py" -c 'import torch' 2>/dev/null && [ -n "$free_mb" ] && [ "$free_mb" -lt "$need_mb" ]; then
    echo "[setup] only ${free_mb} MB free on the disk of $venv; torch and the rest need about ${need_mb} MB" \
         "(free some space, or set CMEDL_VENV to a folder on a larger disk)" >&2
    exit 1
  fi
  echo "[setup] installing nnunet-cmedl and its dependencies into $venv ($pins)"
  "$py" -m pip install --quiet --upgrade pip
  # shellcheck disable=SC2086
  # --no-cache-dir: no second copy of the wheels (torch's CUDA build is GBs) in pip's cache on a disk that is short
  "$py" -m pip install --quiet --no-cache-dir $pins -e "$repo[test]"
  echo "$want" > "$stamp"
fi
"$py" -c 'import torch, torchvision, timm, nnunetv2, nnunet_cmedl, mri_unpaired' || {
  echo "[setup] the environment does not import (torch/torchvision mismatch?)" >&2; exit 1; }
