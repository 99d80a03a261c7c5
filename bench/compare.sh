#!/usr/bin/env bash
# Side-by-side benchmark: Parley, InspIRCd and ngircd on this machine, each workload RUNS times
# against a freshly started server pinned to CPU 0, with parley-bench pinned to CPU 1.
# Prints medians and Parley-to-peer ratios; writes bench/results.md and bench/results.svg.
# Only a run of the table's own standard (RUNS >= 3, DURATION >= 8) updates bench/results.*; a
# quicker one only prints its table, so a look does not replace measured rows
# (SAVE=yes or SAVE=no overrides).
#
#   bench/compare.sh                      # everything, 3 runs each
#   RUNS=1 DURATION=5 bench/compare.sh    # a quick look
#   SERVERS="parley inspircd" WORKLOADS="direct fanout" bench/compare.sh
#
# Every RESULT carries the generator's CPU (bench_cpu_pct) beside the server's (server_cpu_pct);
# a workload whose generator used more than 80 % of its core gets no ratio: it measured the
# generator, not the server.
set -euo pipefail
cd "$(dirname "$0")/.."

RUNS=${RUNS:-3}
DURATION=${DURATION:-10}
PAIRS=${PAIRS:-500}
WINDOW=${WINDOW:-16}
MEMBERS=${MEMBERS:-1000}
RATE=${RATE:-50000}
ACCOUNT_RATE=${ACCOUNT_RATE:-20000}
ACCOUNT_PAIRS=${ACCOUNT_PAIRS:-500}
ACCOUNT_MEMBERS=${ACCOUNT_MEMBERS:-1000}
THREADS=${THREADS:-1}
CLIENTS=${CLIENTS:-19000}
CONNECT_RATE=${CONNECT_RATE:-5000}
FANOUT_RATE=${FANOUT_RATE:-50}
SERVERS=${SERVERS:-"parley inspircd ngircd"}
WORKLOADS=${WORKLOADS:-"direct fanout fanout10 fanout-rate rate connect direct-accounts rate-accounts fanout-accounts offline offline-one"}
PORT=${PORT:-16900}
SAVE=${SAVE:-auto}
. bench/lib.sh

bench_workdir parley-compare
results="$work/results.jsonl"

