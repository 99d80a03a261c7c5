#!/usr/bin/env bash
# Messages through the stored path (SQLite), between logged-in accounts: every message is
# committed before its echo. Three workloads against a release build, a fresh server per run:
#   direct  500 pairs of accounts, window 16: delivered msgs/s
#   rate    the same pairs at a fixed rate (RATE msgs/s in all): p50 / p99 latency
#   fanout  a group of MEMBERS accounts, one sender, window 16: deliveries/s
#   offline, offline-one  50,000 messages to 20 logged-out accounts from ten senders (one), window 64:
#           stored msgs/s, the store latency (echo after commit) p50 / p99, and the rate of the
#           replay as the recipients log in one by one; not in the default set
#   peer-fanout  InspIRCd (installed from Debian if missing), the same group of MEMBERS as guests,
#           one sender, window 16: the guest fan-out the issue's target for Parley's group compares to
# direct and rate also give the server's CPU time and disk bytes written (/proc/PID/io, the
# traffic only) per delivered message, which depend less on how busy the machine is.
# Medians of RUNS runs. With BEFORE=path/to/an/older/parley-server, that binary runs too,
# alternating with this build's run by run, so both sets of figures come from the same minutes
# of this shared machine.
#
#   bench/stored.sh
#   RUNS=3 DURATION=10 BEFORE=/tmp/parley-server-before bench/stored.sh
#   WORKLOADS="direct rate" PAIRS=500 RATE=20000 MEMBERS=1000 bench/stored.sh
# Pinning (server on SERVER_CPU, generator on BENCH_CPU) as in bench/compare.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-3}
DURATION=${DURATION:-10}
PAIRS=${PAIRS:-500}
WINDOW=${WINDOW:-16}
RATE=${RATE:-20000}
MEMBERS=${MEMBERS:-1000}
WORKLOADS=${WORKLOADS:-"direct rate fanout peer-fanout"}
PORT=${PORT:-16950}

. bench/lib.sh
bench_build
servers=("after=$bin/parley-server")
[ -n "${BEFORE:-}" ] && servers=("before=$BEFORE" "${servers[@]}")
bench_workdir parley-stored
write_parley_config

bench() { # label workload
    local common=(--accounts --port "$PORT" --server-pid "$server_pid" --server "$1" --duration "$DURATION")
    case $2 in
    direct) taskset -c "$BENCH_CPU" "$bin/parley-bench" direct "${common[@]}" --pairs "$PAIRS" --window "$WINDOW" ;;
    rate) taskset -c "$BENCH_CPU" "$bin/parley-bench" direct "${common[@]}" --pairs "$PAIRS" --rate "$RATE" ;;
    fanout) taskset -c "$BENCH_CPU" "$bin/parley-bench" fanout "${common[@]}" --members "$MEMBERS" --senders 1 --window "$WINDOW" ;;
    offline) taskset -c "$BENCH_CPU" "$bin/parley-bench" offline --port "$PORT" --server-pid "$server_pid" --server "$1" \
        --recipients 20 --messages 50000 --senders 10 --window 64 ;;
    peer-fanout) taskset -c "$BENCH_CPU" "$bin/parley-bench" fanout --port "$PORT" --server-pid "$server_pid" --server "$1" \
        --duration "$DURATION" --members "$MEMBERS" --senders 1 --window "$WINDOW" ;;
    offline-one) taskset -c "$BENCH_CPU" "$bin/parley-bench" offline --port "$PORT" --server-pid "$server_pid" --server "$1" \
        --recipients 20 --messages 50000 --senders 1 --window 64 ;;
    esac 2>>"$work/bench.err" | grep '^RESULT' | sed "s/^RESULT //; s/\"mode\":\"[a-z]*\"/\"mode\":\"$2\"/" >>"$work/results.jsonl" || true
}

