#!/usr/bin/env bash
# bench/orders.sh: GET /orders (the article's page: a prepared SELECT of 200
# order titles, rendered as an HTML table) on ringside vs. two baselines:
#   threaded : one OS thread per connection, sync `postgres` + r2d2 (baselines/threaded)
#   tokio    : axum on tokio (1 worker thread), tokio-postgres + deadpool (baselines/tokio)
#
# Setup: builds ringside and the baselines (nice'd, one build at a time),
# starts a throwaway PostgreSQL cluster (scripts/pg-test-cluster), creates the
# database ringside_bench, runs `ringside migrate` and `ringside seed --orders
# 1000` (10000 against PostgreSQL alone, see below), every server connects as
# ringside_trust over TCP 127.0.0.1 with
# --db-pool-size 8 (the cluster allows 50 connections).
#
# Pinning (the issue's layout): PostgreSQL (the postmaster, pinned before any
# client connects, so every backend inherits it) and the server (one core's
# worth: ringside --cores 0-0, tokio --threads 1) on CPU 0; wrk -t1 on CPU 1.
#
# Protocol: for each round, for each connection count, for each server (so the
# servers alternate A B C A B C): start the server fresh, check that /orders
# answers 200 with the same bytes as the first server's page, warm up
# (--warmup s, unrecorded), then `wrk -t1 -cN -dD --latency --timeout 10s`,
# then stop the server. Per run: req/s, 2xx req/s, latency p50/p99/max, errors
# (non-2xx + socket errors), server CPU-seconds per 10,000 requests
# (utime+stime of all its threads from /proc/PID/stat), and PostgreSQL's CPU
# per 10,000 requests (the postmaster and all its children).
#
# --far: the "far-away database" scenario: the servers reach PostgreSQL through
# bench/delayproxy, which adds --delay-ms (10) each way, i.e. 20 ms to every
# round trip, at 1000 connections (override with --conns). The proxy runs on
# PROXY_CPUS (default 1, beside wrk: it stands for the network, not for the
# server's core); its CPU time is recorded too.
#
# --scale: the connection-scale scenario. Per round and server: start it,
# measure /orders at --conns (256) alone, then for each --idle level (default
# "10000 max") open that many idle keep-alive connections with
# bench/hold_idle.py (one GET /plaintext each, then silent; on WRK_CPUS),
# measure /orders again while they are held, let them go, and sample the
# server's RSS: at its start (after the run without idle connections), with
# the idle connections open (before the load), under load, and --after s
# (5) after they closed. Bytes per idle connection = (RSS with them open -
# RSS just before they were opened) / connections open. "max" is what the server's open-files limit (read
# from /proc/PID/limits) leaves after the active connections, the database
# pool and 64 spare; the script logs the limit and the count it used. Every
# server is told to accept that many (ringside --max-connections-per-core,
# threaded --max-threads; tokio has no limit). A holder keeps at most
# 25,000 connections (or its own open-files limit) from its own source
# address 127.0.0.2, .3, ..., so limits of 100,000+ are spread over
# several addresses and ephemeral-port ranges.
#
# Output: bench/results/orders.csv and orders.md (far.csv and far.md with
# --far, scale.csv and scale.md with --scale), replaced only when a run
# completes; logs in bench/results/tmp/.
#
# Servers: ringside, coalesce (ringside with --db-coalesce on), admit64
# (ringside with --max-active-requests-per-core 64, the setting
# docs/connection.md suggests with PostgreSQL on the server's machine), tlsdb (ringside
# with PostgreSQL over TLS, sslmode=require: results in orders-tls.*), threaded,
# tokio, before (--before BIN), pgbench and pgbench-pipeline (PostgreSQL
# alone: the page's statement from pgbench, prepared, on as many
# connections as a server's pool; the pipelined one sends 16 per
# \startpipeline). With coalesce or pgbench the results go to orders-pg.*,
# over 10,000 orders unless --orders says otherwise (1,000 for the rest).
#
# Usage: bench/orders.sh [--servers ringside,threaded,tokio] [--conns "16 256 1024"]
#                        [--rounds N] [--duration SECS] [--warmup SECS] [--quick]
#                        [--far] [--delay-ms MS] [--db-pool-size N] [--orders N]
#                        [--scale] [--idle "10000 max"] [--after SECS]
#                        [--quiet-wait SECS] [--retries N] [--max-steal FRACTION]
#                        [--port BASE] [--no-build]
#                        [--before BIN] (ringside built from an earlier commit: server "before")
#                        [--out DIR] (results directory, default bench/results)
#   --quick: 1 round, 3 s runs, 1 s warm-up, 256 connections (1000 with --far),
#            no retries, --quiet-wait 30: a sanity check, not a measurement;
#            with --scale: 4 s runs, one idle level of 5,000, --after 3.
#
# The machine is shared: before each server start the script waits up to
# --quiet-wait s (300) for less than 10% of the CPUs to be busy, and every row
# records the CPU used by processes other than server, wrk, PostgreSQL and the
# proxy (other_cpu_util). A measurement during which they used more than 5% of
# the machine, or during which the host stole more than --max-steal (0.10) of
# the machine's CPU time (a VM's "steal"), is redone, up to --retries times
# (2). Rows left noisy by other processes are flagged in the .md; a run left
# above the steal limit says so in the log. Under a host that steals all the
# time every run is measured three times: --max-steal 1 turns the check off.
set -euo pipefail

# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
ORIG_ARGS=$(printf ' %q' "$@")

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit "${1:-0}"; }

THREADED_DIR="$BENCH_DIR/baselines/threaded"
THREADED_BIN="$THREADED_DIR/target/release/threaded-baseline"
TOKIO_DIR="$BENCH_DIR/baselines/tokio"
TOKIO_BIN="$TOKIO_DIR/target/release/tokio-baseline"
PROXY_DIR="$BENCH_DIR/delayproxy"
PROXY_BIN="$PROXY_DIR/target/release/delayproxy"

SERVERS_ARG="ringside,threaded,tokio"
CONNS_ARG=""
ROUNDS=3
DURATION=10
WARMUP=2
QUICK=0
FAR=0
SCALE=0
IDLE_ARG=""
AFTER=5
DELAY_MS=10
POOL=8
ORDERS=""
QUIET_WAIT=""
QUIET_PCT=10
RETRIES=""
NOISY_UTIL=0.05
MAX_STEAL=0.10
HOST=127.0.0.1
PORT_BASE=18380
BUILD=1
WRK_REQ_TIMEOUT=10s
OUT_DIR="$BENCH_DIR/results"

