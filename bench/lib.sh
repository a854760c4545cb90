# shellcheck shell=bash disable=SC2034  # (SC2034: variables used by the sourcing scripts)
# Shared helpers for bench/http.sh and bench/idle.sh. Source it; do not run it.
#
# Provides: logging, a cleanup trap that kills every process started through
# `track_pid`, builds of ringside and the hyper baseline, starting a server
# pinned with taskset, port checks, and /proc samplers (CPU time, RSS).

BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT_DIR="$(cd "$BENCH_DIR/.." && pwd)"
HYPER_DIR="$BENCH_DIR/baselines/hyper"
HYPER_BIN="$HYPER_DIR/target/release/hyper-baseline"
RINGSIDE_BIN="${CARGO_TARGET_DIR:-$ROOT_DIR/target}/release/ringside"
CLK_TCK="$(getconf CLK_TCK)"

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { printf '%s: error: %s\n' "$(basename "$0")" "$*" >&2; exit 1; }

# ---------------------------------------------------------------- cleanup ---
# Only live, not yet reaped children are tracked (a reaped pid may be reused by
# someone else's process, so it must never be signalled again).
TRACKED_PIDS=()
track_pid() { TRACKED_PIDS+=("$1"); }
untrack_pid() {
    local p keep=()
    for p in "${TRACKED_PIDS[@]}"; do [[ "$p" == "$1" ]] || keep+=("$p"); done
    TRACKED_PIDS=("${keep[@]}")
}

# Kill one process we started (TERM, then KILL after a grace period) and reap it.
stop_pid() {
    local pid=$1 i
    if ! kill -0 "$pid" 2>/dev/null; then
        wait "$pid" 2>/dev/null || true
        untrack_pid "$pid"
        return 0
    fi
    kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 1 50); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        log "pid $pid ignored SIGTERM for 5 s; sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
    untrack_pid "$pid"
}

SNAPSHOT_DIR=""
cleanup() {
    local rc=$? pid
    trap - EXIT INT TERM
    for pid in "${TRACKED_PIDS[@]}"; do
        stop_pid "$pid"
    done
    [[ -n "$SNAPSHOT_DIR" && -d "$SNAPSHOT_DIR" ]] && rm -rf "$SNAPSHOT_DIR"
    exit "$rc"
}
# Like `cleanup`, and also stops the throwaway PostgreSQL clusters in
# $PG_DIR and $EXTRA_PG_DIRS (a replica, say), if started
# (scripts/pg-test-cluster).
PG_DIR=""
EXTRA_PG_DIRS=()
cleanup_with_cluster() {
    local rc=$? pid dir
    trap - EXIT INT TERM
    for pid in "${TRACKED_PIDS[@]}"; do stop_pid "$pid"; done
    for dir in ${EXTRA_PG_DIRS[@]+"${EXTRA_PG_DIRS[@]}"} "$PG_DIR"; do
        [[ -n "$dir" ]] || continue
        "$ROOT_DIR/scripts/pg-test-cluster" stop "$dir" >/dev/null 2>&1 \
            || log "warning: could not stop the cluster in $dir"
    done
    exit "$rc"
}
install_cluster_cleanup_trap() {
    trap cleanup_with_cluster EXIT
    trap 'log "interrupted"; exit 130' INT
    trap 'log "terminated"; exit 143' TERM
}
install_cleanup_trap() {
    trap cleanup EXIT
    trap 'log "interrupted"; exit 130' INT
    trap 'log "terminated"; exit 143' TERM
}

# ----------------------------------------------------------------- checks ---
need_cmd() { command -v "$1" >/dev/null 2>&1 || die "'$1' not found${2:+ ($2)}"; }

