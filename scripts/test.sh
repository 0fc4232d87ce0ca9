#!/usr/bin/env bash
# The test command: install what is missing, then run every test (they start their own Redis, workers and API).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest -q "$@"