SERVER_CPUS=${SERVER_CPUS:-0}
PG_CPUS=${PG_CPUS:-0}
WRK_CPUS=${WRK_CPUS:-1}
PROXY_CPUS=${PROXY_CPUS:-1}

while (( $# )); do
    case $1 in
        --servers) SERVERS_ARG=${2:?}; shift ;;
        --conns) CONNS_ARG=${2:?}; shift ;;
        --rounds) ROUNDS=${2:?}; shift ;;
        --duration) DURATION=${2:?}; shift ;;
        --warmup) WARMUP=${2:?}; shift ;;
        --quick) QUICK=1 ;;
        --far) FAR=1 ;;
        --scale) SCALE=1 ;;
        --idle) IDLE_ARG=${2:?}; shift ;;
        --after) AFTER=${2:?}; shift ;;
        --delay-ms) DELAY_MS=${2:?}; shift ;;
        --db-pool-size) POOL=${2:?}; shift ;;
        --orders) ORDERS=${2:?}; shift ;;
        --quiet-wait) QUIET_WAIT=${2:?}; shift ;;
        --retries) RETRIES=${2:?}; shift ;;
        --max-steal) MAX_STEAL=${2:?}; shift ;;
        --port) PORT_BASE=${2:?}; shift ;;
        --no-build) BUILD=0 ;;
        --before) BEFORE_BIN=${2:?}; shift ;;
        --out) OUT_DIR=${2:?}; shift ;;
        -h | --help) usage 0 ;;
        *) echo "unknown argument: $1" >&2; usage 2 ;;
    esac
    shift
done

(( FAR && SCALE )) && die "--far and --scale are separate scenarios"
if (( QUICK )); then
    ROUNDS=1 DURATION=3 WARMUP=1
    if (( SCALE )); then DURATION=4; AFTER=3; IDLE_ARG=${IDLE_ARG:-5000}; fi
    QUIET_WAIT=${QUIET_WAIT:-30}
    RETRIES=${RETRIES:-0}
    if (( FAR )); then CONNS_ARG=${CONNS_ARG:-1000}; else CONNS_ARG=${CONNS_ARG:-256}; fi
fi
QUIET_WAIT=${QUIET_WAIT:-300}
RETRIES=${RETRIES:-2}
if (( FAR )); then CONNS_ARG=${CONNS_ARG:-1000}; elif (( SCALE )); then CONNS_ARG=${CONNS_ARG:-256}; else CONNS_ARG=${CONNS_ARG:-16 256 1024}; fi
read -ra CONNS <<<"${CONNS_ARG//,/ }"
IDLE_ARG=${IDLE_ARG:-10000 max}
read -ra IDLE_LEVELS <<<"${IDLE_ARG//,/ }"
if (( FAR )); then SCENARIO=far; elif (( SCALE )); then SCENARIO=scale; else SCENARIO=orders; fi
# Against PostgreSQL alone (pgbench) or with coalescing: results go to
# <scenario>-pg.* (the page against the database's own ceiling).
if [[ ",$SERVERS_ARG," =~ ,(coalesce|pgbench|pgbench-pipeline), ]]; then SCENARIO="$SCENARIO-pg"; fi
# Orders seeded: 10,000 against PostgreSQL alone, the table the performance
# target names (PostgreSQL spends about a fifth less per query over 1,000
# orders, for the same page, so the server's share there looks larger);
# 1,000 for the comparisons with the baselines, as they were always run.
if [[ -z "$ORDERS" ]]; then
    if [[ $SCENARIO == *-pg ]]; then ORDERS=10000; else ORDERS=1000; fi
fi
# tlsdb: ringside with PostgreSQL over TLS (sslmode=require; the cluster is
# started with ssl = on, the other servers stay on plain TCP to it); results
# go to <scenario>-tls.*.
if [[ ",$SERVERS_ARG," =~ ,tlsdb, ]]; then
    SCENARIO="$SCENARIO-tls"
    export RINGSIDE_PG_SSL=1
fi
# --before BIN: "before" is ringside built from an earlier commit, measured
# beside this one in the same run; its results go to <scenario>-ab.*.
if [[ -n "${BEFORE_BIN:-}" ]]; then
    [[ -x "$BEFORE_BIN" ]] || die "--before: no executable at $BEFORE_BIN"
    SCENARIO="$SCENARIO-ab"
fi

