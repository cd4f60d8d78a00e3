#!/usr/bin/env bash
# The fleet benchmark: N `scopegate serve` processes on one throwaway
# PostgreSQL cluster (or SCOPEGATE_TEST_DATABASE_URL's server), load spread
# over them, revocations through random instances, and the audit:
#
#   bash benches/fleet.sh [--fleet N] [--keys N] [--duration SECS] [--revocations-per-sec R] [--rate REQ_PER_SEC]
#
# --rate makes the load open-loop at that many requests a second in total (the
# default is closed loop: every instance saturated, and then the follower
# threads wait for CPU like everything else).
# Prints `scopegate loadtest --fleet`'s report: propagation p50/p99/max from
# the revoking instance's answer until every other instance refuses, requests
# admitted inside that window, and leaks (must be 0). Installs Debian's
# postgresql when missing, builds the release binary, runs initdb/pg_ctl as
# the postgres user in a temp dir on a free port, stops and removes it on exit.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
FLEET=3 KEYS=100000 DURATION=20 REVOKE=20 RATE=()
while [ $# -gt 0 ]; do
  case "$1" in
    --fleet) FLEET=$2; shift 2 ;;
    --keys) KEYS=$2; shift 2 ;;
    --duration) DURATION=$2; shift 2 ;;
    --revocations-per-sec) REVOKE=$2; shift 2 ;;
    --rate) RATE=(--rate "$2"); shift 2 ;;
    *) echo "usage: bash benches/fleet.sh [--fleet N] [--keys N] [--duration SECS] [--revocations-per-sec R] [--rate REQ_PER_SEC]" >&2; exit 2 ;;
  esac
done

sudo=""; [ "$(id -u)" != 0 ] && sudo="sudo"
if [ -z "${SCOPEGATE_TEST_DATABASE_URL:-}" ] && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  echo "fleet.sh: installing postgresql" >&2
  $sudo apt-get install -y postgresql >/dev/null 2>&1 \
    || { $sudo apt-get update >/dev/null && $sudo apt-get install -y postgresql >/dev/null; }
fi
(cd "$ROOT" && cargo build --release --quiet -p scopegate-gateway)
BIN="$ROOT/target/release/scopegate"

if [ -n "${SCOPEGATE_TEST_DATABASE_URL:-}" ]; then
  URL=$SCOPEGATE_TEST_DATABASE_URL
else
  PGBIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
  DIR=$(mktemp -d /tmp/scopegate-fleet-XXXXXX)
  PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  as_pg=()
  if [ "$(id -u)" = 0 ]; then chown postgres "$DIR"; as_pg=(runuser -u postgres --); fi
  cleanup() { "${as_pg[@]}" "$PGBIN/pg_ctl" -D "$DIR/data" -m immediate stop >/dev/null 2>&1 || true; rm -rf "$DIR"; }
  trap cleanup EXIT
  "${as_pg[@]}" "$PGBIN/initdb" -D "$DIR/data" --auth=trust -U postgres >/dev/null
  "${as_pg[@]}" "$PGBIN/pg_ctl" -D "$DIR/data" -l "$DIR/log" \
    -o "-p $PORT -k $DIR -c listen_addresses=127.0.0.1" -w start >/dev/null
  URL="postgres://postgres@127.0.0.1:$PORT/postgres"
fi

echo "bash benches/fleet.sh --fleet $FLEET --keys $KEYS --duration $DURATION --revocations-per-sec $REVOKE ${RATE[*]} ($(nproc) CPUs)"
SCOPEGATE_PEPPER=${SCOPEGATE_PEPPER:-fleet-bench-pepper-0123456789abcdef} \
  timeout $((DURATION * 4 + 600)) "$BIN" loadtest --fleet "$FLEET" --store "$URL" \
  --keys "$KEYS" --duration "$DURATION" --revocations-per-sec "$REVOKE" --threads 1 "${RATE[@]}"
