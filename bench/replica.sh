#!/usr/bin/env bash
# bench/replica.sh: GET /orders with its reads on a PostgreSQL streaming
# replica (--db-replica) against the same server reading the primary only,
# and the figures the scale-out model in bench/RESULTS.md rests on.
#
# Setup: a throwaway primary (scripts/pg-test-cluster, seeded with --orders
# orders) and a streaming replica of it (scripts/pg-test-cluster replica:
# pg_basebackup -R). Layout on this 2-CPU machine: ringside (--cores 0-0) and
# the primary on CPU 0; the replica on REPLICA_CPUS (default 1); wrk -t1 on
# WRK_CPUS (default 1). The replica shares CPU 1 with wrk: the machine has no
# third CPU, so the replica layout's req/s is a floor, and the per-request
# CPU costs (server, primary, replica) are what the model uses.
#
# Protocol: for each round, for each layout (primary, replica; alternating),
# start ringside fresh, check /orders answers 200 with the same page,
# warm up, `wrk -t1 -cN -dD`, stop it. Per run: req/s, latency, errors, and
# CPU-seconds per 10,000 requests of ringside, the primary and the replica
# (postmaster and children, from /proc). In the replica layout every /orders
# must have been routed to the replica (ringside_db_routed_reads_total).
#
# Output: bench/results/replica.csv, replica.md (medians, ratios and the
# scale-out projection) and replica.png; logs in bench/results/tmp/.
#
# Usage: bench/replica.sh [--conns N] [--rounds N] [--duration SECS]
#                         [--warmup SECS] [--orders N] [--db-pool-size N]
#                         [--quick] [--no-build] [--out DIR]
#   --quick: 1 round of 3 s (a sanity check, not a measurement).
set -euo pipefail

# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit "${1:-0}"; }
ORIG_ARGS=$(printf ' %q' "$@")

CONNS=256
ROUNDS=3
DURATION=10
WARMUP=2
ORDERS=1000
POOL=8
BUILD=1
OUT_DIR="$BENCH_DIR/results"
HOST=127.0.0.1
SERVER_CPUS=${SERVER_CPUS:-0}
PG_CPUS=${PG_CPUS:-0}
REPLICA_CPUS=${REPLICA_CPUS:-1}
WRK_CPUS=${WRK_CPUS:-1}

while (( $# )); do
    case $1 in
        --conns) CONNS=${2:?}; shift ;;
        --rounds) ROUNDS=${2:?}; shift ;;
        --duration) DURATION=${2:?}; shift ;;
        --warmup) WARMUP=${2:?}; shift ;;
        --orders) ORDERS=${2:?}; shift ;;
        --db-pool-size) POOL=${2:?}; shift ;;
        --quick) ROUNDS=1 DURATION=3 WARMUP=1 ;;
        --no-build) BUILD=0 ;;
        --out) OUT_DIR=${2:?}; shift ;;
        -h | --help) usage 0 ;;
        *) echo "unknown argument: $1" >&2; usage 2 ;;
    esac
    shift
done
for v in CONNS ROUNDS DURATION ORDERS POOL; do
    [[ "${!v}" =~ ^[1-9][0-9]*$ ]] || die "--${v,,} must be a positive integer"
done
[[ "$WARMUP" =~ ^[0-9]+$ ]] || die "--warmup must be a non-negative integer"
(( POOL <= 20 )) || die "--db-pool-size $POOL: the primary and replica allow 50 connections"

check_machine
need_cmd wrk "apt-get install wrk"
need_cmd psql "apt-get install postgresql-client"
raise_nofile

install_cluster_cleanup_trap # stops the primary and the replica too

(( BUILD )) && build_ringside
[[ -x "$RINGSIDE_BIN" ]] || die "no ringside binary at $RINGSIDE_BIN (drop --no-build)"

RUN_ID="replica-$(date +%Y%m%d-%H%M%S)"
TMP_DIR="$OUT_DIR/tmp/$RUN_ID"
mkdir -p "$TMP_DIR"
CSV="$TMP_DIR/replica.csv"
REV=$(repo_rev)

start_bench_cluster "$PG_CPUS" ringside_bench "$ORDERS"
REPLICA_DIR="$PG_DIR-replica"
EXTRA_PG_DIRS=("$REPLICA_DIR")
env=$("$ROOT_DIR/scripts/pg-test-cluster" replica "$PG_DIR" "$REPLICA_DIR") || die "could not start the replica"
RPORT=$(sed -n 's/^PGPORT=//p' <<<"$env")
RDATA=$(sed -n 's/^RINGSIDE_PG_DATA=//p' <<<"$env")
RPG_PID=$(head -n 1 "$RDATA/postmaster.pid")
for p in "$RPG_PID" $(pgrep -P "$RPG_PID" || true); do
    taskset -a -p -c "$REPLICA_CPUS" "$p" >/dev/null || die "cannot pin replica process $p"
done
REPLICA_URL="postgres://ringside_trust@127.0.0.1:$RPORT/ringside_bench?sslmode=disable"
for _ in $(seq 1 100); do
    n=$(psql -X -At "$REPLICA_URL" -c "SELECT count(*) FROM orders" 2>/dev/null || true)
    [[ "$n" == "$ORDERS" ]] && break
    sleep 0.1
done
[[ "$n" == "$ORDERS" ]] || die "the replica did not replay the seeded orders"
log "replica $RPG_PID on 127.0.0.1:$RPORT (streaming from $PGPORT) pinned to CPU(s) $REPLICA_CPUS"

