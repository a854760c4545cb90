#!/usr/bin/env bash
# bench/idle.sh: server memory per idle keep-alive connection, ringside vs. hyper.
#
# For each round and each server (A B A B ... across rounds):
#   1. start the server fresh on 1 core: CPU 0 (taskset -c 0; ringside
#      --cores 0-0, hyper --threads 1); check /healthz and /plaintext; settle 1 s;
#      sample RSS "before" (VmRSS of /proc/PID/status);
#   2. start bench/hold_idle.py on CPU 1 (its own process: the 20,000
#      open-files limit is per process, the server holds N fds and so does the
#      holder). It opens N connections (default 10,000) in batches of 500,
#      sends one full GET /plaintext on each and reads the response, then
#      keeps them all open and idle;
#   3. hold them --hold seconds (default 10), then sample RSS "open" and the
#      server CPU time used while the connections sat idle;
#   4. tell the holder to close them all (SIGUSR1), wait --after seconds
#      (default 5), sample RSS "after".
#   bytes per idle connection = (rss_open - rss_before) / connections open.
#
# Output: bench/results/idle.csv (one row per server per round, overwritten),
#         bench/results/idle.md, bench/results/idle.png (via bench/plot.py),
#         logs in bench/results/tmp/.
#
# Usage: bench/idle.sh [--servers ringside,hyper] [--rounds N] [--conns "N ..."]
#                      [--batch N] [--hold SECS] [--after SECS] [--quick]
#                      [--host 127.0.0.1] [--port BASE] [--no-build] [--no-plot]
#                      [--out DIR] (results directory, default bench/results)
#                      [--before BIN] (ringside built from an earlier commit: server "before")
#   --quick = 1 round, hold 5 s. --conns takes one level or several (e.g.
#   "10000 19800": 19,800 is as many as the 20,000 open-files limit allows).
set -euo pipefail

# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit "${1:-0}"; }

SERVERS_ARG="ringside,hyper"
ROUNDS=3
CONNS_LIST=10000
BATCH=500
HOLD=10
AFTER=5
HOST=127.0.0.1
PORT_BASE=18180
BUILD=1
PLOT=1
OUT_DIR="$BENCH_DIR/results"
SERVER_CPUS=${SERVER_CPUS:-0}
HOLDER_CPUS=${HOLDER_CPUS:-1}

while (( $# )); do
    case $1 in
        --servers) SERVERS_ARG=${2:?}; shift ;;
        --rounds) ROUNDS=${2:?}; shift ;;
        --conns) CONNS_LIST=${2:?}; shift ;;
        --batch) BATCH=${2:?}; shift ;;
        --hold) HOLD=${2:?}; shift ;;
        --after) AFTER=${2:?}; shift ;;
        --quick) ROUNDS=1; HOLD=5 ;;
        --host) HOST=${2:?}; shift ;;
        --port) PORT_BASE=${2:?}; shift ;;
        --no-build) BUILD=0 ;;
        --no-plot) PLOT=0 ;;
        --out) OUT_DIR=${2:?}; shift ;;
        --before) BEFORE_BIN=${2:?}; shift ;;
        -h | --help) usage 0 ;;
        *) echo "unknown argument: $1" >&2; usage 2 ;;
    esac
    shift
done

