#!/usr/bin/env bash
# The GPU check (scripts/gpu_check.py): adapt on CUDA and on the CPU, timings and agreement.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python; [ -x "$PY" ] || PY=python3
PYTHONPATH=. exec "$PY" scripts/gpu_check.py "$@"