# --- what is needed -------------------------------------------------------------------------
need=()
command -v taskset >/dev/null || need+=(util-linux)
command -v python3 >/dev/null || need+=(python3)
[[ " $SERVERS " == *" inspircd "* ]] && ! command -v inspircd >/dev/null && need+=(inspircd)
[[ " $SERVERS " == *" ngircd "* ]] && ! command -v ngircd >/dev/null && need+=(ngircd)
if [ ${#need[@]} -gt 0 ]; then
    echo "installing ${need[*]}" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
echo "building Parley in release mode" >&2
bench_build

bench() {
    taskset -c "$BENCH_CPU" "$bin/parley-bench" "$@" --port "$PORT" --server-pid "$server_pid" --threads "$THREADS"
}

run_workload() {
    local server=$1 workload=$2
    case $workload in
    direct) bench direct --server "$server" --pairs "$PAIRS" --window "$WINDOW" --duration "$DURATION" ;;
    fanout) bench fanout --server "$server" --members "$MEMBERS" --senders 1 --window "$WINDOW" --duration "$DURATION" ;;
    fanout10) bench fanout --server "$server" --members "$MEMBERS" --senders 10 --window "$WINDOW" --duration "$DURATION" \
        | sed 's/"mode":"fanout"/"mode":"fanout10"/' ;;
    rate) bench direct --server "$server" --pairs "$PAIRS" --rate "$RATE" --duration "$DURATION" | sed 's/"mode":"direct"/"mode":"rate"/' ;;
    # The fan-outs at a fixed rate (FANOUT_RATE messages/s in all): as fast as they go, the
    # generator reads as many lines as the server writes and is the bottleneck on this machine;
    # at a fixed rate each server's CPU per delivery is what compares (its capacity on one core).
    fanout-rate) bench fanout --server "$server" --members "$MEMBERS" --senders 1 --rate "$FANOUT_RATE" --duration "$DURATION" \
        | sed 's/"mode":"fanout"/"mode":"fanout-rate"/' ;;
    fanout10-rate) bench fanout --server "$server" --members "$MEMBERS" --senders 10 --rate "$FANOUT_RATE" --duration "$DURATION" \
        | sed 's/"mode":"fanout"/"mode":"fanout10-rate"/' ;;
    # Between accounts (Parley only): every message is stored before its echo.
    direct-accounts) [ "$server" = parley ] && bench direct --accounts --server "$server" --pairs "$ACCOUNT_PAIRS" --window "$WINDOW" \
        --duration "$DURATION" | sed 's/"mode":"direct"/"mode":"direct-accounts"/' ;;
    rate-accounts) [ "$server" = parley ] && bench direct --accounts --server "$server" --pairs "$ACCOUNT_PAIRS" --rate "$ACCOUNT_RATE" \
        --duration "$DURATION" | sed 's/"mode":"direct"/"mode":"rate-accounts"/' ;;
    fanout-accounts) [ "$server" = parley ] && bench fanout --accounts --server "$server" --members "$ACCOUNT_MEMBERS" --senders 1 \
        --window "$WINDOW" --duration "$DURATION" | sed 's/"mode":"fanout"/"mode":"fanout-accounts"/' ;;
    connect)
        # ngircd's listen backlog is small: a thousand simultaneous connects overflow it and the
        # kernel resets some (seen near 4,000 clients); a hundred at a time it takes them all.
        # At a fixed rate (CONNECT_RATE per second, in batches of 100): as fast as it can, the
        # generator spends more CPU per connection than the server (the kernel's work for both
        # ends of a loopback connection is mostly charged to it) and measures itself.
        bench connect --server "$server" --clients "$CLIENTS" --parallel 100 --rate "$CONNECT_RATE" --hold 2 ;;
    # Storage throughput: ten senders, 64 unacknowledged messages each (640 in flight; the
    # direct workload keeps 8,000 in flight). With one sender the rate is bounded by the round
    # trip of each window (read, commit, echo), not by the server's capacity: offline-one.
    offline) [ "$server" = parley ] && bench offline --server "$server" --recipients 20 --messages 50000 --senders 10 --window 64 ;;
    offline-one) [ "$server" = parley ] && bench offline --server "$server" --recipients 20 --messages 50000 --senders 1 --window 64 \
        | sed 's/"mode":"offline"/"mode":"offline-one"/' ;;
    esac
}

for workload in $WORKLOADS; do
    for server in $SERVERS; do
        [[ "$workload" == offline* || "$workload" == *-accounts ]] && [ "$server" != parley ] && continue
        for run in $(seq "$RUNS"); do
            echo "== $workload on $server, run $run/$RUNS" >&2
            start_server "$server"
            sleep 0.5
            if ! run_workload "$server" "$workload" | grep '^RESULT ' | sed 's/^RESULT //' >>"$results"; then
                echo "   $workload on $server failed (see above)" >&2
            fi
            stop_server
            sleep 0.5
        done
    done
done

touch "$results"
if [ "$SAVE" = auto ]; then
    SAVE=no
    [ "$RUNS" -ge 3 ] && [ "$DURATION" -ge 8 ] && SAVE=yes
fi
saved=bench
if [ "$SAVE" != yes ]; then
    saved=$work/table
    mkdir -p "$saved"
    [ -f bench/results.jsonl ] && cp bench/results.jsonl "$saved/"
    echo "RUNS=$RUNS DURATION=$DURATION is below the table's standard: bench/results.* left as they are (SAVE=yes to write them)" >&2
