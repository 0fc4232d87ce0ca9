#!/usr/bin/env bash
# Install what Rapid Adapt needs on a fresh Debian machine, idempotently: Redis, HAProxy, Prometheus, Chromium and its driver, the Noto
# fonts, kubectl (apt), a virtual environment in .venv (PEP 668: never the system Python), CPU PyTorch 2.13.0 (a local
# wheel where pip's configuration has one, else PyTorch's CPU index, never the multi-GB CUDA build), the locked
# dependencies (requirements/dev.lock, hash-checked), the project and its client package.
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
command -v promtool >/dev/null 2>&1 || need+=(prometheus)        # the rules' unit tests and a real scrape (tests/test_monitoring.py)
command -v chromedriver >/dev/null 2>&1 || need+=(chromium-driver)
[ -f /usr/share/fonts/truetype/noto/NotoSansThai-Thin.ttf ] || need+=(fonts-noto-core fonts-noto-extra)  # glyphs benchmark
[ ${#need[@]} -eq 0 ] || apt_install "${need[@]}"
# kubectl renders the Kustomize manifests (tests/test_deploy.py): this machine image ships it; else Debian's
command -v kubectl >/dev/null 2>&1 || apt_install kubectl || apt_install kubernetes-client
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv 2>/dev/null || { apt_install python3-venv && python3 -m venv .venv; }
fi
PY=.venv/bin/python
# the dependencies from the lock (exact versions, every file checked against its hash; scripts/lock.sh writes
# it), torch by version, then the project and the client; again only when one of those files changed
stamp=.venv/.rapid-adapt-installed
want="$(cat pyproject.toml clients/python/pyproject.toml requirements/dev.lock | sha256sum | cut -d' ' -f1) $(pwd)"
changed=""; [ "$(cat "$stamp" 2>/dev/null)" = "$want" ] || changed=1
if [ -n "$changed" ]; then
  echo "setup: installing the locked dependencies (pip --require-hashes)"
  $PY -m pip install -q --require-hashes --no-deps -r requirements/dev.lock 2> >(grep -v "is ignored: it is neither" >&2)
fi
if ! $PY -c "import torch" 2>/dev/null; then  # its CPU dependencies are in the lock
  local_wheel=$(ls "${PIP_FIND_LINKS:-/opt/wheels}"/torch-2.13.0*.whl 2>/dev/null | head -n 1 || true)
  if [ -n "$local_wheel" ]; then
    echo "setup: installing torch 2.13.0 (CPU) from $local_wheel"
    $PY -m pip install -q --no-deps "$local_wheel"
  else
    echo "setup: installing torch 2.13.0 (CPU) from PyTorch's CPU index"
    $PY -m pip install -q --no-deps "torch==2.13.0" --index-url https://download.pytorch.org/whl/cpu
  fi
fi
if [ -n "$changed" ]; then
  $PY -m pip install -q --no-deps -e . -e ./clients/python
  echo "$want" > "$stamp"
fi
