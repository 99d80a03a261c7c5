#!/usr/bin/env bash
# Joining a large group: N guests (no capabilities) connect, then join one channel one after
# another; the time from the first JOIN until the first member sees the last one's JOIN
# (parley-bench fanout's join_seconds). Parley's release build, an older Parley binary
# (BEFORE=path) and InspIRCd (if installed; `apt-get install inspircd`) each get a fresh server
# per run, alternating, server on SERVER_CPU and generator on BENCH_CPU as in bench/compare.sh.
# Medians of RUNS runs per size.
#
#   bench/join.sh
#   SIZES="1000 2000 5000" RUNS=3 BEFORE=/tmp/parley-server-before bench/join.sh
#   SERVERS="parley" bench/join.sh
set -euo pipefail
cd "$(dirname "$0")/.."
SIZES=${SIZES:-"1000 2000"}
RUNS=${RUNS:-1}
SERVER_CPU=${SERVER_CPU:-0}
BENCH_CPU=${BENCH_CPU:-1}
PORT=${PORT:-16960}
SERVERS=${SERVERS:-"parley inspircd"}

swift build -c release --product parley-server >/dev/null
swift build -c release --product parley-bench >/dev/null
bin=$(swift build -c release --show-bin-path)
servers=()
[ -n "${BEFORE:-}" ] && servers+=("before")
for s in $SERVERS; do
    if [ "$s" = inspircd ] && ! command -v inspircd >/dev/null; then echo "inspircd not installed: skipped" >&2; continue; fi
    servers+=("$s")
done

work=$(mktemp -d /tmp/parley-join.XXXXXX)
server_pid=""
stop_server() {
    if [ -n "$server_pid" ]; then kill "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true; server_pid=""; fi
}
trap 'stop_server; rm -rf "$work"' EXIT

cat >"$work/parley.json" <<JSON
{ "limits": { "maxConnectionsPerAddress": 0, "floodCommandsPerSecond": 0, "maxUnregisteredConnections": 0,
              "pingIntervalSeconds": 600 } }
JSON
cat >"$work/inspircd.conf" <<CONF
<server name="insp.bench" description="bench" network="Bench">
<admin name="bench" nick="bench" email="bench@localhost">
<bind address="127.0.0.1" port="$PORT" type="clients">
<power diepass="" restartpass="">
<connect name="bench" allow="*" timeout="60" pingfreq="600" hardsendq="1073741824" softsendq="1073741824" recvq="10485760" threshold="1000000000" commandrate="1000000000" fakelag="off" localmax="1000000" globalmax="1000000" maxconnwarn="off" useident="no" limit="1000000" maxchans="100" resolvehostnames="no">
<performance softlimit="1000000" somaxconn="4096" clonesonconnect="no" nouserdns="yes">
<pid file="$work/inspircd.pid">
<log method="file" type="* -USERINPUT -USEROUTPUT" level="default" target="$work/inspircd.log">
<files motd="$work/motd.txt">
CONF
echo bench >"$work/motd.txt"

start_server() { # name
    rm -rf "$work/data"
    case $1 in
    parley|before)
        local server_bin=$bin/parley-server
        [ "$1" = before ] && server_bin=$BEFORE
        taskset -c "$SERVER_CPU" "$server_bin" --config "$work/parley.json" --data-dir "$work/data" \
            --listen "127.0.0.1:$PORT" --log-level warning >"$work/server.log" 2>&1 & ;;
    inspircd)
        taskset -c "$SERVER_CPU" inspircd --runasroot --nofork --config "$work/inspircd.conf" >"$work/server.log" 2>&1 & ;;
    esac
    server_pid=$!
    for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && return 0; sleep 0.1; done
    echo "$1 did not start:" >&2; cat "$work/server.log" >&2; exit 1
}

for run in $(seq "$RUNS"); do
    for size in $SIZES; do
        for server in "${servers[@]}"; do
            start_server "$server"
            echo "run $run: $size members, $server" >&2
            taskset -c "$BENCH_CPU" "$bin/parley-bench" fanout --members "$size" --senders 1 --window 1 --duration 1 \
                --port "$PORT" --server-pid "$server_pid" --server "$server" 2>>"$work/bench.err" \
                | grep '^RESULT' | sed 's/^RESULT //' >>"$work/results.jsonl" || echo "  failed (see the generator's output)" >&2
            stop_server
        done
    done
done

python3 - "$work/results.jsonl" "$SIZES" <<'PY'
import json, statistics, sys
rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
labels = list(dict.fromkeys(r["server"] for r in rows))
print(f"{'members':>8}" + "".join(f"{l + ': join s':>30}" for l in labels))
for size in sys.argv[2].split():
    cells = []
    for label in labels:
        values = [r["join_seconds"] for r in rows if r["server"] == label and int(r["members"]) == int(size)]
        cells.append(f"{statistics.median(values):.2f} ({'/'.join(f'{v:.2f}' for v in values)})" if values else "-")
    print(f"{size:>8}" + "".join(f"{c:>30}" for c in cells))
PY
