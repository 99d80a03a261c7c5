#!/usr/bin/env bash
# Instruction counts of N guests joining one channel (callgrind): repeatable where wall-clock
# time on a shared machine is not. Runs a Parley server (this release build, or SERVER=path)
# under valgrind's callgrind, lets `parley-bench fanout --duration 0` connect N guests, join them
# one after another, send one message and quit, and dumps the counts twice: at the bench's
# "joined" line (connect + join) and once the server is idle again (the message and the QUITs).
# With WORKLOAD=connect, `parley-bench connect --hold 0` instead: N guests connect and register
# (the first dump, "join", at its RESULT line), then close (the rest).
# With WORKLOAD=direct, `parley-bench direct --pairs PAIRS --window 16 --duration DURATION`
# (guests, no capabilities, 32-byte texts): the first dump ("start") at the bench's first
# progress line, the second ("traffic") at its RESULT line, once every message sent has arrived;
# the traffic's instructions are divided by the messages delivered between the two.
# With WORKLOAD=stored, the same between accounts (`--accounts`: created with REGISTER at 1,024
# PBKDF2 iterations, then logged in with PASS), so every message is committed to SQLite before
# its echo; the traffic's instructions are those of the whole server (event loop and storage).
# With WORKLOAD=fanout, `parley-bench fanout --members MEMBERS --senders 1 --window 16 --duration
# DURATION` (guests, 1,000 members unless MEMBERS is set): the same two dumps, and the traffic's
# instructions per delivery (a line written to one member).
# With WORKLOAD=offline, `parley-bench offline --recipients 20 --messages MESSAGES --senders 10
# --window 64` (accounts; every message waits for a logged-out account, committed before its
# echo): the first dump ("store") when every message is stored, the rest (the replay at login)
# after. Run it for two MESSAGES counts and subtract: account creation and logins cancel out.
#
#   bench/callgrind-join.sh                 # 2,000 members, this build
#   MEMBERS=1000 SERVER=/tmp/parley-server-before bench/callgrind-join.sh
#   WORKLOAD=connect MEMBERS=5000 bench/callgrind-join.sh
#   WORKLOAD=direct PAIRS=100 DURATION=10 bench/callgrind-join.sh
#   WORKLOAD=stored PAIRS=100 DURATION=10 bench/callgrind-join.sh
#   WORKLOAD=fanout DURATION=10 bench/callgrind-join.sh
#   WORKLOAD=offline MESSAGES=8000 bench/callgrind-join.sh   # and MESSAGES=2000: the difference / 6,000
#   SERVER=/tmp/old/parley-server BENCH=/tmp/old/parley-bench bench/callgrind-join.sh   # no build
#   callgrind_annotate --inclusive=yes OUT/callgrind.out.PID.1 | swift demangle --simplified | less
#
# valgrind 3.19 (Debian 12) needs two workarounds for Swift 6.3 binaries: the debug information
# is stripped (valgrind 3.19 cannot read DWARF 5), and sigsuspend is replaced by one that copies
# its mask first (valgrind 3.19 writes into the mask it is given, and libdispatch's main thread
# passes one in read-only memory, which crashes valgrind).
set -euo pipefail
cd "$(dirname "$0")/.."
WORKLOAD=${WORKLOAD:-join}
if [ "$WORKLOAD" = fanout ]; then MEMBERS=${MEMBERS:-1000}; else MEMBERS=${MEMBERS:-2000}; fi
PAIRS=${PAIRS:-100}
MESSAGES=${MESSAGES:-8000}
DURATION=${DURATION:-10}
PORT=${PORT:-16970}
OUT=${OUT:-$(mktemp -d /tmp/parley-callgrind.XXXXXX)}
command -v valgrind >/dev/null || { echo "valgrind is not installed (apt-get install valgrind)" >&2; exit 1; }
if [ -z "${SERVER:-}" ] || [ -z "${BENCH:-}" ]; then
    swift build -c release --product parley-server >/dev/null
    swift build -c release --product parley-bench >/dev/null
    bin=$(swift build -c release --show-bin-path)
fi
server=${SERVER:-$bin/parley-server}
bench=${BENCH:-$bin/parley-bench}

