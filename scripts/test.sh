#!/usr/bin/env bash
# The test command: install what is missing, then run every test (they start their own Redis and workers).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec python3 -m pytest -q "$@"
