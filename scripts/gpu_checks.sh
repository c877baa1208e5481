#!/usr/bin/env bash
# Everything about the fused RMSNorm kernels that needs a CUDA GPU, in one go, with logs kept:
#   1. the gpu-marked tests (full sizes: 32768 rows, N up to 65536, determinism, inductor),
#   2. the whole kernel test module on the GPU (the interpreter-sized tests run on CUDA when it is available),
#   3. the benchmark, with every number written as JSON.
#
# Usage, from the repository root with the project's environment active:
#   bash scripts/gpu_checks.sh                 # logs to runs/gpu_checks/<UTC timestamp>/
#   bash scripts/gpu_checks.sh path/to/dir     # logs to path/to/dir/
# Extra benchmark flags can be passed through BENCH_ARGS, e.g. BENCH_ARGS="--dtypes bf16".
#
# Every step runs even if an earlier one fails; the exit status is non-zero if any failed, 2 without a GPU.
set -uo pipefail

cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python}"
out="${1:-runs/gpu_checks/$(date -u +%Y%m%dT%H%M%SZ)}"

if ! "$PYTHON" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    echo "gpu_checks.sh: needs a CUDA GPU (none found)"
    exit 2
fi
mkdir -p "$out"
echo "gpu_checks.sh: logs in $out"

status=0
run() {  # run <log name> <command...>: tee the output to $out/<log name>, remember failures
    local log="$out/$1"
    shift
    echo "+ $*" | tee "$log"
    "$@" 2>&1 | tee -a "$log"
    local rc=${PIPESTATUS[0]}
    if [ "$rc" -ne 0 ]; then
        echo "gpu_checks.sh: '$*' exited with $rc" | tee -a "$log"
        status=1
    fi
}

{ nvidia-smi; git rev-parse HEAD; git status --short; } > "$out/environment.txt" 2>&1
run pytest_gpu.log "$PYTHON" -m pytest tests/test_rmsnorm_triton.py -m gpu -v -rs
run pytest_all_on_gpu.log "$PYTHON" -m pytest tests/test_rmsnorm_triton.py -v -rs
# shellcheck disable=SC2086  # BENCH_ARGS is a list of flags on purpose
run bench_norm.log "$PYTHON" scripts/bench_norm.py --rows 4096 32768 --json "$out/bench_norm.json" ${BENCH_ARGS:-}

echo "gpu_checks.sh: done, status $status, logs in $out"
exit "$status"