is_uint() { [[ "$1" =~ ^[0-9]+$ ]] && (( $1 > 0 )); }
is_uint "$ROUNDS" || die "--rounds must be a positive integer"
is_uint "$DURATION" || die "--duration must be a positive integer (seconds)"
[[ "$WARMUP" =~ ^[0-9]+$ ]] || die "--warmup must be a non-negative integer (seconds)"
[[ "$QUIET_WAIT" =~ ^[0-9]+$ ]] || die "--quiet-wait must be a non-negative integer (seconds)"
[[ "$RETRIES" =~ ^[0-9]+$ ]] || die "--retries must be a non-negative integer"
[[ "$MAX_STEAL" =~ ^(0(\.[0-9]+)?|1(\.0*)?)$ ]] || die "--max-steal must be a fraction from 0 to 1"
is_uint "$DELAY_MS" || die "--delay-ms must be a positive integer"
is_uint "$POOL" || die "--db-pool-size must be a positive integer"
is_uint "$ORDERS" || die "--orders must be a positive integer"
is_uint "$PORT_BASE" || die "--port must be a port number"
(( ${#CONNS[@]} > 0 )) || die "--conns is empty"
[[ "$AFTER" =~ ^[0-9]+$ ]] || die "--after must be a non-negative integer (seconds)"
for i in "${IDLE_LEVELS[@]}"; do
    [[ "$i" == max ]] || is_uint "$i" || die "--idle takes positive integers or 'max', got '$i'"
done
(( !SCALE || ${#CONNS[@]} == 1 )) || die "--scale drives one connection count (--conns N)"
for c in "${CONNS[@]}"; do is_uint "$c" || die "--conns takes positive integers, got '$c'"; done
(( POOL <= 40 )) || die "--db-pool-size $POOL does not fit the test cluster's max_connections (50)"

IFS=',' read -ra SERVERS <<<"$SERVERS_ARG"
(( ${#SERVERS[@]} > 0 )) || die "--servers is empty"
for s in "${SERVERS[@]}"; do
    case $s in
        ringside | coalesce | admit64 | tlsdb | threaded | tokio | pgbench | pgbench-pipeline) ;;
        before) [[ -n "${BEFORE_BIN:-}" ]] || die "server 'before' needs --before BIN" ;;
        *) die "unknown server '$s' (expected ringside, coalesce, admit64, tlsdb, threaded, tokio, before, pgbench, pgbench-pipeline)" ;;
    esac
done

check_machine
need_cmd psql "apt-get install postgresql-client"
raise_nofile
NOFILE=$(ulimit -n)
for c in "${CONNS[@]}"; do
    (( c + 200 < NOFILE )) || die "--conns $c does not fit the open-files limit $NOFILE"
done
if ! command -v wrk >/dev/null 2>&1; then
    log "wrk missing; installing it with apt-get"
    if ! apt-get install -y wrk >&2; then
        apt-get update >&2 || die "apt-get update failed; install wrk by hand"
        apt-get install -y wrk >&2 || die "could not install wrk (apt-get install -y wrk)"
    fi
fi
need_cmd wrk

# ---------------------------------------------------------------- cleanup ---
install_cluster_cleanup_trap # stops what this script started, the cluster in $PG_DIR too

# ----------------------------------------------------------------- builds ---
build_standalone() { # name dir bin
    need_cmd cargo
    log "building $1 (release, target dir $2/target)"
    CARGO_TARGET_DIR="$2/target" timeout 1800 nice -n 10 \
        cargo build --release --locked --manifest-path "$2/Cargo.toml" >&2 \
        || die "$1 build failed"
    [[ -x "$3" ]] || die "$1 binary missing after build: $3"
}
if (( BUILD )); then
    for s in "${SERVERS[@]}"; do
        case $s in
            ringside | coalesce | admit64) build_ringside ;;
            threaded) build_standalone threaded-baseline "$THREADED_DIR" "$THREADED_BIN" ;;
            tokio) build_standalone tokio-baseline "$TOKIO_DIR" "$TOKIO_BIN" ;;
        esac
    done
    if (( FAR )); then build_standalone delayproxy "$PROXY_DIR" "$PROXY_BIN"; fi
fi
[[ -x "$RINGSIDE_BIN" ]] || die "no ringside binary at $RINGSIDE_BIN (migrate and seed need it; drop --no-build)"
for s in "${SERVERS[@]}"; do
    case $s in
        threaded) [[ -x "$THREADED_BIN" ]] || die "no binary at $THREADED_BIN (drop --no-build)" ;;
        tokio) [[ -x "$TOKIO_BIN" ]] || die "no binary at $TOKIO_BIN (drop --no-build)" ;;
    esac
done
if (( FAR )) && [[ ! -x "$PROXY_BIN" ]]; then die "no binary at $PROXY_BIN (drop --no-build)"; fi

RUN_ID="$SCENARIO-$(date +%Y%m%d-%H%M%S)"
TMP_DIR="$OUT_DIR/tmp/$RUN_ID"
mkdir -p "$TMP_DIR"
TIMES_FILE="$TMP_DIR/.times"
CSV="$TMP_DIR/$SCENARIO.csv"
DISCARDED_CSV="$TMP_DIR/$SCENARIO-discarded.csv"
FINAL_CSV="$OUT_DIR/$SCENARIO.csv"
FINAL_MD="$OUT_DIR/$SCENARIO.md"
REV=$(repo_rev)
WRK_TIMEOUT=$((DURATION + 30))

# ------------------------------------------------------------- PostgreSQL ---
start_bench_cluster "$PG_CPUS" ringside_bench "$ORDERS"

SERVER_URL=$DIRECT_URL
PROXY_PID=""
if (( FAR )); then
    pick_port "$HOST" 25400; proxy_port=$NEXT_PORT
    # Bounded: the proxy exits by itself a little after the whole run should be over.
    proxy_max=$(( ROUNDS * ${#CONNS[@]} * ${#SERVERS[@]} * (RETRIES + 1) * (DURATION + WARMUP + QUIET_WAIT + 30) + 120 ))
    taskset -c "$PROXY_CPUS" "$PROXY_BIN" --listen "$HOST:$proxy_port" --upstream "127.0.0.1:$PGPORT" \
        --delay-ms "$DELAY_MS" --max-seconds "$proxy_max" >"$TMP_DIR/delayproxy.log" 2>&1 &
    PROXY_PID=$!
    track_pid "$PROXY_PID"
    sleep 0.3
    kill -0 "$PROXY_PID" 2>/dev/null || die "delayproxy did not start: $(cat "$TMP_DIR/delayproxy.log")"
    SERVER_URL="postgres://ringside_trust@$HOST:$proxy_port/ringside_bench?sslmode=disable"
    t0=$(now_s)
    psql -X -q -At "$SERVER_URL" -c "SELECT 1" >/dev/null || die "cannot reach PostgreSQL through the delay proxy"
    log "delay proxy $HOST:$proxy_port -> 127.0.0.1:$PGPORT, ${DELAY_MS} ms each way, on CPU(s) $PROXY_CPUS ($(awk -v a="$t0" -v b="$(now_s)" 'BEGIN { printf "%.0f", (b - a) * 1000 }') ms for a psql connect + SELECT 1)"
fi

# --------------------------------------------------------------- samplers ---
# run_wrk LOG CONNS DURATION URL: pinned, bounded, in the background so that a
# signal is handled at once. Sets WRK_RC and WRK_CPU_S (from the shell's `times`).
WRK_RC=0
WRK_CPU_S=0
run_wrk() {
    local logf=$1 conns=$2 dur=$3 url=$4 pid before
    children_ms; before=$CHILDREN_MS
    timeout -k 5 "$WRK_TIMEOUT" taskset -c "$WRK_CPUS" \
        wrk -t1 -c"$conns" -d"${dur}s" --timeout "$WRK_REQ_TIMEOUT" --latency "$url" >"$logf" 2>&1 &
    pid=$!
    track_pid "$pid"
    WRK_RC=0
    wait "$pid" || WRK_RC=$?
    untrack_pid "$pid"
    children_ms
    WRK_CPU_S=$(awk -v d=$(( CHILDREN_MS - before )) 'BEGIN { printf "%.3f", d / 1000 }')
}

# parse_wrk LOG -> "requests elapsed_s rps p50_ms p99_ms max_ms socket_errors non2xx"

# ---------------------------------------------------------------- servers ---
SERVER_PID=""
start_orders_server() { # name port log
    local name=$1 port=$2 logf=$3 rcores=$SERVER_CPUS i code
    local -a cap_ringside=() cap_threaded=()
    port_in_use "$HOST" "$port" && die "port $HOST:$port is already in use"
    if [[ "$rcores" =~ ^[0-9]+$ ]]; then rcores="$rcores-$rcores"; fi # ringside: a bare number is a COUNT
    if (( SCALE )); then # let the open-files limit, not a connection cap, be the bound
        cap_ringside=(--max-connections-per-core "$NOFILE")
        cap_threaded=(--max-threads "$NOFILE")
    fi
    case $name in
        ringside)
            DATABASE_URL="$SERVER_URL" taskset -c "$SERVER_CPUS" "$RINGSIDE_BIN" serve --listen "$HOST:$port" \
                --cores "$rcores" --db-pool-size "$POOL" ${cap_ringside[@]+"${cap_ringside[@]}"} >"$logf" 2>&1 & ;;
        tlsdb)
            DATABASE_URL="${SERVER_URL/sslmode=disable/sslmode=require}" taskset -c "$SERVER_CPUS" "$RINGSIDE_BIN" serve --listen "$HOST:$port" \
                --cores "$rcores" --db-pool-size "$POOL" ${cap_ringside[@]+"${cap_ringside[@]}"} >"$logf" 2>&1 & ;;
        coalesce)
            DATABASE_URL="$SERVER_URL" taskset -c "$SERVER_CPUS" "$RINGSIDE_BIN" serve --listen "$HOST:$port" \
                --cores "$rcores" --db-pool-size "$POOL" --db-coalesce on ${cap_ringside[@]+"${cap_ringside[@]}"} >"$logf" 2>&1 & ;;
        admit64)
            DATABASE_URL="$SERVER_URL" taskset -c "$SERVER_CPUS" "$RINGSIDE_BIN" serve --listen "$HOST:$port" \
                --cores "$rcores" --db-pool-size "$POOL" --max-active-requests-per-core 64 ${cap_ringside[@]+"${cap_ringside[@]}"} >"$logf" 2>&1 & ;;
        before)
            DATABASE_URL="$SERVER_URL" taskset -c "$SERVER_CPUS" "$BEFORE_BIN" serve --listen "$HOST:$port" \
                --cores "$rcores" --db-pool-size "$POOL" ${cap_ringside[@]+"${cap_ringside[@]}"} >"$logf" 2>&1 & ;;
        threaded)
            DATABASE_URL="$SERVER_URL" taskset -c "$SERVER_CPUS" "$THREADED_BIN" --listen "$HOST:$port" \
                --db-pool-size "$POOL" ${cap_threaded[@]+"${cap_threaded[@]}"} >"$logf" 2>&1 & ;;
        tokio)
            DATABASE_URL="$SERVER_URL" taskset -c "$SERVER_CPUS" "$TOKIO_BIN" --listen "$HOST:$port" \
                --threads "$(cpu_count "$SERVER_CPUS")" --db-pool-size "$POOL" >"$logf" 2>&1 & ;;
    esac
    SERVER_PID=$!
    track_pid "$SERVER_PID"
    wait_ready "$name" "$SERVER_PID" "$HOST" "$port" "$logf"
    # The pool may still be connecting: wait (10 s max) for /orders to answer 200.
    for i in $(seq 1 100); do
        code=$(curl -s --max-time 5 -o "$TMP_DIR/page-$name.html" -w '%{http_code}' "http://$HOST:$port/orders" || true)
        [[ "$code" == 200 ]] && break
        sleep 0.1
    done
    [[ "$code" == 200 ]] || die "$name: GET /orders answered $code, not 200 (log: $logf)"
    if [[ -z "${REF_MD5:-}" ]]; then
        REF_MD5=$(md5sum <"$TMP_DIR/page-$name.html" | cut -d' ' -f1)
        REF_SERVER=$name
        log "GET /orders page: $(wc -c <"$TMP_DIR/page-$name.html") bytes, $(grep -c '^<tr><td>' "$TMP_DIR/page-$name.html") rows (md5 $REF_MD5, from $name)"
    else
        [[ "$(md5sum <"$TMP_DIR/page-$name.html" | cut -d' ' -f1)" == "$REF_MD5" ]] \
            || die "$name's /orders page differs from $REF_SERVER's (see $TMP_DIR/page-$name.html)"
    fi
}

