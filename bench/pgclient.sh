#!/usr/bin/env bash
# bench/pgclient.sh: ringside's PostgreSQL client against tokio-postgres 0.7.
#
# Scenario: ONE connection to a throwaway PostgreSQL cluster (over TCP on
# 127.0.0.1), N concurrent workers (N = 1, 16, 256; --concurrency) each
# looping query -> check the result; N = 1 is single-query latency, larger N
# is throughput with the queries pipelined on the connection. Workloads:
#   int     SELECT $1::int4                                (prepared; the answer must echo $1)
#   orders  SELECT title FROM orders ORDER BY id LIMIT 20  (prepared; 1,000-row table)
# Clients (bench/pgclient, binary pgclient-bench):
#   ringside        ringside::pg::PgConn on a monoio runtime (io_uring), tasks sharing Rc<PgConn>
#   tokio-postgres  tokio-postgres 0.7 on a tokio current-thread runtime, tasks sharing the Client
#
# Pinning protocol (this machine has 2 CPUs, 0 and 1): every process of the
# cluster (postmaster and its children; backends fork from the postmaster and
# inherit its affinity) on CPU 0, the benchmark client on CPU 1
# (taskset -c 1). Both clients run against the same cluster in one run.
#
# Protocol: start the cluster (scripts/pg-test-cluster), then for each round,
# each workload, each N, run each client (A B in odd rounds, B A in even ones)
# as a fresh process: connect, prepare, --warmup s unrecorded, --duration s
# measured. Around every run the CPU time of the client process (the shell's
# `times`), of the cluster's processes (/proc) and of the whole machine
# (/proc/stat) is sampled; a run during which other processes used more than
# 5% of the machine is redone up to --retries times (default 3; kept in
# tmp/<run>/pgclient-discarded.csv). Before each run the script waits up to
# --quiet-wait s for the machine to be < 10% busy.
#
# Output: bench/results/pgclient.csv (one row per run; replaced only when the
#         run completes), bench/results/pgclient.md (median and min-max per
#         client, workload and N, the ratio ringside / tokio-postgres),
#         bench/results/pgclient.png (qps vs N), logs in bench/results/tmp/.
#
# Usage: bench/pgclient.sh [--clients ringside,tokio-postgres] [--rounds N]
#                          [--duration SECS] [--warmup SECS] [--quick]
#                          [--concurrency 1,16,256] [--workloads int,orders]
#                          [--quiet-wait SECS] [--retries N] [--no-build] [--no-plot]
#                          [--out DIR]
#
#   --quick: 1 round, --duration 2, --warmup 1.  Defaults: 3 rounds, 5 s, 1 s.
#   --out DIR: write the CSV, Markdown and PNG there instead of bench/results.
#
# Builds bench/pgclient in release (its own target dir, bench/pgclient/target,
# git-ignored; nice -n 10). Every run is bounded (timeout), and the
# cluster and every process started are stopped at exit (also on error or
# Ctrl-C).
set -euo pipefail

# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit "${1:-0}"; }

ORIG_ARGS="$*"
PGB_DIR="$BENCH_DIR/pgclient"
PGB_BIN="$PGB_DIR/target/release/pgclient-bench"
CLIENTS_ARG="ringside,tokio-postgres"
ROUNDS=3
DURATION=5
WARMUP=1
CONC_ARG="1,16,256"
WORKLOADS_ARG="int,orders"
QUIET_WAIT=120
QUIET_PCT=10
RETRIES=3
NOISY_UTIL=0.05
BUILD=1
PLOT=1
OUT_DIR="$BENCH_DIR/results"
PG_CPUS=${PG_CPUS:-0}
CLIENT_CPUS=${CLIENT_CPUS:-1}

