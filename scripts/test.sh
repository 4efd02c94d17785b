#!/usr/bin/env bash
# Install what the tests need (from PyPI only), check lint, format and types, and run the whole
# suite against real servers. Arguments go to pytest (for example `-m "not e2e"` or `-k onboard`).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]'
echo "ruff check, ruff format --check, mypy (configuration: pyproject.toml)"
.venv/bin/ruff check --quiet .
.venv/bin/ruff format --check --quiet .
.venv/bin/mypy
exec .venv/bin/python -m pytest "$@"