check_machine() {
    need_cmd taskset "apt-get install util-linux"
    need_cmd curl "apt-get install curl"
    need_cmd python3
    need_cmd ss "apt-get install iproute2"
    need_cmd timeout
    local n
    n=$(nproc --all)
    (( n >= 2 )) || die "the pinning protocol needs CPUs 0 and 1; this machine has $n CPU(s)"
    taskset -c 0,1 true 2>/dev/null || die "cannot pin to CPUs 0,1 (taskset -c 0,1 failed: cpuset restrictions?)"
}

# Raise the soft open-files limit to the hard limit (children inherit it).
raise_nofile() {
    local hard
    hard=$(ulimit -Hn)
    ulimit -Sn "$hard" 2>/dev/null || true
}

# Only loopback targets are allowed.
check_loopback() {
    [[ "$1" =~ ^127\.[0-9]+\.[0-9]+\.[0-9]+$ ]] || die "--host must be a 127.0.0.0/8 address, got '$1'"
}

port_in_use() { # host port
    ss -Htan "( sport = :$2 )" 2>/dev/null | grep -q . && return 0
    (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null && return 0
    return 1
}

# Pick the first free port at or after $2 (tries 200 ports); prints it.
NEXT_PORT=""
pick_port() { # host start
    local p=$2
    while port_in_use "$1" "$p"; do
        p=$((p + 1))
        (( p < $2 + 200 )) || die "no free port in $2..$((p - 1)) on $1"
    done
    NEXT_PORT=$p
}

# ----------------------------------------------------------------- builds ---
build_hyper() {
    need_cmd cargo
    log "building hyper baseline (release, target dir $HYPER_DIR/target)"
    CARGO_TARGET_DIR="$HYPER_DIR/target" timeout 1800 nice -n 10 \
        cargo build --release --locked --manifest-path "$HYPER_DIR/Cargo.toml" >&2 \
        || die "hyper baseline build failed"
    [[ -x "$HYPER_BIN" ]] || die "hyper baseline binary missing after build: $HYPER_BIN"
}

build_ringside() {
    need_cmd cargo
    log "building ringside (cargo build --release at $ROOT_DIR)"
    (cd "$ROOT_DIR" && timeout 1800 nice -n 10 cargo build --release >&2) \
        || die "ringside build failed (run with --servers hyper to benchmark only the baseline)"
    [[ -x "$RINGSIDE_BIN" ]] || die "ringside binary missing after build: $RINGSIDE_BIN"
}

build_servers() { # servers...
    local s
    for s in "$@"; do
        case $s in
            ringside) build_ringside ;;
            hyper) build_hyper ;;
        esac
    done
}

check_binaries() { # servers...
    local s
    for s in "$@"; do
        case $s in
            ringside) [[ -x "$RINGSIDE_BIN" ]] || die "no ringside binary at $RINGSIDE_BIN (drop --no-build, or use --servers hyper)" ;;
            hyper) [[ -x "$HYPER_BIN" ]] || die "no hyper baseline binary at $HYPER_BIN (drop --no-build)" ;;
            before) [[ -x "${BEFORE_BIN:-}" ]] || die "server 'before' needs --before BIN (ringside built from an earlier commit)" ;;
        esac
    done
}

# Run copies of the binaries: the server's target/release/ringside may be
# rebuilt by someone else while a run is going on, which would mix versions
# across rounds. Also records their sha256 in BIN_SHA (for the logs).
BIN_SHA=""
snapshot_binaries() { # servers...
    local s
    SNAPSHOT_DIR=$(mktemp -d "${TMPDIR:-/tmp}/ringside-bench-bin.XXXXXX")
    for s in "$@"; do
        case $s in
            ringside) cp "$RINGSIDE_BIN" "$SNAPSHOT_DIR/ringside"; RINGSIDE_BIN="$SNAPSHOT_DIR/ringside" ;;
            hyper) cp "$HYPER_BIN" "$SNAPSHOT_DIR/hyper-baseline"; HYPER_BIN="$SNAPSHOT_DIR/hyper-baseline" ;;
            before) cp "$BEFORE_BIN" "$SNAPSHOT_DIR/before"; BEFORE_BIN="$SNAPSHOT_DIR/before" ;;
        esac
        BIN_SHA+="$s=$(sha256sum "$SNAPSHOT_DIR/${s/hyper/hyper-baseline}" | cut -c1-12) "
    done
}

