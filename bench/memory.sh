#!/usr/bin/env bash
# bench/memory.sh: does memory come back after bursts, and which allocator?
#
# The same ringside binary three ways: with glibc's malloc (and ringside's own
# malloc_trim after a fall in connections), and with jemalloc and mimalloc
# preloaded (LD_PRELOAD of Debian's libjemalloc2 and libmimalloc2.0, default
# settings; installed with apt-get when missing). Per round and allocator
# (alternated), on a freshly started server (ringside --cores 0-0 and
# PostgreSQL on CPU 0, the clients on CPU 1):
#   1. other load first: wrk -c256 on /orders for --duration s (its req/s is
#      the allocator's throughput figure), then 3 s of quiet: the steady RSS;
#   2. --conns (10,000) idle keep-alive connections (bench/hold_idle.py):
#      bytes per idle connection; then all closed at once, RSS sampled every
#      50 ms meanwhile (the peak while they close) and 4 s later (after close);
#   3. --bursts (3) bursts of wrk -c2000 -d3s on /orders, RSS 4 s after each.
# Targets (issue: memory returns after bursts): RSS after the connections
# close and after the bursts within 10 % or 2 MiB (the larger) of the steady
# figure; the peak while 10,000 close at most 1.5x the RSS with them open.
#
# Usage: bench/memory.sh [--rounds N] [--allocators glibc,jemalloc,mimalloc]
#                        [--conns N] [--bursts N] [--duration SECS] [--quick]
#                        [--no-build] [--out DIR]
#   --quick: 1 round, 4 s load, 5,000 connections, 2 bursts (a check)
set -euo pipefail
source "$(dirname "$0")/lib.sh"

ROUNDS=2 ALLOCATORS=glibc,jemalloc,mimalloc CONNS=10000 BURSTS=3 DURATION=8
BUILD=1 OUT_DIR="$BENCH_DIR/results" HOST=127.0.0.1
SERVER_CPUS=0 PG_CPUS=0 CLIENT_CPUS=1
ARGS="$*"
usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit "${1:-0}"; }
while (($#)); do
    case $1 in
        --rounds) ROUNDS=${2:?}; shift ;;
        --allocators) ALLOCATORS=${2:?}; shift ;;
        --conns) CONNS=${2:?}; shift ;;
        --bursts) BURSTS=${2:?}; shift ;;
        --duration) DURATION=${2:?}; shift ;;
        --quick) ROUNDS=1 DURATION=4 CONNS=5000 BURSTS=2 ;;
        --no-build) BUILD=0 ;;
        --out) OUT_DIR=${2:?}; shift ;;
        -h | --help) usage 0 ;;
        *) echo "unknown argument: $1" >&2; usage 2 ;;
    esac
    shift
done
for v in ROUNDS CONNS BURSTS DURATION; do
    [[ "${!v}" =~ ^[0-9]+$ ]] || die "--${v,,} must be a whole number"
done

check_machine
need_cmd wrk "apt-get install wrk"
need_cmd psql
raise_nofile
(( CONNS + 500 <= $(ulimit -n) )) || die "--conns $CONNS needs more open files than $(ulimit -n)"

# The preloadable allocators, from Debian's packages.
LIBDIR=/usr/lib/$(gcc -print-multiarch 2>/dev/null || echo x86_64-linux-gnu)
declare -A PRELOAD=([glibc]="" [jemalloc]="$LIBDIR/libjemalloc.so.2" [mimalloc]="$LIBDIR/libmimalloc.so.2")
declare -A PACKAGE=([jemalloc]=libjemalloc2 [mimalloc]=libmimalloc2.0)
IFS=',' read -ra ALLOCS <<<"$ALLOCATORS"
for a in "${ALLOCS[@]}"; do
    [[ -v "PRELOAD[$a]" ]] || die "unknown allocator $a (glibc, jemalloc, mimalloc)"
    if [[ -n "${PRELOAD[$a]}" && ! -e "${PRELOAD[$a]}" ]]; then
        log "$a missing; installing ${PACKAGE[$a]} with apt-get"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${PACKAGE[$a]}" >&2 \
            || { apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${PACKAGE[$a]}" >&2; } \
            || die "could not install ${PACKAGE[$a]}"
    fi
done

install_cluster_cleanup_trap
if (( BUILD )); then build_ringside; fi
check_binaries ringside
snapshot_binaries ringside
mkdir -p "$OUT_DIR"
TMP_DIR="$OUT_DIR/tmp/memory-$(date +%Y%m%d-%H%M%S)"
mkdir -p "$TMP_DIR"
CSV="$TMP_DIR/memory.csv"
REV=$(repo_rev)
start_bench_cluster "$PG_CPUS" ringside_memory 1000

bursts_header=$(seq -s, -f 'after_burst%g_kib' 1 "$BURSTS")
echo "round,allocator,orders_rps,steady_kib,open_kib,conns_open,bytes_per_idle,close_peak_kib,after_close_kib,$bursts_header,rev" >"$CSV"

