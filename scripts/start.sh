#!/usr/bin/env bash
# Installs keypost into ./.venv and starts it on loopback with embedded defaults
# (SQLite in ./keypost-data). Ctrl-C stops everything.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -e .
exec .venv/bin/keypost start --data ./keypost-data "$@"