validate_servers() { # comma list -> SERVERS array
    local s
    IFS=',' read -ra SERVERS <<<"$1"
    (( ${#SERVERS[@]} > 0 )) || die "--servers is empty"
    for s in "${SERVERS[@]}"; do
        case $s in ringside | hyper | before) ;; *) die "unknown server '$s' (expected ringside, hyper, before)" ;; esac
    done
}

# ---------------------------------------------------------------- servers ---
# Number of cores in a CPU list like "0" or "0,1" or "0-1".
# rotated_order ROUND NAME...: sets ORDER to NAME... rotated by ROUND - 1,
# so that each round starts with the next server and none always runs
# first (right after PostgreSQL starts, say) or after the same neighbour.
rotated_order() {
    local round=$1; shift
    local n=$# k
    ORDER=("$@")
    (( n > 0 )) || return 0
    k=$(( (round - 1) % n ))
    ORDER=("${ORDER[@]:k}" "${ORDER[@]:0:k}")
}

cpu_count() {
    local n=0 part a b
    IFS=',' read -ra parts <<<"$1"
    for part in "${parts[@]}"; do
        if [[ $part == *-* ]]; then a=${part%-*}; b=${part#*-}; n=$((n + b - a + 1)); else n=$((n + 1)); fi
    done
    echo "$n"
}

# start_server NAME CPUS HOST PORT LOGFILE -> sets SERVER_PID. The server is
# exec'd by taskset, so SERVER_PID is the server's own pid (for /proc sampling).
SERVER_PID=""
start_server() {
    local name=$1 cpus=$2 host=$3 port=$4 logf=$5 ncores
    ncores=$(cpu_count "$cpus")
    port_in_use "$host" "$port" && die "port $host:$port is already in use"
    case $name in
        ringside | before)
            # ringside reads a bare number as a core COUNT ("--cores 1" = one core,
            # "--cores 0" is an error), so a single CPU N is named as the range N-N.
            local rcores=$cpus bin=$RINGSIDE_BIN
            [[ "$rcores" =~ ^[0-9]+$ ]] && rcores="$rcores-$rcores"
            [[ $name == before ]] && bin=$BEFORE_BIN
            taskset -c "$cpus" "$bin" serve --listen "$host:$port" --cores "$rcores" >"$logf" 2>&1 &
            ;;
        hyper) taskset -c "$cpus" "$HYPER_BIN" --listen "$host:$port" --threads "$ncores" >"$logf" 2>&1 & ;;
        *) die "unknown server $name" ;;
    esac
    SERVER_PID=$!
    track_pid "$SERVER_PID"
    wait_ready "$name" "$SERVER_PID" "$host" "$port" "$logf"
}

# Wait (10 s max) until the server answers /healthz, then check /plaintext.
wait_ready() { # name pid host port log
    local name=$1 pid=$2 host=$3 port=$4 logf=$5 i body
    for i in $(seq 1 100); do
        if ! kill -0 "$pid" 2>/dev/null; then
            die "$name exited before answering http://$host:$port/healthz; its log ($logf):
$(tail -n 20 "$logf" 2>/dev/null)"
        fi
        curl -sf --max-time 1 -o /dev/null "http://$host:$port/healthz" 2>/dev/null && break
        sleep 0.1
    done
    (( i < 100 )) || die "$name did not answer http://$host:$port/healthz within 10 s; log: $logf"
    body=$(curl -sf --max-time 2 "http://$host:$port/plaintext") \
        || die "$name: GET /plaintext failed on $host:$port"
    [[ "$body" == "Hello, World!" ]] || die "$name: GET /plaintext returned '$body', expected 'Hello, World!'"
}