while (( $# )); do
    case $1 in
        --clients) CLIENTS_ARG=${2:?}; shift ;;
        --rounds) ROUNDS=${2:?}; shift ;;
        --duration) DURATION=${2:?}; shift ;;
        --warmup) WARMUP=${2:?}; shift ;;
        --quick) ROUNDS=1; DURATION=2; WARMUP=1 ;;
        --concurrency) CONC_ARG=${2:?}; shift ;;
        --workloads) WORKLOADS_ARG=${2:?}; shift ;;
        --quiet-wait) QUIET_WAIT=${2:?}; shift ;;
        --retries) RETRIES=${2:?}; shift ;;
        --no-build) BUILD=0 ;;
        --no-plot) PLOT=0 ;;
        --out) OUT_DIR=${2:?}; shift ;;
        -h | --help) usage 0 ;;
        *) echo "unknown argument: $1" >&2; usage 2 ;;
    esac
    shift
done

is_uint() { [[ "$1" =~ ^[0-9]+$ ]] && (( $1 > 0 )); }
is_uint "$ROUNDS" || die "--rounds must be a positive integer"
is_uint "$DURATION" || die "--duration must be a positive integer (seconds)"
[[ "$WARMUP" =~ ^[0-9]+$ ]] || die "--warmup must be a non-negative integer (seconds)"
[[ "$QUIET_WAIT" =~ ^[0-9]+$ ]] || die "--quiet-wait must be a non-negative integer (seconds)"
[[ "$RETRIES" =~ ^[0-9]+$ ]] || die "--retries must be a non-negative integer"
IFS=',' read -ra CLIENTS <<<"$CLIENTS_ARG"
for c in "${CLIENTS[@]}"; do [[ $c == ringside || $c == tokio-postgres ]] || die "unknown client '$c'"; done
IFS=',' read -ra CONCS <<<"$CONC_ARG"
for n in "${CONCS[@]}"; do is_uint "$n" || die "--concurrency takes positive integers, got '$n'"; done
IFS=',' read -ra WORKLOADS <<<"$WORKLOADS_ARG"
for w in "${WORKLOADS[@]}"; do [[ $w == int || $w == orders ]] || die "unknown workload '$w'"; done

need_cmd taskset "apt-get install util-linux"
need_cmd timeout
need_cmd python3
(( $(nproc --all) >= 2 )) || die "the pinning protocol needs CPUs 0 and 1"
taskset -c "$PG_CPUS,$CLIENT_CPUS" true 2>/dev/null || die "cannot pin to CPUs $PG_CPUS,$CLIENT_CPUS"

# ------------------------------------------------------------ cleanup ---
CLUSTER_DIR=""
stop_cluster() {
    [[ -n "$CLUSTER_DIR" ]] || return 0
    log "stopping the cluster in $CLUSTER_DIR"
    timeout -k 5 60 "$ROOT_DIR/scripts/pg-test-cluster" stop "$CLUSTER_DIR" >&2 ||
        log "warning: pg-test-cluster stop failed; see $CLUSTER_DIR"
    CLUSTER_DIR=""
}
on_exit() {
    local rc=$?
    trap - EXIT
    stop_cluster
    (exit "$rc")
    cleanup # lib.sh: kills tracked processes, exits with $?
}
trap on_exit EXIT
trap 'log "interrupted"; exit 130' INT
trap 'log "terminated"; exit 143' TERM

# -------------------------------------------------------------- build ---
if (( BUILD )); then
    need_cmd cargo
    log "building pgclient-bench (release, target dir $PGB_DIR/target)"
    # Not --locked: the lock file holds ringside's own dependencies too (a
    # path dependency), so it has to follow the root Cargo.toml when that
    # gains or loses a crate; the external crates stay at their locked versions.
    CARGO_TARGET_DIR="$PGB_DIR/target" nice -n 10 \
        cargo build --release --manifest-path "$PGB_DIR/Cargo.toml" >&2 \
        || die "pgclient-bench build failed"
fi
[[ -x "$PGB_BIN" ]] || die "no pgclient-bench binary at $PGB_BIN (drop --no-build)"