echo "timestamp,round,layout,connections,duration_s,requests,errors,rps,p50_ms,p99_ms,server_cpu_s_per_10k,primary_cpu_s_per_10k,replica_cpu_s_per_10k,replica_routed_share,server_cpus,pg_cpus,replica_cpus,wrk_cpus,rev" >"$CSV"

routed() { # port pool
    curl -s "http://$HOST:$1/metrics" | awk -v p="pool=\"$2\"" '/^ringside_db_routed_reads_total\{/ && index($0, p) { s += $NF } END { print s + 0 }'
}

pick_port "$HOST" 18480; PORT=$NEXT_PORT
for round in $(seq 1 "$ROUNDS"); do
    for layout in primary replica; do
        extra=()
        [[ $layout == replica ]] && extra=(--db-replica "$REPLICA_URL" --db-replica-check-interval 200ms)
        logf="$TMP_DIR/server-r$round-$layout.log"
        DATABASE_URL="$DIRECT_URL" taskset -c "$SERVER_CPUS" "$RINGSIDE_BIN" serve --listen "$HOST:$PORT" \
            --cores "0-0" --db-pool-size "$POOL" --db-replica-pool-size "$POOL" ${extra[@]+"${extra[@]}"} >"$logf" 2>&1 &
        SERVER_PID=$!
        track_pid "$SERVER_PID"
        wait_ready "$layout" "$SERVER_PID" "$HOST" "$PORT" "$logf"
        if [[ $layout == replica ]]; then
            for _ in $(seq 1 100); do
                curl -s "http://$HOST:$PORT/metrics" | grep -q '^ringside_db_pool_serving{core="0",pool="replica1",.*} 1$' && break
                sleep 0.1
            done
        fi
        code=$(curl -s -o "$TMP_DIR/page-$layout.html" -w '%{http_code}' "http://$HOST:$PORT/orders")
        [[ $code == 200 ]] || die "$layout: /orders answered $code"
        cmp -s "$TMP_DIR/page-primary.html" "$TMP_DIR/page-$layout.html" || die "the replica's page differs from the primary's"
        (( WARMUP > 0 )) && taskset -c "$WRK_CPUS" wrk -t1 -c"$CONNS" -d"${WARMUP}s" "http://$HOST:$PORT/orders" >/dev/null 2>&1
        r0=$(routed "$PORT" replica1); a0=$(routed "$PORT" primary)
        c0=$(cpu_ticks "$SERVER_PID"); g0=$(pg_ticks "$PG_PID"); q0=$(pg_ticks "$RPG_PID")
        wlog="$TMP_DIR/wrk-r$round-$layout.txt"
        timeout -k 5 $(( DURATION + 30 )) taskset -c "$WRK_CPUS" \
            wrk -t1 -c"$CONNS" -d"${DURATION}s" --timeout 10s --latency "http://$HOST:$PORT/orders" >"$wlog" 2>&1 \
            || die "wrk failed; see $wlog"
        c1=$(cpu_ticks "$SERVER_PID"); g1=$(pg_ticks "$PG_PID"); q1=$(pg_ticks "$RPG_PID")
        r1=$(routed "$PORT" replica1); a1=$(routed "$PORT" primary)
        read -r requests _elapsed rps p50 p99 _max sockerr non2xx <<<"$(parse_wrk "$wlog")" || die "cannot parse $wlog"
        share=$(awk -v r=$(( r1 - r0 )) -v a=$(( a1 - a0 )) 'BEGIN { t = r + a; printf "%.4f", t ? r / t : 0 }')
        row=$(awk -v ts="$(date -Iseconds)" -v round="$round" -v l="$layout" -v c="$CONNS" -v d="$DURATION" \
            -v n="$requests" -v e=$(( sockerr + non2xx )) -v rps="$rps" -v p50="$p50" -v p99="$p99" \
            -v c0="$c0" -v c1="$c1" -v g0="$g0" -v g1="$g1" -v q0="$q0" -v q1="$q1" -v hz="$CLK_TCK" \
            -v share="$share" -v sc="$SERVER_CPUS" -v pc="$PG_CPUS" -v rc="$REPLICA_CPUS" -v wc="$WRK_CPUS" -v rev="$REV" 'BEGIN {
                k = 10000 / n / hz
                printf "%s,%d,%s,%d,%d,%d,%d,%.1f,%s,%s,%.4f,%.4f,%.4f,%s,\"%s\",\"%s\",\"%s\",\"%s\",%s\n",
                    ts, round, l, c, d, n, e, rps, p50, p99, (c1 - c0) * k, (g1 - g0) * k, (q1 - q0) * k, share, sc, pc, rc, wc, rev }')
        echo "$row" >>"$CSV"
        log "  round $round $layout: $rps req/s, p99 $p99 ms, errors $(( sockerr + non2xx )), replica share $share"
        stop_pid "$SERVER_PID"
        if [[ $layout == replica ]]; then
            awk -v s="$share" 'BEGIN { exit !(s >= 0.99) }' || die "only $share of the reads went to the replica"
        fi
    done
done

mkdir -p "$OUT_DIR"
python3 "$BENCH_DIR/replica_report.py" "$CSV" "bench/replica.sh$ORIG_ARGS" "$TMP_DIR/replica.png" >"$TMP_DIR/replica.md"
cp "$CSV" "$OUT_DIR/replica.csv"
cp "$TMP_DIR/replica.md" "$OUT_DIR/replica.md"
[[ -f "$TMP_DIR/replica.png" ]] && cp "$TMP_DIR/replica.png" "$OUT_DIR/replica.png"
log "results: $OUT_DIR/replica.csv, $OUT_DIR/replica.md"
cat "$OUT_DIR/replica.md"
