#!/usr/bin/env bash
# bench/hostile.sh: normal clients on GET /orders while hostile ones attack.
#
# The attackers (bench/attack.py): --slowloris connections that never finish
# their request head and --slow-bodies connections that declare a 1 MiB
# `POST /contacts` and send one byte every --interval seconds; whatever the
# server cuts is replaced at once, so both crowds stay at their size for the
# whole measurement. The normal clients: `wrk -t1 -c64 --latency` on /orders.
#
# Per round, two runs on a freshly started ringside (the order alternates
# between rounds): "calm" (wrk alone) and "attacked" (the attackers open their
# connections, then wrk runs while they are held). Reported: /orders req/s
# and p99 of each, their ratio (target: attacked >= 0.9x calm throughput and
# p99 <= 2x), what the attackers were told (408, 503, closed), the server's
# RSS with the attackers connected, and CPU of server, PostgreSQL, wrk and
# attackers over the wrk run.
#
# Pinning: ringside (--cores 0-0) and PostgreSQL on CPU 0; wrk on CPU 1; the
# attackers on CPU 1 too, at nice 19 (there is no third CPU: they stand for
# clients elsewhere, and must not take wrk's CPU).
#
# Usage: bench/hostile.sh [--rounds N] [--duration SECS] [--slowloris N]
#                         [--slow-bodies N] [--interval SECS] [--conns N]
#                         [--quick] [--no-build] [--out DIR]
#   --quick: 1 round, 5 s runs, 1,000 + 1,000 attackers (a check, not a measurement)
set -euo pipefail
source "$(dirname "$0")/lib.sh"

ROUNDS=3 DURATION=10 SLOWLORIS=5000 SLOW_BODIES=5000 INTERVAL=3 CONNS=64
BUILD=1 OUT_DIR="$BENCH_DIR/results" HOST=127.0.0.1
SERVER_CPUS=0 PG_CPUS=0 WRK_CPUS=1
ARGS="$*"
usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit "${1:-0}"; }
while (($#)); do
    case $1 in
        --rounds) ROUNDS=${2:?}; shift ;;
        --duration) DURATION=${2:?}; shift ;;
        --slowloris) SLOWLORIS=${2:?}; shift ;;
        --slow-bodies) SLOW_BODIES=${2:?}; shift ;;
        --interval) INTERVAL=${2:?}; shift ;;
        --conns) CONNS=${2:?}; shift ;;
        --quick) ROUNDS=1 DURATION=5 SLOWLORIS=1000 SLOW_BODIES=1000 ;;
        --no-build) BUILD=0 ;;
        --out) OUT_DIR=${2:?}; shift ;;
        -h | --help) usage 0 ;;
        *) echo "unknown argument: $1" >&2; usage 2 ;;
    esac
    shift
done
for v in ROUNDS DURATION SLOWLORIS SLOW_BODIES CONNS; do
    [[ "${!v}" =~ ^[0-9]+$ ]] || die "--${v,,} must be a whole number"
done

check_machine
need_cmd wrk "apt-get install wrk"
need_cmd psql
raise_nofile
NOFILE=$(ulimit -n)
(( SLOWLORIS + SLOW_BODIES + 500 <= NOFILE )) \
    || die "$((SLOWLORIS + SLOW_BODIES)) attackers need as many open files in the server and in attack.py; the limit is $NOFILE"
install_cluster_cleanup_trap
if (( BUILD )); then build_ringside; fi
check_binaries ringside
snapshot_binaries ringside
mkdir -p "$OUT_DIR"
TMP_DIR="$OUT_DIR/tmp/hostile-$(date +%Y%m%d-%H%M%S)"
mkdir -p "$TMP_DIR"
CSV="$TMP_DIR/hostile.csv"
TIMES_FILE="$TMP_DIR/.times"
REV=$(repo_rev)

start_bench_cluster "$PG_CPUS" ringside_hostile 1000

echo "round,run,rps,p50_ms,p99_ms,errors,server_cpu_s,pg_cpu_s,wrk_cpu_s,attacker_cpu_s,rss_kib,attackers_opened,answered_408,answered_503,answered_other,closed,rev" >"$CSV"

kv() { sed -n "s/.*\b$1=\([^ ]*\).*/\1/p" <<<"$2"; }

