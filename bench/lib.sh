# Shared by the bench scripts (sourced, from the repository's root): the release build, a work
# directory removed on exit, the servers' configurations for load from one machine (flood limits
# and per-address caps off, cheap password hashing for the account workloads), and starting and
# stopping one server pinned to SERVER_CPU on PORT.

SERVER_CPU=${SERVER_CPU:-0}
BENCH_CPU=${BENCH_CPU:-1}

# Builds parley-server and parley-bench in release mode; sets `bin` to where they are.
bench_build() {
    # BIN=dir runs the parley-server and parley-bench found there (an older build) instead.
    if [ -n "${BIN:-}" ]; then bin=$BIN; return; fi
    # One --product per call: with two, swift build builds only the last.
    for product in parley-server parley-bench; do
        swift build -c release --product "$product" >/dev/null
    done
    bin=$(swift build -c release --show-bin-path)
}

# Makes `work`, removed on exit (after the server is stopped). `prefix` names it in /tmp.
bench_workdir() { # prefix
    work=$(mktemp -d "/tmp/$1.XXXXXX")
    server_pid=""
    trap 'stop_server; rm -rf "$work"' EXIT
}

# $work/parley.json; `extra` is appended inside "limits" (e.g. ', "storageQueueLimit": 0').
write_parley_config() { # [extra]
    cat >"$work/parley.json" <<JSON
{ "limits": { "maxConnectionsPerAddress": 0, "floodCommandsPerSecond": 0, "maxUnregisteredConnections": 0,
              "pingIntervalSeconds": 600 ${1:-} },
  "accounts": { "registrationsPerNetworkAllowed": 0, "maxPasswordChecksInFlight": 0, "loginFailuresPerNetworkAllowed": 0,
                "passwordIterations": 4096 } }
JSON
}

write_inspircd_config() {
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
}

write_ngircd_config() {
    cat >"$work/ngircd.conf" <<CONF
[Global]
Name = ngircd.bench
Info = bench
Listen = 127.0.0.1
Ports = $PORT
MotdPhrase = bench
PidFile = $work/ngircd.pid
[Limits]
MaxConnections = 0
MaxConnectionsIP = 0
MaxJoins = 0
MaxPenaltyTime = 0
PingTimeout = 600
PongTimeout = 600
[Options]
DNS = no
Ident = no
PAM = no
CONF
}

# Waits until something accepts connections on 127.0.0.1:port; else shows `log` and exits.
wait_for_port() { # port name log
    for _ in $(seq 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.1
    done
    echo "$2 did not start listening on port $1:" >&2
    cat "$3" >&2 2>/dev/null || true
    exit 1
}

# A fresh server: `parley` (this build, or the parley-server binary given), `inspircd` or
# `ngircd`, pinned to SERVER_CPU, listening on PORT. Sets server_pid.
start_server() { # name [binary]
    rm -rf "$work/data"
    case $1 in
    inspircd)
        write_inspircd_config
        taskset -c "$SERVER_CPU" inspircd --runasroot --nofork --config "$work/inspircd.conf" >"$work/server.log" 2>&1 & ;;
    ngircd)
        write_ngircd_config
        taskset -c "$SERVER_CPU" ngircd -n -f "$work/ngircd.conf" >"$work/server.log" 2>&1 & ;;
    *)
        [ -f "$work/parley.json" ] || write_parley_config
        taskset -c "$SERVER_CPU" "${2:-$bin/parley-server}" --config "$work/parley.json" --data-dir "$work/data" \
            --listen "127.0.0.1:$PORT" --log-level warning >"$work/server.log" 2>&1 & ;;
    esac
    server_pid=$!
    wait_for_port "$PORT" "$1" "$work/server.log"
}

stop_server() {
    if [ -n "${server_pid:-}" ]; then
        kill "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
        server_pid=""
    fi
}
