#!/usr/bin/env bash
# Compose smoke test: build the image, start the stack with docker-compose.smoke.yml (host network,
# ports 18000, 18443 and 16379-16381, all on 127.0.0.1, a generated key, Redis passwords and certificate),
# run the Python client's round trip over TLS through the `tls` proxy, take it down.
# No registry is reachable here, so the base image is built with debootstrap and imported, and the
# local CPU torch wheel goes into the build. Stops everything it started (the engine too, if it did).
# Prints one "SKIPPED: reason" line and exits 0 when no container engine can be had.
set -uo pipefail
cd "$(dirname "$0")/.."
export COMPOSE_PROJECT_NAME=rapid-adapt-smoke API_PORT=18000 BROKER_PORT=16379 STORE_PORT=16380 CACHE_PORT=16381
export BROKER_HOST=127.0.0.1 STORE_HOST=127.0.0.1 CACHE_HOST=127.0.0.1 TLS_PORT=18443 API_ADDR=127.0.0.1:18000
export RAPID_ADAPT_IMAGE=rapid-adapt:smoke SMOKE_BASE_IMAGE=rapid-adapt-base:bookworm-haproxy
# a deployment's own secrets, as a .env would hold them (the example's are refused)
SMOKE_KEY="smoke-$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')"
export SECRETS_DIR=$(mktemp -d /tmp/rapid-adapt-smoke-secrets.XXXXXX)  # a password per Redis, as files
for role in broker store cache; do od -An -N16 -tx1 /dev/urandom | tr -d ' \n' >"$SECRETS_DIR/${role}_password"; done
chmod 644 "$SECRETS_DIR"/*  # the containers' users read them; the directory stays the host user's
export RAPID_ADAPT_ENV_FILE=/tmp/rapid-adapt-smoke.env
printf 'RAPID_ADAPT_API_KEYS=smoke:%s\nRAPID_ADAPT_METRICS_KEY=%s-metrics\n' "$SMOKE_KEY" "$SMOKE_KEY" >"$RAPID_ADAPT_ENV_FILE"
# a certificate for 127.0.0.1 that the client is told to trust: the round trip goes over TLS through the proxy
TLS_DIR=$(mktemp -d /tmp/rapid-adapt-smoke-tls.XXXXXX)
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 -subj /CN=localhost \
  -addext "subjectAltName=IP:127.0.0.1,DNS:localhost" -keyout "$TLS_DIR/key.pem" -out "$TLS_DIR/cert.pem" 2>/dev/null
cat "$TLS_DIR/cert.pem" "$TLS_DIR/key.pem" >"$TLS_DIR/server.pem"; chmod 644 "$TLS_DIR/server.pem"
export TLS_PEM="$TLS_DIR/server.pem"
BASE_DIR=/var/cache/rapid-adapt/bookworm
MERGED=/tmp/rapid-adapt-smoke-compose.yml
COMPOSE="docker-compose -f $MERGED"
started_engine=""
skip() { echo "SKIPPED: compose smoke test: $*"; exit 0; }
log() { echo "compose-smoke: $*"; }

cleanup() {
  $COMPOSE down -v --remove-orphans >/dev/null 2>&1 || true
  rm -f "$RAPID_ADAPT_ENV_FILE"; rm -rf "$TLS_DIR" "$SECRETS_DIR"
  if [ -n "$started_engine" ]; then
    log "stopping the docker engine it started (pid $started_engine)"
    kill "$started_engine" 2>/dev/null; wait "$started_engine" 2>/dev/null || true
  fi
}
trap cleanup EXIT

if ! command -v docker >/dev/null || ! command -v docker-compose >/dev/null || ! command -v debootstrap >/dev/null; then
  log "installing docker.io, docker-compose and debootstrap"
  (apt-get update -qq && apt-get install -y -qq docker.io docker-compose debootstrap >/dev/null) \
    || skip "could not install docker.io, docker-compose and debootstrap"
fi
if ! docker info >/dev/null 2>&1; then
  log "starting dockerd --bridge=none --iptables=false"
  dockerd --bridge=none --iptables=false >/tmp/rapid-adapt-dockerd.log 2>&1 &
  started_engine=$!
  for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
  docker info >/dev/null 2>&1 || skip "no container engine could be started (see /tmp/rapid-adapt-dockerd.log)"
fi

if ! docker image inspect "$SMOKE_BASE_IMAGE" >/dev/null 2>&1; then
  mirror=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null)
  [ -n "$mirror" ] || mirror=$(awk '/^deb / {print $2; exit}' /etc/apt/sources.list 2>/dev/null)
  [ -n "$mirror" ] || skip "no Debian mirror configured for debootstrap"
  log "building $SMOKE_BASE_IMAGE with debootstrap (once per machine)"
  rm -rf "$BASE_DIR"; mkdir -p "$BASE_DIR"
  debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates,redis-server,redis-tools,haproxy \
    bookworm "$BASE_DIR" "$mirror" >/tmp/rapid-adapt-debootstrap.log 2>&1 \
    || skip "debootstrap failed (see /tmp/rapid-adapt-debootstrap.log)"
  tar -C "$BASE_DIR" -c . | docker import - "$SMOKE_BASE_IMAGE" >/dev/null || skip "docker import failed"
fi

wheel=$(ls "${PIP_FIND_LINKS:-/opt/wheels}"/torch-2.13.0*.whl 2>/dev/null | head -n 1)
rm -f wheels/*.whl wheels/ca.crt
if [ -n "$wheel" ]; then cp "$wheel" wheels/; fi
cp /etc/ssl/certs/ca-certificates.crt wheels/ca.crt
log "building $RAPID_ADAPT_IMAGE"
if ! docker build --network host --build-arg BASE_IMAGE="$SMOKE_BASE_IMAGE" --build-arg PIP_CERT=/wheels/ca.crt \
    -t "$RAPID_ADAPT_IMAGE" . >/tmp/rapid-adapt-docker-build.log 2>&1; then
  tail -n 30 /tmp/rapid-adapt-docker-build.log; echo "compose-smoke: FAILED: docker build"; exit 1
fi
rm -f wheels/*.whl wheels/ca.crt

# The override puts every service on the host network; Docker refuses published ports there and
# Compose 1.x cannot delete a list in an override, so drop them from the merged configuration.
docker-compose -f docker-compose.yml -f docker-compose.smoke.yml --profile tls config \
  | /usr/bin/python3 -c 'import sys, yaml; d = yaml.safe_load(sys.stdin); [s.pop("ports", None) for s in d["services"].values()]; yaml.safe_dump(d, sys.stdout)' \
  >"$MERGED" || { echo "compose-smoke: FAILED: compose config"; exit 1; }
log "starting the stack"
$COMPOSE --profile tls up -d --no-build redis-broker redis-store redis-cache api worker tls || { $COMPOSE logs --tail 50; echo "compose-smoke: FAILED: up"; exit 1; }
URL="https://127.0.0.1:$TLS_PORT"
for _ in $(seq 120); do
  curl -fs --cacert "$TLS_DIR/cert.pem" "$URL/readyz" >/dev/null && break; sleep 1
done
if ! curl -fsS --cacert "$TLS_DIR/cert.pem" "$URL/readyz"; then
  $COMPOSE ps; $COMPOSE logs --tail 50; echo "compose-smoke: FAILED: /readyz over TLS never turned green"; exit 1
fi
echo
log "round trip over TLS, through the proxy to the API and worker containers"
if ! SSL_CERT_FILE="$TLS_DIR/cert.pem" .venv/bin/python -m app.demo --url "$URL" --key "$SMOKE_KEY"; then
  $COMPOSE logs --tail 50; echo "compose-smoke: FAILED: round trip"; exit 1
fi
ps -eo args >/tmp/rapid-adapt-smoke-ps.txt  # the passwords, read from their files, are on no command line
for role in broker store cache; do
  if grep -qFf "$SECRETS_DIR/${role}_password" /tmp/rapid-adapt-smoke-ps.txt; then
    echo "compose-smoke: FAILED: the $role password is on a command line"; exit 1
  fi
done
$COMPOSE ps
log "PASSED"
