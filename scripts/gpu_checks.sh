#!/usr/bin/env bash
# shellcheck disable=SC2317  # the step_* functions (and finish) are called by name: `--run-step NAME`, the trap
# The one command that proves normgpt's GPU path, on one H100/H200, in 8 minutes: every step in priority order, each
# time-boxed against one overall deadline, everything in one folder with summary.md (every figure) printed last.
#
#   bash scripts/gpu_checks.sh                        # into runs/gpu_checks/<UTC time>/
#   bash scripts/gpu_checks.sh --wheels .whl --out /some/dir --minutes 8
#   bash scripts/gpu_checks.sh --only bench_step,trainer       # a rerun of some steps
#   bash scripts/gpu_checks.sh --dry-run                       # list the steps and their time boxes (no GPU needed)
#
# Offline, on an image that has torch (never installed here): --wheels DIR (or NORMGPT_WHEELS) installs a folder
# made by scripts/gpu_wheels.sh with `pip install --no-index --no-deps --target` into the scratch folder and puts
# it on PYTHONPATH. Steps, highest priority first (box: the most seconds a step may take, fewer when the deadline is
# nearer; a step with too little time left does not start and says so):
#
#   env          the machine: nvidia-smi, versions, imports; ceilings: device copy TB/s, bf16 matmul TFLOP/s
#   gpu_tests    every test that uses the GPU in its process (`pytest -m cuda`: the kernel tests, gpu-marked ones)
#   bench_norm   scripts/bench_norm.py --quick (32768 rows first)
#   bench_step   scripts/bench_step.py --quick --levers: every variant eager, the levers compiled, the rest compiled
#   trainer      configs/small.yaml, 40 steps: rms compiled, rms eager, layer eager, layer compiled (metrics.jsonl)
#   fsdp         scripts/check_fsdp.py, one process: parameters really sharded (DTensor), sharded checkpoint resumed
#                exactly
#   suite        the rest of the test suite (`pytest -m "not cuda"`): started in the background at the beginning,
#                on the upper half of the cores at low priority, waited for here
#
# The folder gets at most 8 files: summary.md, results.json (every figure), junit_gpu.xml and junit_suite.xml
# (every failure named), bench_norm.json, bench_step.json and logs.tar.gz (each step's log, env.json, fsdp.json,
# the trainer runs' metrics and summaries, and the RMSNorm tuning cache, NORMGPT_CACHE_DIR, with every measured
# choice). Exit status 0 when every step ran and passed, 1 otherwise, 2 for bad arguments or no GPU.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2

STEPS=(env gpu_tests bench_norm bench_step trainer fsdp suite)
declare -A BOX=([env]=25 [gpu_tests]=75 [bench_norm]=50 [bench_step]=140 [trainer]=120 [fsdp]=45 [suite]=600)
RESERVE=15  # seconds kept at the end for the summary and the archive
MIN_BOX=10  # a step with less than this left does not start
TRAINER_RUNS=("rms_compiled:" "rms:" "layer:--norm layer" "layer_compiled:--norm layer")

usage() { sed -n "3,/^set -uo/p" "$0" | sed "\$d" | sed "s/^# \{0,1\}//"; }
die() { echo "gpu_checks.sh: error: $1" >&2; exit 2; }

# ---------------------------------------------------------------------------------------------------------------------
# One step, run in its own invocation of this script under `timeout` (so a box can end it, children included)

step_env() {
    nvidia-smi || true
    "$PYTHON" scripts/gpu_env.py --json "$WORK/env.json"
}

step_gpu_tests() {
    # Its own tuning cache: the tests run side by side on the GPU, and measurements taken so would be poor choices.
    NORMGPT_TEST_DEADLINE=$(( $(date +%s) + STEP_BOX - 15 )) NORMGPT_CACHE_DIR="$SCRATCH/tuning_tests" \
        "$PYTHON" -m pytest -q -n 6 -m cuda -p no:cacheprovider -rfEs \
        --junitxml="$WORK/junit_gpu.xml" --durations=15 --basetemp="$SCRATCH/pytest_gpu" tests
}

