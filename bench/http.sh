#!/usr/bin/env bash
# bench/http.sh: HTTP/1.1 throughput benchmark, ringside vs. a hyper baseline.
#
# Scenario: GET /plaintext ("Hello, World!"), 256 keep-alive connections
# (--connections), once without pipelining and once with pipelining depth 16
# (bench/pipeline.lua sends 16 requests per write), for each server
# (ringside, hyper) on 1 core and on 2 cores.
#
# Pinning protocol (this machine has exactly 2 CPUs, 0 and 1):
#   1 core : server on CPU 0 (taskset -c 0; ringside --cores 0-0, hyper --threads 1),
#            wrk on CPU 1 with one thread (taskset -c 1 wrk -t1).
#            Server and load generator each own one CPU.
#   2 cores: server on CPUs 0,1 (ringside --cores 0,1, hyper --threads 2),
#            wrk on CPUs 0,1 with two threads (taskset -c 0,1 wrk -t2).
#            wrk SHARES the cores with the server here, so the 2-core figures
#            are load-generator bound: compare servers with each other, never
#            with the 1-core figures as a "scaling" number.
#
# Protocol: for each round, for each core count, for each server (A B A B ...
# across rounds): start the server fresh, check /healthz and /plaintext, warm up
# (--warmup s, not recorded), then one wrk run without and one with pipelining.
# Around every wrk run the server's CPU time is sampled from /proc/PID/stat
# (utime+stime, fields 14+15, / CLK_TCK) and wrk's own CPU time is taken from
# the shell's `times`, so every row says who was the bottleneck.
#
# Output: bench/results/http.csv (one row per wrk run, overwritten),
#         bench/results/http.md  (median, min-max per server/config),
#         bench/results/http.png (via bench/plot.py), logs in bench/results/tmp/.
#
# Usage: bench/http.sh [--servers ringside,hyper] [--rounds N] [--duration SECS]
#                      [--quick] [--cores 1,2] [--connections N] [--depth N]
#                      [--warmup SECS] [--quiet-wait SECS] [--retries N] [--max-steal FRACTION]
#                      [--host 127.0.0.1] [--port BASE] [--no-build] [--no-plot]
#                      [--out DIR] (results directory, default bench/results)
#   --quick: 1 round, 5 s runs, 1 s warm-up, no retries (a sanity check, not a measurement).
#
# The machine is shared (other people's builds and tests): before each server
# start the script waits up to --quiet-wait seconds (default 300) for less than
# 10% of the CPUs to be busy, and every row records the CPU time used by other
# processes during the run (other_cpu_util). A server's measurement during
# which other processes used more than 5% of the machine, or the host stole
# more than --max-steal (0.10) of it (a VM's steal, steal_s), is discarded and
# redone, up to --retries times (default 2; the discarded rows are kept in
# tmp/<run>/http-discarded.csv); summarize.py flags noisy rows that remain.
set -euo pipefail

# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit "${1:-0}"; }

SERVERS_ARG="ringside,hyper"
ROUNDS=3
DURATION=10
WARMUP=2
QUIET_WAIT=300
QUIET_PCT=10
RETRIES=2
NOISY_UTIL=0.05
MAX_STEAL=0.10
CORES_ARG="1,2"
CONNECTIONS=256
DEPTH=16
HOST=127.0.0.1
PORT_BASE=18080
BUILD=1
PLOT=1
OUT_DIR="$BENCH_DIR/results"

# CPU sets of the pinning protocol (see header); overridable for other machines.
SERVER_CPUS_1=${SERVER_CPUS_1:-0}
WRK_CPUS_1=${WRK_CPUS_1:-1}
SERVER_CPUS_2=${SERVER_CPUS_2:-0,1}
WRK_CPUS_2=${WRK_CPUS_2:-0,1}

