#!/usr/bin/env bash
# Set up normgpt in ./.venv on a fresh machine: Python venv, PyTorch, then this project with its test tools.
# PyTorch is installed first and on its own, because an unpinned `torch` pulled in by another package would fetch
# the CUDA build (several GB). TORCH_SPEC picks another build, e.g. TORCH_SPEC="torch --index-url <cuda index>".
# Re-running is cheap: what is installed already is kept.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
. .venv/bin/activate
if ! python -c "import torch" 2>/dev/null; then
  # shellcheck disable=SC2086
  python -m pip install --quiet ${TORCH_SPEC:-torch==2.13.0}
fi
python -m pip install --quiet -e ".[test]"
python -c "import torch, transformers, accelerate; print(f'normgpt env ready: torch {torch.__version__}, transformers {transformers.__version__}, accelerate {accelerate.__version__}')"