case " $WORKLOADS " in
*" peer-fanout "*) command -v inspircd >/dev/null || { apt-get install -y inspircd >/dev/null 2>&1 || sudo apt-get install -y inspircd >/dev/null; } ;;
esac

for run in $(seq "$RUNS"); do
    for workload in $WORKLOADS; do
        entries=("${servers[@]}")
        [ "$workload" = peer-fanout ] && entries=("inspircd=")
        for entry in "${entries[@]}"; do
            start_server "${entry%%=*}" "${entry#*=}"
            echo "run $run: $workload, ${entry%%=*}" >&2
            bench "${entry%%=*}" "$workload"
            stop_server
        done
    done
done

python3 - "$work/results.jsonl" <<'PY'
import json, statistics, sys
rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
# Per delivered message: steadier than the rates on a shared machine (bench/PROFILE.md).
for r in rows:
    if r.get("server_cpu_s") is not None and r.get("delivered"):
        r["cpu_us_per_msg"] = r["server_cpu_s"] * 1e6 / r["delivered"]
metrics = {"direct": [("delivered_per_s", "direct, window: msgs/s"), ("cpu_us_per_msg", "  server CPU per msg (us)"),
                      ("server_disk_bytes_per_msg", "  disk bytes written per msg")],
           "rate": [("p50_us", "fixed rate: p50 latency (ms)"), ("p99_us", "fixed rate: p99 latency (ms)"),
                    ("cpu_us_per_msg", "  server CPU per msg (us)"), ("server_disk_bytes_per_msg", "  disk bytes written per msg")],
           "fanout": [("delivered_per_s", "group: deliveries/s"), ("server_cpu_pct", "  server CPU %"), ("bench_cpu_pct", "  parley-bench CPU %")],
           "peer-fanout": [("delivered_per_s", "guest fan-out: deliveries/s"), ("server_cpu_pct", "  server CPU %"),
                           ("bench_cpu_pct", "  parley-bench CPU %")],
           "offline": [("stored_per_s", "offline, 10 senders: stored/s"), ("store_p50_us", "offline: store p50 (ms)"),
                       ("store_p99_us", "offline: store p99 (ms)"), ("server_cpu_pct", "offline: server CPU %"),
                       ("replayed_per_s", "offline: replayed at login/s")],
           "offline-one": [("stored_per_s", "offline, 1 sender: stored/s"), ("store_p50_us", "offline-one: store p50 (ms)"),
                           ("store_p99_us", "offline-one: store p99 (ms)"), ("server_cpu_pct", "offline-one: server CPU %")]}
labels = list(dict.fromkeys(r["server"] for r in rows))
print(f"{'workload':<32}" + "".join(f"{l:>28}" for l in labels) + f"{'lost/reordered':>16}")
for mode, fields in metrics.items():
    for key, title in fields:
        cells, bad = [], 0
        for label in labels:
            values = [r[key] for r in rows if r["mode"] == mode and r["server"] == label and key in r]
            bad += sum(int(r.get("lost", 0)) + int(r.get("reordered", 0)) for r in rows if r["mode"] == mode and r["server"] == label)
            if not values:
                cells.append("-"); continue
            scale = 1000 if key.endswith("_us") else 1
            fmt = (lambda v: f"{v / scale:,.1f}") if scale > 1 or key == "cpu_us_per_msg" else (lambda v: f"{v:,.0f}")
            cells.append(f"{fmt(statistics.median(values))} ({'/'.join(fmt(v) for v in values)})")
        if any(c != "-" for c in cells):
            print(f"{title:<32}" + "".join(f"{c:>28}" for c in cells) + f"{bad:>16}")
peer = [r["delivered_per_s"] for r in rows if r["mode"] == "peer-fanout"]
for label in labels:
    group = [r["delivered_per_s"] for r in rows if r["mode"] == "fanout" and r["server"] == label]
    if peer and group:
        print(f"{label}: group of accounts / InspIRCd's guest fan-out (medians): {statistics.median(group) / statistics.median(peer):.2f}x")
PY