TMP_DIR="$OUT_DIR/tmp/pgclient-$(date +%Y%m%d-%H%M%S)"
mkdir -p "$TMP_DIR"
TIMES_FILE="$TMP_DIR/.times"
CSV="$TMP_DIR/pgclient.csv"
DISCARDED_CSV="$TMP_DIR/pgclient-discarded.csv"
FINAL_CSV="$OUT_DIR/pgclient.csv"
REV=$(repo_rev)
RUN_TIMEOUT=$((WARMUP + DURATION + 30))

# ------------------------------------------------------------ cluster ---
CLUSTER_DIR="/tmp/ringside-pgclient-bench.$$"
log "starting a throwaway PostgreSQL cluster in $CLUSTER_DIR"
cluster_env=$(timeout -k 5 300 "$ROOT_DIR/scripts/pg-test-cluster" start "$CLUSTER_DIR") ||
    die "could not start the cluster"
PG_PORT=$(sed -n 's/^RINGSIDE_PG_PORT=//p' <<<"$cluster_env")
PG_DATA=$(sed -n 's/^RINGSIDE_PG_DATA=//p' <<<"$cluster_env")
PG_BINDIR=$(sed -n 's/^RINGSIDE_PG_BINDIR=//p' <<<"$cluster_env")
[[ -n "$PG_PORT" && -n "$PG_DATA" ]] || die "pg-test-cluster printed no port/data dir"
PG_VERSION=$("$PG_BINDIR/postgres" --version 2>/dev/null || echo "postgres (version unknown)")
PM_PID=$(head -1 "$PG_DATA/postmaster.pid")
[[ "$PM_PID" =~ ^[0-9]+$ ]] || die "no postmaster pid in $PG_DATA/postmaster.pid"
# Backends fork from the postmaster and inherit its affinity; the processes
# already running (checkpointer, walwriter, ...) are pinned one by one.
for p in "$PM_PID" $(pgrep -P "$PM_PID" || true); do
    taskset -a -p -c "$PG_CPUS" "$p" >/dev/null || die "could not pin PostgreSQL process $p to CPU $PG_CPUS"
done
URL="postgres://ringside_trust@127.0.0.1:$PG_PORT/ringside_test"
log "cluster up: $PG_VERSION, port $PG_PORT, postmaster $PM_PID pinned to CPU $PG_CPUS; client on CPU $CLIENT_CPUS"

# ----------------------------------------------------------- samplers ---
# ---------------------------------------------------------------- run ---
echo "timestamp,round,client,workload,n,queries,seconds,qps,p50_us,p99_us,client_cpu_pct,client_cpu_s,pg_cpu_s,wall_s,other_cpu_s,other_util,rev" |
    tee "$DISCARDED_CSV" >"$CSV"