while (( $# )); do
    case $1 in
        --servers) SERVERS_ARG=${2:?}; shift ;;
        --rounds) ROUNDS=${2:?}; shift ;;
        --duration) DURATION=${2:?}; shift ;;
        --warmup) WARMUP=${2:?}; shift ;;
        --quiet-wait) QUIET_WAIT=${2:?}; shift ;;
        --retries) RETRIES=${2:?}; shift ;;
        --max-steal) MAX_STEAL=${2:?}; shift ;;
        --quick) ROUNDS=1; DURATION=5; WARMUP=1; RETRIES=0 ;;
        --cores) CORES_ARG=${2:?}; shift ;;
        --connections) CONNECTIONS=${2:?}; shift ;;
        --depth) DEPTH=${2:?}; shift ;;
        --host) HOST=${2:?}; shift ;;
        --port) PORT_BASE=${2:?}; shift ;;
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
[[ "$MAX_STEAL" =~ ^(0(\.[0-9]+)?|1(\.0*)?)$ ]] || die "--max-steal must be a fraction from 0 to 1"
is_uint "$CONNECTIONS" || die "--connections must be a positive integer"
is_uint "$DEPTH" || die "--depth must be a positive integer"
is_uint "$PORT_BASE" || die "--port must be a port number"
check_loopback "$HOST"
validate_servers "$SERVERS_ARG"
IFS=',' read -ra CORE_COUNTS <<<"$CORES_ARG"
for c in "${CORE_COUNTS[@]}"; do [[ $c == 1 || $c == 2 ]] || die "--cores takes 1 and/or 2, got '$c'"; done

check_machine
raise_nofile
(( CONNECTIONS + 100 < $(ulimit -n) )) || die "--connections $CONNECTIONS does not fit the open-files limit $(ulimit -n)"
if ! command -v wrk >/dev/null 2>&1; then
    log "wrk missing; installing it with apt-get"
    if ! apt-get install -y wrk >&2; then
        apt-get update >&2 || die "apt-get update failed; install wrk by hand"
        apt-get install -y wrk >&2 || die "could not install wrk (apt-get install -y wrk)"
    fi
fi
need_cmd wrk

install_cleanup_trap

if (( BUILD )); then build_servers "${SERVERS[@]}"; fi
check_binaries "${SERVERS[@]}"
snapshot_binaries "${SERVERS[@]}"
log "binaries (copied to $SNAPSHOT_DIR for this run): $BIN_SHA"

TMP_DIR="$OUT_DIR/tmp/http-$(date +%Y%m%d-%H%M%S)"
mkdir -p "$TMP_DIR"
TIMES_FILE="$TMP_DIR/.times"
# Rows go to the run's own CSV; it replaces results/http.csv only when the run completes.
CSV="$TMP_DIR/http.csv"
DISCARDED_CSV="$TMP_DIR/http-discarded.csv"
FINAL_CSV="$OUT_DIR/http.csv"
REV=$(repo_rev)
WRK_TIMEOUT=$((DURATION + 30))

echo "timestamp,round,server,cores,server_cpus,wrk_cpus,wrk_threads,connections,pipeline_depth,duration_s,requests,rps,p50_ms,p99_ms,socket_errors,non2xx,server_cpu_s,server_cpu_util,cpu_s_per_100k_req,wrk_cpu_s,wrk_cpu_util,other_cpu_s,other_cpu_util,steal_s,machine_idle,rev" | tee "$DISCARDED_CSV" >"$CSV"

# run_wrk LOG CPUS THREADS DURATION WRK-ARGS... (the URL and any script args)
# Runs wrk pinned and time-bounded, in the background so that a signal to this
# script is handled at once (the trap kills it). Sets WRK_RC and WRK_CPU_S:
# wrk's user+sys CPU time, from the difference of the shell's `times` children
# line (only wrk and its `timeout` wrapper are reaped in between).
WRK_RC=0
WRK_CPU_S=0
run_wrk() {
    local logf=$1 cpus=$2 threads=$3 dur=$4 pid before after
    shift 4
    children_ms
    before=$CHILDREN_MS
    timeout -k 5 "$WRK_TIMEOUT" taskset -c "$cpus" \
        wrk -t"$threads" -c"$CONNECTIONS" -d"${dur}s" --latency "$@" >"$logf" 2>&1 &
    pid=$!
    track_pid "$pid"
    WRK_RC=0
    wait "$pid" || WRK_RC=$?
    untrack_pid "$pid"
    children_ms
    after=$CHILDREN_MS
    WRK_CPU_S=$(awk -v d=$(( after - before )) 'BEGIN { printf "%.3f", d / 1000 }')
}

