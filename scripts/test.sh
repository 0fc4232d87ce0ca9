#!/usr/bin/env bash
# The test command: install what is missing, then run every test (they start their own Redis, workers, API
# and browser on free ports), in two pytest processes.
#   --fast   the development loop: unit and in-process tests (the app through httpx's ASGI transport on a real
#            Redis), no process stacks, browser, fuzz or quick start
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if [ "${1:-}" = "--fast" ]; then
  shift
  exec .venv/bin/python -m pytest -q -m "not stack" "$@"
fi
exec .venv/bin/python -m pytest -q -n 2 --dist loadfile "$@"  # a file to one process: its module fixtures built once
