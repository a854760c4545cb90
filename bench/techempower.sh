#!/usr/bin/env bash
# bench/techempower.sh: the TechEmpower Framework Benchmarks test types, with
# ringside's TechEmpower binary (examples/techempower.rs) held against the
# published Rust implementations run on the same machine, same layout.
#
# The published implementations live in TechEmpower/FrameworkBenchmarks
# (frameworks/Rust/<name>). This repository does not vendor or rebuild them:
# build each as its own dockerfile says, and pass the binaries:
#
#   bench/techempower.sh --peer xitca-web=/path/xitca-web --peer may-minihttp=/path/may-minihttp
#
# Every peer must serve the TFB URLs on port 8080 (their default; another
# with --peer-port NAME=PORT, e.g. axum's 8000) and read the TFB database:
# host tfb-database, port 5432, user benchmarkdbuser, password
# benchmarkdbpass, database hello_world (also given as POSTGRES_URL, which
# some read). The script provides exactly that: a
# throwaway PostgreSQL cluster (scripts/pg-test-cluster) moved to port 5432
# (it must be free) with the role, the database and the standard `world`
# (10,000 rows) and `fortune` (12 rows) tables (`techempower setup`), and,
# when peers are given, a "127.0.0.1 tfb-database" line in /etc/hosts if
# none resolves (it says so; the line stays, as a hosts entry for a benchmark
# machine). Without --peer only ringside is measured.
#
# Layout (the issue's, for database scenarios on 2 cores): each server and
# PostgreSQL on CPU 0 (taskset -c 0; the servers size their worker count from
# the CPUs they may run on, so each runs one worker: ringside --cores 0-0),
# wrk -t1 on CPU 1.
#
# Tests (--tests, default "db fortunes plaintext json queries updates"), the
# TFB URLs and wrk settings (-H Host/Accept/Connection keep-alive headers,
# --timeout 8): db = /db, fortunes = /fortunes, json = /json, queries =
# /queries?queries=20, updates = /updates?queries=20, all at --conns (256);
# a peer is asked with the query parameter its benchmark_config.json
# declares (query_url, update_url): --peer-query-param, default q (as
# may-minihttp's and xitca-web's do: /queries?q=20), or it answers one row;
# plaintext = /plaintext with 16 requests pipelined per write
# (bench/pipeline.lua), at 256 connections too.
#
# Protocol: for each round, for each test, for each server (A B C, B C A,
# C A B, ...: rotated by round and test, so none always runs first): start
# it fresh, check the test's response (status 200, Server and Date headers,
# the body's shape: /db a JSON object with id and randomNumber, /fortunes
# the 13 rows with the one added at request time and <script> escaped, ...),
# then a --warmup s unrecorded wrk run and a --duration s recorded one,
# sampling the server's and PostgreSQL's CPU time and wrk's. Per run: req/s,
# p50/p99/max latency, errors (non-2xx + socket errors), server CPU-seconds
# per 10,000 requests, wrk's CPU use (a wrk near 1.0 of its core is the
# bottleneck, as for pipelined plaintext).
#
# Stolen runs: on a VM the host may take CPU time away (the "steal" column
# of /proc/stat). A recorded run during which more than --max-steal (default
# 0.10) of the machine's CPU time was stolen measured the host more than the
# server: it is discarded (its row kept in tmp/.../techempower-discarded.csv)
# and measured again after a fresh warm-up, up to --retries times (default
# 2), after which the last attempt is kept. The same rule holds for every
# server. Every kept run's steal share is in the CSV (steal_share), and the
# report counts the discarded runs. --max-steal 1 keeps every run.
#
# Output: bench/results/techempower.csv, techempower.md (medians, min–max,
# ratio to the best peer per test) and techempower.png; logs in
# bench/results/tmp/. Replaced only when a run completes.
#
# Build: ringside's binary is built the way the peers' dockerfiles build
# theirs, for the CPU it runs on (RUSTFLAGS="-C target-cpu=native", into
# target/native), so compiler flags are not a difference between them; with
# --portable-build it is the plain release build (target/release), as
# deploy/install.sh makes by default. The report names the build.
#
# --variant NAME="FLAGS" adds ringside run with extra flags as one more
# server (e.g. --variant ringside-pool1="--db-pool-size 1 --max-uploads-per-core 0"), to show what a
# setting does beside the default.
#
# --callgrind counts instead of timing: each server runs under valgrind's
# callgrind with its cache simulation, and each recorded run gives the
# server's user-space instructions, data reads and writes, and simulated
# first-level and last-level data-cache misses per request (kernel work is
# not counted). The counts do not depend on the machine's noise, so they can
# tell a change of a few percent apart where times cannot. ringside is built
# with RUSTFLAGS="-C target-cpu=x86-64-v3" (into target/x86-64-v3), since
# valgrind cannot decode every instruction `native` may pick (AMD's SSE4a);
# build the peers with the same flag for a like-for-like count. Defaults in
# this mode: 1 round, 5 s runs, tests plaintext json, 64 connections.
# Output: techempower-callgrind.csv and .md (with each server's costliest
# functions per request); valgrind is installed with apt-get when missing.
#
# Usage: bench/techempower.sh [--peer NAME=BINARY]... [--peer-port NAME=PORT]...
#                             [--variant NAME="FLAGS"]... [--peer-query-param NAME]
#                             [--tests "db fortunes ..."]
#                             [--rounds N] [--duration SECS] [--warmup SECS]
#                             [--conns N] [--db-pool-size N] [--quick]
#                             [--quiet-wait SECS] [--no-build] [--portable-build]
#                             [--max-steal FRACTION] [--retries N]
#                             [--callgrind] [--out DIR]
#   --quick: 1 round, 5 s runs, 1 s warm-up, no retries, tests db fortunes plaintext.
set -euo pipefail

# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit "${1:-0}"; }

TARGET_BASE="${CARGO_TARGET_DIR:-$ROOT_DIR/target}"
ORIG_ARGS=$(printf ' %q' "$@")
PEERS=()
PEER_PORTS=()
VARIANTS=()
PEER_QUERY_PARAM=q
TESTS_ARG=""
ROUNDS=3
DURATION=10
WARMUP=3
CONNS=256
POOL=""
QUICK=0
CALLGRIND=0
QUIET_WAIT=300
QUIET_PCT=10
NOISY_UTIL=0.05
MAX_STEAL=0.10
RETRIES=2
BUILD=1
NATIVE=1
OUT_DIR="$BENCH_DIR/results"
SERVER_CPUS=${SERVER_CPUS:-0}
PG_CPUS=${PG_CPUS:-0}
WRK_CPUS=${WRK_CPUS:-1}
PEER_PORT=8080
PG_TFB_PORT=5432

while (( $# )); do
    case $1 in
        --peer) PEERS+=("${2:?}"); shift ;;
        --peer-port) PEER_PORTS+=("${2:?}"); shift ;;
        --peer-query-param) PEER_QUERY_PARAM=${2:?}; shift ;;
        --variant) VARIANTS+=("${2:?}"); shift ;;
        --tests) TESTS_ARG=${2:?}; shift ;;
        --rounds) ROUNDS=${2:?}; shift ;;
        --duration) DURATION=${2:?}; shift ;;
        --warmup) WARMUP=${2:?}; shift ;;
        --conns) CONNS=${2:?}; shift ;;
        --db-pool-size) POOL=${2:?}; shift ;;
        --quick) QUICK=1 ;;
        --quiet-wait) QUIET_WAIT=${2:?}; shift ;;
        --no-build) BUILD=0 ;;
        --portable-build) NATIVE=0 ;;
        --callgrind) CALLGRIND=1 ;;
        --max-steal) MAX_STEAL=${2:?}; shift ;;
        --retries) RETRIES=${2:?}; shift ;;
        --out) OUT_DIR=${2:?}; shift ;;
        -h | --help) usage 0 ;;
        *) echo "unknown argument: $1" >&2; usage 2 ;;
    esac
    shift
done
if (( QUICK )); then
    ROUNDS=1 DURATION=5 WARMUP=1
    grep -q -- '--retries' <<<"$ORIG_ARGS" || RETRIES=0
    TESTS_ARG=${TESTS_ARG:-db fortunes plaintext}
fi
if (( CALLGRIND )); then
    # Explicit flags win over these defaults.
    grep -q -- '--rounds' <<<"$ORIG_ARGS" || ROUNDS=1
    grep -q -- '--duration' <<<"$ORIG_ARGS" || DURATION=5
    grep -q -- '--conns' <<<"$ORIG_ARGS" || CONNS=64
    TESTS_ARG=${TESTS_ARG:-plaintext json}
    if ! command -v valgrind >/dev/null 2>&1; then
        log "valgrind missing; installing it with apt-get"
        apt-get install -y valgrind >&2 || { apt-get update >&2 && apt-get install -y valgrind >&2; } || die "could not install valgrind"
    fi