fi
python3 - "$results" "$saved/results.md" "$saved/results.svg" "$saved/results.jsonl" <<'PY'
import json, os, statistics, sys, platform, subprocess, datetime
# This run's results replace the earlier ones of the same workload and server; the others are
# kept (bench/results.jsonl), so a partial run (SERVERS=..., WORKLOADS=...) updates its rows only.
now = datetime.datetime.utcnow().strftime("%Y-%m-%d %H:%M")
new = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
for r in new: r.setdefault("measured_at", now)
ran = {(r["mode"], r["server"]) for r in new}
old = [json.loads(line) for line in open(sys.argv[4]) if line.strip()] if os.path.exists(sys.argv[4]) else []
rows = [r for r in old if (r["mode"], r["server"]) not in ran] + new
open(sys.argv[4], "w").write("".join(json.dumps(r) + "\n" for r in rows))
metrics = {  # workload: (metric, label, higher is better)
    "direct": [("delivered_per_s", "direct, window: delivered msgs/s", True), ("p99_us", "direct, window: p99 latency (us)", False)],
    "fanout": [("delivered_per_s", "fanout, 1 sender: deliveries/s", True)],
    "fanout10": [("delivered_per_s", "fanout, 10 senders: deliveries/s", True)],
    "rate": [("p99_us", "direct at fixed rate: p99 latency (us)", False), ("p50_us", "direct at fixed rate: p50 latency (us)", False)],
    "fanout-rate": [("server_cpu_ns_per_delivery", "fanout at fixed rate, 1 sender: server CPU ns/delivery", False)],
    "fanout10-rate": [("server_cpu_ns_per_delivery", "fanout at fixed rate, 10 senders: server CPU ns/delivery", False)],
    "connect": [("server_bytes_per_conn", "idle connections: server bytes/connection", False),
                ("server_cpu_us_per_conn", "connect + register: server CPU us/connection", False)],
    "direct-accounts": [("delivered_per_s", "accounts, direct, window: msgs/s", True)],
    "rate-accounts": [("p50_us", "accounts, direct at fixed rate: p50 latency (us)", False), ("p99_us", "accounts, direct at fixed rate: p99 latency (us)", False)],
    "fanout-accounts": [("delivered_per_s", "accounts, group: deliveries/s", True)],
    "offline": [("stored_per_s", "offline, 10 senders: durably stored msgs/s", True), ("replayed_per_s", "offline, 10 senders: backlog replayed msgs/s", True)],
    "offline-one": [("stored_per_s", "offline, 1 sender: durably stored msgs/s", True), ("replayed_per_s", "offline, 1 sender: backlog replayed msgs/s", True)],
}
preference = ["parley", "inspircd", "ngircd"]
servers = sorted({r["server"] for r in rows}, key=lambda s: (preference.index(s) if s in preference else len(preference), s))
def median(workload, server, metric):
    values = [r[metric] for r in rows if r["mode"] == workload and r["server"] == server and metric in r]
    return statistics.median(values) if values else None
lines = []
cpu = subprocess.run(["sh", "-c", "grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"], capture_output=True, text=True).stdout.strip()
times = sorted({r.get("measured_at", now) for r in rows})
when = times[0] if len(times) == 1 else f"between {times[0]} and {times[-1]}"
# Runs per workload and server: one number when they all had as many, else the range.
run_counts = sorted({n for n in (sum(1 for r in rows if r['mode'] == w and r['server'] == s) for w in metrics for s in servers) if n})
runs = (str(run_counts[0]) if len(run_counts) == 1 else f"{run_counts[0]}-{run_counts[-1]}") if run_counts else "0"
lines.append(f"Measured {when} UTC on {cpu or platform.processor()}, {subprocess.run(['nproc'], capture_output=True, text=True).stdout.strip()} cores; "
             f"server on one core, parley-bench on the other; medians of {runs} runs.")
