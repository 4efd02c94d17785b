#!/usr/bin/env bash
# Install what the tests need (from PyPI only) and run the whole suite against real servers.
# Arguments go to pytest (for example `-m "not e2e"` or `-k onboard`).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]'
exec .venv/bin/python -m pytest "$@"