# --------------------------------------------------------------- samplers ---
# CPU time (utime+stime, fields 14 and 15 of /proc/PID/stat, all threads) in clock ticks.
cpu_ticks() {
    local stat rest f
    stat=$(<"/proc/$1/stat") || die "cannot read /proc/$1/stat (process gone?)"
    rest=${stat##*) }        # fields from 3 (state) on; comm may contain spaces
    read -ra f <<<"$rest"
    echo $(( f[11] + f[12] )) # field 14 = f[11], field 15 = f[12]
}

# Resident set size in bytes (VmRSS of /proc/PID/status).
# hwm_bytes PID: the process's peak RSS (VmHWM) in bytes.
hwm_bytes() {
    local kb
    kb=$(awk '/^VmHWM:/ {print $2}' "/proc/$1/status" 2>/dev/null) || true
    [[ -n "$kb" ]] || die "cannot read VmHWM of pid $1 (process gone?)"
    echo $(( kb * 1024 ))
}

rss_bytes() {
    local kb
    kb=$(awk '/^VmRSS:/ {print $2}' "/proc/$1/status" 2>/dev/null) || true
    [[ -n "$kb" ]] || die "cannot read VmRSS of pid $1 (process gone?)"
    echo $(( kb * 1024 ))
}

now_s() { date +%s.%N; }

# Machine-wide CPU ticks from the aggregate line of /proc/stat, into the array
# PSTAT = (user+nice+system, irq+softirq, steal, total). Pure bash: no child process.
PSTAT=()
proc_stat_ticks() {
    local _cpu user nice system idle iowait irq softirq steal _rest
    read -r _cpu user nice system idle iowait irq softirq steal _rest </proc/stat
    PSTAT=("$(( user + nice + system ))" "$(( irq + softirq ))" "$steal" "$(( user + nice + system + idle + iowait + irq + softirq + steal ))")
}

# The host's steal between two proc_stat_ticks samples (their steal and total
# ticks: $1 $2, then $3 $4), as a fraction of the machine's CPU time: on a VM,
# time the host gave to others while this guest wanted to run.
steal_share() {
    awk -v s0="$1" -v t0="$2" -v s1="$3" -v t1="$4" 'BEGIN { printf "%.3f", (t1 > t0) ? (s1 - s0) / (t1 - t0) : 0 }'
}

# True (status 0) if steal share $1 is above limit $2, after a warning.
stolen_run() {
    awk -v s="$1" -v lim="$2" 'BEGIN { exit !(s > lim) }' || return 1
    log "  warning: the host stole $1 of the machine's CPU time during this run (limit $2): noisy"
}

# Wait (up to $1 seconds) until the machine is quiet: less than $2 percent of
# all CPUs busy over a 1 s sample. Returns 1 (after a warning) if it never is.
# Other people's builds and tests share this machine; measuring next to them
# gives meaningless numbers.
wait_quiet() {
    local max_wait=$1 pct=$2 waited=0 a b busy logged=0
    while :; do
        proc_stat_ticks; a=("${PSTAT[@]}")
        sleep 1
        proc_stat_ticks; b=("${PSTAT[@]}")
        busy=$(( 100 * ((b[0] - a[0]) + (b[1] - a[1]) + (b[2] - a[2])) / (b[3] - a[3] > 0 ? b[3] - a[3] : 1) ))
        (( busy < pct )) && return 0
        if (( waited >= max_wait )); then
            log "warning: machine still ${busy}% busy after ${max_wait}s of waiting; measuring anyway (see other_cpu in the results)"
            return 1
        fi
        if (( !logged )); then
            log "machine is ${busy}% busy (other processes); waiting up to ${max_wait}s for it to quiet down below ${pct}%..."
            log "  busiest: $(ps -eo pid,comm,pcpu --sort=-pcpu --no-headers | head -n 3 | awk '{printf "%s(%s) ", $2, $1}')"
            logged=1
        fi
        waited=$(( waited + 1 ))
    done
}

# Sleep that a signal interrupts at once (a foreground `sleep` would delay the trap).
isleep() {
    local p
    sleep "$1" &
    p=$!
    track_pid "$p"
    wait "$p" || true
    untrack_pid "$p"
}

repo_rev() {
    local r
    r=$(git -C "$ROOT_DIR" rev-parse --short HEAD 2>/dev/null) || { echo unknown; return; }
    if [[ -n "$(git -C "$ROOT_DIR" status --porcelain --untracked-files=no -- src wire examples Cargo.toml Cargo.lock 2>/dev/null)" ]]; then
        r="$r-dirty"
    fi
    echo "$r"
}

ensure_python_matplotlib() {
    python3 -c 'import matplotlib' 2>/dev/null && return 0
    log "matplotlib missing; installing it with pip"
    python3 -m pip install --quiet matplotlib >&2 || log "warning: pip install matplotlib failed; plots will be skipped"
}

# ------------------------------------------------------- wrk and PostgreSQL ---
# Convert a wrk time ("497.00us", "1.05ms", "2.00s", "1.00m") to milliseconds.
wrk_time_ms() {
    awk -v t="$1" 'BEGIN {
        if (match(t, /^[0-9.]+/) == 0) { print "NA"; exit }
        v = substr(t, 1, RLENGTH); u = substr(t, RLENGTH + 1)
        f = (u == "us") ? 0.001 : (u == "ms") ? 1 : (u == "s") ? 1000 : (u == "m") ? 60000 : (u == "h") ? 3600000 : -1
        if (f < 0) { print "NA"; exit }
        printf "%.3f", v * f }'
}