lines.append("")
header = "| workload | " + " | ".join(servers) + " | " + " | ".join(f"Parley/{s}" for s in servers if s != "parley") + " |"
lines.append(header)
lines.append("|---" * (1 + len(servers) + len([s for s in servers if s != "parley"])) + "|")
chart = []
losses = sum(r.get("lost", 0) + r.get("reordered", 0) + r.get("disconnected", 0) for r in rows)
def generator_bound(workload, server):
    # Any run in which the generator was the bottleneck makes the workload's figures its own.
    return any(r.get("generator_bound", 0) for r in rows if r["mode"] == workload and r["server"] == server)
refused = []
for workload, items in metrics.items():
    for metric, label, higher in items:
        values = {s: median(workload, s, metric) for s in servers}
        if all(v is None for v in values.values()): continue
        cells = [f"{v:,.0f}" if v is not None else "–" for v in values.values()]
        ratios = []
        for s in servers:
            if s == "parley": continue
            p, o = values.get("parley"), values.get(s)
            if p and o and (generator_bound(workload, "parley") or generator_bound(workload, s)):
                ratios.append("generator-bound")
                refused.append(workload)
            elif p and o:
                ratio = p / o if higher else o / p
                ratios.append(f"{ratio:.2f}x")
                chart.append((f"{label} vs {s}", ratio))
            else:
                ratios.append("–")
        lines.append(f"| {label} | " + " | ".join(cells) + " | " + " | ".join(ratios) + " |")
    # CPU beside each workload: the server's (on its core) and the generator's (on its own).
    cpu = {s: (median(workload, s, "server_cpu_pct"), median(workload, s, "bench_cpu_pct")) for s in servers}
    if any(b is not None for _, b in cpu.values()):
        cells = [f"{sv:.0f} / {b:.0f}" if sv is not None and b is not None else (f"– / {b:.0f}" if b is not None else "–") for sv, b in cpu.values()]
        lines.append(f"| {workload}: CPU % server / parley-bench | " + " | ".join(cells) + " |" + " |" * len([s for s in servers if s != "parley"]))
lines.append("")
lines.append(f"Ratios are Parley's advantage (above 1.00x: Parley better). Lost, reordered or disconnected in all runs: {losses:.0f}.")
lines.append("CPU rows: % of one core used by the server and by parley-bench over the measured interval (medians). "
             "A ratio is printed only when parley-bench stayed under 80 % of its core in every run"
             + (f"; generator-bound, so without a ratio: {', '.join(sorted(set(refused)))}." if refused else "."))
table = "\n".join(lines)
open(sys.argv[2], "w").write(table + "\n")
print(table)
# A horizontal bar chart of the ratios.
width, bar, left = 900, 22, 430
height = 40 + bar * len(chart) * 1.4
svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height:.0f}" font-family="sans-serif" font-size="12">',
       f'<text x="10" y="20" font-size="14">Parley relative to each peer (1.0 = equal; longer is better for Parley)</text>']
scale = (width - left - 60) / max([2.0] + [r for _, r in chart])
x1 = left + scale * 1.0
for i, (label, ratio) in enumerate(chart):
    y = 40 + i * bar * 1.4
    color = "#2a9d4b" if ratio >= 1 else "#c0392b"
    svg.append(f'<text x="{left - 8}" y="{y + bar * 0.7:.0f}" text-anchor="end">{label}</text>')
    svg.append(f'<rect x="{left}" y="{y:.0f}" width="{scale * ratio:.0f}" height="{bar}" fill="{color}"/>')
    svg.append(f'<text x="{left + scale * ratio + 4:.0f}" y="{y + bar * 0.7:.0f}">{ratio:.2f}x</text>')
svg.append(f'<line x1="{x1:.0f}" y1="30" x2="{x1:.0f}" y2="{height:.0f}" stroke="#333" stroke-dasharray="4"/>')
svg.append("</svg>")
open(sys.argv[3], "w").write("\n".join(svg) + "\n")
PY