# parse_wrk LOG -> "requests rps p50_ms p99_ms socket_errors non2xx"
parse_wrk() {
    local logf=$1 requests rps p50 p99 sockerr non2xx
    requests=$(awk '/ requests in / { print $1; exit }' "$logf")
    rps=$(awk '/^Requests\/sec:/ { print $2; exit }' "$logf")
    p50=$(awk '$1 == "50%" { print $2; exit }' "$logf")
    p99=$(awk '$1 == "99%" { print $2; exit }' "$logf")
    sockerr=$(awk '/Socket errors:/ { n = 0; for (i = 1; i < NF; i++) if ($i ~ /^(connect|read|write|timeout)$/) n += $(i + 1) + 0; print n; exit }' "$logf")
    non2xx=$(awk '/Non-2xx or 3xx responses:/ { print $NF; exit }' "$logf")
    [[ -n "$requests" && -n "$rps" && -n "$p99" ]] || return 1
    p50=$(wrk_time_ms "$p50")
    p99=$(wrk_time_ms "$p99")
    # wrk 4.1 can print 0.00us percentiles (its coordinated-omission correction
    # adds samples below the histogram's minimum, which its percentile walk skips;
    # it happens with pipelining). A zero, or a p99 below the p50, is recorded as NA.
    if awk -v a="$p50" -v b="$p99" 'BEGIN { exit !(a == "NA" || b == "NA" || b + 0 <= 0 || b + 0 < a + 0) }'; then
        p99=NA
    fi
    echo "$requests $rps $p50 $p99 ${sockerr:-0} ${non2xx:-0}"
}

# measure appends its CSV row to ROWS and sets NOISY=1 when other processes
# used more than NOISY_UTIL of the machine's CPU during the run.
ROWS=()
NOISY=0
measure() { # round server cores server_cpus wrk_cpus wrk_threads depth url
    local round=$1 server=$2 cores=$3 scpus=$4 wcpus=$5 wthreads=$6 depth=$7 url=$8
    local logf="$TMP_DIR/wrk-r$round-$server-c$cores-d$depth-a$attempt.txt"
    local -a args=("$url")
    if (( depth > 1 )); then args=(-s "$BENCH_DIR/pipeline.lua" "$url" -- "$depth"); fi
    local c0 c1 t0 t1 parsed requests rps p50 p99 sockerr non2xx
    local cpu_s cpu_util per100k wrk_util other_s other_util steal_s idle_frac

    local -a m0 m1
    proc_stat_ticks; m0=("${PSTAT[@]}")
    c0=$(cpu_ticks "$SERVER_PID")
    t0=$(now_s)
    run_wrk "$logf" "$wcpus" "$wthreads" "$DURATION" "${args[@]}"
    t1=$(now_s)
    kill -0 "$SERVER_PID" 2>/dev/null || die "$server died during the run; see $TMP_DIR"
    c1=$(cpu_ticks "$SERVER_PID")
    proc_stat_ticks; m1=("${PSTAT[@]}")
    (( WRK_RC == 0 )) || die "wrk exited with status $WRK_RC (124 = timed out); output in $logf:
$(tail -n 20 "$logf")"
    parsed=$(parse_wrk "$logf") || die "could not parse wrk output $logf:
$(cat "$logf")"
    read -r requests rps p50 p99 sockerr non2xx <<<"$parsed"
    (( requests > 0 )) || die "wrk completed no request against $server; see $logf"

    # other = user+nice+system time of the whole machine minus the server's and
    # wrk's (irq/softirq time, mostly loopback networking, is not counted).
    # machine_idle = idle share of all CPUs during the run (/proc/stat idle+iowait).
    read -r cpu_s cpu_util per100k wrk_util other_s other_util steal_s idle_frac < <(awk -v c0="$c0" -v c1="$c1" -v hz="$CLK_TCK" \
        -v t0="$t0" -v t1="$t1" -v n="$requests" -v cores="$cores" -v w="$WRK_CPU_S" -v wt="$wthreads" \
        -v us=$(( m1[0] - m0[0] )) -v st=$(( m1[2] - m0[2] )) -v ncpu="$(nproc --all)" \
        -v busy=$(( m1[0] - m0[0] + m1[1] - m0[1] + m1[2] - m0[2] )) -v tot=$(( m1[3] - m0[3] )) 'BEGIN {
            cpu = (c1 - c0) / hz; wall = t1 - t0
            other = us / hz - cpu - w; if (other < 0) other = 0
            idle = tot > 0 ? 1 - busy / tot : 0
            printf "%.2f %.3f %.4f %.3f %.2f %.3f %.2f %.3f\n", cpu, cpu / (wall * cores), cpu / n * 100000, w / (wall * wt),
                other, other / (wall * ncpu), st / hz, idle }')

    ROWS+=("$(date -Iseconds),$round,$server,$cores,\"$scpus\",\"$wcpus\",$wthreads,$CONNECTIONS,$depth,$DURATION,$requests,$rps,$p50,$p99,$sockerr,$non2xx,$cpu_s,$cpu_util,$per100k,$WRK_CPU_S,$wrk_util,$other_s,$other_util,$steal_s,$idle_frac,$REV")
    log "  $server cores=$cores depth=$depth: $(printf '%.0f' "$rps") req/s, p99 ${p99} ms, server CPU ${cpu_s}s (${per100k} s/100k req, util $cpu_util), wrk util $wrk_util, other CPU ${other_s}s, machine idle $idle_frac"
    if awk -v u="$other_util" -v lim="$NOISY_UTIL" 'BEGIN { exit !(u > lim) }'; then
        log "  warning: other processes used ${other_s} CPU-seconds during this run (${other_util} of the machine): this run is noisy"
        NOISY=1
    fi
    if stolen_run "$(steal_share "${m0[2]}" "${m0[3]}" "${m1[2]}" "${m1[3]}")" "$MAX_STEAL"; then NOISY=1; fi
    if (( sockerr > 0 || non2xx > 0 )); then
        log "  warning: $sockerr socket errors, $non2xx non-2xx responses (see $logf)"
    fi
}

