#!/usr/bin/env bash
# `make demo`: the whole pipeline on one machine, from a fresh clone, in a few minutes.
#
# It sets up the virtualenv, finds or starts PostgreSQL and Mosquitto, migrates the
# schema `demo` (dropped first, so the report covers this run only), runs the bridge
# and fleet-loadgen for 10,000 vehicle/meter pairs at a speedup for about two
# minutes, waits for the bridge to store everything, imports the mapping, then shows
# `fleet-bridge status`, one vehicle's efficiency report beside its ground truth
# (and checks the whole fleet's), the publish and ingest rates, and where /metrics
# is. Everything it started is stopped when it exits, however it exits.
#
# PostgreSQL: $FLEET_BRIDGE_DB_DSN when set; else the server on 127.0.0.1:5432 when
# user postgres can log in there without a password; else a private cluster from
# the system's binaries (apt-get installs them when missing and we are root).
# Mosquitto: $FLEET_BRIDGE_MQTT_HOST when set; else a private broker on a free port
# with deploy/mosquitto/mosquitto.conf, whose queue is sized for a bridge that
# falls behind (a stock broker drops a client's messages past 1000 queued, which a
# fleet of 10,000 out-publishing the bridge reaches in a second); apt-get installs
# the binary when missing and we are root; a broker already on port 1883 is the
# last resort.
#
# Knobs (environment): DEMO_PAIRS (10000), DEMO_SPEEDUP (10), DEMO_SECONDS (120),
# DEMO_PROCESSES (2), DEMO_SCHEMA (demo).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
BIN="$ROOT/.venv/bin"
TOOLS=("$BIN/python" "$ROOT/scripts/demo_tools.py")
OUT="$ROOT/.demo"
PAIRS="${DEMO_PAIRS:-10000}"
SPEEDUP="${DEMO_SPEEDUP:-10}"
SECONDS_WALL="${DEMO_SECONDS:-120}"
PROCESSES="${DEMO_PROCESSES:-2}"
SCHEMA="${DEMO_SCHEMA:-demo}"

say() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
die() { printf 'demo: %s\n' "$*" >&2; exit 1; }
is_root() { [ "$(id -u)" -eq 0 ]; }

