#!/usr/bin/env bash
# The folder of wheels a GPU machine needs to run scripts/gpu_checks.sh offline, built here (with network).
#
#   bash scripts/gpu_wheels.sh                 # into .whl/ (ignored by git), at most 64 MiB
#   bash scripts/gpu_wheels.sh path/to/dir
#   EXTRA="typer==0.29.2 rich==14.2.0" bash scripts/gpu_wheels.sh   # more, if gpu_checks.sh's env step lists them
#
# The GPU image brings Python 3.12, torch with CUDA, triton, pytest-xdist, transformers 5.17 and accelerate 1.15 with
# their dependencies, and (as the 2026-12-04 H200 run showed: datasets imported and the suite mostly passed with only
# pure-Python wheels carried) numpy, pyarrow, pandas, scipy, matplotlib and xxhash. What it lacks or has too old:
# normgpt itself (its wheel: the `normgpt` console script and its metadata, which tests read), the transformers and
# accelerate this project is tested with and what they need at those versions (huggingface_hub 2.4 with httpx2,
# httpcore2, truststore, hf-xet, click, kernels, tomlkit; regex, tokenizers, safetensors), datasets with its pure
# dependencies, gguf, and liger-kernel (a baseline of scripts/bench_norm.py). Versions are this environment's, the
# ones CI tests, for Python 3.12 on x86_64 Linux; pip installs them there with
#   pip install --no-index --no-deps --target DIR <folder>/*.whl      (gpu_checks.sh --wheels <folder> does it)
# gpu_checks.sh's env step imports every dependency and lists what is still missing.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-.whl}"
limit_mib=64
PYTHON="${PYTHON:-python}"

packages=(
    transformers huggingface_hub httpx2 httpcore2 truststore hf-xet click regex kernels tomlkit tokenizers safetensors
    accelerate datasets dill multiprocess fsspec gguf
)
pins=()
for name in "${packages[@]}"; do
    version=$("$PYTHON" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$name") || {
        echo "gpu_wheels.sh: $name is not installed here; run scripts/install.sh first" >&2
        exit 2
    }
    pins+=("$name==$version")
done
pins+=("liger-kernel==0.8.5")  # not a dependency here: the version the H200 run compared against
# shellcheck disable=SC2206  # EXTRA is a list of requirements on purpose
pins+=(${EXTRA:-})

rm -rf "$out"
mkdir -p "$out"
"$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
    --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 --platform any --dest "$out" "${pins[@]}"
"$PYTHON" -m pip wheel --quiet --no-deps --no-build-isolation --wheel-dir "$out" .   # normgpt itself

size=$(du -sb "$out" | cut -f1)
mib=$(( (size + 1048575) / 1048576 ))
echo "gpu_wheels.sh: $(find "$out" -name '*.whl' | wc -l) wheels, ${mib} MiB in $out"
if [ "$mib" -gt "$limit_mib" ]; then
    echo "gpu_wheels.sh: $out is ${mib} MiB, over the ${limit_mib} MiB a GPU session can carry" >&2
    exit 1
fi
