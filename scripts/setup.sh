#!/usr/bin/env bash
# Install what Rapid Adapt needs on a fresh Debian machine: Redis, CPU PyTorch, the project.
# Idempotent: skips what is already there.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v redis-server >/dev/null 2>&1; then
  echo "setup: installing redis-server"
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq redis-server >/dev/null
fi
if ! python3 -c "import torch" 2>/dev/null; then
  echo "setup: installing torch 2.13.0 (CPU)"
  python3 -m pip install -q "torch==2.13.0"
fi
python3 -m pip install -q -e ".[dev]"
