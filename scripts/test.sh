#!/usr/bin/env bash
# Install (see scripts/install.sh) and run the whole check: ruff, then the test suite (CPU only, no network).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
. .venv/bin/activate
ruff check .
ruff format --check .
python -m pytest -q -n auto --maxprocesses 4 "$@"