ROW=""
NOISY=0
run_one() { # round client workload n attempt
    local round=$1 client=$2 workload=$3 n=$4 attempt=$5
    local logf="$TMP_DIR/r$round-$client-$workload-n$n-a$attempt"
    local pid rc=0 before after t0 t1 g0 g1 line
    local -a m0 m1
    children_ms; before=$CHILDREN_MS
    proc_stat_ticks; m0=("${PSTAT[@]}")
    g0=$(pg_ticks "$PM_PID")
    t0=$(now_s)
    timeout -k 5 "$RUN_TIMEOUT" taskset -c "$CLIENT_CPUS" "$PGB_BIN" --client "$client" \
        --workload "$workload" --concurrency "$n" --duration "$DURATION" --warmup "$WARMUP" \
        --url "$URL" >"$logf.out" 2>"$logf.err" &
    pid=$!
    track_pid "$pid"
    wait "$pid" || rc=$?
    untrack_pid "$pid"
    t1=$(now_s)
    # Let the backend of the closed connection exit and be reaped (its CPU
    # time moves to the postmaster's cutime).
    sleep 0.3
    g1=$(pg_ticks "$PM_PID")
    proc_stat_ticks; m1=("${PSTAT[@]}")
    children_ms; after=$CHILDREN_MS
    (( rc == 0 )) || die "pgclient-bench $client $workload N=$n failed (status $rc; 124 = timed out):
$(tail -n 20 "$logf.err")"
    line=$(tail -n 1 "$logf.out")
    [[ "$line" == "$client,$workload,$n,"* ]] || die "unexpected pgclient-bench output: $line"
    local other_s other_util client_s pg_s wall
    read -r client_s pg_s wall other_s other_util < <(awk -v c=$(( after - before )) \
        -v g=$(( g1 - g0 )) -v hz="$CLK_TCK" -v t0="$t0" -v t1="$t1" -v us=$(( m1[0] - m0[0] )) \
        -v ncpu="$(nproc --all)" 'BEGIN {
            client = c / 1000; pg = g / hz; wall = t1 - t0
            other = us / hz - client - pg; if (other < 0) other = 0
            printf "%.3f %.3f %.3f %.3f %.4f\n", client, pg, wall, other, other / (wall * ncpu) }')
    ROW="$(date -Iseconds),$round,$line,$client_s,$pg_s,$wall,$other_s,$other_util,$REV"
    local qps p50 p99 cpu_pct
    IFS=, read -r _ _ _ _ _ qps p50 p99 cpu_pct <<<"$line"
    log "  $client $workload N=$n: $qps q/s, p50 $p50 us, p99 $p99 us, client CPU $cpu_pct%, PostgreSQL CPU ${pg_s}s, other CPU ${other_s}s"
    NOISY=0
    if awk -v u="$other_util" -v lim="$NOISY_UTIL" 'BEGIN { exit !(u > lim) }'; then
        log "  warning: other processes used ${other_s} CPU-seconds (${other_util} of the machine): noisy"
        NOISY=1
    fi
}

TOTAL=$(( ROUNDS * ${#WORKLOADS[@]} * ${#CONCS[@]} * ${#CLIENTS[@]} ))
log "plan: clients=${CLIENTS[*]} workloads=${WORKLOADS[*]} N=${CONCS[*]} rounds=$ROUNDS duration=${DURATION}s warmup=${WARMUP}s"
log "      $TOTAL runs, ~$(( TOTAL * (DURATION + WARMUP + 1) )) s plus waits; rows -> $CSV (copied to $FINAL_CSV at the end)"

for round in $(seq 1 "$ROUNDS"); do
    order=("${CLIENTS[@]}")
    if (( round % 2 == 0 )); then
        order=()
        for (( i = ${#CLIENTS[@]} - 1; i >= 0; i-- )); do order+=("${CLIENTS[$i]}"); done
    fi
    for workload in "${WORKLOADS[@]}"; do
        for n in "${CONCS[@]}"; do
            log "round $round/$ROUNDS: $workload, N=$n (${order[*]})"
            for client in "${order[@]}"; do
                for attempt in $(seq 0 "$RETRIES"); do
                    if (( QUIET_WAIT > 0 )); then wait_quiet "$QUIET_WAIT" "$QUIET_PCT" || true; fi
                    run_one "$round" "$client" "$workload" "$n" "$attempt"
                    if (( NOISY && attempt < RETRIES )); then
                        echo "$ROW" >>"$DISCARDED_CSV"
                        log "  discarded (kept in $DISCARDED_CSV); measuring again"
                        continue
                    fi
                    echo "$ROW" >>"$CSV"
                    break
                done
            done
        done
    done
done

stop_cluster
cp "$CSV" "$FINAL_CSV"
MACHINE="$(nproc --all) x $(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo), $(uname -r), $PG_VERSION"
report_args=(--csv "$FINAL_CSV" --md "$OUT_DIR/pgclient.md" --machine "$MACHINE"
    --command "bench/pgclient.sh${ORIG_ARGS:+ $ORIG_ARGS}")
if (( PLOT )); then
    ensure_python_matplotlib
    report_args+=(--png "$OUT_DIR/pgclient.png")
fi
python3 "$BENCH_DIR/pgclient_report.py" "${report_args[@]}"
log "wrote $FINAL_CSV and $OUT_DIR/pgclient.md (and .png unless --no-plot)"
cat "$OUT_DIR/pgclient.md"
