#!/usr/bin/env bash
# Direct messages between accounts (stored) on one node with SQLite, one node with PostgreSQL,
# and two nodes on one PostgreSQL with every pair split across the nodes: messages/s, p99 and
# losses, in one run on this machine. Needs PostgreSQL's server binaries (Debian: postgresql).
#
# With WORKLOADS including fanout: guests in one transient channel (MEMBERS, one sender) on one
# node with PostgreSQL, on one node beside a second node with no members (every node keeps every
# transient channel's recent history, so the second gets each message too), and with the
# members spread over both nodes.
#
#   bench/cluster.sh                 # builds parley-server and parley-bench in release mode first
#   PAIRS=100 WINDOW=16 DURATION=10 MEMBERS=200 WORKLOADS="direct fanout" bench/cluster.sh
#   BIN=/tmp/old (that directory's parley-server and parley-bench, no build),
#   KEEP=1 (keep the work directory: node and database logs), SKIP_SQLITE=1,
#   PGOPTS='-c log_min_duration_statement=100', EXTRA_LIMITS=', "storageQueueLimit": 0'
# With WORKLOADS including reference: the same direct pairs between guests (nothing stored) on
# one SQLite node and on InspIRCd (when installed), in the same run, unpinned like the rest: a
# yardstick for the single node's rate on this noisy machine (issue 14: the single node must not
# fall below what it did before the scale-out; compare ratios to InspIRCd across runs).
# With BEFORE=path/to/an/older/parley-server, each setup also runs on that binary (rows labelled
# "before: ..."), just before this build's, so both sets of figures come from the same minutes of
# this shared machine; RUNS=N repeats the whole set.
set -euo pipefail
cd "$(dirname "$0")/.."
PAIRS=${PAIRS:-100}
WINDOW=${WINDOW:-16}
DURATION=${DURATION:-10}
MEMBERS=${MEMBERS:-200}
WORKLOADS=${WORKLOADS:-direct fanout}
RUNS=${RUNS:-1}
. bench/lib.sh
bench_build
pgbin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
[ -x "$pgbin/initdb" ] || { echo "needs PostgreSQL's server binaries (apt-get install postgresql)" >&2; exit 1; }

work=$(mktemp -d /tmp/parley-cluster-bench.XXXXXX)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    $as_pg "$pgbin/pg_ctl" -D "$work/pg" -m fast stop >/dev/null 2>&1 || true
    [ -n "${KEEP:-}" ] || rm -rf "$work"
}
as_pg=""
if [ "$(id -u)" = 0 ]; then chown postgres: "$work"; as_pg="runuser -u postgres --"; fi
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# PostgreSQL with its default durability (fsync, synchronous_commit on): a commit is on disk.
pgport=$(free_port)
$as_pg "$pgbin/initdb" -D "$work/pg" -A trust -U postgres >/dev/null
$as_pg "$pgbin/pg_ctl" -D "$work/pg" -l "$work/pg.log" -o "-c listen_addresses=127.0.0.1 -p $pgport -k $work ${PGOPTS:-}" -w start >/dev/null

write_parley_config "${EXTRA_LIMITS:-}"

start_node() { # name port [database]
    local extra=()
    [ -n "${3:-}" ] && extra=(--database "$3" --node-name "$1")
    "${server:-$bin/parley-server}" --config "$work/parley.json" --data-dir "$work/data-$1" --listen "127.0.0.1:$2" \
        --log-level warning "${extra[@]}" >"$work/$1.log" 2>&1 &
    pids+=($!)
    wait_for_port "$2" "node $1" "$work/$1.log"
}
stop_nodes() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; wait 2>/dev/null || true; pids=(); }