TOTAL=$(( ROUNDS * ${#CORE_COUNTS[@]} * ${#SERVERS[@]} ))
log "plan: servers=${SERVERS[*]} cores=${CORE_COUNTS[*]} rounds=$ROUNDS duration=${DURATION}s warmup=${WARMUP}s connections=$CONNECTIONS depth=1,$DEPTH"
log "      ~$(( TOTAL * (2 * DURATION + WARMUP + 2) )) s; raw runs -> $CSV (copied to $FINAL_CSV at the end); logs -> $TMP_DIR"

port=$PORT_BASE
for round in $(seq 1 "$ROUNDS"); do
    for cores in "${CORE_COUNTS[@]}"; do
        if (( cores == 1 )); then scpus=$SERVER_CPUS_1 wcpus=$WRK_CPUS_1; else scpus=$SERVER_CPUS_2 wcpus=$WRK_CPUS_2; fi
        wthreads=$(cpu_count "$wcpus")
        for server in "${SERVERS[@]}"; do
            for attempt in $(seq 0 "$RETRIES"); do
                # A fresh port per server start: no TIME_WAIT or lingering listener interference.
                pick_port "$HOST" "$port"; port=$NEXT_PORT
                url="http://$HOST:$port/plaintext"
                if (( QUIET_WAIT > 0 )); then wait_quiet "$QUIET_WAIT" "$QUIET_PCT" || true; fi
                log "round $round/$ROUNDS: $server on CPUs $scpus, wrk -t$wthreads on CPUs $wcpus, port $port$( (( attempt == 0 )) || echo " (retry $attempt)")"
                start_server "$server" "$scpus" "$HOST" "$port" "$TMP_DIR/server-r$round-$server-c$cores-a$attempt.log"
                if (( WARMUP > 0 )); then
                    run_wrk "$TMP_DIR/warmup-r$round-$server-c$cores-a$attempt.txt" "$wcpus" "$wthreads" "$WARMUP" "$url"
                    (( WRK_RC == 0 )) || die "warm-up wrk failed (status $WRK_RC); see $TMP_DIR/warmup-r$round-$server-c$cores-a$attempt.txt"
                fi
                ROWS=()
                NOISY=0
                measure "$round" "$server" "$cores" "$scpus" "$wcpus" "$wthreads" 1 "$url"
                measure "$round" "$server" "$cores" "$scpus" "$wcpus" "$wthreads" "$DEPTH" "$url"
                stop_pid "$SERVER_PID"
                port=$((port + 1))
                sleep 1
                if (( NOISY && attempt < RETRIES )); then
                    printf '%s\n' "${ROWS[@]}" >>"$DISCARDED_CSV"
                    log "  other load disturbed this measurement: discarded (kept in $DISCARDED_CSV), measuring again"
                    continue
                fi
                printf '%s\n' "${ROWS[@]}" >>"$CSV"
                break
            done
        done
    done
done

cp "$CSV" "$FINAL_CSV"
python3 "$BENCH_DIR/summarize.py" http "$FINAL_CSV" "$OUT_DIR/http.md"
log "wrote $FINAL_CSV and $OUT_DIR/http.md"
if (( PLOT )); then
    ensure_python_matplotlib
    python3 "$BENCH_DIR/plot.py" --results "$OUT_DIR" || log "warning: plotting failed"
fi
cat "$OUT_DIR/http.md"
