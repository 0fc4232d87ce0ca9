#!/usr/bin/env bash
# Quick start: install what is missing, start Redis, a Celery worker and the API on 127.0.0.1,
# run the demo round trip, and leave the service running (stop it with: bash scripts/stop.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
mkdir -p run
PORT="${RAPID_ADAPT_PORT:-8000}"
REDIS_PORT="${RAPID_ADAPT_REDIS_PORT:-6379}"
export RAPID_ADAPT_API_KEYS="${RAPID_ADAPT_API_KEYS:-demo:demo-key}"
export RAPID_ADAPT_BROKER_URL="${RAPID_ADAPT_BROKER_URL:-redis://127.0.0.1:$REDIS_PORT/0}"
export RAPID_ADAPT_REDIS_URL="${RAPID_ADAPT_REDIS_URL:-redis://127.0.0.1:$REDIS_PORT/1}"
KEY="${RAPID_ADAPT_API_KEYS#*:}"; KEY="${KEY%%,*}"

if ! redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1; then
  # one local instance for queue, store and weights: noeviction, every key with its TTL (see README)
  redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no --maxmemory-policy noeviction \
    --daemonize yes --pidfile "$PWD/run/redis.pid" --logfile "$PWD/run/redis.log"
fi
for name in worker api; do
  if [ -f "run/$name.pid" ] && kill -0 "$(cat "run/$name.pid")" 2>/dev/null; then kill "$(cat "run/$name.pid")"; sleep 1; fi
done
nohup python3 -m celery -A worker.celery_app:app worker --loglevel INFO --concurrency 1 \
  --without-gossip --without-mingle >run/worker.log 2>&1 & echo $! >run/worker.pid
nohup python3 -m app.serve --host 127.0.0.1 --port "$PORT" >run/api.log 2>&1 & echo $! >run/api.pid

echo "waiting for http://127.0.0.1:$PORT/readyz ..."
for _ in $(seq 120); do
  if curl -fs "http://127.0.0.1:$PORT/readyz" >/dev/null; then break; fi
  sleep 0.5
done
curl -fsS "http://127.0.0.1:$PORT/readyz"; echo
python3 -m app.demo --url "http://127.0.0.1:$PORT" --key "$KEY"
echo
echo "Rapid Adapt is running on http://127.0.0.1:$PORT (API key: $KEY; logs in run/). Stop it: bash scripts/stop.sh"
