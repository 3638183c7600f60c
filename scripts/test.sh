#!/usr/bin/env bash
# Install sloserve with its test tools into .venv, then run lint, types, the import-layer
# contract and the whole test suite. This is the README's test command; .ci/run runs it.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[test,torch,ray]'
echo "== ruff"; .venv/bin/ruff check . && .venv/bin/ruff format --check .
echo "== mypy --strict src/"; .venv/bin/mypy
echo "== import layers"; .venv/bin/lint-imports
echo "== pytest"; .venv/bin/python -m pytest --ignore=tests/cluster "$@"
# The Ray suite in its own process: a Ray driver is process-wide and outlives the tests that use it.
echo "== pytest tests/cluster (a real local Ray cluster)"; .venv/bin/python -m pytest tests/cluster "$@"
