#!/usr/bin/env bash
# What a second event loop gives on this machine: the same workloads against one release server
# with `"threads": 1` and with `"threads": 2`, alternating run by run, the server and the
# generator both allowed on every CPU (CPUS, default "0,1"). Prints messages (or deliveries) per
# second, the server's CPU (cores in use) and its CPU time per delivered message, medians of RUNS.
#   direct  PAIRS pairs of guests, window 16
#   fanout  a channel of MEMBERS guests, one sender, window 16
#   stored  PAIRS pairs of accounts (every message committed to SQLite before its echo)
#
#   bench/loops.sh
#   RUNS=5 DURATION=10 WORKLOADS="direct fanout" bench/loops.sh
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-3}
DURATION=${DURATION:-8}
PAIRS=${PAIRS:-500}
MEMBERS=${MEMBERS:-1000}
WORKLOADS=${WORKLOADS:-"direct fanout stored"}
LOOPS=${LOOPS:-"1 2"}
PORT=${PORT:-16960}
CPUS=${CPUS:-0,1}

. bench/lib.sh
SERVER_CPU=$CPUS
bench_build
bench_workdir parley-loops

bench() { # loops workload
    local common=(--port "$PORT" --server-pid "$server_pid" --server "loops=$1" --duration "$DURATION" --window 16)
    case $2 in
    direct) taskset -c "$CPUS" "$bin/parley-bench" direct "${common[@]}" --pairs "$PAIRS" ;;
    fanout) taskset -c "$CPUS" "$bin/parley-bench" fanout "${common[@]}" --members "$MEMBERS" --senders 1 ;;
    stored) taskset -c "$CPUS" "$bin/parley-bench" direct --accounts "${common[@]}" --pairs "$PAIRS" ;;
    esac 2>>"$work/bench.err" | grep '^RESULT' | sed "s/^RESULT //; s/\"mode\":\"[a-z]*\"/\"mode\":\"$2\"/" >>"$work/results.jsonl" || true
}

for run in $(seq "$RUNS"); do
    for workload in $WORKLOADS; do
        for loops in $LOOPS; do
            write_parley_config
            sed -i "1s/^{/{ \"threads\": $loops,/" "$work/parley.json"
            start_server parley
            echo "run $run: $workload, $loops event loop(s)" >&2
            bench "$loops" "$workload"
            stop_server
        done
    done
done

python3 - "$work/results.jsonl" <<'PY'
import json, statistics, sys
rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
def med(values, fmt): return f"{fmt(statistics.median(values))} ({'/'.join(fmt(v) for v in values)})" if values else "-"
print(f"{'workload':<10}{'server':<10}{'msgs/s':>34}{'server cores':>24}{'server us/msg':>28}{'generator %':>14}{'lost/reord':>12}")
for mode in dict.fromkeys(r["mode"] for r in rows):
    for label in dict.fromkeys(r["server"] for r in rows):
        sel = [r for r in rows if r["mode"] == mode and r["server"] == label]
        if not sel: continue
        rates = [r["delivered_per_s"] for r in sel]
        cores = [r.get("server_cpu_pct", 0) / 100 for r in sel]
        per_message = [c * 1e6 / r for c, r in zip(cores, rates) if r]
        bench = [r.get("bench_cpu_pct", 0) for r in sel]
        bad = sum(int(r.get("lost", 0)) + int(r.get("reordered", 0)) for r in sel)
        print(f"{mode:<10}{label:<10}{med(rates, lambda v: f'{v:,.0f}'):>34}{med(cores, lambda v: f'{v:.2f}'):>24}"
              f"{med(per_message, lambda v: f'{v:.2f}'):>28}{statistics.median(bench):>14.0f}{bad:>12}")
PY