HEADER="timestamp,scenario,round,server,connections,duration_s,requests,non2xx,socket_errors,errors,rps,ok_rps,p50_ms,p99_ms,max_ms,server_cpu_s,server_cpu_util,server_cpu_s_per_10k_req,pg_cpu_s,pg_cpu_s_per_10k_req,proxy_cpu_s,wrk_cpu_s,wrk_cpu_util,other_cpu_s,other_cpu_util,server_cpus,wrk_cpus,pg_cpus,db_pool_size,delay_ms,rev"
if (( SCALE )); then
    HEADER+=",nofile_limit,idle_requested,idle_open,idle_failed,idle_closed_by_server,idle_open_s,rss_start_kib,rss_before_kib,rss_idle_kib,rss_loaded_kib,rss_after_kib,bytes_per_idle,kept,outcome"
fi
echo "$HEADER" | tee "$DISCARDED_CSV" >"$CSV"

ROW=""
NOISY=0
measure() { # round server conns url
    local round=$1 server=$2 conns=$3 url=$4
    local logf="$TMP_DIR/wrk-r$round-$server-c$conns-a$attempt.txt"
    local c0 c1 g0 g1 x0=0 x1=0 t0 t1 parsed requests elapsed rps p50 p99 max sockerr non2xx
    local -a m0 m1
    proc_stat_ticks; m0=("${PSTAT[@]}")
    c0=$(cpu_ticks "$SERVER_PID"); g0=$(pg_ticks "$PG_PID")
    if [[ -n "$PROXY_PID" ]]; then x0=$(cpu_ticks "$PROXY_PID"); fi
    t0=$(now_s)
    run_wrk "$logf" "$conns" "$DURATION" "$url"
    t1=$(now_s)
    kill -0 "$SERVER_PID" 2>/dev/null || die "$server died during the run; see $TMP_DIR"
    c1=$(cpu_ticks "$SERVER_PID"); g1=$(pg_ticks "$PG_PID")
    if [[ -n "$PROXY_PID" ]]; then x1=$(cpu_ticks "$PROXY_PID"); fi
    proc_stat_ticks; m1=("${PSTAT[@]}")
    (( WRK_RC == 0 )) || die "wrk exited with status $WRK_RC (124 = timed out); output in $logf:
$(tail -n 20 "$logf")"
    parsed=$(parse_wrk "$logf") || die "could not parse wrk output $logf:
$(cat "$logf")"
    read -r requests elapsed rps p50 p99 max sockerr non2xx <<<"$parsed"
    (( requests > 0 )) || die "wrk completed no request against $server; see $logf"
    ROW=$(awk -v ts="$(date -Iseconds)" -v sc="$SCENARIO" -v round="$round" -v server="$server" -v conns="$conns" \
        -v dur="$DURATION" -v n="$requests" -v rps="$rps" -v p50="$p50" -v p99="$p99" -v max="$max" \
        -v se="$sockerr" -v nx="$non2xx" -v c0="$c0" -v c1="$c1" -v g0="$g0" -v g1="$g1" -v x0="$x0" -v x1="$x1" \
        -v hz="$CLK_TCK" -v t0="$t0" -v t1="$t1" -v w="$WRK_CPU_S" -v us=$(( m1[0] - m0[0] )) -v ncpu="$(nproc --all)" \
        -v scores="$(cpu_count "$SERVER_CPUS")" -v scpus="$SERVER_CPUS" -v wcpus="$WRK_CPUS" -v pcpus="$PG_CPUS" \
        -v pool="$POOL" -v delay="$(( FAR ? DELAY_MS : 0 ))" -v rev="$REV" 'BEGIN {
            cpu = (c1 - c0) / hz; pg = (g1 - g0) / hz; px = (x1 - x0) / hz; wall = t1 - t0
            other = us / hz - cpu - pg - px - w; if (other < 0) other = 0
            ok = n - nx; if (ok < 0) ok = 0; ok_rps = rps * ok / n
            printf "%s,%s,%d,%s,%d,%d,%d,%d,%d,%d,%.2f,%.2f,%s,%s,%s,%.2f,%.3f,%.4f,%.2f,%.4f,%.2f,%.3f,%.3f,%.2f,%.3f,\"%s\",\"%s\",\"%s\",%d,%d,%s\n",
                ts, sc, round, server, conns, dur, n, nx, se, nx + se, rps, ok_rps, p50, p99, max,
                cpu, cpu / (wall * scores), cpu / n * 10000, pg, pg / n * 10000, px, w, w / wall,
                other, other / (wall * ncpu), scpus, wcpus, pcpus, pool, delay, rev }')
    local f
    IFS=',' read -ra f <<<"$ROW"
    log "  $server c=$conns: $(printf '%.0f' "${f[11]}") 2xx req/s, p50 ${p50} ms, p99 ${p99} ms, max ${max} ms, errors ${f[9]}, server CPU ${f[15]}s (${f[17]} s/10k req, util ${f[16]}), PostgreSQL ${f[18]}s, wrk util ${f[22]}, other CPU ${f[23]}s"
    if awk -v u="${f[24]}" -v lim="$NOISY_UTIL" 'BEGIN { exit !(u > lim) }'; then
        log "  warning: other processes used ${f[23]} CPU-seconds during this run (${f[24]} of the machine): noisy"
        NOISY=1
    fi
    if stolen_run "$(steal_share "${m0[2]}" "${m0[3]}" "${m1[2]}" "${m1[3]}")" "$MAX_STEAL"; then NOISY=1; fi
    if (( sockerr > 0 || non2xx > 0 )); then
        log "  note: $sockerr socket errors, $non2xx non-2xx responses (see $logf)"
    fi
}

