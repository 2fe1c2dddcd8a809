#!/usr/bin/env bash
# One call of the `device` tool's GPU machine, with .gpu/ of scripts/gpu_carry.sh carried: installs the wheels, then
# side by side the CUDA tests (scripts/gpu_check.sh, first priority) and `scripts/gpu_benchmark.py --runs "$@"` on the
# carried benchmark workdir (give the runs a NICE, e.g. nnU-Net:benchCPU:0:4). Everything it returns is in $OUT:
# cuda_tests.log (with the device), gpu_benchmark.log, gpu_benchmark.json and the bundles that fit.
#   run(command="bash scripts/gpu_session.sh nnU-Net:benchCPU:0:4 ...", carry=[".gpu"], timeout_s=...)
# Environment: DEADLINE (s, default 450) for gpu_benchmark.py, TEST_S (s, default 400) for the tests, TEST_K (pytest's
# -k: a subset of the CUDA tests), NO_TESTS=1;
# PY (default python3); DEVICE (default cuda; `DEVICE=cpu PY=.venv/bin/python OUT=/tmp/o` is a dry run here, no tests).
set -uo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
py="${PY:-python3}" device="${DEVICE:-cuda}" out="${OUT:?OUT: where the results go}"
[ -f .gpu/bench.tar.xz ] || { echo "gpu_session.sh: no .gpu/bench.tar.xz: run scripts/gpu_carry.sh W here, carry .gpu"; exit 1; }
source "$repo/scripts/gpu_env.sh" || exit 1
tmp="$(mktemp -d)" && tar xJf .gpu/bench.tar.xz -C "$tmp" && work="$tmp/bench" || exit 1
if [ "$device" = cuda ] && [ -z "${NO_TESTS:-}" ]; then
    (nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; echo "cpu cores: $(nproc)"
     CMEDL_TEST_PREBUILT_DATASET="$repo/.gpu/testdata" PYTHON="$py" timeout "${TEST_S:-400}" \
         bash scripts/gpu_check.sh ${TEST_K:+-k "$TEST_K"}
     echo "gpu_check.sh exit code $?") > "$out/cuda_tests.log" 2>&1 &
fi
# 8 files come back: cuda_tests.log, gpu_benchmark.log, and what gpu_benchmark.py hands back (its json + 5 bundles)
"$py" scripts/gpu_benchmark.py --workdir "$work" --out "$out" --device "$device" --deadline "${DEADLINE:-450}" \
    --fail-fast --return-files 7 --runs "$@" > "$out/gpu_benchmark.log" 2>&1
rc=$?
wait
tail -5 "$out/cuda_tests.log" 2>/dev/null
grep -E '"state"|seconds' "$out/gpu_benchmark.json" 2>/dev/null | sort | uniq -c
exit $rc
