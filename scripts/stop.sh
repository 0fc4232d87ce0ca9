#!/usr/bin/env bash
# Stop what scripts/quickstart.sh started (by the pids it recorded in run/).
cd "$(dirname "$0")/.."
for name in api worker redis; do
  f="run/$name.pid"
  if [ -f "$f" ]; then
    pid="$(cat "$f")"
    if kill -0 "$pid" 2>/dev/null; then kill "$pid" && echo "stopped $name ($pid)"; fi
    rm -f "$f"
  fi
done
