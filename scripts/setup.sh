#!/usr/bin/env bash
# Install what Rapid Adapt needs on a fresh Debian machine, idempotently: Redis, HAProxy, Chromium and its driver, the Noto
# fonts, kubectl (apt), a virtual environment in .venv (PEP 668: never the system Python), CPU PyTorch 2.13.0 (a local
# wheel where pip's configuration has one, else PyTorch's CPU index, never the multi-GB CUDA build), the project
# and its client package.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
apt_install() {
  echo "setup: installing $* (apt-get)"
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq "$@" >/dev/null
}
need=()
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)  # also Sentinel and cluster mode (tests/test_fleet.py)
command -v haproxy >/dev/null 2>&1 || need+=(haproxy)            # the load balancer of bench/drill.py's host drill
command -v chromium >/dev/null 2>&1 || need+=(chromium)          # the page's browser tests
command -v chromedriver >/dev/null 2>&1 || need+=(chromium-driver)
[ -f /usr/share/fonts/truetype/noto/NotoSansThai-Thin.ttf ] || need+=(fonts-noto-core fonts-noto-extra)  # glyphs benchmark
[ ${#need[@]} -eq 0 ] || apt_install "${need[@]}"
# kubectl renders the Kustomize manifests (tests/test_deploy.py): this machine image ships it; else Debian's
command -v kubectl >/dev/null 2>&1 || apt_install kubectl || apt_install kubernetes-client
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv 2>/dev/null || { apt_install python3-venv && python3 -m venv .venv; }
fi
PY=.venv/bin/python
if ! $PY -c "import torch" 2>/dev/null; then
  local_wheel=$(ls "${PIP_FIND_LINKS:-/opt/wheels}"/torch-2.13.0*.whl 2>/dev/null | head -n 1 || true)
  if [ -n "$local_wheel" ]; then
    echo "setup: installing torch 2.13.0 (CPU) from $local_wheel"
    $PY -m pip install -q "$local_wheel"
  else
    echo "setup: installing torch 2.13.0 (CPU) from PyTorch's CPU index"
    $PY -m pip install -q "torch==2.13.0" --index-url https://download.pytorch.org/whl/cpu
  fi
fi
# the project and the client, again only when their package files changed since the last install here
stamp=.venv/.rapid-adapt-installed
want="$(cat pyproject.toml clients/python/pyproject.toml | sha256sum | cut -d' ' -f1) $(pwd)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  $PY -m pip install -q -e ".[dev]" -e ./clients/python
  echo "$want" > "$stamp"
fi
