#!/usr/bin/env bash
# Stop what scripts/quickstart.sh started, by the pids it recorded in run/ (or RAPID_ADAPT_RUN_DIR), nothing else.
cd "$(dirname "$0")/.."
RUN="${RAPID_ADAPT_RUN_DIR:-run}"
for name in api worker redis-broker redis-store; do
  f="$RUN/$name.pid"
  if [ -f "$f" ]; then
    pid="$(cat "$f")"
    if kill -0 "$pid" 2>/dev/null; then
      kill "$pid" && echo "stopped $name ($pid)"
      for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    fi
    rm -f "$f"
  fi
done