# parley-bench with its standard error kept in the work directory, stopped if it runs for more
# than five minutes past its duration (a stalled window never ends by itself): the setup is then
# reported with the end of its log, and the next one runs.
bench_with_timeout() { # label parley-bench-arguments...
    local label=$1; shift
    local log="$work/bench-$(echo "$label" | tr -c 'a-zA-Z0-9' '-').err"
    if ! timeout $((DURATION + 300)) "$bin/parley-bench" "$@" 2>"$log" | grep '^RESULT' | sed "s/^RESULT //" >>"$work/results.jsonl"; then
        echo "$label: parley-bench failed or timed out; the end of its log:" >&2
        tail -5 "$log" >&2
    fi
}
run() { # label ports...
    local label=$1; shift
    local args=()
    for port in "$@"; do args+=(--port "$port"); done
    bench_with_timeout "$label" direct --accounts --pairs "$PAIRS" --window "$WINDOW" --duration "$DURATION" --server "$prefix$label" "${args[@]}"
}
run_fanout() { # label ports...
    local label=$1; shift
    local args=()
    for port in "$@"; do args+=(--port "$port"); done
    bench_with_timeout "$label" fanout --members "$MEMBERS" --window "$WINDOW" --duration "$DURATION" --server "$prefix$label" "${args[@]}"
}
databases=0
fresh_database() { # sets db to a new, empty database's URL
    databases=$((databases + 1))
    $as_pg "$pgbin/createdb" -h "$work" -p "$pgport" -U postgres "parley$databases"
    db="postgresql://postgres@127.0.0.1:$pgport/parley$databases"
}

run_guests() { # label port
    bench_with_timeout "$1" direct --pairs "$PAIRS" --window "$WINDOW" --duration "$DURATION" --server "$prefix$1" --port "$2"
}

setups() {
if [[ " $WORKLOADS " == *" reference "* ]]; then
    p1=$(free_port); start_node guests "$p1"; run_guests "reference: 1 node, SQLite, guests" "$p1"; stop_nodes
    if [ -z "$prefix" ] && command -v inspircd >/dev/null; then
        # Unpinned, like the nodes: free to use every core.
        PORT=$(free_port); SERVER_CPU=0-$(($(nproc) - 1)) start_server inspircd; pids+=("$server_pid")
        run_guests "reference: InspIRCd, guests" "$PORT"; stop_nodes
    fi
fi
if [[ " $WORKLOADS " == *" direct "* ]]; then
    [ -n "${SKIP_SQLITE:-}" ] || { p1=$(free_port); start_node sqlite "$p1"; run "1 node, SQLite" "$p1"; stop_nodes; }
    fresh_database; p1=$(free_port); start_node n1 "$p1" "$db"; run "1 node, PostgreSQL" "$p1"; stop_nodes
    fresh_database; p1=$(free_port); p2=$(free_port)
    start_node n1 "$p1" "$db"; start_node n2 "$p2" "$db"
    run "2 nodes, PostgreSQL, pairs across nodes" "$p1" "$p2"; stop_nodes
fi
if [[ " $WORKLOADS " == *" fanout "* ]]; then
    fresh_database; p1=$(free_port); start_node n1 "$p1" "$db"; run_fanout "fanout: 1 node, PostgreSQL" "$p1"; stop_nodes
    fresh_database; p1=$(free_port); p2=$(free_port)
    start_node n1 "$p1" "$db"; start_node n2 "$p2" "$db"
    run_fanout "fanout: 1 node + 1 without members" "$p1"; stop_nodes
    fresh_database; p1=$(free_port); p2=$(free_port)
    start_node n1 "$p1" "$db"; start_node n2 "$p2" "$db"
    run_fanout "fanout: members on 2 nodes" "$p1" "$p2"; stop_nodes
fi
}
for ((round = 1; round <= RUNS; round++)); do
    if [ -n "${BEFORE:-}" ]; then server=$BEFORE prefix="before: " setups; fi
    server="" prefix="" setups
done

python3 - "$work/results.jsonl" <<'PY'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
print(f"{'setup':<50} {'msgs/s':>9} {'p50 ms':>7} {'p99 ms':>7} {'lost':>5} {'reordered':>9} {'bench cpu %':>11}")
print("(fanout rows: deliveries/s)")
for r in rows:
    print(f"{r['server']:<50} {r['delivered_per_s']:>9.0f} {r['p50_us']/1000:>7.1f} {r['p99_us']/1000:>7.1f} {int(r['lost']):>5} {int(r['reordered']):>9} {r['bench_cpu_pct']:>11.0f}")
PY
