#!/usr/bin/env bash
# Installs keypost into ./.venv and starts it on loopback with embedded defaults
# (SQLite in ./keypost-data). Ctrl-C stops everything.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
# pip's own chatter (setuptools' notes on editable installs) is kept in a log and shown
# only when the install fails, so the first screen is keypost's.
log=.venv/keypost-install.log
echo "installing keypost into .venv (log: $log) ..."
if ! { .venv/bin/python -m pip install -q --upgrade pip &&
       .venv/bin/python -m pip install -q -e .; } >"$log" 2>&1; then
  cat "$log" >&2
  echo "start.sh: installing keypost failed (the log above is in $log)" >&2
  exit 1
fi
exec .venv/bin/keypost start --data ./keypost-data "$@"