fi
TESTS_ARG=${TESTS_ARG:-db fortunes plaintext json queries updates}
read -ra TESTS <<<"${TESTS_ARG//,/ }"

is_uint() { [[ "$1" =~ ^[0-9]+$ ]] && (( $1 > 0 )); }
is_uint "$ROUNDS" || die "--rounds must be a positive integer"
is_uint "$DURATION" || die "--duration must be a positive integer (seconds)"
[[ "$WARMUP" =~ ^[0-9]+$ ]] || die "--warmup must be a non-negative integer (seconds)"
is_uint "$CONNS" || die "--conns must be a positive integer"
[[ -z "$POOL" ]] || is_uint "$POOL" || die "--db-pool-size must be a positive integer"
[[ "$MAX_STEAL" =~ ^(0(\.[0-9]+)?|1(\.0*)?)$ ]] || die "--max-steal must be a fraction from 0 to 1"
[[ "$RETRIES" =~ ^[0-9]+$ ]] || die "--retries must be a non-negative integer"
for t in "${TESTS[@]}"; do
    case $t in db | fortunes | plaintext | json | queries | updates) ;; *) die "unknown test '$t'" ;; esac
done
declare -A PEER_BIN=() PEER_PORT_OF=() VARIANT_FLAGS=()
SERVERS=(ringside)
for v in ${VARIANTS[@]+"${VARIANTS[@]}"}; do
    name=${v%%=*}
    [[ "$name" =~ ^ringside-[A-Za-z0-9._-]+$ && "$name" != "$v" ]] || die "--variant takes ringside-NAME=\"FLAGS\", got '$v'"
    VARIANT_FLAGS[$name]=${v#*=}
    SERVERS+=("$name")
done
for p in ${PEERS[@]+"${PEERS[@]}"}; do
    name=${p%%=*} bin=${p#*=}
    [[ "$name" =~ ^[A-Za-z0-9._-]+$ && "$name" != ringside && "$name" != "$p" ]] || die "--peer takes NAME=BINARY, got '$p'"
    [[ -x "$bin" ]] || die "--peer $name: $bin is not an executable file"
    PEER_BIN[$name]=$bin
    PEER_PORT_OF[$name]=$PEER_PORT
    SERVERS+=("$name")
done
for p in ${PEER_PORTS[@]+"${PEER_PORTS[@]}"}; do
    name=${p%%=*} port=${p#*=}
    [[ -n "${PEER_BIN[$name]:-}" ]] || die "--peer-port $p: no --peer named $name"
    is_uint "$port" || die "--peer-port takes NAME=PORT, got '$p'"
    PEER_PORT_OF[$name]=$port
done

check_machine
need_cmd psql "apt-get install postgresql-client"
need_cmd curl
raise_nofile
if ! command -v wrk >/dev/null 2>&1; then
    log "wrk missing; installing it with apt-get"
    apt-get install -y wrk >&2 || { apt-get update >&2 && apt-get install -y wrk >&2; } || die "could not install wrk"
fi
port_in_use 127.0.0.1 "$PG_TFB_PORT" && die "port $PG_TFB_PORT is in use: the TFB database must be on it (stop what holds it)"
if (( ${#SERVERS[@]} > 1 )); then
    for name in "${!PEER_PORT_OF[@]}"; do
        port_in_use 127.0.0.1 "${PEER_PORT_OF[$name]}" && die "port ${PEER_PORT_OF[$name]} is in use: $name listens on it"
    done
    if ! getent hosts tfb-database >/dev/null; then
        [[ -w /etc/hosts ]] || die "tfb-database does not resolve; add '127.0.0.1 tfb-database' to /etc/hosts"
        echo "127.0.0.1 tfb-database" >>/etc/hosts
        log "added '127.0.0.1 tfb-database' to /etc/hosts (the peers connect to that host)"
    fi
fi

# ---------------------------------------------------------------- cleanup ---
install_cluster_cleanup_trap # stops what this script started, the cluster in $PG_DIR too

if (( CALLGRIND )); then
    BUILD_TARGET_DIR="$TARGET_BASE/x86-64-v3" BUILD_RUSTFLAGS="-C target-cpu=x86-64-v3"
    BUILD_NAME='release, RUSTFLAGS="-C target-cpu=x86-64-v3" (for valgrind; build the peers the same way)'
elif (( NATIVE )); then
    BUILD_TARGET_DIR="$TARGET_BASE/native" BUILD_RUSTFLAGS="-C target-cpu=native"
    BUILD_NAME='release, RUSTFLAGS="-C target-cpu=native" (as the peers are built)'
else
    BUILD_TARGET_DIR="$TARGET_BASE" BUILD_RUSTFLAGS="${RUSTFLAGS:-}"
    BUILD_NAME="release, portable (no target-cpu)"
fi
TE_BIN="$BUILD_TARGET_DIR/release/examples/techempower"
if (( BUILD )); then
    need_cmd cargo
    log "building examples/techempower ($BUILD_NAME)"
    (cd "$ROOT_DIR" && RUSTFLAGS="$BUILD_RUSTFLAGS" CARGO_TARGET_DIR="$BUILD_TARGET_DIR" \
        timeout 1800 nice -n 10 cargo build --release --locked --example techempower >&2) \
        || die "techempower build failed"
fi
[[ -x "$TE_BIN" ]] || die "no binary at $TE_BIN (drop --no-build)"

RUN_ID="techempower-$(date +%Y%m%d-%H%M%S)"
TMP_DIR="$OUT_DIR/tmp/$RUN_ID"
mkdir -p "$TMP_DIR"
TIMES_FILE="$TMP_DIR/.times"
CSV="$TMP_DIR/techempower.csv"
DISCARDED_CSV="$TMP_DIR/techempower-discarded.csv"
REV=$(repo_rev)

# ------------------------------------------------------------- PostgreSQL ---
PG_DIR="/tmp/ringside-tfb-$$"
log "starting a throwaway PostgreSQL cluster in $PG_DIR"
PG_ENV=$("$ROOT_DIR/scripts/pg-test-cluster" start "$PG_DIR") || die "could not start PostgreSQL"
pg_env() { sed -n "s/^$1=//p" <<<"$PG_ENV"; }
PGDATA_DIR=$(pg_env RINGSIDE_PG_DATA)
PG_BINDIR=$(pg_env RINGSIDE_PG_BINDIR)
as_postgres() { if (( EUID == 0 )); then runuser -u postgres -- "$@"; else "$@"; fi; }
# The TFB setup: port 5432, md5 passwords for benchmarkdbuser, room for the
# peers' connections (TFB's own configuration allows 2,000).
psql -X -q -v ON_ERROR_STOP=1 -h "$PG_DIR" -p "$(pg_env PGPORT)" -U postgres -d postgres >&2 <<SQL || die "TFB role/database setup failed"
ALTER SYSTEM SET port = $PG_TFB_PORT;
ALTER SYSTEM SET max_connections = 200;
SET password_encryption = 'md5';
CREATE ROLE benchmarkdbuser LOGIN PASSWORD 'benchmarkdbpass';
CREATE DATABASE hello_world OWNER benchmarkdbuser;
SQL
printf 'host hello_world benchmarkdbuser 127.0.0.1/32 md5\n' >>"$PGDATA_DIR/pg_hba.conf"
as_postgres "$PG_BINDIR/pg_ctl" -D "$PGDATA_DIR" -l "$PG_DIR/server.log" -w -t 60 restart >/dev/null \
    || die "PostgreSQL did not restart on port $PG_TFB_PORT (see $PG_DIR/server.log)"
PG_PID=$(head -n 1 "$PGDATA_DIR/postmaster.pid")
for p in "$PG_PID" $(pgrep -P "$PG_PID" || true); do
    taskset -a -p -c "$PG_CPUS" "$p" >/dev/null || die "cannot pin PostgreSQL process $p"
done
PEERS_DB_URL="postgres://benchmarkdbuser:benchmarkdbpass@tfb-database/hello_world"
TFB_URL="postgres://benchmarkdbuser:benchmarkdbpass@127.0.0.1:$PG_TFB_PORT/hello_world?sslmode=disable"
DATABASE_URL="$TFB_URL" "$TE_BIN" setup >&2 || die "techempower setup (world, fortune) failed"
log "PostgreSQL $PG_PID on 127.0.0.1:$PG_TFB_PORT (hello_world: world 10,000 rows, fortune 12), pinned to CPU(s) $PG_CPUS"

# ---------------------------------------------------------------- servers ---
SERVER_PID=""
SERVER_PORT=""
# In --callgrind mode every server runs under callgrind; its counts are
# dumped around each recorded run (callgrind_dump).
VALGRIND=()
start_te_server() { # name log
    local name=$1 logf=$2 rcores=$SERVER_CPUS i
    (( CALLGRIND )) && VALGRIND=(valgrind --tool=callgrind --cache-sim=yes --compress-strings=no
        --compress-pos=no "--callgrind-out-file=$TMP_DIR/callgrind-$name.%p")
    [[ "$rcores" =~ ^[0-9]+$ ]] && rcores="$rcores-$rcores" # ringside: a bare number is a COUNT
    if [[ $name == ringside || -n "${VARIANT_FLAGS[$name]:-}" ]]; then
        pick_port 127.0.0.1 18680; SERVER_PORT=$NEXT_PORT
        local -a extra=()
        [[ -n "$POOL" ]] && extra=(--db-pool-size "$POOL")
        # shellcheck disable=SC2206 # the variant's flags are split on purpose
        [[ $name != ringside ]] && extra+=(${VARIANT_FLAGS[$name]})
        DATABASE_URL="$TFB_URL" taskset -c "$SERVER_CPUS" ${VALGRIND[@]+"${VALGRIND[@]}"} "$TE_BIN" serve --listen "127.0.0.1:$SERVER_PORT" \
            --cores "$rcores" ${extra[@]+"${extra[@]}"} >"$logf" 2>&1 &
    else
        SERVER_PORT=${PEER_PORT_OF[$name]}
        port_in_use 127.0.0.1 "$SERVER_PORT" && die "port $SERVER_PORT is still in use"
        (cd "$TMP_DIR" && POSTGRES_URL="$PEERS_DB_URL" exec taskset -c "$SERVER_CPUS" ${VALGRIND[@]+"${VALGRIND[@]}"} "${PEER_BIN[$name]}") >"$logf" 2>&1 &
    fi
    SERVER_PID=$!
    track_pid "$SERVER_PID"
    for i in $(seq 1 150); do
        kill -0 "$SERVER_PID" 2>/dev/null || die "$name exited at start; its log ($logf):
$(tail -n 20 "$logf")"
        [[ "$(curl -s --max-time 2 -o /dev/null -w '%{http_code}' "http://127.0.0.1:$SERVER_PORT/db" || true)" == 200 ]] && break
        sleep 0.2
    done
    (( i < 150 )) || die "$name did not answer /db with 200 within 30 s; log: $logf"
}

# The query parameter of the server being measured (ringside's TFB URLs
# use `queries`; a peer's are what its benchmark_config.json declares).
QUERY_PARAM=queries
test_path() {
    case $1 in
        db) echo /db ;;
        fortunes) echo /fortunes ;;
        plaintext) echo /plaintext ;;
        json) echo /json ;;
        queries) echo "/queries?$QUERY_PARAM=20" ;;
        updates) echo "/updates?$QUERY_PARAM=20" ;;
    esac
}

# Check every test's answer against the TFB rules before measuring; prints
# the tests that pass. A test a peer does not serve (404) or answers against
# the rules is left out for that server, and the log says why.
verify_server() { # name test...
    python3 - "$1" "$SERVER_PORT" "$QUERY_PARAM" "${@:2}" <<'PY'

import http.client, json, sys
name, port, qparam, tests = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4:]
paths = {"db": "/db", "fortunes": "/fortunes", "plaintext": "/plaintext", "json": "/json",
         "queries": f"/queries?{qparam}=20", "updates": f"/updates?{qparam}=20"}
bad = []
for t in tests:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    c.request("GET", paths[t])
    r = c.getresponse()
    body = r.read()
    h = {k.lower(): v for k, v in r.getheaders()}
    if r.status != 200:
        bad.append(f"{t}: status {r.status}")
        continue
    if "server" not in h or "date" not in h:
        bad.append(f"{t}: Server or Date header missing")
    try:
        if t == "plaintext":
            assert body == b"Hello, World!", body[:40]
        elif t == "json":
            assert json.loads(body) == {"message": "Hello, World!"}
        elif t == "db":
            # Key case is not checked, as TFB's own verifier lowercases keys.
            w = {k.lower(): v for k, v in json.loads(body).items()}
            assert set(w) == {"id", "randomnumber"} and 1 <= w["id"] <= 10000, w
        elif t in ("queries", "updates"):
            ws = [{k.lower(): v for k, v in w.items()} for w in json.loads(body)]
            assert len(ws) == 20 and all(set(w) == {"id", "randomnumber"} for w in ws), ws[:2]
        elif t == "fortunes":
            text = body.decode("utf-8")
            assert text.count("<tr>") == 14, "expected 12 fortunes + 1 added + header row"
            assert "Additional fortune added at request time." in text
            assert "&lt;script&gt;" in text and "フレームワークのベンチマーク" in text
            assert "text/html" in h.get("content-type", "")
    except (AssertionError, ValueError) as e:
        bad.append(f"{t}: {e}")
for b in bad:
    print(f"techempower.sh: {name}: {b}: left out for this server", file=sys.stderr)
failed = {b.split(":")[0] for b in bad}
print(" ".join(t for t in tests if t not in failed))
PY
}

WRK_RC=0
WRK_CPU_S=0
WRK_TIMEOUT=$(( DURATION + 30 ))
run_wrk() { # log test duration
    local logf=$1 t=$2 dur=$3 url pid before
    local -a extra=()
    url="http://127.0.0.1:$SERVER_PORT$(test_path "$t")"
    [[ $t == plaintext ]] && extra=(-s "$BENCH_DIR/pipeline.lua")
    children_ms; before=$CHILDREN_MS
    timeout -k 5 "$WRK_TIMEOUT" taskset -c "$WRK_CPUS" wrk -t1 -c"$CONNS" -d"${dur}s" --timeout 8 --latency \
        -H 'Host: tfb-server' -H 'Accept: */*' -H 'Connection: keep-alive' ${extra[@]+"${extra[@]}"} "$url" \
        $([[ $t == plaintext ]] && echo -- 16) >"$logf" 2>&1 &
    pid=$!
    track_pid "$pid"
    WRK_RC=0
    wait "$pid" || WRK_RC=$?
    untrack_pid "$pid"
    children_ms
    WRK_CPU_S=$(awk -v d=$(( CHILDREN_MS - before )) 'BEGIN { printf "%.3f", d / 1000 }')
}

# Dumps the server's counts since the last dump (callgrind zeroes them on a
# dump); with a label, records the new dump file against the run's requests,
# read from the wrk log by callgrind_report.py.
CALLGRIND_RUNS="$TMP_DIR/callgrind-runs.txt"
callgrind_dump() { # [round,server,test]
    local before after f
    before=$(find "$TMP_DIR" -maxdepth 1 -name "callgrind-*.$SERVER_PID.*" | wc -l)
    timeout 60 callgrind_control -d "$SERVER_PID" >/dev/null 2>&1 || die "callgrind_control -d $SERVER_PID failed"
    after=$(find "$TMP_DIR" -maxdepth 1 -name "callgrind-*.$SERVER_PID.*" | wc -l)
    (( after > before )) || die "callgrind wrote no dump for $SERVER_PID"
    f=$(find "$TMP_DIR" -maxdepth 1 -name "callgrind-*.$SERVER_PID.*" -printf '%T@ %p\n' | sort -n | tail -n 1 | cut -d' ' -f2-)
    if (( $# )); then echo "$1,$TMP_DIR/wrk-r${1%%,*}-$(cut -d, -f2 <<<"$1")-${1##*,}.txt,$f" >>"$CALLGRIND_RUNS"; fi
}

echo "timestamp,round,server,test,connections,pipeline_depth,duration_s,requests,rps,ok_rps,p50_ms,p99_ms,max_ms,non2xx,socket_errors,server_cpu_s,server_cpu_util,server_cpu_s_per_10k_req,pg_cpu_s,wrk_cpu_util,other_cpu_util,steal_share,rev" | tee "$DISCARDED_CSV" >"$CSV"

# Measures one run; its CSV row is left in MEASURED_ROW and whether the host
# stole more than --max-steal of the machine during it in STOLEN (1 or 0).
MEASURED_ROW=""
STOLEN=0
measure() { # round server test attempt
    local round=$1 server=$2 t=$3 attempt=$4 logf c0 c1 g0 g1 t0 t1 requests rps p50 p99 max sockerr non2xx row
    local -a m0 m1
    logf="$TMP_DIR/wrk-r$round-$server-$t.txt"
    (( attempt == 0 )) || logf="$TMP_DIR/wrk-r$round-$server-$t-a$attempt.txt"
    proc_stat_ticks; m0=("${PSTAT[@]}")
    (( CALLGRIND )) && callgrind_dump # what came before is not counted
    c0=$(cpu_ticks "$SERVER_PID"); g0=$(pg_ticks "$PG_PID"); t0=$(now_s)
    run_wrk "$logf" "$t" "$DURATION"
    t1=$(now_s); c1=$(cpu_ticks "$SERVER_PID"); g1=$(pg_ticks "$PG_PID")
    (( CALLGRIND )) && callgrind_dump "$round,$server,$t"
    proc_stat_ticks; m1=("${PSTAT[@]}")
    (( WRK_RC == 0 )) || die "wrk failed (status $WRK_RC): $(tail -n 5 "$logf")"
    requests=$(awk '/ requests in / { print $1; exit }' "$logf")
    rps=$(awk '/^Requests\/sec:/ { print $2; exit }' "$logf")
    p50=$(wrk_time_ms "$(awk '$1 == "50%" { print $2; exit }' "$logf")")
    p99=$(wrk_time_ms "$(awk '$1 == "99%" { print $2; exit }' "$logf")")
    max=$(wrk_time_ms "$(awk '$1 == "Latency" && NF >= 4 { print $4; exit }' "$logf")")
    sockerr=$(awk '/Socket errors:/ { n = 0; for (i = 1; i < NF; i++) if ($i ~ /^(connect|read|write|timeout)$/) n += $(i + 1) + 0; print n; exit }' "$logf")
    non2xx=$(awk '/Non-2xx or 3xx responses:/ { print $NF; exit }' "$logf")
    [[ -n "$requests" && -n "$rps" ]] && (( requests > 0 )) || die "no request completed; see $logf"
    row=$(awk -v ts="$(date -Iseconds)" -v round="$round" -v server="$server" -v t="$t" -v conns="$CONNS" \
        -v depth="$([[ $t == plaintext ]] && echo 16 || echo 1)" -v dur="$DURATION" -v n="$requests" -v rps="$rps" \
        -v p50="$p50" -v p99="$p99" -v max="$max" -v nx="${non2xx:-0}" -v se="${sockerr:-0}" \
        -v c0="$c0" -v c1="$c1" -v g0="$g0" -v g1="$g1" -v hz="$CLK_TCK" -v t0="$t0" -v t1="$t1" \
        -v w="$WRK_CPU_S" -v us=$(( m1[0] - m0[0] )) -v ncpu="$(nproc --all)" -v scores="$(cpu_count "$SERVER_CPUS")" \
        -v st=$(( m1[2] - m0[2] )) -v tot=$(( m1[3] - m0[3] )) -v rev="$REV" 'BEGIN {
            cpu = (c1 - c0) / hz; pg = (g1 - g0) / hz; wall = t1 - t0
            other = us / hz - cpu - pg - w; if (other < 0) other = 0
            ok = n - nx; if (ok < 0) ok = 0
            stolen = 0; if (tot > 0) stolen = st / tot
            printf "%s,%d,%s,%s,%d,%d,%d,%d,%.2f,%.2f,%s,%s,%s,%d,%d,%.2f,%.3f,%.6f,%.2f,%.3f,%.3f,%.3f,%s\n",
                ts, round, server, t, conns, depth, dur, n, rps, rps * ok / n, p50, p99, max, nx, se,
                cpu, cpu / (wall * scores), cpu / n * 10000, pg, w / wall, other / (wall * ncpu),
                stolen, rev }')
    # (CPU per 10,000 requests to six decimals: a pipelined request costs under
    # 0.01 s per 10,000, where four decimals kept two significant digits.)
    MEASURED_ROW=$row
    local f
    IFS=',' read -ra f <<<"$row"
    log "  $server $t: $(printf '%.0f' "${f[9]}") ok req/s, p99 ${p99} ms, errors $(( ${non2xx:-0} + ${sockerr:-0} )), server CPU ${f[17]} s/10k (util ${f[16]}), wrk util ${f[19]}, other ${f[20]}, stolen ${f[21]}"
    STOLEN=0
    if stolen_run "${f[21]}" "$MAX_STEAL"; then STOLEN=1; fi
}

log "plan: servers ${SERVERS[*]}; tests ${TESTS[*]}; $ROUNDS round(s), ${DURATION}s runs (+${WARMUP}s warm-up), $CONNS connections"
log "      servers and PostgreSQL on CPU(s) $SERVER_CPUS/$PG_CPUS, wrk -t1 on $WRK_CPUS; logs -> $TMP_DIR"
# Interleaved per test, not per server: each test's runs of the servers
# follow one another (each started fresh for it), so a noisy machine's drift
# over the minutes a round takes falls on every server's run of a test alike
# rather than on whichever server ran in the slow minutes.
for round in $(seq 1 "$ROUNDS"); do
    for ti in "${!TESTS[@]}"; do
        t=${TESTS[$ti]}
        # Rotated by round and test: no server always runs a test first.
        rotated_order "$(( round + ti ))" "${SERVERS[@]}"
        for server in "${ORDER[@]}"; do
            if (( QUIET_WAIT > 0 )); then wait_quiet "$QUIET_WAIT" "$QUIET_PCT" || true; fi
            log "round $round/$ROUNDS, $t: $server"
            if [[ $server == ringside || -n "${VARIANT_FLAGS[$server]:-}" ]]; then
                QUERY_PARAM=queries
            else
                QUERY_PARAM=$PEER_QUERY_PARAM
            fi
            start_te_server "$server" "$TMP_DIR/server-r$round-$server-$t.log"
            served=$(verify_server "$server" "$t")
            [[ $server != ringside* || $served == "$t" ]] || die "$server fails the TFB rules (see above)"
            if [[ $served == "$t" ]]; then
                for attempt in $(seq 0 "$RETRIES"); do
                    if (( WARMUP > 0 )); then run_wrk "$TMP_DIR/warmup-r$round-$server-$t-a$attempt.txt" "$t" "$WARMUP"; fi
                    measure "$round" "$server" "$t" "$attempt"
                    if (( STOLEN && !CALLGRIND && attempt < RETRIES )); then
                        echo "$MEASURED_ROW" >>"$DISCARDED_CSV"
                        log "  discarded (kept in $DISCARDED_CSV), measuring again"
                        continue
                    fi
                    echo "$MEASURED_ROW" >>"$CSV"
                    break
                done
            fi
            stop_pid "$SERVER_PID"
            sleep 1
        done
    done
done

if (( CALLGRIND )); then
    python3 "$BENCH_DIR/callgrind_report.py" "$CALLGRIND_RUNS" "$TMP_DIR/techempower-callgrind.csv" \
        "$TMP_DIR/techempower-callgrind.md" || die "callgrind_report.py failed"
    printf '\nringside build: %s, rev %s. %d connections, 16 requests per write for plaintext, %d s per run.\n\nCommand: `bench/techempower.sh%s`\n' \
        "$BUILD_NAME" "$REV" "$CONNS" "$DURATION" "$ORIG_ARGS" >>"$TMP_DIR/techempower-callgrind.md"
    cp "$TMP_DIR/techempower-callgrind.csv" "$TMP_DIR/techempower-callgrind.md" "$OUT_DIR/"
    log "wrote $OUT_DIR/techempower-callgrind.csv and techempower-callgrind.md (times under valgrind mean nothing: not reported)"
    cat "$OUT_DIR/techempower-callgrind.md"
    exit 0
fi
ensure_python_matplotlib
python3 "$BENCH_DIR/techempower_report.py" "$CSV" "$TMP_DIR/techempower.md" "$TMP_DIR/techempower.png" "$NOISY_UTIL" \
    "$DISCARDED_CSV" "$MAX_STEAL" \
    || die "techempower_report.py failed"
printf '\nringside build: %s.\n\nCommand: `bench/techempower.sh%s`\n' "$BUILD_NAME" "$ORIG_ARGS" >>"$TMP_DIR/techempower.md"
cp "$CSV" "$OUT_DIR/techempower.csv"
cp "$TMP_DIR/techempower.md" "$OUT_DIR/techempower.md"
[[ -f "$TMP_DIR/techempower.png" ]] && cp "$TMP_DIR/techempower.png" "$OUT_DIR/techempower.png"
log "wrote $OUT_DIR/techempower.csv and techempower.md"
cat "$OUT_DIR/techempower.md"