measure() { # round run(calm|attacked) port
    local round=$1 run=$2 port=$3 slog="$TMP_DIR/server-r$1-$2.log" wlog="$TMP_DIR/wrk-r$1-$2.log"
    local aout="$TMP_DIR/attack-r$1-$2.out" apid="" ready="" s0 s1 p0 p1 a0=0 a1=0 rss parsed
    DATABASE_URL="$DIRECT_URL" taskset -c "$SERVER_CPUS" "$RINGSIDE_BIN" serve --listen "$HOST:$port" \
        --cores "$SERVER_CPUS-$SERVER_CPUS" >"$slog" 2>&1 &
    SERVER_PID=$!
    track_pid "$SERVER_PID"
    wait_ready ringside "$SERVER_PID" "$HOST" "$port" "$slog"
    # Warm up: the pool connects, statements are prepared, buffers exist.
    taskset -c "$WRK_CPUS" wrk -t1 -c"$CONNS" -d2s "http://$HOST:$port/orders" >/dev/null 2>&1 || true
    if [[ $run == attacked ]]; then
        taskset -c "$WRK_CPUS" nice -n 19 python3 "$BENCH_DIR/attack.py" --host "$HOST" --port "$port" \
            --slowloris "$SLOWLORIS" --slow-bodies "$SLOW_BODIES" --interval "$INTERVAL" \
            --duration $((DURATION + 150)) >"$aout" 2>"$aout.err" &
        apid=$!
        track_pid "$apid"
        for _ in $(seq 1 1300); do
            ready=$(grep -m1 '^READY' "$aout" 2>/dev/null || true)
            [[ -n "$ready" ]] && break
            kill -0 "$apid" 2>/dev/null || die "attack.py exited early: $(tail -n 5 "$aout.err")"
            sleep 0.1
        done
        [[ -n "$ready" ]] || die "attackers not open within 130 s"
        # Let the first cuts and reconnects happen before measuring.
        isleep 3
        a0=$(cpu_ticks "$apid")
    fi
    s0=$(cpu_ticks "$SERVER_PID"); p0=$(pg_ticks "$PG_PID")
    children_ms; local w0=$CHILDREN_MS
    taskset -c "$WRK_CPUS" wrk -t1 -c"$CONNS" -d"${DURATION}s" --timeout 10s --latency \
        "http://$HOST:$port/orders" >"$wlog" 2>&1 || die "wrk failed: $wlog"
    children_ms; local w1=$CHILDREN_MS
    s1=$(cpu_ticks "$SERVER_PID"); p1=$(pg_ticks "$PG_PID")
    rss=$(( $(rss_bytes "$SERVER_PID") / 1024 ))
    local done_line="opened=0 answered_408=0 answered_503=0 answered_other=0 closed=0"
    if [[ -n "$apid" ]]; then
        a1=$(cpu_ticks "$apid")
        kill -TERM "$apid" 2>/dev/null || true
        for _ in $(seq 1 300); do kill -0 "$apid" 2>/dev/null || break; sleep 0.1; done
        stop_pid "$apid"
        done_line=$(grep -m1 '^DONE' "$aout" || echo "$done_line")
    fi
    stop_pid "$SERVER_PID"
    parsed=$(parse_wrk "$wlog") || die "could not read wrk's report $wlog"
    read -r _ _ rps p50 p99 _ sockerr non2xx <<<"$parsed"
    echo "$round,$run,$rps,$p50,$p99,$((sockerr + non2xx)),$(awk -v a="$s0" -v b="$s1" -v hz="$CLK_TCK" 'BEGIN{printf "%.2f", (b-a)/hz}'),$(awk -v a="$p0" -v b="$p1" -v hz="$CLK_TCK" 'BEGIN{printf "%.2f", (b-a)/hz}'),$(awk -v a="$w0" -v b="$w1" 'BEGIN{printf "%.2f", (b-a)/1000}'),$(awk -v a="$a0" -v b="$a1" -v hz="$CLK_TCK" 'BEGIN{printf "%.2f", (b-a)/hz}'),$rss,$(kv opened "$done_line"),$(kv answered_408 "$done_line"),$(kv answered_503 "$done_line"),$(kv answered_other "$done_line"),$(kv closed "$done_line"),$REV" >>"$CSV"
    log "  $run: $rps req/s, p99 $p99 ms, errors $((sockerr + non2xx)), RSS $rss KiB; attackers: $done_line"
}

log "plan: $ROUNDS rounds x (calm, attacked), wrk -c$CONNS ${DURATION}s, attackers $SLOWLORIS slowloris + $SLOW_BODIES slow bodies every ${INTERVAL}s"
port=18600
for round in $(seq 1 "$ROUNDS"); do
    runs=(calm attacked)
    (( round % 2 == 0 )) && runs=(attacked calm)
    for run in "${runs[@]}"; do
        pick_port "$HOST" "$port"; port=$((NEXT_PORT + 1))
        log "round $round/$ROUNDS: $run"
        measure "$round" "$run" "$NEXT_PORT"
        sleep 2
    done
done
cp "$CSV" "$OUT_DIR/hostile.csv"
ensure_python_matplotlib
python3 "$BENCH_DIR/hostile_report.py" "$OUT_DIR/hostile.csv" "$OUT_DIR/hostile.md" \
    "bench/hostile.sh${ARGS:+ $ARGS}"
cat "$OUT_DIR/hostile.md"