apt_install() {
    is_root || die "missing $*: install it (apt-get install $*) or run the demo as root"
    say "Installing $* with apt-get"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# --- cleanup: stop what we started, in reverse order ---------------------------------
PIDS=()
PG_DATA=""
PG_BIN=""
TMP_DIRS=()
cleanup() {
    local status=$?
    trap - EXIT INT TERM
    for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
        kill -TERM "${PIDS[i]}" 2>/dev/null || true
        wait "${PIDS[i]}" 2>/dev/null || true
    done
    if [ -n "$PG_DATA" ]; then
        as_postgres "$PG_BIN/pg_ctl" -D "$PG_DATA" -m fast -w stop >/dev/null 2>&1 || true
    fi
    for dir in "${TMP_DIRS[@]}"; do rm -rf "$dir"; done
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

as_postgres() {
    # initdb refuses to run as root: the private cluster belongs to user postgres.
    if is_root; then runuser -u postgres -- "$@"; else "$@"; fi
}

# --- 1. Python environment ------------------------------------------------------------
say "Python environment (make setup)"
python3 -c 'import ensurepip, venv' 2>/dev/null || apt_install python3-venv
"${MAKE:-make}" --no-print-directory setup
mkdir -p "$OUT"

# --- 2. PostgreSQL ----------------------------------------------------------------------
newest_pg_bin() { printf '%s\n' /usr/lib/postgresql/*/bin | sort -V | tail -n 1; }

start_private_postgres() {
    PG_BIN="$(newest_pg_bin)"
    if [ ! -x "$PG_BIN/initdb" ]; then
        apt_install postgresql
        PG_BIN="$(newest_pg_bin)"
    fi
    local dir port
    dir="$(mktemp -d /tmp/fleet-demo-pg.XXXXXX)"  # under /tmp: user postgres must reach it
    TMP_DIRS+=("$dir")
    is_root && chown postgres "$dir"
    port="$("${TOOLS[@]}" free-port 0)"
    as_postgres "$PG_BIN/initdb" -D "$dir/data" -U postgres --auth=trust -E UTF8 >"$OUT/initdb.log"
    PG_DATA="$dir/data"
    as_postgres "$PG_BIN/pg_ctl" -D "$PG_DATA" -l "$dir/postgres.log" -w \
        -o "-p $port -k $dir -c listen_addresses=127.0.0.1" start >/dev/null
    DSN="postgresql://postgres@127.0.0.1:$port/postgres"
    echo "private PostgreSQL ($PG_BIN) on port $port"
}

say "PostgreSQL"
if [ -n "${FLEET_BRIDGE_DB_DSN:-}" ]; then
    DSN="$FLEET_BRIDGE_DB_DSN"
    "${TOOLS[@]}" db-ok "$DSN" || die "cannot connect to FLEET_BRIDGE_DB_DSN"
    echo "using FLEET_BRIDGE_DB_DSN"
elif "${TOOLS[@]}" db-ok "postgresql://postgres@127.0.0.1:5432/postgres"; then
    DSN="postgresql://postgres@127.0.0.1:5432/postgres"
    echo "using the server running on 127.0.0.1:5432"
else
    start_private_postgres
fi

# --- 3. Mosquitto -----------------------------------------------------------------------
start_private_mosquitto() {
    local binary="$1" dir port
    dir="$(mktemp -d /tmp/fleet-demo-mqtt.XXXXXX)"
    TMP_DIRS+=("$dir")
    chmod 755 "$dir"  # mosquitto drops root privileges to user mosquitto
    port="$("${TOOLS[@]}" free-port 0)"
    # The project's configuration, listening privately; no persistence for a demo.
    grep -vE '^[[:space:]]*(listener|persistence|persistence_location|pid_file|log_dest)([[:space:]]|$)' \
        deploy/mosquitto/mosquitto.conf >"$dir/mosquitto.conf"
    printf 'listener %s 127.0.0.1\npersistence false\nlog_dest stderr\n' "$port" >>"$dir/mosquitto.conf"
    chmod 644 "$dir/mosquitto.conf"
    "$binary" -c "$dir/mosquitto.conf" >"$OUT/mosquitto.log" 2>&1 &
    PIDS+=($!)
    for _ in $(seq 50); do
        "$BIN/python" -c 'import socket,sys; socket.create_connection(("127.0.0.1", int(sys.argv[1])), 1)' "$port" \
            2>/dev/null && break
        sleep 0.2
    done
    MQTT_HOST=127.0.0.1
    MQTT_PORT="$port"
    echo "private Mosquitto ($binary) on port $port, configured by deploy/mosquitto/mosquitto.conf"
}

find_mosquitto() {
    command -v mosquitto && return
    for path in /usr/sbin/mosquitto /usr/local/sbin/mosquitto; do
        [ -x "$path" ] && echo "$path" && return
    done
    return 1
}

say "Mosquitto"
if [ -n "${FLEET_BRIDGE_MQTT_HOST:-}" ]; then
    MQTT_HOST="$FLEET_BRIDGE_MQTT_HOST"
    MQTT_PORT="${FLEET_BRIDGE_MQTT_PORT:-1883}"
    echo "using FLEET_BRIDGE_MQTT_HOST ($MQTT_HOST:$MQTT_PORT)"
elif MOSQUITTO="$(find_mosquitto)"; then
    start_private_mosquitto "$MOSQUITTO"
elif is_root; then
    apt_install mosquitto
    start_private_mosquitto "$(find_mosquitto)"
elif "$BIN/python" -c 'import socket; socket.create_connection(("127.0.0.1", 1883), 1)' 2>/dev/null; then
    MQTT_HOST=127.0.0.1
    MQTT_PORT=1883
    echo "using the broker on 127.0.0.1:1883: if its queue limit is the default (1000), it may drop readings"
else
    die "no Mosquitto: install it (apt-get install mosquitto) or set FLEET_BRIDGE_MQTT_HOST"
fi

# --- 4. Schema and bridge -----------------------------------------------------------------
METRICS_PORT="$("${TOOLS[@]}" free-port 9464)"
export FLEET_BRIDGE_DB_DSN="$DSN" FLEET_BRIDGE_DB_SCHEMA="$SCHEMA"
export FLEET_BRIDGE_MQTT_HOST="$MQTT_HOST" FLEET_BRIDGE_MQTT_PORT="$MQTT_PORT"
export FLEET_BRIDGE_MQTT_CLIENT_ID="fleet-bridge-demo"
export FLEET_BRIDGE_METRICS_HOST=127.0.0.1 FLEET_BRIDGE_METRICS_PORT="$METRICS_PORT"
export FLEET_BRIDGE_LOG_FORMAT=json

say "Schema $SCHEMA (dropped and migrated again)"
"${TOOLS[@]}" reset-schema "$DSN" "$SCHEMA"
"$BIN/fleet-bridge" migrate

say "Bridge (log: .demo/bridge.log)"
"$BIN/fleet-bridge" run >"$OUT/bridge.log" 2>&1 &
PIDS+=($!)
"${TOOLS[@]}" wait-ready "http://127.0.0.1:$METRICS_PORT/readyz"
echo "ready: http://127.0.0.1:$METRICS_PORT/readyz"

# --- 5. Load ------------------------------------------------------------------------------
DURATION=$((SECONDS_WALL * SPEEDUP))
say "fleet-loadgen: $PAIRS pairs, $((DURATION / 60)) simulated minutes at speedup $SPEEDUP, $PROCESSES processes"
STARTED="$(date +%s.%N)"
rm -rf "$OUT/loadgen"
"$BIN/fleet-loadgen" run --devices "$PAIRS" --interval 60 --duration "${DURATION}s" --speedup "$SPEEDUP" \
    --processes "$PROCESSES" --seed 1 --out "$OUT/loadgen" \
    --duplicates 0.01 --out-of-order 0.01 --late 0.002 --malformed 0.001 --skew-over-5s 0.01

say "Waiting for the bridge to store everything"
"${TOOLS[@]}" wait-ingested "http://127.0.0.1:$METRICS_PORT/metrics" "$OUT/loadgen/summary.json" "$STARTED"

# --- 6. Results ---------------------------------------------------------------------------
say "Mapping"
"$BIN/fleet-bridge" mapping import "$OUT/loadgen/mapping.csv"

say "fleet-bridge status"
"$BIN/fleet-bridge" status

read -r FROM TO < <("${TOOLS[@]}" report-range "$OUT/loadgen/summary.json")
VEHICLE="$("${TOOLS[@]}" pick-vehicle "$OUT/loadgen/ground_truth.json")"
say "fleet-bridge report --vehicle $VEHICLE --from $FROM --to $TO"
"$BIN/fleet-bridge" report --vehicle "$VEHICLE" --from "$FROM" --to "$TO"

say "The report beside the ground truth (.demo/loadgen/ground_truth.json)"
"$BIN/fleet-bridge" report --from "$FROM" --to "$TO" --format json >"$OUT/report.json"
"${TOOLS[@]}" compare "$OUT/report.json" "$OUT/loadgen/ground_truth.json" "$VEHICLE"

say "Metrics"
echo "Prometheus scrapes http://127.0.0.1:$METRICS_PORT/metrics (health: /healthz, readiness: /readyz); now:"
"${TOOLS[@]}" show-metrics "http://127.0.0.1:$METRICS_PORT/metrics"
echo
echo "Outputs are in .demo/ (bridge log, loadgen/mapping.csv, ground_truth.json, summary.json, report.json)."
echo "The data stays in schema $SCHEMA of the database."
if [ -t 0 ]; then
    read -r -p "Press Enter to stop the bridge (and any private broker or database) and exit. " _
fi