# CHILDREN_MS = user+sys milliseconds of this shell's reaped children (from the
# `times` builtin, written to $TIMES_FILE). Pure bash (no subshell, no child
# process), so it must not be called inside $(...): the difference around a
# wrk run is wrk's CPU time.
CHILDREN_MS=0
children_ms() {
    local u s
    times >"$TIMES_FILE" # a builtin with a redirection runs in this shell, not a subshell
    { read -r _ _; read -r u s; } <"$TIMES_FILE"
    [[ "$u" =~ ^([0-9]+)m([0-9]+)\.([0-9]{3})s$ ]] || die "unexpected 'times' output: $u"
    CHILDREN_MS=$(( 10#${BASH_REMATCH[1]} * 60000 + 10#${BASH_REMATCH[2]} * 1000 + 10#${BASH_REMATCH[3]} ))
    [[ "$s" =~ ^([0-9]+)m([0-9]+)\.([0-9]{3})s$ ]] || die "unexpected 'times' output: $s"
    CHILDREN_MS=$(( CHILDREN_MS + 10#${BASH_REMATCH[1]} * 60000 + 10#${BASH_REMATCH[2]} * 1000 + 10#${BASH_REMATCH[3]} ))
}

# pg_ticks POSTMASTER_PID: CPU ticks of a PostgreSQL cluster: the postmaster's
# own and its reaped children's (exited backends), plus its live children's.
pg_ticks() {
    local pm=$1 total=0 p stat rest f
    for p in "$pm" $(pgrep -P "$pm" 2>/dev/null || true); do
        stat=$(<"/proc/$p/stat") 2>/dev/null || continue
        rest=${stat##*) }
        read -ra f <<<"$rest"
        total=$(( total + f[11] + f[12] ))
        [[ $p == "$pm" ]] && total=$(( total + f[13] + f[14] ))
    done
    echo "$total"
}

# ------------------------------------------------------------- PostgreSQL ---
# start_bench_cluster PG_CPUS DBNAME ORDERS: a throwaway PostgreSQL cluster
# (scripts/pg-test-cluster) in PG_DIR, pinned to PG_CPUS before any client
# connects (backends forked later inherit it), with database DBNAME migrated
# and seeded with ORDERS orders. Sets PG_DIR (the cluster trap stops it),
# PGPORT, PG_PID and DIRECT_URL.
start_bench_cluster() {
    local cpus=$1 db=$2 orders=$3 env datadir p
    PG_DIR="/tmp/ringside-$(basename "$0" .sh)-$$"
    log "starting a throwaway PostgreSQL cluster in $PG_DIR"
    env=$("$ROOT_DIR/scripts/pg-test-cluster" start "$PG_DIR") || die "could not start PostgreSQL (the trap removes $PG_DIR)"
    PGPORT=$(sed -n 's/^PGPORT=//p' <<<"$env")
    datadir=$(sed -n 's/^RINGSIDE_PG_DATA=//p' <<<"$env")
    [[ -n "$PGPORT" && -n "$datadir" ]] || die "unexpected pg-test-cluster output: $env"
    PG_PID=$(head -n 1 "$datadir/postmaster.pid")
    [[ "$PG_PID" =~ ^[0-9]+$ ]] || die "cannot read the postmaster's pid from $datadir/postmaster.pid"
    for p in "$PG_PID" $(pgrep -P "$PG_PID" || true); do
        taskset -a -p -c "$cpus" "$p" >/dev/null || die "cannot pin PostgreSQL process $p to CPU(s) $cpus"
    done
    log "PostgreSQL $PG_PID on 127.0.0.1:$PGPORT pinned to CPU(s) $cpus"
    psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PGPORT" -U postgres -d postgres \
        -c "CREATE DATABASE $db OWNER ringside_trust" >&2 || die "CREATE DATABASE failed"
    DIRECT_URL="postgres://ringside_trust@127.0.0.1:$PGPORT/$db?sslmode=disable"
    DATABASE_URL="$DIRECT_URL" "$RINGSIDE_BIN" migrate >&2 || die "ringside migrate failed"
    DATABASE_URL="$DIRECT_URL" "$RINGSIDE_BIN" seed --orders "$orders" >&2 || die "ringside seed failed"
    psql -X -q -h 127.0.0.1 -p "$PGPORT" -U ringside_trust -d "$db" -c "VACUUM ANALYZE orders" >&2 || true
}

# parse_wrk LOG: "requests elapsed_s req_per_s p50_ms p99_ms max_ms socket_errors non2xx"
# from a `wrk --latency` report; fails if the report is incomplete.
parse_wrk() {
    local logf=$1 requests elapsed rps p50 p99 max sockerr non2xx
    requests=$(awk '/ requests in / { print $1; exit }' "$logf")
    elapsed=$(awk '/ requests in / { sub(/s,$/, "", $4); print $4; exit }' "$logf")
    rps=$(awk '/^Requests\/sec:/ { print $2; exit }' "$logf")
    p50=$(awk '$1 == "50%" { print $2; exit }' "$logf")
    p99=$(awk '$1 == "99%" { print $2; exit }' "$logf")
    max=$(awk '$1 == "Latency" && NF >= 4 { print $4; exit }' "$logf")
    # "  Socket errors: connect 0, read 0, write 0, timeout 0"
    sockerr=$(awk '/Socket errors:/ { n = 0; for (i = 1; i < NF; i++) if ($i ~ /^(connect|read|write|timeout)$/) { v = $(i + 1); sub(/,$/, "", v); n += v } print n; exit }' "$logf")
    non2xx=$(awk '/Non-2xx or 3xx responses:/ { print $NF; exit }' "$logf")
    [[ -n "$requests" && -n "$rps" && -n "$p99" && -n "$elapsed" ]] || return 1
    echo "$requests $elapsed $rps $(wrk_time_ms "$p50") $(wrk_time_ms "$p99") $(wrk_time_ms "${max:-NA}") ${sockerr:-0} ${non2xx:-0}"
}