step_bench_norm() {
    local minutes
    minutes=$(awk -v b="$STEP_BOX" 'BEGIN { m = (b - 20) / 60; print (m > 0.1 ? m : 0.1) }')
    "$PYTHON" scripts/bench_norm.py --quick --max-minutes "$minutes" --json "$WORK/bench_norm.json"
}

step_bench_step() {
    local minutes  # a compiled run takes up to ~45 s: none starts later than that before the box ends
    minutes=$(awk -v b="$STEP_BOX" 'BEGIN { m = (b - 45) / 60; print (m > 0.1 ? m : 0.1) }')
    "$PYTHON" scripts/bench_step.py --quick --levers --max-minutes "$minutes" --json "$WORK/bench_step.json"
}

step_trainer() {
    local end entry name flags left
    end=$(( $(date +%s) + STEP_BOX ))
    [ -f "$SCRATCH/prepare.pid" ] && wait_for "$(cat "$SCRATCH/prepare.pid")" $(( STEP_BOX / 2 ))
    for entry in "${TRAINER_RUNS[@]}"; do
        name=${entry%%:*}
        flags=${entry#*:}
        [[ $name == *_compiled ]] && flags="$flags --torch_compile"
        left=$(( end - $(date +%s) ))
        if (( left < MIN_BOX )); then echo "trainer $name: not run (time box)"; continue; fi
        echo "=== trainer $name ($left s left)"
        # shellcheck disable=SC2086  # flags is a list of flags on purpose
        timeout -s INT -k 10 "$left" "$PYTHON" -m accelerate.commands.launch \
            --config_file configs/accelerate/single_gpu.yaml train/train.py --config configs/small.yaml \
            --max_steps 40 --logging_steps 10 --eval_steps 1000 --save_steps 1000 --max_eval_batches 4 \
            --sample_max_new_tokens 0 --report_to none --cache_dir "$SCRATCH/data" \
            --output_dir "$SCRATCH/runs/$name" --overwrite_output_dir true $flags
        echo "=== trainer $name: exit $?"
        mkdir -p "$WORK/trainer/$name"
        cp "$SCRATCH/runs/$name"/{metrics.jsonl,summary.json,run_config.yaml} "$WORK/trainer/$name/" 2>/dev/null
        rm -rf "$SCRATCH/runs/$name"  # 124M weights, twice: nothing the summary needs
    done
}

step_fsdp() {
    "$PYTHON" scripts/check_fsdp.py --out "$SCRATCH/fsdp" --num_processes 1 --timeout $(( STEP_BOX / 2 )) \
        --json "$WORK/fsdp.json"
}

step_suite() {  # the background run's exit status, once it has one
    sleep 1  # the background job writes its pid as it starts
    [ -f "$SCRATCH/suite.pid" ] || { echo "the suite was not started"; return 1; }
    wait_for "$(cat "$SCRATCH/suite.pid")" "$STEP_BOX"
    tail -n 40 "$WORK/logs/suite_background.log"
    return "$(cat "$SCRATCH/suite.rc" 2>/dev/null || echo 124)"
}

wait_for() {  # wait_for PID SECONDS: until the (non-child) process ends, or the seconds pass (status 1)
    local pid=$1 until=$(( $(date +%s) + $2 ))
    while kill -0 "$pid" 2>/dev/null; do
        (( $(date +%s) >= until )) && return 1
        sleep 1
    done
}

if [ "${1:-}" = "--run-step" ]; then
    "step_$2"
    exit $?
fi

# ---------------------------------------------------------------------------------------------------------------------
# The arguments

out="" wheels="${NORMGPT_WHEELS:-}" minutes=8 only="" dry_run=0
while [ $# -gt 0 ]; do
    case "$1" in
        --out) out=${2:?--out needs a directory}; shift 2 ;;
        --wheels) wheels=${2:?--wheels needs a directory}; shift 2 ;;
        --minutes) minutes=${2:?--minutes needs a number}; shift 2 ;;
        --only) only=${2:?--only needs step names}; shift 2 ;;
        --dry-run) dry_run=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) die "unknown argument '$1'; valid: --out DIR, --wheels DIR, --minutes M, --only STEP,..., --dry-run" ;;
    esac
