#!/usr/bin/env bash
# Create .venv (if missing) and install genres with its test extras. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet --progress-bar off -e '.[test]'
# Pretrained musicnn weights (a wheel fetched with pip as data, into ~/.cache/genres).
.venv/bin/genres weights
