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
PORT=${PORT:-16960}
SERVERS=${SERVERS:-"parley inspircd"}

. bench/lib.sh
bench_build
servers=()
[ -n "${BEFORE:-}" ] && servers+=("before")
for s in $SERVERS; do
    if [ "$s" = inspircd ] && ! command -v inspircd >/dev/null; then echo "inspircd not installed: skipped" >&2; continue; fi
    servers+=("$s")
done
bench_workdir parley-join

for run in $(seq "$RUNS"); do
    for size in $SIZES; do
        for server in "${servers[@]}"; do
            if [ "$server" = before ]; then start_server before "$BEFORE"; else start_server "$server"; fi
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
