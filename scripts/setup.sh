#!/usr/bin/env bash
# Create .venv and install ragconf with the extras the test suite uses. Safe to re-run.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -d .venv ] || "$PY" -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q -e ".[dev,opa,pii,serve,ann]"
