#!/usr/bin/env bash
# The project's test command: lint, type-check, then the test suite (examples and gates included).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -n "${VIRTUAL_ENV:-}" ] || . .venv/bin/activate
export HF_HUB_OFFLINE=1 HAYSTACK_TELEMETRY_ENABLED=False
ruff check ragconf tests benchmarks
ruff format --check ragconf tests benchmarks
mypy ragconf
python -m pytest -q -p no:cacheprovider -n 2 --dist loadfile --durations=15