is_uint() { [[ "$1" =~ ^[0-9]+$ ]] && (( $1 > 0 )); }
is_uint "$ROUNDS" || die "--rounds must be a positive integer"
read -ra LEVELS <<<"$CONNS_LIST"
(( ${#LEVELS[@]} > 0 )) || die "--conns is empty"
CONNS=0
for level in "${LEVELS[@]}"; do
    is_uint "$level" || die "--conns takes positive integers"
    (( level > CONNS )) && CONNS=$level
done
is_uint "$BATCH" || die "--batch must be a positive integer"
is_uint "$HOLD" || die "--hold must be a positive integer (seconds)"
[[ "$AFTER" =~ ^[0-9]+$ ]] || die "--after must be a non-negative integer (seconds)"
is_uint "$PORT_BASE" || die "--port must be a port number"
check_loopback "$HOST"
validate_servers "$SERVERS_ARG"

check_machine
raise_nofile
NOFILE=$(ulimit -n)
(( CONNS + 200 <= NOFILE )) || die "--conns $CONNS needs $((CONNS + 200)) open files per process (server and holder each); the limit is $NOFILE"
read -r PORT_LO PORT_HI </proc/sys/net/ipv4/ip_local_port_range
(( CONNS + 1000 < PORT_HI - PORT_LO )) || die "--conns $CONNS does not fit the ephemeral port range $PORT_LO-$PORT_HI"

# ringside sheds connections past --max-connections-per-core (16,384 by
# default); raise it past --conns so what bounds a run is the open-files limit.
export RINGSIDE_MAX_CONNECTIONS_PER_CORE=$(( CONNS + 100 ))

install_cleanup_trap

if (( BUILD )); then build_servers "${SERVERS[@]}"; fi
check_binaries "${SERVERS[@]}"
snapshot_binaries "${SERVERS[@]}"
log "binaries (copied to $SNAPSHOT_DIR for this run): $BIN_SHA"

TMP_DIR="$OUT_DIR/tmp/idle-$(date +%Y%m%d-%H%M%S)"
mkdir -p "$TMP_DIR"
# Rows go to the run's own CSV; it replaces results/idle.csv only when the run completes.
CSV="$TMP_DIR/idle.csv"
FINAL_CSV="$OUT_DIR/idle.csv"
REV=$(repo_rev)
# Opening N connections: allow 60 s plus 1 s per 200 connections.
READY_TIMEOUT=$(( 60 + CONNS / 200 ))  # for the largest level

echo "timestamp,round,server,cores,server_cpus,holder_cpus,conns_requested,conns_open,conn_failures,closed_by_server,unexpected_data,open_s,hold_s,rss_before_bytes,rss_open_bytes,rss_after_bytes,bytes_per_conn,retained_after_close_bytes,idle_cpu_s,server_fds_open,peak_open_bytes,peak_bytes_per_conn,rev" >"$CSV"

kv() { sed -n "s/.*\b$1=\([^ ]*\).*/\1/p" <<<"$2"; } # kv KEY "LINE k=v ..."

measure_idle() { # round server port
    local round=$1 server=$2 port=$3
    local slog="$TMP_DIR/server-r$round-$server.log" hout="$TMP_DIR/holder-r$round-$server.out"
    local herr="$TMP_DIR/holder-r$round-$server.err"
    local rss0 rss1 rss2 c0 c1 hpid ready done_line i opened failed open_s closed unexpected
    local per retained idle_cpu fds peak peak_per

    start_server "$server" "$SERVER_CPUS" "$HOST" "$port" "$slog"
    sleep 1
    rss0=$(rss_bytes "$SERVER_PID")
    # Reset the peak (VmHWM) to the RSS now, so the peak read once all the
    # connections are open is the transient cost of opening them.
    echo 5 >"/proc/$SERVER_PID/clear_refs" 2>/dev/null || log "  warning: cannot reset the server's peak RSS (clear_refs)"

    taskset -c "$HOLDER_CPUS" python3 "$BENCH_DIR/hold_idle.py" --host "$HOST" --port "$port" \
        --conns "$CONNS" --batch "$BATCH" --max-hold $(( HOLD + READY_TIMEOUT + 60 )) >"$hout" 2>"$herr" &
    hpid=$!
    track_pid "$hpid"

    ready=""
    for _ in $(seq 1 $(( READY_TIMEOUT * 10 ))); do
        ready=$(grep -m1 '^READY' "$hout" 2>/dev/null || true)
        [[ -n "$ready" ]] && break
        kill -0 "$hpid" 2>/dev/null || die "holder exited before READY; stderr ($herr):
$(tail -n 20 "$herr")"
        kill -0 "$SERVER_PID" 2>/dev/null || die "$server died while connections were opened; log $slog"
        sleep 0.1
    done
    [[ -n "$ready" ]] || die "holder not READY within $READY_TIMEOUT s; stderr: $herr"
    opened=$(kv opened "$ready"); failed=$(kv failed "$ready"); open_s=$(kv open_s "$ready")
    (( opened > 0 )) || die "holder could not open any connection to $server; stderr: $herr"
    (( failed == 0 )) || log "  warning: $failed of $CONNS connections failed (see $herr)"

    peak=$(hwm_bytes "$SERVER_PID")
    c0=$(cpu_ticks "$SERVER_PID")
    isleep "$HOLD"
    kill -0 "$SERVER_PID" 2>/dev/null || die "$server died while holding idle connections; log $slog"
    rss1=$(rss_bytes "$SERVER_PID")
    c1=$(cpu_ticks "$SERVER_PID")
    # Open descriptors of the server: should be about N plus its listeners/rings.
    fds=$(find "/proc/$SERVER_PID/fd" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l)

    kill -USR1 "$hpid"
    for _ in $(seq 1 300); do
        kill -0 "$hpid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$hpid" 2>/dev/null; then
        log "  warning: holder still running 30 s after SIGUSR1; stopping it"
    fi
    stop_pid "$hpid"
    done_line=$(grep -m1 '^DONE' "$hout" || true)
    [[ -n "$done_line" ]] || die "holder printed no DONE line; stderr: $herr"
    closed=$(kv closed_by_server "$done_line"); unexpected=$(kv unexpected_data "$done_line")
    (( closed == 0 )) || log "  warning: $server closed $closed idle connections during the hold"
    (( unexpected == 0 )) || log "  warning: $server sent unsolicited data on $unexpected idle connections"

    isleep "$AFTER"
    rss2=$(rss_bytes "$SERVER_PID")
    stop_pid "$SERVER_PID"

    read -r per retained idle_cpu peak_per < <(awk -v a="$rss0" -v b="$rss1" -v c="$rss2" -v n="$opened" \
        -v c0="$c0" -v c1="$c1" -v hz="$CLK_TCK" -v p="$peak" \
        'BEGIN { printf "%.0f %d %.2f %.0f\n", (b - a) / n, c - a, (c1 - c0) / hz, (p - a) / n }')
    echo "$(date -Iseconds),$round,$server,1,\"$SERVER_CPUS\",\"$HOLDER_CPUS\",$CONNS,$opened,$failed,$closed,$unexpected,$open_s,$HOLD,$rss0,$rss1,$rss2,$per,$retained,$idle_cpu,$fds,$peak,$peak_per,$REV" >>"$CSV"
    log "  $server: RSS before $((rss0 / 1024)) KiB, open $((rss1 / 1024)) KiB, after $((rss2 / 1024)) KiB; $per bytes per idle connection, peak while opening $peak_per per connection ($opened open, opened in ${open_s}s), server fds $fds, idle CPU ${idle_cpu}s"
}

log "plan: servers=${SERVERS[*]} rounds=$ROUNDS conns=${LEVELS[*]} batch=$BATCH hold=${HOLD}s after=${AFTER}s; server CPU $SERVER_CPUS, holder CPU $HOLDER_CPUS"
log "      raw runs -> $CSV (copied to $FINAL_CSV at the end); logs -> $TMP_DIR"
port=$PORT_BASE
for round in $(seq 1 "$ROUNDS"); do
    for CONNS in "${LEVELS[@]}"; do
        for server in "${SERVERS[@]}"; do
            pick_port "$HOST" "$port"; port=$NEXT_PORT
            log "round $round/$ROUNDS: $server on CPU $SERVER_CPUS, port $port, $CONNS idle connections"
            measure_idle "$round" "$server" "$port"
            port=$((port + 1))
            sleep 1
        done
    done
done

cp "$CSV" "$FINAL_CSV"
python3 "$BENCH_DIR/summarize.py" idle "$FINAL_CSV" "$OUT_DIR/idle.md"
log "wrote $FINAL_CSV and $OUT_DIR/idle.md"
if (( PLOT )); then
    ensure_python_matplotlib
    python3 "$BENCH_DIR/plot.py" --results "$OUT_DIR" || log "warning: plotting failed"
fi
cat "$OUT_DIR/idle.md"