# measure_pgbench ROUND NAME CONNS: PostgreSQL alone, the page's statement
# run by pgbench from the client's CPU on as many connections as a server's
# pool (prepared; "pgbench-pipeline": 16 statements per \startpipeline).
# The row has the same columns; req/s are statements per second, the
# "server" CPU is 0 and pgbench's own CPU goes where wrk's does.
measure_pgbench() {
    local round=$1 server=$2 conns=$3 per=1 script logf g0 g1 t0 t1 n tps lat i
    local -a m0 m1
    script="$TMP_DIR/$server.sql"
    logf="$TMP_DIR/pgbench-r$round-$server-c$conns-a$attempt.txt"
    if [[ $server == pgbench-pipeline ]]; then
        per=16
        { echo '\startpipeline'
          for i in $(seq "$per"); do echo 'SELECT title FROM orders ORDER BY id LIMIT 200;'; done
          echo '\endpipeline'; } >"$script"
    else
        echo 'SELECT title FROM orders ORDER BY id LIMIT 200;' >"$script"
    fi
    proc_stat_ticks; m0=("${PSTAT[@]}")
    g0=$(pg_ticks "$PG_PID")
    children_ms; local before=$CHILDREN_MS
    t0=$(now_s)
    timeout -k 5 "$WRK_TIMEOUT" taskset -c "$WRK_CPUS" pgbench -n -M prepared -c "$POOL" -j 1 \
        -T "$DURATION" -f "$script" "$DIRECT_URL" >"$logf" 2>&1 || die "pgbench failed; see $logf"
    t1=$(now_s)
    children_ms; WRK_CPU_S=$(awk -v d=$(( CHILDREN_MS - before )) 'BEGIN { printf "%.3f", d / 1000 }')
    g1=$(pg_ticks "$PG_PID")
    proc_stat_ticks; m1=("${PSTAT[@]}")
    n=$(awk '/number of transactions actually processed/ { print $NF }' "$logf")
    tps=$(awk '/^tps = / { print $3; exit }' "$logf")
    lat=$(awk '/^latency average/ { print $4; exit }' "$logf")
    [[ -n "$n" && -n "$tps" ]] || die "could not read pgbench's output $logf"
    ROW=$(awk -v ts="$(date -Iseconds)" -v sc="$SCENARIO" -v round="$round" -v server="$server" -v conns="$conns" \
        -v dur="$DURATION" -v n="$(( n * per ))" -v rps="$(awk -v t="$tps" -v p="$per" 'BEGIN { print t * p }')" \
        -v lat="$lat" -v g0="$g0" -v g1="$g1" -v hz="$CLK_TCK" -v t0="$t0" -v t1="$t1" -v w="$WRK_CPU_S" \
        -v us=$(( m1[0] - m0[0] )) -v ncpu="$(nproc --all)" -v scpus="$SERVER_CPUS" -v wcpus="$WRK_CPUS" \
        -v pcpus="$PG_CPUS" -v pool="$POOL" -v rev="$REV" 'BEGIN {
            pg = (g1 - g0) / hz; wall = t1 - t0
            other = us / hz - pg - w; if (other < 0) other = 0
            printf "%s,%s,%d,%s,%d,%d,%d,0,0,0,%.2f,%.2f,%s,,,0,0,0,%.2f,%.4f,0,%.3f,%.3f,%.2f,%.3f,\"%s\",\"%s\",\"%s\",%d,0,%s\n",
                ts, sc, round, server, conns, dur, n, rps, rps, lat, pg, pg / n * 10000, w, w / wall,
                other, other / (wall * ncpu), scpus, wcpus, pcpus, pool, rev }')
    local f
    IFS=',' read -ra f <<<"$ROW"
    log "  $server (PostgreSQL alone, $POOL connections): $(printf '%.0f' "${f[11]}") statements/s, latency average $lat ms, PostgreSQL ${f[18]}s (${f[19]} s/10k)"
    if awk -v u="${f[24]}" -v lim="$NOISY_UTIL" 'BEGIN { exit !(u > lim) }'; then NOISY=1; fi
    if stolen_run "$(steal_share "${m0[2]}" "${m0[3]}" "${m1[2]}" "${m1[3]}")" "$MAX_STEAL"; then NOISY=1; fi
}