done
if ! [[ $minutes =~ ^[0-9]+$ ]] || (( minutes < 1 )); then
    die "--minutes must be a whole number >= 1, got '$minutes'"
fi
selected=" ${STEPS[*]} "
if [ -n "$only" ]; then
    selected=" ${only//,/ } "
    for name in $selected; do
        [[ " ${STEPS[*]} " == *" $name "* ]] || die "unknown step '$name' in --only; valid: ${STEPS[*]}"
    done
fi
[ -z "$wheels" ] || [ -d "$wheels" ] || die "--wheels '$wheels' is not a directory (make one with scripts/gpu_wheels.sh)"

start=$(date +%s)
deadline=$(( start + 60 * minutes ))

if (( dry_run )); then
    echo "gpu_checks.sh --dry-run: ${minutes} min in all (deadline +$(( deadline - start )) s), ${RESERVE} s kept for the summary"
    at=0
    for name in "${STEPS[@]}"; do
        [[ $selected == *" $name "* ]] || { printf '  %-11s not selected\n' "$name"; continue; }
        if [ "$name" = suite ]; then
            printf '  %-11s runs in the background from the start (pytest -m "not cuda", upper half of the cores),\n' \
                "$name"
            printf '  %-11s no test starts after +%d s, stopped at +%d s at the latest; waited for at the end\n' "" \
                $(( 60 * minutes - RESERVE - 30 )) $(( 60 * minutes - RESERVE - 5 ))
            continue
        fi
        box=$(( BOX[$name] < 60 * minutes - RESERVE - at ? BOX[$name] : 60 * minutes - RESERVE - at ))
        (( box < 0 )) && box=0
        printf '  %-11s box %4d s  (starts by +%d s)\n' "$name" "$box" "$at"
        at=$(( at + box ))
    done
    printf '  %-11s the last %d s: summary.md, results.json, logs.tar.gz\n' "summary" "$RESERVE"
    exit 0
fi

PYTHON=${PYTHON:-python}
if ! "$PYTHON" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
    echo "gpu_checks.sh: needs a CUDA GPU and torch (none found); --dry-run lists the steps" >&2
    exit 2
fi

# ---------------------------------------------------------------------------------------------------------------------
# Setup: folders, the wheels, the environment every step shares, and the background jobs

