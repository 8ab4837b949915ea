#!/usr/bin/env bash
# Can fleet-loadgen out-publish the bridge? Measures both rates, each alone:
#
#   1. the bridge subscribes once (its persistent session) and stops;
#   2. fleet-loadgen publishes a backlog as fast as possible from PROCESSES
#      processes while the broker queues it for the stopped bridge: publish rate;
#   3. the bridge starts and drains the backlog: ingest rate (first start to the
#      last reading committed).
#
#   bench/publish_vs_ingest.sh [PAIRS] [MINUTES] [PROCESSES]     (2000 50 2)
#
# Needs a broker configured like deploy/mosquitto/mosquitto.conf (the backlog
# must fit its queue) and PostgreSQL, from the usual FLEET_BRIDGE_* variables.
# Uses and drops the schema bench_ingest. Outputs go to bench/results/.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN="$ROOT/.venv/bin"
TOOLS=("$BIN/python" "$ROOT/scripts/demo_tools.py")
PAIRS="${1:-2000}"
MINUTES="${2:-50}"
PROCESSES="${3:-2}"
OUT="$ROOT/bench/results/publish_vs_ingest"
mkdir -p "$OUT"

export FLEET_BRIDGE_DB_SCHEMA=bench_ingest
export FLEET_BRIDGE_MQTT_CLIENT_ID="bench-bridge-$$" FLEET_BRIDGE_MQTT_TOPIC_PREFIX="bench-$$/"
export FLEET_BRIDGE_METRICS_HOST=127.0.0.1 FLEET_BRIDGE_LOG_LEVEL=warning
FLEET_BRIDGE_METRICS_PORT="$("${TOOLS[@]}" free-port 0)"
export FLEET_BRIDGE_METRICS_PORT
METRICS="http://127.0.0.1:$FLEET_BRIDGE_METRICS_PORT"
DSN="${FLEET_BRIDGE_DB_DSN:-postgresql://postgres@127.0.0.1:5432/postgres}"

BRIDGE=""
cleanup() {
    if [ -n "$BRIDGE" ]; then kill -TERM "$BRIDGE" 2>/dev/null || true; wait "$BRIDGE" || true; fi
    "${TOOLS[@]}" reset-schema "$DSN" bench_ingest
}
trap cleanup EXIT

"${TOOLS[@]}" reset-schema "$DSN" bench_ingest
"$BIN/fleet-bridge" migrate >/dev/null

"$BIN/fleet-bridge" run >"$OUT/bridge-subscribe.log" 2>&1 &
BRIDGE=$!
"${TOOLS[@]}" wait-ready "$METRICS/readyz"
kill -TERM "$BRIDGE" && wait "$BRIDGE"
BRIDGE=""

"$BIN/fleet-loadgen" run --devices "$PAIRS" --duration "${MINUTES}m" --as-fast-as-possible \
    --processes "$PROCESSES" --out "$OUT" 2>/dev/null | sed -n 1p

STARTED="$(date +%s.%N)"
"$BIN/fleet-bridge" run >"$OUT/bridge-drain.log" 2>&1 &
BRIDGE=$!
"${TOOLS[@]}" wait-ingested "$METRICS/metrics" "$OUT/summary.json" "$STARTED" | tail -n 1