TOTAL=$(( ROUNDS * ${#CONNS[@]} * ${#SERVERS[@]} ))
log "plan ($SCENARIO): servers=${SERVERS[*]} conns=${CONNS[*]} rounds=$ROUNDS duration=${DURATION}s warmup=${WARMUP}s pool=$POOL orders=$ORDERS$( (( FAR )) && echo " delay=${DELAY_MS}ms each way")"
log "      server on CPU(s) $SERVER_CPUS, PostgreSQL on $PG_CPUS, wrk -t1 on $WRK_CPUS; ~$(( TOTAL * (DURATION + WARMUP + 3) )) s without quiet waits; logs -> $TMP_DIR"

# ----------------------------------------------------------- idle holders ---
HOLD_PY="$BENCH_DIR/hold_idle.py"
HOLDER_MAX=25000 # per holder (one source address): well inside its ~28,000 ephemeral ports
HOLDER_PIDS=()
HOLDER_OUTS=()
IDLE_OPEN=0 IDLE_FAILED=0 IDLE_OPEN_S=0 IDLE_CLOSED=0

# start_holders COUNT PORT TAG: open COUNT idle connections from as many holder
# processes as the per-process open-files limit needs, each from its own
# 127.0.0.x; wait until all report READY. Sets IDLE_OPEN IDLE_FAILED IDLE_OPEN_S.
start_holders() {
    local want=$1 port=$2 tag=$3 per n i=0 out pid line deadline
    per=$(( NOFILE - 100 < HOLDER_MAX ? NOFILE - 100 : HOLDER_MAX ))
    HOLDER_PIDS=() HOLDER_OUTS=()
    while (( want > 0 )); do
        n=$(( want < per ? want : per ))
        out="$TMP_DIR/holder-$tag-$i.out"
        taskset -c "$WRK_CPUS" python3 "$HOLD_PY" --host "$HOST" --port "$port" --conns "$n" \
            --source "127.0.0.$(( 2 + i ))" --max-hold 300 >"$out" 2>"$out.err" &
        pid=$!
        track_pid "$pid"
        HOLDER_PIDS+=("$pid") HOLDER_OUTS+=("$out")
        want=$(( want - n )) i=$(( i + 1 ))
    done
    IDLE_OPEN=0 IDLE_FAILED=0 IDLE_OPEN_S=0
    for i in "${!HOLDER_PIDS[@]}"; do
        deadline=$(( SECONDS + 180 ))
        until grep -q '^READY ' "${HOLDER_OUTS[$i]}" 2>/dev/null; do
            kill -0 "${HOLDER_PIDS[$i]}" 2>/dev/null \
                || die "idle holder $i exited before it was ready: $(tail -n 5 "${HOLDER_OUTS[$i]}.err")"
            (( SECONDS < deadline )) || die "idle holder $i not ready after 180 s (see ${HOLDER_OUTS[$i]}.err)"
            isleep 0.5
        done
        line=$(grep -m1 '^READY ' "${HOLDER_OUTS[$i]}")
        [[ $line =~ opened=([0-9]+)\ failed=([0-9]+)\ open_s=([0-9.]+) ]] || die "unexpected holder output: $line"
        IDLE_OPEN=$(( IDLE_OPEN + BASH_REMATCH[1] )) IDLE_FAILED=$(( IDLE_FAILED + BASH_REMATCH[2] ))
        IDLE_OPEN_S=$(awk -v a="$IDLE_OPEN_S" -v b="${BASH_REMATCH[3]}" 'BEGIN { print (b > a) ? b : a }')
    done
}

# stop_holders: let every holder close its connections and exit (60 s max).
# Sets IDLE_CLOSED: idle connections the server had closed meanwhile.
stop_holders() {
    local i pid line deadline
    IDLE_CLOSED=0
    for pid in "${HOLDER_PIDS[@]}"; do kill -USR1 "$pid" 2>/dev/null || true; done
    for i in "${!HOLDER_PIDS[@]}"; do
        pid=${HOLDER_PIDS[$i]} deadline=$(( SECONDS + 60 ))
        until grep -q '^DONE ' "${HOLDER_OUTS[$i]}" 2>/dev/null || (( SECONDS >= deadline )); do
            kill -0 "$pid" 2>/dev/null || break
            isleep 0.2
        done
        stop_pid "$pid"
        line=$(grep -m1 '^DONE ' "${HOLDER_OUTS[$i]}" || true)
        if [[ $line =~ closed_by_server=([0-9]+) ]]; then IDLE_CLOSED=$(( IDLE_CLOSED + BASH_REMATCH[1] )); fi
    done
    HOLDER_PIDS=()
}

rss_kib() { echo $(( $(rss_bytes "$1") / 1024 )); }

# scale_round ROUND SERVER: one server's whole connection-scale measurement.
scale_round() {
    local round=$1 server=$2 conns=${CONNS[0]} limit room level n url base_rps ok_rps
    local rss_start rss_before rss_idle rss_loaded rss_after per_idle kept why
    pick_port "$HOST" "$port"; port=$NEXT_PORT
    url="http://$HOST:$port/orders"
    if (( QUIET_WAIT > 0 )); then wait_quiet "$QUIET_WAIT" "$QUIET_PCT" || true; fi
    log "round $round/$ROUNDS: $server, $conns active connections, idle levels ${IDLE_LEVELS[*]}, port $port"
    start_orders_server "$server" "$port" "$TMP_DIR/server-r$round-$server.log"
    limit=$(awk '/^Max open files/ { print $4 }' "/proc/$SERVER_PID/limits")
    room=$(( limit - conns - POOL - 64 ))
    log "  $server: open-files limit $limit (soft); room for $room idle connections beside $conns active, $POOL database and 64 spare"
    if (( WARMUP > 0 )); then
        run_wrk "$TMP_DIR/warmup-r$round-$server.txt" "$conns" "$WARMUP" "$url"
        (( WRK_RC == 0 )) || die "warm-up wrk failed (status $WRK_RC)"
    fi
    attempt=idle0
    NOISY=0
    measure "$round" "$server" "$conns" "$url"
    isleep 1
    rss_start=$(rss_kib "$SERVER_PID")
    base_rps=$(cut -d, -f12 <<<"$ROW")
    echo "$ROW,$limit,0,0,0,0,0,$rss_start,$rss_start,$rss_start,$rss_start,$rss_start,,1.000,ok" >>"$CSV"
    for level in "${IDLE_LEVELS[@]}"; do
        if [[ "$level" == max ]]; then n=$room; else n=$level; fi
        if (( n > room )); then
            log "  $n idle connections do not fit the open-files limit $limit; using $room"
            n=$room
        fi
        rss_before=$(rss_kib "$SERVER_PID") # the previous level's connections are gone by now
        log "  opening $n idle connections ($(( (n + HOLDER_MAX - 1) / HOLDER_MAX )) holder(s), from 127.0.0.2 on)"
        start_holders "$n" "$port" "r$round-$server-i$level"
        isleep 2
        if ! kill -0 "$SERVER_PID" 2>/dev/null; then
            # A baseline may not survive this; that is a result, reported as such.
            why=$(grep -m1 -iE 'cannot allocate|resource temporarily|failed to' "$TMP_DIR/server-r$round-$server.log" \
                || grep -m1 -iE 'error|panick|abort' "$TMP_DIR/server-r$round-$server.log" || true)
            why=$(tr -d ',"' <<<"$why" | cut -c1-160)
            log "  $server died while $n idle connections were opened ($IDLE_OPEN opened): ${why:-see its log}"
            stop_holders
            echo "$(date -Iseconds),$SCENARIO,$round,$server,$conns,$DURATION$(printf ',%.0s' {1..25}),$limit,$n,$IDLE_OPEN,$IDLE_FAILED,,$IDLE_OPEN_S,$rss_start,$rss_before,,,,,,\"died: ${why:-see its log}\"" >>"$CSV"
            stop_pid "$SERVER_PID"
            port=$(( port + 1 ))
            return 0
        fi
        rss_idle=$(rss_kib "$SERVER_PID")
        log "  $IDLE_OPEN idle open ($IDLE_FAILED failed) in ${IDLE_OPEN_S}s; RSS $(( rss_before / 1024 )) -> $(( rss_idle / 1024 )) MiB"
        attempt=idle$level
        measure "$round" "$server" "$conns" "$url"
        rss_loaded=$(rss_kib "$SERVER_PID")
        stop_holders
        isleep "$AFTER"
        rss_after=$(rss_kib "$SERVER_PID")
        ok_rps=$(cut -d, -f12 <<<"$ROW")
        per_idle=$(awk -v a="$rss_before" -v b="$rss_idle" -v n="$IDLE_OPEN" 'BEGIN { if (n > 0) printf "%.0f", (b - a) * 1024 / n }')
        kept=$(awk -v a="$ok_rps" -v b="$base_rps" 'BEGIN { if (b > 0) printf "%.3f", a / b }')
        log "  with them: kept $kept of the throughput; $per_idle B per idle connection; RSS after they closed $(( rss_after / 1024 )) MiB (start $(( rss_start / 1024 )) MiB); $IDLE_CLOSED closed by the server meanwhile"
        echo "$ROW,$limit,$n,$IDLE_OPEN,$IDLE_FAILED,$IDLE_CLOSED,$IDLE_OPEN_S,$rss_start,$rss_before,$rss_idle,$rss_loaded,$rss_after,$per_idle,$kept,ok" >>"$CSV"
    done
    stop_pid "$SERVER_PID"
    port=$(( port + 1 ))
    sleep 1
}

port=$PORT_BASE
if (( SCALE )); then
    for round in $(seq 1 "$ROUNDS"); do
        rotated_order "$round" "${SERVERS[@]}"
        for server in "${ORDER[@]}"; do scale_round "$round" "$server"; done
    done
else
for round in $(seq 1 "$ROUNDS"); do
    for conns in "${CONNS[@]}"; do
        rotated_order "$round" "${SERVERS[@]}" # each round starts with the next server
        for server in "${ORDER[@]}"; do
            for attempt in $(seq 0 "$RETRIES"); do
                pick_port "$HOST" "$port"; port=$NEXT_PORT
                url="http://$HOST:$port/orders"
                if (( QUIET_WAIT > 0 )); then wait_quiet "$QUIET_WAIT" "$QUIET_PCT" || true; fi
                log "round $round/$ROUNDS: $server, $conns connections, port $port$( (( attempt == 0 )) || echo " (retry $attempt)")"
                if [[ $server == pgbench* ]]; then
                    NOISY=0
                    measure_pgbench "$round" "$server" "$conns"
                    if (( NOISY && attempt < RETRIES )); then
                        echo "$ROW" >>"$DISCARDED_CSV"
                        log "  other load disturbed this measurement: discarded, measuring again"
                        continue
                    fi
                    echo "$ROW" >>"$CSV"
                    break
                fi
                start_orders_server "$server" "$port" "$TMP_DIR/server-r$round-$server-c$conns-a$attempt.log"
                if (( WARMUP > 0 )); then
                    run_wrk "$TMP_DIR/warmup-r$round-$server-c$conns-a$attempt.txt" "$conns" "$WARMUP" "$url"
                    (( WRK_RC == 0 )) || die "warm-up wrk failed (status $WRK_RC); see $TMP_DIR/warmup-r$round-$server-c$conns-a$attempt.txt"
                fi
                NOISY=0
                measure "$round" "$server" "$conns" "$url"
                stop_pid "$SERVER_PID"
                port=$((port + 1))
                sleep 1
                if (( NOISY && attempt < RETRIES )); then
                    echo "$ROW" >>"$DISCARDED_CSV"
                    log "  other load disturbed this measurement: discarded (kept in $DISCARDED_CSV), measuring again"
                    continue
                fi
                echo "$ROW" >>"$CSV"
                break
            done
        done
    done
done
fi

# ---------------------------------------------------------------- summary ---
if (( SCALE )); then
    ensure_python_matplotlib
    python3 "$BENCH_DIR/scale_report.py" "$CSV" "$TMP_DIR/$SCENARIO.md" "$TMP_DIR/$SCENARIO.png" "$NOISY_UTIL" \
        || die "scale_report.py failed"
    cp "$TMP_DIR/$SCENARIO.png" "$OUT_DIR/$SCENARIO.png" 2>/dev/null || log "warning: no plot (matplotlib missing?)"
else
python3 - "$CSV" "$TMP_DIR/$SCENARIO.md" "$SCENARIO" "$NOISY_UTIL" "$BENCH_DIR" <<'PY'
import csv, sys
src, dst, scenario, noisy_util, bench_dir = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4]), sys.argv[5]
rows = list(csv.DictReader(open(src)))
sys.path.insert(0, bench_dir)
from tables import fmt, med, num, rng
servers = list(dict.fromkeys(r["server"] for r in rows))
conns = sorted({int(r["connections"]) for r in rows})
g = {}
for r in rows:
    g.setdefault((r["server"], int(r["connections"])), []).append(r)
first = rows[0] if rows else {}
title = "GET /orders" + (f" with a far-away database (+{2 * int(first.get('delay_ms') or 0)} ms per round trip)" if scenario == "far" else "")
out = [f"# {title}", ""]
out.append(f"Server on CPU(s) {first.get('server_cpus', '?')} with PostgreSQL on {first.get('pg_cpus', '?')}, "
           f"wrk -t1 on {first.get('wrk_cpus', '?')}; {first.get('duration_s', '?')} s per run, "
           f"database pool {first.get('db_pool_size', '?')} connections per server; rev {first.get('rev', '?')}. "
           "Median over the rounds, (min – max) when there is more than one. "
           "2xx req/s counts successful responses only; errors = non-2xx responses (e.g. 503 when the pool wait times out) "
           "+ wrk socket errors (connect, read, write, timeout at 10 s). CPU per 10k = CPU-seconds per 10,000 requests "
           "(all responses, errors included), for the server (all threads) and for PostgreSQL (all its processes).")
out.append("")
out.append("| conns | server | 2xx req/s | p50 ms | p99 ms | max ms | errors | server CPU s/10k | PG CPU s/10k | server util | runs |")
out.append("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
for c in conns:
    for s in servers:
        rs = g.get((s, c), [])
        if not rs:
            continue
        col = lambda k: [num(r[k]) for r in rs]
        out.append(f"| {c} | {s} | {rng(col('ok_rps'))} | {fmt(med(col('p50_ms')), 2)} | {rng(col('p99_ms'), 1)} | "
                   f"{fmt(med(col('max_ms')), 1)} | {fmt(med(col('errors')))} | {fmt(med(col('server_cpu_s_per_10k_req')), 3)} | "
                   f"{fmt(med(col('pg_cpu_s_per_10k_req')), 3)} | {fmt(med(col('server_cpu_util')), 2)} | {len(rs)} |")
subjects = ("ringside", "admit64", "coalesce")
for subject in [s for s in subjects if s in servers]:
    others = [s for s in servers if s not in subjects or (subject != "ringside" and s == "ringside")]
    if not others:
        continue
    out += ["", f"Ratios of medians ({subject} / baseline): 2xx req/s (higher is better for {subject}), "
            f"p99 and server CPU per 10k requests (lower is better for {subject}); against PostgreSQL alone "
            "(pgbench) only req/s compares.", ""]
    out.append("| conns | " + " | ".join(f"req/s vs {o} | p99 vs {o} | CPU/10k vs {o}" for o in others) + " |")
    out.append("|---:|" + "---:|" * (3 * len(others)))
    for c in conns:
        cells = []
        for o in others:
            for k, d in (("ok_rps", 2), ("p99_ms", 2), ("server_cpu_s_per_10k_req", 2)):
                a = med([num(r[k]) for r in g.get((subject, c), [])])
                b = med([num(r[k]) for r in g.get((o, c), [])])
                cells.append("NA" if a is None or not b else f"{a / b:.{d}f}")
        out.append(f"| {c} | " + " | ".join(cells) + " |")
# Against PostgreSQL alone, round by round as well: PostgreSQL's own cost
# per query drifts between minutes on a shared VM by more than the margin
# asked for, and a round's runs follow one another within a minute or so.
alone = [s for s in ("pgbench", "pgbench-pipeline") if s in servers]
if "ringside" in servers and alone:
    by_round = {(r["server"], int(r["connections"]), r["round"]): r for r in rows}
    out += ["", "ringside against PostgreSQL alone, paired by round: req/s ratio (median, min – max over the "
            "rounds), and the model's figure PG / (PG + server), from ringside's own run's CPU per request "
            "(what the ratio would be, with both on one CPU, if PostgreSQL did the same work per query for "
            "ringside as for pgbench).", "",
            "| conns | " + " | ".join(f"req/s vs {o}, by round" for o in alone) + " | PG / (PG + server) |",
            "|---:|" + "---:|" * (len(alone) + 1)]
    for c in conns:
        rounds = dict.fromkeys(r["round"] for r in g.get(("ringside", c), []))
        cells = []
        for o in alone:
            pairs = [num(by_round[("ringside", c, rd)]["ok_rps"]) / num(by_round[(o, c, rd)]["ok_rps"])
                     for rd in rounds if (o, c, rd) in by_round and num(by_round[(o, c, rd)]["ok_rps"])]
            cells.append(rng(pairs, 2) if pairs else "NA")
        model = []
        for rd in rounds:
            r = by_round[("ringside", c, rd)]
            pg, srv = num(r["pg_cpu_s_per_10k_req"]), num(r["server_cpu_s_per_10k_req"])
            if pg and srv is not None:
                model.append(pg / (pg + srv))
        out.append(f"| {c} | " + " | ".join(cells) + f" | {rng(model, 2) if model else 'NA'} |")
noisy = [r for r in rows if (num(r["other_cpu_util"]) or 0) > noisy_util]
if noisy:
    out += ["", f"**Warning:** {len(noisy)} of {len(rows)} runs had other processes using more than "
            f"{noisy_util:.0%} of the machine (other_cpu_util in the CSV); their figures are suspect."]
proxy = [num(r["proxy_cpu_s"]) for r in rows if num(r["proxy_cpu_s"])]
if scenario == "far" and proxy:
    out += ["", f"Delay proxy CPU per run: median {fmt(med(proxy), 2)} s (on CPU(s) shared with wrk)."]
open(dst, "w").write("\n".join(out) + "\n")
PY
fi
printf '\nCommand: `bench/orders.sh%s`\n' "$ORIG_ARGS" >>"$TMP_DIR/$SCENARIO.md"
cp "$CSV" "$FINAL_CSV"
cp "$TMP_DIR/$SCENARIO.md" "$FINAL_MD"
log "wrote $FINAL_CSV and $FINAL_MD"
cat "$FINAL_MD"