stamp=$(date -u +%Y%m%dT%H%M%SZ)
out=${out:-runs/gpu_checks/$stamp}
SCRATCH=${TMPDIR:-/tmp}/normgpt-gpu-checks-$stamp   # big things that never come back: runs, caches, deps
WORK=$SCRATCH/work                                     # what comes back, in out/ or logs.tar.gz
mkdir -p "$out" "$WORK/logs" "$SCRATCH/runs"
out=$(cd "$out" && pwd)
export PYTHON SCRATCH WORK
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if [ -n "$wheels" ]; then
    "$PYTHON" -m pip install --quiet --no-index --no-deps --target "$SCRATCH/deps" "$wheels"/*.whl \
        > "$WORK/logs/wheels.log" 2>&1 || echo "gpu_checks.sh: installing the wheels failed: see logs/wheels.log"
    export PYTHONPATH="$PWD:$SCRATCH/deps${PYTHONPATH#"$PWD"}" PATH="$SCRATCH/deps/bin:$PATH"
fi
export NORMGPT_CACHE_DIR="$WORK/tuning"  # the RMSNorm kernels' measured choices: they come back in the archive
export TORCHINDUCTOR_CACHE_DIR="$SCRATCH/inductor" TRITON_CACHE_DIR="$SCRATCH/triton"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 WANDB_MODE=offline TOKENIZERS_PARALLELISM=false
{ git rev-parse HEAD 2>/dev/null || echo "unknown (not a git checkout)"; git status --short 2>/dev/null; } \
    > "$WORK/commit.txt"

cpus=$(nproc)
low=$(( cpus / 2 ))
if [[ $selected == *" trainer "* ]]; then  # the 124M preset's data, on the CPU while the GPU does other things
    nice -n 10 "$PYTHON" -m train prepare --config configs/small.yaml --cache_dir "$SCRATCH/data" \
        > "$WORK/logs/prepare.log" 2>&1 &
    echo $! > "$SCRATCH/prepare.pid"
fi
if [[ $selected == *" suite "* ]]; then
    (
        pin=()
        command -v taskset > /dev/null && (( cpus >= 4 )) && pin=(taskset -c "$low-$(( cpus - 1 ))")
        # Tests that would start within 30 s of the deadline are skipped (conftest.py), so pytest ends by itself and
        # writes its JUnit XML; the timeout is the hard stop behind it.
        export NORMGPT_TEST_DEADLINE=$(( deadline - RESERVE - 30 ))
        timeout -s INT -k 5 $(( deadline - $(date +%s) - RESERVE - 10 )) nice -n 10 "${pin[@]}" \
            "$PYTHON" -m pytest -q -n $(( cpus - low )) -m "not cuda" -p no:cacheprovider -rfE --durations=25 \
            --junitxml="$WORK/junit_suite.xml" --basetemp="$SCRATCH/pytest" tests &
        echo $! > "$SCRATCH/suite.pid"
        wait $!
        echo $? > "$SCRATCH/suite.rc"
    ) > "$WORK/logs/suite_background.log" 2>&1 &
fi

# ---------------------------------------------------------------------------------------------------------------------
# The steps, then the summary (also when interrupted)

failed=0
trap 'exit 130' INT TERM  # so that the summary below is written also when the run is stopped
finish() {
    local pid
    for pid in "$SCRATCH/suite.pid" "$SCRATCH/prepare.pid"; do
        [ -f "$pid" ] && kill -INT "$(cat "$pid")" 2>/dev/null
    done
    [ -f "$SCRATCH/suite.pid" ] && wait_for "$(cat "$SCRATCH/suite.pid")" 10  # its JUnit XML, written as it stops
    "$PYTHON" scripts/gpu_summary.py "$WORK" "$out" > "$WORK/logs/summary.log" 2>&1
    local file
    for file in junit_gpu.xml junit_suite.xml bench_norm.json bench_step.json; do
        [ -f "$WORK/$file" ] && cp "$WORK/$file" "$out/"
    done
    tar -czf "$out/logs.tar.gz" -C "$WORK" --exclude=junit_gpu.xml --exclude=junit_suite.xml . 2>/dev/null
    cat "$out/summary.md" 2>/dev/null || cat "$WORK/logs/summary.log"
    echo "gpu_checks.sh: $(( $(date +%s) - start )) s; everything in $out ($(find "$out" -type f | wc -l) files)"
}
trap finish EXIT

for name in "${STEPS[@]}"; do
    [[ $selected == *" $name "* ]] || continue
    left=$(( deadline - $(date +%s) - RESERVE ))
    box=${BOX[$name]}
    (( box > left )) && box=$left
    [ "$name" = suite ] && (( box < 1 )) && box=1  # only waits: the background run has its own end
    if (( box < MIN_BOX )) && [ "$name" != suite ]; then
        printf '%s\t%s\t0\tnot run: no time left\n' "$name" "${BOX[$name]}" >> "$WORK/steps.tsv"
        failed=1
        continue
    fi
    echo "gpu_checks.sh: $name (box $box s)"
    began=$(date +%s)
    STEP_BOX=$box timeout -s INT -k 15 "$box" bash "$0" --run-step "$name" > "$WORK/logs/$name.log" 2>&1
    rc=$?
    case $rc in
        0) status=ok ;;
        124|130|137) status="time box reached" ;;
        *) status="exit $rc" ;;
    esac
    (( rc == 0 )) || failed=1
    printf '%s\t%s\t%s\t%s\n' "$name" "$box" "$(( $(date +%s) - began ))" "$status" >> "$WORK/steps.tsv"
    echo "gpu_checks.sh: $name: $status"
done
exit "$failed"
