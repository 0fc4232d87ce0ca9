#!/usr/bin/env bash
# Quick start: install what is missing (scripts/setup.sh), start this checkout's own Redis servers, a Celery
# worker and the API on 127.0.0.1, run the demo round trip, and leave the service running (stop it with
# bash scripts/stop.sh). It never joins another service: it refuses to start when a port it needs is taken,
# before installing anything. Adaptations are kept across a stop and a start (Redis's append-only files in run/).
#   RAPID_ADAPT_PORT          API port (8000)
#   RAPID_ADAPT_BROKER_PORT   Redis for Celery's queue (6379)
#   RAPID_ADAPT_STORE_PORT    Redis for records, support sets and adapted weights (6380)
#   RAPID_ADAPT_RUN_DIR       where its pids and logs go (run/)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
PORT="${RAPID_ADAPT_PORT:-8000}"
BROKER_PORT="${RAPID_ADAPT_BROKER_PORT:-6379}"
STORE_PORT="${RAPID_ADAPT_STORE_PORT:-6380}"
if [ -z "${RAPID_ADAPT_API_KEYS:-}" ]; then  # the README's published key: accepted here only, and logged
  export RAPID_ADAPT_API_KEYS="demo:demo-key" RAPID_ADAPT_ALLOW_DEMO_KEY=on
fi
export RAPID_ADAPT_BROKER_URL="redis://127.0.0.1:$BROKER_PORT/0"
export RAPID_ADAPT_REDIS_URL="redis://127.0.0.1:$STORE_PORT/0"
KEY="${RAPID_ADAPT_API_KEYS#*:}"; KEY="${KEY%%,*}"
RUN="${RAPID_ADAPT_RUN_DIR:-run}"
mkdir -p "$RUN"; RUN="$(cd "$RUN" && pwd)"

for name in api worker redis-broker redis-store; do
  if [ -f "$RUN/$name.pid" ] && kill -0 "$(cat "$RUN/$name.pid")" 2>/dev/null; then
    echo "quickstart: Rapid Adapt's quick start is already running from here ($name, pid $(cat "$RUN/$name.pid"))." >&2
    echo "quickstart: stop it first: bash scripts/stop.sh" >&2
    exit 1
  fi
done
for pair in "API:$PORT:RAPID_ADAPT_PORT" "broker Redis:$BROKER_PORT:RAPID_ADAPT_BROKER_PORT" \
            "store Redis:$STORE_PORT:RAPID_ADAPT_STORE_PORT"; do
  IFS=: read -r what port var <<<"$pair"
  # SO_REUSEADDR as the servers set it: a port whose last connections are closing (TIME_WAIT) is free
  if ! python3 -c "import socket, sys; s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(('127.0.0.1', int(sys.argv[1])))" "$port" 2>/dev/null; then
    echo "quickstart: port $port ($what) is already in use by another program; refusing to start beside it." >&2
    echo "quickstart: stop that program, or choose another port: $var=<port> bash scripts/quickstart.sh" >&2
    exit 1
  fi
done

# the checks above come first: a refusal costs no install. Then what is missing (nothing, the second time)
bash scripts/setup.sh

start_redis() {  # name port maxmemory policy: never evicts; an append-only file in run/ keeps it across restarts
  mkdir -p "$RUN/redis-$1-data"
  redis-server --port "$2" --bind 127.0.0.1 --save "" --appendonly yes --dir "$RUN/redis-$1-data" \
    --maxmemory "$3" --maxmemory-policy "$4" --daemonize yes --pidfile "$RUN/redis-$1.pid" --logfile "$RUN/redis-$1.log"
}
start_redis broker "$BROKER_PORT" 256mb noeviction
start_redis store "$STORE_PORT" 1gb noeviction
# the worker and the API in this session: one autogroup, where their threads' nice values weigh against each
# other (a job at background priority yields to the API's interactive lane, the bulk lane to a job; app/core/priority.py)
nohup $PY -m celery -A worker.celery_app:app worker --loglevel INFO --concurrency 1 \
  --without-gossip --without-mingle >"$RUN/worker.log" 2>&1 & echo $! >"$RUN/worker.pid"
nohup $PY -m app.serve --host 127.0.0.1 --port "$PORT" >"$RUN/api.log" 2>&1 & echo $! >"$RUN/api.pid"

echo "waiting for http://127.0.0.1:$PORT/readyz ..."
for _ in $(seq 120); do
  if curl -fs "http://127.0.0.1:$PORT/readyz" >/dev/null; then break; fi
  if ! kill -0 "$(cat "$RUN/api.pid")" 2>/dev/null; then
    tail -n 20 "$RUN/api.log"; echo "quickstart: the API exited" >&2; exit 1
  fi
  sleep 0.5
done
curl -fsS "http://127.0.0.1:$PORT/readyz"; echo
$PY -m app.demo --url "http://127.0.0.1:$PORT" --key "$KEY"
echo
echo "Rapid Adapt is running on http://127.0.0.1:$PORT (API key: $KEY; logs in $RUN). Stop it: bash scripts/stop.sh"