work=$(mktemp -d /tmp/parley-callgrind-run.XXXXXX)
pid=""
cleanup() { if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; sleep 2; kill -9 "$pid" 2>/dev/null || true; fi; rm -rf "$work"; }
trap cleanup EXIT
cat >"$work/sigsuspend.c" <<'C'
#define _GNU_SOURCE
#include <signal.h>
#include <unistd.h>
#include <sys/syscall.h>
int sigsuspend(const sigset_t *mask) { sigset_t copy = *mask; return syscall(SYS_rt_sigsuspend, &copy, 8); }
C
cc -shared -fPIC -O2 -o "$work/sigsuspend.so" "$work/sigsuspend.c"
objcopy --strip-debug "$server" "$work/parley-server"
cat >"$work/parley.json" <<JSON
{ "limits": { "maxConnectionsPerAddress": 0, "floodCommandsPerSecond": 0, "maxUnregisteredConnections": 0,
              "pingIntervalSeconds": 600 },
  "accounts": { "passwordIterations": 1024 } }
JSON
if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then echo "port $PORT is in use (PORT=...)" >&2; exit 1; fi
LD_PRELOAD=$work/sigsuspend.so valgrind --tool=callgrind --callgrind-out-file="$OUT/callgrind.out.%p" \
    "$work/parley-server" --config "$work/parley.json" --data-dir "$work/data" --listen "127.0.0.1:$PORT" \
    --log-level warning >"$work/server.log" 2>&1 &
pid=$!
for _ in $(seq 600); do (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break; sleep 0.1; done
kill -0 "$pid" 2>/dev/null || { cat "$work/server.log" >&2; exit 1; }
callgrind_control -z "$pid" >/dev/null 2>&1
first=join
if [ "$WORKLOAD" = connect ]; then
    workload=(connect --clients "$MEMBERS" --parallel 200 --hold 0)
    mark=RESULT
elif [ "$WORKLOAD" = direct ]; then
    workload=(direct --pairs "$PAIRS" --window 16 --payload 32 --duration "$DURATION")
    mark="direct:"
    first=start
elif [ "$WORKLOAD" = stored ]; then
    workload=(direct --accounts --pairs "$PAIRS" --window 16 --payload 32 --duration "$DURATION")
    mark="direct:"
    first=start
elif [ "$WORKLOAD" = offline ]; then
    workload=(offline --recipients 20 --messages "$MESSAGES" --senders 10 --window 64)
    mark="stored in"
    first=store
elif [ "$WORKLOAD" = fanout ]; then
    workload=(fanout --members "$MEMBERS" --senders 1 --window 16 --duration "$DURATION")
    # The progress lines ("fanout:   1s   N delivered ..."), not the "members joined" line.
    mark="delivered "
    first=start
else
    workload=(fanout --members "$MEMBERS" --senders 1 --window 1 --duration 0)
    mark=joined
fi
"$bench" "${workload[@]}" --port "$PORT" --server callgrind 2>&1 \
    | while read -r line; do
        case "$line" in
        *"$mark"*)
            if [ "$first" = start ]; then
                # Messages delivered before the first dump; then wait for the RESULT line.
                echo "$line" | awk '{print $3}' >"$work/delivered-at-start"
                mark=RESULT
            fi
            callgrind_control -d "$first" "$pid" >/dev/null 2>&1; echo "$line" >&2
            if [ "$first" = start ]; then first=traffic; elif [ "$WORKLOAD" = offline ]; then mark=never-again
            elif [ "$WORKLOAD" != join ] && [ "$WORKLOAD" != connect ]; then
                echo "$line" | grep -o '"delivered":[0-9]*' | cut -d: -f2 >"$work/delivered-at-end"; first=done; mark=never-again
            fi;;
        esac
      done
# Idle: under 0.05 s of CPU in 3 s, so the QUITs have all been handled.
cpu() { awk '{print $14+$15}' "/proc/$pid/stat"; }
last=$(cpu); while sleep 3; now=$(cpu); [ $((now - last)) -gt 5 ]; do last=$now; done
callgrind_control -d rest "$pid" >/dev/null 2>&1
total=0
for file in "$OUT"/callgrind.out.*.*; do
    part=$(grep -o "^desc: Trigger: dump [a-z]*" "$file" | awk '{print $4}')
    count=$(awk '/^summary:/ {print $2}' "$file")
    total=$((total + count))
    printf "%-7s %'16d instructions  %s\n" "$part" "$count" "$file"
done
printf "%-7s %'16d instructions\n" total "$total"
if [ "$WORKLOAD" != join ] && [ "$WORKLOAD" != connect ] && [ -s "$work/delivered-at-end" ]; then
    start=$(cat "$work/delivered-at-start"); end=$(cat "$work/delivered-at-end")
    traffic=$(awk '/^summary:/ {print $2}' $(grep -l "^desc: Trigger: dump traffic" "$OUT"/callgrind.out.*.*))
    unit=message; [ "$WORKLOAD" = fanout ] && unit=delivery
    printf "traffic: %'d instructions for %'d deliveries: %'d per %s\n" "$traffic" $((end - start)) $((traffic / (end - start))) "$unit"
fi