kib() { echo $(( $(rss_bytes "$1") / 1024 )); }

measure() { # round allocator port
    local round=$1 alloc=$2 port=$3 slog="$TMP_DIR/server-r$1-$2.log"
    local hout="$TMP_DIR/hold-r$1-$2.out" hpid ready opened steady open peak after rps r wlog
    DATABASE_URL="$DIRECT_URL" LD_PRELOAD="${PRELOAD[$alloc]}" taskset -c "$SERVER_CPUS" \
        "$RINGSIDE_BIN" serve --listen "$HOST:$port" --cores "$SERVER_CPUS-$SERVER_CPUS" \
        --max-connections-per-core $((CONNS + 4000)) >"$slog" 2>&1 &
    SERVER_PID=$!
    track_pid "$SERVER_PID"
    wait_ready "ringside ($alloc)" "$SERVER_PID" "$HOST" "$port" "$slog"
    grep -q "${PRELOAD[$alloc]:-libc}" "/proc/$SERVER_PID/maps" || die "$alloc is not loaded in the server"

    wlog="$TMP_DIR/wrk-r$round-$alloc.log"
    # Unrecorded warm-up (pool connected, statements prepared, caches warm).
    taskset -c "$CLIENT_CPUS" wrk -t1 -c256 -d2s "http://$HOST:$port/orders" >/dev/null 2>&1 || true
    taskset -c "$CLIENT_CPUS" wrk -t1 -c256 -d"${DURATION}s" --latency "http://$HOST:$port/orders" >"$wlog" 2>&1
    rps=$(parse_wrk "$wlog" | awk '{print $3}')
    isleep 3
    steady=$(kib "$SERVER_PID")

    taskset -c "$CLIENT_CPUS" python3 "$BENCH_DIR/hold_idle.py" --host "$HOST" --port "$port" \
        --conns "$CONNS" --max-hold 300 >"$hout" 2>"$hout.err" &
    hpid=$!
    track_pid "$hpid"
    ready=""
    for _ in $(seq 1 1200); do
        ready=$(grep -m1 '^READY' "$hout" 2>/dev/null || true)
        [[ -n "$ready" ]] && break
        kill -0 "$hpid" 2>/dev/null || die "hold_idle.py exited early: $(tail -n 5 "$hout.err")"
        sleep 0.1
    done
    [[ -n "$ready" ]] || die "idle connections not open within 120 s"
    opened=$(sed -n 's/.*opened=\([0-9]*\).*/\1/p' <<<"$ready")
    isleep 2
    open=$(kib "$SERVER_PID")
    peak=$open
    kill -USR1 "$hpid"
    while kill -0 "$hpid" 2>/dev/null; do
        r=$(kib "$SERVER_PID"); (( r > peak )) && peak=$r
        sleep 0.05
    done
    stop_pid "$hpid"
    for _ in $(seq 1 20); do
        r=$(kib "$SERVER_PID"); (( r > peak )) && peak=$r
        sleep 0.05
    done
    isleep 4
    after=$(kib "$SERVER_PID")

    local bursts=""
    for b in $(seq 1 "$BURSTS"); do
        taskset -c "$CLIENT_CPUS" wrk -t1 -c2000 -d3s --timeout 10s "http://$HOST:$port/orders" \
            >"$TMP_DIR/burst-r$round-$alloc-$b.log" 2>&1 || true
        isleep 4
        bursts+=",$(kib "$SERVER_PID")"
    done
    stop_pid "$SERVER_PID"
    echo "$round,$alloc,$rps,$steady,$open,$opened,$(( (open - steady) * 1024 / (opened > 0 ? opened : 1) )),$peak,$after$bursts,$REV" >>"$CSV"
    log "  $alloc: /orders $rps req/s; RSS steady $steady KiB, with $opened idle $open KiB, peak while closing $peak KiB, after $after KiB; after bursts${bursts//,/ } KiB"
}

log "plan: $ROUNDS rounds x (${ALLOCS[*]}), $CONNS idle connections, $BURSTS bursts of 2,000 connections"
port=18700
for round in $(seq 1 "$ROUNDS"); do
    order=("${ALLOCS[@]}")
    if (( round % 2 == 0 )); then
        order=(); for ((i = ${#ALLOCS[@]} - 1; i >= 0; i--)); do order+=("${ALLOCS[i]}"); done
    fi
    for alloc in "${order[@]}"; do
        pick_port "$HOST" "$port"; port=$((NEXT_PORT + 1))
        log "round $round/$ROUNDS: $alloc"
        measure "$round" "$alloc" "$NEXT_PORT"
        sleep 2
    done
done
cp "$CSV" "$OUT_DIR/memory.csv"
ensure_python_matplotlib
python3 "$BENCH_DIR/memory_report.py" "$OUT_DIR/memory.csv" "$OUT_DIR/memory.md" \
    "bench/memory.sh${ARGS:+ $ARGS}"
cat "$OUT_DIR/memory.md"
