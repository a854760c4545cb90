#!/usr/bin/env bash
# bench/upload.sh: CSV upload through ringside's POST /contacts against
# psql's \copy of the same file into the same table.
#
# Two measurements, against one throwaway PostgreSQL cluster
# (scripts/pg-test-cluster; database ringside_upload owned by ringside_trust,
# schema by `ringside migrate`):
#
# 1. rows/s: the same N-row CSV file (`ringside gen-contacts --rows N`,
#    1,000,000 rows, ~70 MB) imported by
#      A  ringside: curl -T FILE -X POST -H 'Content-Type: text/csv'
#         http://127.0.0.1:PORT/contacts (curl streams the file; the server
#         validates it and runs COPY contacts (...) FROM STDIN (FORMAT csv)
#         in a transaction), and
#      B  psql: one transaction, exactly what the server does:
#           BEGIN; INSERT INTO imports DEFAULT VALUES RETURNING id \gset
#           SELECT set_config('ringside.import_id', :'id', true);
#           \copy contacts (name,email,street,city,zip,country) from FILE
#                 with (format csv, header true)
#           UPDATE imports SET rows = ..., finished_at = now() ...; COMMIT;
#    alternating A B / B A across --rounds. Before every run: TRUNCATE
#    contacts, imports (RESTART IDENTITY CASCADE), VACUUM, CHECKPOINT, so both
#    start from the same table state; after it the row count is checked.
#    rows/s = rows / wall seconds of the client process (curl or psql).
#    CPU time of the server, of PostgreSQL (all its processes) and of the
#    client is recorded per run; a run during which other processes took
#    more than 5% of the machine is redone (--retries), as in pgclient.sh.
# 2. memory: a fresh server receives a ~1 GiB file (bench/upload_probe.py, a
#    non-blocking stdlib client that counts the bytes the kernel accepted),
#    its VmRSS sampled every 50 ms (VmHWM before and after), and PostgreSQL's
#    COPY progress (pg_stat_progress_copy) every 0.25 s. Then the same with
#    the database slowed down (a BEFORE INSERT trigger that sleeps 5 ms every
#    200 rows) for --slow-secs seconds, after which the client aborts: the
#    client must be held back to the database's pace while the server's RSS
#    stays flat, and the aborted upload must leave no row behind.
#
# Pinning protocol (2 CPUs): the server (--cores 0-0) and every PostgreSQL
# process on CPU 0 (the postmaster is pinned with taskset -a -p right after
# the start; backends inherit it), the clients (curl, psql, the probe, the
# progress watcher, the CSV generator) on CPU 1. Override with SERVER_CPUS and
# CLIENT_CPUS. NB: the server shares CPU 0 with the PostgreSQL backend doing
# the COPY, while psql's own work (reading the file, framing CopyData) runs
# on CPU 1: every CPU-second the server spends is taken from the backend.
#
# Output: bench/results/upload.csv (one row per run), upload-series.csv (the
#         1 GiB runs over time), upload.md (medians, min-max, ratio
#         ringside/psql, RSS growth, held-back figures), upload.png;
#         CSV files and logs in bench/results/tmp/ (git-ignored).
#
# Usage: bench/upload.sh [--rounds N] [--rows N] [--big-mib MIB] [--quick]
#                        [--slow-secs S] [--skip-rate] [--skip-memory]
#                        [--quiet-wait SECS] [--retries N] [--port BASE]
#                        [--no-build] [--no-plot] [--out DIR] (default bench/results)
#
#   Defaults: 3 rounds, 1,000,000 rows, 1024 MiB, --slow-secs 20.
#   --quick: 1 round, 100,000 rows, a 64 MiB big file, a 10 s slowed run.
#
# Builds ringside in release (cargo build --release at the repository root,
# nice -n 10). Every step is bounded (timeout); the server, the cluster and
# every process started are stopped at exit (also on error or Ctrl-C).
set -euo pipefail

# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit "${1:-0}"; }

ORIG_ARGS="$*"
ROUNDS=3
ROWS=1000000
BIG_MIB=1024
SLOW_SECS=20
SLOW_EVERY=200
SLOW_SLEEP=0.005
DO_RATE=1
DO_MEMORY=1
QUIET_WAIT=120
QUIET_PCT=10
RETRIES=2
NOISY_UTIL=0.05
PORT_BASE=18480
HOST=127.0.0.1
BUILD=1
PLOT=1
OUT_DIR="$BENCH_DIR/results"
SERVER_CPUS=${SERVER_CPUS:-0}
CLIENT_CPUS=${CLIENT_CPUS:-1}
RATE_TIMEOUT=900   # one rows/s run (curl or psql)
BIG_TIMEOUT=1800   # the 1 GiB upload

while (( $# )); do
    case $1 in
        --rounds) ROUNDS=${2:?}; shift ;;
        --rows) ROWS=${2:?}; shift ;;
        --big-mib) BIG_MIB=${2:?}; shift ;;
        --quick) ROUNDS=1; ROWS=100000; BIG_MIB=64; SLOW_SECS=10 ;;
        --slow-secs) SLOW_SECS=${2:?}; shift ;;
        --skip-rate) DO_RATE=0 ;;
        --skip-memory) DO_MEMORY=0 ;;
        --quiet-wait) QUIET_WAIT=${2:?}; shift ;;
        --retries) RETRIES=${2:?}; shift ;;
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
is_uint "$ROWS" || die "--rows must be a positive integer"
is_uint "$BIG_MIB" || die "--big-mib must be a positive integer"
is_uint "$SLOW_SECS" || die "--slow-secs must be a positive integer"
is_uint "$PORT_BASE" || die "--port must be a positive integer"
[[ "$QUIET_WAIT" =~ ^[0-9]+$ ]] || die "--quiet-wait must be a non-negative integer (seconds)"
[[ "$RETRIES" =~ ^[0-9]+$ ]] || die "--retries must be a non-negative integer"
(( DO_RATE || DO_MEMORY )) || die "--skip-rate and --skip-memory together leave nothing to do"

need_cmd taskset "apt-get install util-linux"
need_cmd timeout
need_cmd curl "apt-get install curl"
need_cmd python3
need_cmd psql "apt-get install postgresql-client"
need_cmd ss "apt-get install iproute2"
(( $(nproc --all) >= 2 )) || die "the pinning protocol needs CPUs 0 and 1"
taskset -c "$SERVER_CPUS,$CLIENT_CPUS" true 2>/dev/null || die "cannot pin to CPUs $SERVER_CPUS,$CLIENT_CPUS"

# ------------------------------------------------------------ cleanup ---
CLUSTER_DIR=""
stop_cluster() {
    [[ -n "$CLUSTER_DIR" ]] || return 0
    log "stopping the cluster in $CLUSTER_DIR"
    timeout -k 5 120 "$ROOT_DIR/scripts/pg-test-cluster" stop "$CLUSTER_DIR" >&2 ||
        log "warning: pg-test-cluster stop failed; see $CLUSTER_DIR"
    CLUSTER_DIR=""
}
on_exit() {
    local rc=$? pid
    trap - EXIT
    # The server first (it holds connections to the cluster), then the rest.
    [[ -n "${SERVER_PID:-}" ]] && stop_pid "$SERVER_PID"
    for pid in "${TRACKED_PIDS[@]}"; do stop_pid "$pid"; done
    stop_cluster
    (exit "$rc")
    cleanup # lib.sh: kills what is still tracked, exits with $?
}
trap on_exit EXIT
trap 'log "interrupted"; exit 130' INT
trap 'log "terminated"; exit 143' TERM

# -------------------------------------------------------------- build ---
if (( BUILD )); then
    build_ringside
fi
[[ -x "$RINGSIDE_BIN" ]] || die "no ringside binary at $RINGSIDE_BIN (drop --no-build)"

RUN_ID="upload-$(date +%Y%m%d-%H%M%S)"
TMP_DIR="$OUT_DIR/tmp/$RUN_ID"
DATA_DIR="$OUT_DIR/tmp/upload-data"   # the CSV files, kept between runs
mkdir -p "$TMP_DIR" "$DATA_DIR"
TIMES_FILE="$TMP_DIR/.times"
CSV="$TMP_DIR/upload-rate.csv"
DISCARDED_CSV="$TMP_DIR/upload-rate-discarded.csv"
REV=$(repo_rev)

# ---------------------------------------------------------- CSV files ---
HEADER_BYTES=$(( $("$RINGSIDE_BIN" gen-contacts --rows 0 | wc -c) ))
gen_csv() { # rows path
    local rows=$1 path=$2
    if [[ -s "$path" ]]; then
        log "reusing $path ($(stat -c %s "$path") bytes)"
        return 0
    fi
    log "generating $path ($rows rows)"
    timeout -k 5 1200 nice -n 10 taskset -c "$CLIENT_CPUS" \
        "$RINGSIDE_BIN" gen-contacts --rows "$rows" >"$path.partial" ||
        { rm -f "$path.partial"; die "gen-contacts --rows $rows failed"; }
    mv "$path.partial" "$path"
}

SMALL_CSV="$DATA_DIR/contacts-$ROWS.csv"
BIG_TARGET=$(( BIG_MIB * 1024 * 1024 ))
avail_kib=$(df -Pk "$DATA_DIR" | awk 'NR == 2 { print $4 }')
(( avail_kib * 1024 > 5 * BIG_TARGET )) ||
    die "need ~$(( 5 * BIG_MIB )) MiB free for the CSV files and the cluster; $DATA_DIR has $(( avail_kib / 1024 )) MiB"

gen_csv "$ROWS" "$SMALL_CSV"
SMALL_BYTES=$(stat -c %s "$SMALL_CSV")
BIG_ROWS=""
BIG_CSV=""
if (( DO_MEMORY )); then
    # Rows needed to pass the target, from the small file's bytes per row
    # (later rows are a little longer: their numbers have more digits).
    BIG_ROWS=$(awk -v t="$BIG_TARGET" -v h="$HEADER_BYTES" -v b="$SMALL_BYTES" -v r="$ROWS" \
        'BEGIN { n = (t - h) / ((b - h) / r); printf "%d\n", (n == int(n)) ? n : int(n) + 1 }')
    while :; do
        BIG_CSV="$DATA_DIR/contacts-$BIG_ROWS.csv"
        gen_csv "$BIG_ROWS" "$BIG_CSV"
        (( $(stat -c %s "$BIG_CSV") >= BIG_TARGET )) && break
        BIG_ROWS=$(( BIG_ROWS + BIG_ROWS / 50 + 1 ))
    done
    BIG_BYTES=$(stat -c %s "$BIG_CSV")
    log "big file: $BIG_ROWS rows, $BIG_BYTES bytes ($(( BIG_BYTES / 1048576 )) MiB)"
fi
MAX_UPLOAD="2GiB"
if [[ -n "$BIG_CSV" ]] && (( BIG_BYTES > (2 << 30) )); then MAX_UPLOAD=$(( BIG_BYTES + (64 << 20) )); fi

# ------------------------------------------------------------ cluster ---
CLUSTER_DIR="/tmp/ringside-upload-bench.$$"
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
    taskset -a -p -c "$SERVER_CPUS" "$p" >/dev/null || die "could not pin PostgreSQL process $p to CPU $SERVER_CPUS"
done
DB=ringside_upload
URL="postgres://ringside_trust@$HOST:$PG_PORT/$DB"
PSQL=(timeout -k 5 120 psql -X -q -v ON_ERROR_STOP=1 -h "$HOST" -p "$PG_PORT")
su_sql() { "${PSQL[@]}" -U postgres -d "$DB" "$@"; }   # superuser: CHECKPOINT, progress view
db_sql() { "${PSQL[@]}" -U ringside_trust -d "$DB" "$@"; }

"${PSQL[@]}" -U postgres -d postgres -c "CREATE DATABASE $DB OWNER ringside_trust" >/dev/null ||
    die "CREATE DATABASE $DB failed"
DATABASE_URL="$URL" timeout -k 5 120 "$RINGSIDE_BIN" migrate >"$TMP_DIR/migrate.log" 2>&1 ||
    die "ringside migrate failed: $(tail -n 5 "$TMP_DIR/migrate.log")"
log "cluster up: $PG_VERSION, port $PG_PORT, database $DB; postmaster $PM_PID pinned to CPU $SERVER_CPUS; clients on CPU $CLIENT_CPUS"

# Empty table, same state for every run.
reset_tables() {
    db_sql -c "TRUNCATE contacts, imports RESTART IDENTITY CASCADE" >/dev/null || die "TRUNCATE failed"
    su_sql -c "VACUUM contacts" -c "VACUUM imports" -c "CHECKPOINT" >/dev/null || die "VACUUM/CHECKPOINT failed"
}
count_rows() { db_sql -At -c "SELECT count(*) FROM contacts"; }

# ------------------------------------------------------------- server ---
SERVER_PID=""
SERVER_PORT=""
RCORES=$SERVER_CPUS
[[ "$RCORES" =~ ^[0-9]+$ ]] && RCORES="$RCORES-$RCORES"   # a bare number would be a core COUNT
NEXT=$PORT_BASE
start_ringside() { # logfile
    local logf=$1 i code
    pick_port "$HOST" "$NEXT"
    SERVER_PORT=$NEXT_PORT
    NEXT=$(( NEXT_PORT + 1 ))
    DATABASE_URL="$URL" taskset -c "$SERVER_CPUS" "$RINGSIDE_BIN" serve --listen "$HOST:$SERVER_PORT" \
        --cores "$RCORES" --max-upload-bytes "$MAX_UPLOAD" >"$logf" 2>&1 &
    SERVER_PID=$!
    track_pid "$SERVER_PID"
    wait_ready ringside "$SERVER_PID" "$HOST" "$SERVER_PORT" "$logf"
    for i in $(seq 1 100); do
        code=$(curl -s --max-time 1 -o /dev/null -w '%{http_code}' "http://$HOST:$SERVER_PORT/readyz" || true)
        [[ "$code" == 200 ]] && break
        sleep 0.1
    done
    [[ "$code" == 200 ]] || die "ringside /readyz answered $code, not 200, after 10 s (database?); log: $logf"
    log "ringside up: pid $SERVER_PID, http://$HOST:$SERVER_PORT, --cores $RCORES on CPU $SERVER_CPUS"
}
stop_ringside() {
    [[ -n "$SERVER_PID" ]] || return 0
    stop_pid "$SERVER_PID"
    SERVER_PID=""
}

# ----------------------------------------------------------- samplers ---
CHILDREN_MS=0
children_ms() { # user+sys ms of this shell's reaped children; pure bash
    local u s
    times >"$TIMES_FILE"
    { read -r _ _; read -r u s; } <"$TIMES_FILE"
    [[ "$u" =~ ^([0-9]+)m([0-9]+)\.([0-9]{3})s$ ]] || die "unexpected 'times' output: $u"
    CHILDREN_MS=$(( 10#${BASH_REMATCH[1]} * 60000 + 10#${BASH_REMATCH[2]} * 1000 + 10#${BASH_REMATCH[3]} ))
    [[ "$s" =~ ^([0-9]+)m([0-9]+)\.([0-9]{3})s$ ]] || die "unexpected 'times' output: $s"
    CHILDREN_MS=$(( CHILDREN_MS + 10#${BASH_REMATCH[1]} * 60000 + 10#${BASH_REMATCH[2]} * 1000 + 10#${BASH_REMATCH[3]} ))
}
# CPU ticks of the cluster: the postmaster's own and its reaped children's
# (exited backends), plus its live children's (the server's pooled backends).
pg_ticks() {
    local total=0 p stat rest f
    for p in "$PM_PID" $(pgrep -P "$PM_PID" || true); do
        stat=$(<"/proc/$p/stat") 2>/dev/null || continue
        rest=${stat##*) }
        read -ra f <<<"$rest"
        total=$(( total + f[11] + f[12] ))
        [[ $p == "$PM_PID" ]] && total=$(( total + f[13] + f[14] ))
    done
    echo "$total"
}
server_ticks() { if [[ -n "$SERVER_PID" ]]; then cpu_ticks "$SERVER_PID"; else echo 0; fi; }

# --------------------------------------------------------- rows/s runs ---
PSQL_SCRIPT="$TMP_DIR/copy.sql"
cat >"$PSQL_SCRIPT" <<EOF
\\set ON_ERROR_STOP on
BEGIN;
INSERT INTO imports DEFAULT VALUES RETURNING id AS import_id \\gset
SELECT set_config('ringside.import_id', :'import_id', true) \\g /dev/null
\\copy contacts (name,email,street,city,zip,country) from '$SMALL_CSV' with (format csv, header true)
\\set copied :ROW_COUNT
UPDATE imports SET rows = :copied, finished_at = now() WHERE id = :import_id;
COMMIT;
\\echo import_id :import_id rows :copied
EOF

echo "timestamp,run,round,tool,rows,bytes,wall_s,rows_per_s,mib_per_s,server_cpu_s,pg_cpu_s,client_cpu_s,other_cpu_s,other_util,status,rev" |
    tee "$DISCARDED_CSV" >"$CSV"

ROW=""
NOISY=0
run_rate() { # round tool attempt
    local round=$1 tool=$2 attempt=$3
    local logf="$TMP_DIR/rate-r$round-$tool-a$attempt"
    local pid rc=0 before after t0 t1 g0 g1 s0 s1 got out status
    local -a m0 m1
    reset_tables
    if (( QUIET_WAIT > 0 )); then wait_quiet "$QUIET_WAIT" "$QUIET_PCT" || true; fi
    children_ms; before=$CHILDREN_MS
    proc_stat_ticks; m0=("${PSTAT[@]}")
    g0=$(pg_ticks); s0=$(server_ticks)
    t0=$EPOCHREALTIME
    case $tool in
        ringside)
            timeout -k 5 "$RATE_TIMEOUT" taskset -c "$CLIENT_CPUS" curl -sS -T "$SMALL_CSV" -X POST \
                -H 'Content-Type: text/csv' -H 'Expect:' -o "$logf.body" -w '%{http_code}\n' \
                "http://$HOST:$SERVER_PORT/contacts" >"$logf.out" 2>"$logf.err" &
            ;;
        psql)
            timeout -k 5 "$RATE_TIMEOUT" taskset -c "$CLIENT_CPUS" psql -X -q -h "$HOST" -p "$PG_PORT" \
                -U ringside_trust -d "$DB" -f "$PSQL_SCRIPT" >"$logf.body" 2>"$logf.err" &
            ;;
    esac
    pid=$!
    track_pid "$pid"
    wait "$pid" || rc=$?
    untrack_pid "$pid"
    t1=$EPOCHREALTIME
    sleep 0.3   # let psql's backend exit and be reaped (its CPU moves to the postmaster's cutime)
    g1=$(pg_ticks); s1=$(server_ticks)
    proc_stat_ticks; m1=("${PSTAT[@]}")
    children_ms; after=$CHILDREN_MS
    (( rc == 0 )) || die "$tool import failed (status $rc; 124 = timed out): $(tail -c 400 "$logf.err" "$logf.body" 2>/dev/null)"
    status=ok
    if [[ $tool == ringside ]]; then
        out=$(<"$logf.out")
        [[ "$out" == 201 ]] || die "ringside answered HTTP $out: $(head -c 400 "$logf.body")"
    fi
    if [[ $tool == ringside ]]; then
        grep -q "\"rows\":$ROWS}" "$logf.body" || die "ringside did not report rows=$ROWS: $(head -c 400 "$logf.body")"
    else
        grep -q " rows $ROWS\$" "$logf.body" || die "psql did not report rows $ROWS: $(head -c 400 "$logf.body")"
    fi
    got=$(count_rows)
    [[ "$got" == "$ROWS" ]] || die "after the $tool import contacts has $got rows, expected $ROWS"
    local wall rps mibs server_s pg_s client_s other_s other_util
    read -r wall rps mibs server_s pg_s client_s other_s other_util < <(awk \
        -v t0="$t0" -v t1="$t1" -v rows="$ROWS" -v bytes="$SMALL_BYTES" -v hz="$CLK_TCK" \
        -v s=$(( s1 - s0 )) -v g=$(( g1 - g0 )) -v c=$(( after - before )) \
        -v us=$(( (m1[0] - m0[0]) + (m1[1] - m0[1]) + (m1[2] - m0[2]) )) -v ncpu="$(nproc --all)" 'BEGIN {
            wall = t1 - t0; server = s / hz; pg = g / hz; client = c / 1000
            other = us / hz - server - pg - client; if (other < 0) other = 0
            printf "%.3f %.0f %.2f %.2f %.2f %.2f %.2f %.4f\n", wall, rows / wall, bytes / wall / 1048576,
                server, pg, client, other, other / (wall * ncpu) }')
    ROW="$(date -Iseconds),rate,$round,$tool,$ROWS,$SMALL_BYTES,$wall,$rps,$mibs,$server_s,$pg_s,$client_s,$other_s,$other_util,$status,$REV"
    log "  $tool: $ROWS rows in ${wall}s = $rps rows/s ($mibs MiB/s); CPU s: server $server_s, PostgreSQL $pg_s, client $client_s, other $other_s"
    NOISY=0
    if awk -v u="$other_util" -v lim="$NOISY_UTIL" 'BEGIN { exit !(u > lim) }'; then
        log "  warning: other processes used $other_s CPU-seconds ($other_util of the machine): noisy"
        NOISY=1
    fi
}

if (( DO_RATE )); then
    start_ringside "$TMP_DIR/server-rate.log"
    TOOLS=(ringside psql)
    log "plan: $ROUNDS round(s) x (ringside, psql) of $ROWS rows ($SMALL_BYTES bytes)"
    for round in $(seq 1 "$ROUNDS"); do
        order=("${TOOLS[@]}")
        (( round % 2 == 0 )) && order=("${TOOLS[1]}" "${TOOLS[0]}")
        log "round $round/$ROUNDS (${order[*]})"
        for tool in "${order[@]}"; do
            for attempt in $(seq 0 "$RETRIES"); do
                run_rate "$round" "$tool" "$attempt"
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
    stop_ringside
fi

# ------------------------------------------------------ 1 GiB uploads ---
# pg_stat_progress_copy every 0.25 s, as epoch,bytes_processed,tuples_processed.
WATCH_PID=""
start_progress_watch() { # outfile max_seconds
    timeout -k 5 "$2" taskset -c "$CLIENT_CPUS" psql -X -At -F, -h "$HOST" -p "$PG_PORT" -U postgres -d "$DB" \
        >"$1" 2>"$1.err" <<<"SELECT round(extract(epoch from clock_timestamp())::numeric, 3), bytes_processed, tuples_processed FROM pg_stat_progress_copy WHERE relid = 'contacts'::regclass \\watch 0.25" &
    WATCH_PID=$!
    track_pid "$WATCH_PID"
}
stop_progress_watch() { [[ -n "$WATCH_PID" ]] && stop_pid "$WATCH_PID"; WATCH_PID=""; }

run_big() { # name abort_after
    local name=$1 abort=$2 rc=0 pid t0 t1 g0 g1 s0 s1
    local -a probe_args=(--host "$HOST" --port "$SERVER_PORT" --file "$BIG_CSV" --pid "$SERVER_PID"
        --series "$TMP_DIR/$name.series.csv" --summary "$TMP_DIR/$name.summary.json"
        --interval 0.05 --max-seconds "$BIG_TIMEOUT")
    (( abort > 0 )) && probe_args+=(--abort-after "$abort" --after 5)
    start_progress_watch "$TMP_DIR/$name.progress.csv" $(( BIG_TIMEOUT + 120 ))
    g0=$(pg_ticks); s0=$(server_ticks); t0=$EPOCHREALTIME
    timeout -k 5 $(( BIG_TIMEOUT + 60 )) taskset -c "$CLIENT_CPUS" python3 "$BENCH_DIR/upload_probe.py" \
        "${probe_args[@]}" >"$TMP_DIR/$name.probe.out" 2>"$TMP_DIR/$name.probe.err" &
    pid=$!
    track_pid "$pid"
    wait "$pid" || rc=$?
    untrack_pid "$pid"
    t1=$EPOCHREALTIME; g1=$(pg_ticks); s1=$(server_ticks)
    stop_progress_watch
    (( rc == 0 )) || die "$name upload failed (status $rc; 124 = timed out): $(tail -c 600 "$TMP_DIR/$name.probe.err" "$TMP_DIR/$name.probe.out" 2>/dev/null)"
    awk -v t0="$t0" -v t1="$t1" -v s=$(( s1 - s0 )) -v g=$(( g1 - g0 )) -v hz="$CLK_TCK" \
        'BEGIN { printf "{\"wall_s\": %.3f, \"server_cpu_s\": %.2f, \"pg_cpu_s\": %.2f}\n", t1 - t0, s / hz, g / hz }' \
        >"$TMP_DIR/$name.cpu.json"
}

if (( DO_MEMORY )); then
    # Normal: the whole file, a fresh server.
    reset_tables
    if (( QUIET_WAIT > 0 )); then wait_quiet "$QUIET_WAIT" "$QUIET_PCT" || true; fi
    start_ringside "$TMP_DIR/server-normal.log"
    sleep 1
    log "1 GiB run: $BIG_BYTES bytes ($BIG_ROWS rows), server RSS sampled every 50 ms"
    run_big normal 0
    python3 -c 'import json, sys; s = json.load(open(sys.argv[1])); sys.exit(not s["body"].endswith("\"rows\":" + sys.argv[2] + "}"))' \
        "$TMP_DIR/normal.summary.json" "$BIG_ROWS" ||
        die "the big upload did not report rows=$BIG_ROWS: $(cat "$TMP_DIR/normal.summary.json")"
    got=$(count_rows)
    [[ "$got" == "$BIG_ROWS" ]] || die "after the big upload contacts has $got rows, expected $BIG_ROWS"
    log "  $(tail -n 1 "$TMP_DIR/normal.probe.err")"
    stop_ringside

    # Slowed: a trigger sleeps 5 ms every 200 rows; abort after --slow-secs.
    reset_tables
    db_sql >/dev/null <<EOF || die "could not create the slow trigger"
CREATE FUNCTION slow_insert() RETURNS trigger LANGUAGE plpgsql AS \$\$
BEGIN
    IF NEW.id % $SLOW_EVERY = 0 THEN PERFORM pg_sleep($SLOW_SLEEP); END IF;
    RETURN NEW;
END \$\$;
CREATE TRIGGER slow BEFORE INSERT ON contacts FOR EACH ROW EXECUTE FUNCTION slow_insert();
EOF
    if (( QUIET_WAIT > 0 )); then wait_quiet "$QUIET_WAIT" "$QUIET_PCT" || true; fi
    start_ringside "$TMP_DIR/server-slowed.log"
    sleep 1
    log "slowed run: trigger sleeps ${SLOW_SLEEP}s every $SLOW_EVERY rows; the client aborts after ${SLOW_SECS}s"
    run_big slowed "$SLOW_SECS"
    # The aborted upload must be rolled back, and the server must still serve.
    for _ in $(seq 1 120); do
        [[ -z "$(su_sql -At -c "SELECT 1 FROM pg_stat_progress_copy LIMIT 1")" ]] && break
        sleep 0.5
    done
    [[ -z "$(su_sql -At -c "SELECT 1 FROM pg_stat_progress_copy LIMIT 1")" ]] ||
        die "the aborted COPY is still running 60 s after the client went away"
    got=$(count_rows)
    [[ "$got" == 0 ]] || die "the aborted upload left $got rows in contacts"
    curl -sf --max-time 2 -o /dev/null "http://$HOST:$SERVER_PORT/healthz" || die "ringside does not answer after the aborted upload"
    grep -Ei "panic|fatal" "$TMP_DIR/server-slowed.log" && die "the server log reports a panic (see $TMP_DIR/server-slowed.log)"
    log "  $(tail -n 1 "$TMP_DIR/slowed.probe.err"); rolled back: 0 rows left, server still answering"
    stop_ringside
    db_sql -c "DROP TRIGGER slow ON contacts" -c "DROP FUNCTION slow_insert()" >/dev/null || log "warning: could not drop the trigger"
fi

stop_cluster

# ------------------------------------------------------------- report ---
MACHINE="$(nproc --all) x $(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo), $(uname -r), $PG_VERSION"
report_args=(--raw-dir "$TMP_DIR" --csv "$OUT_DIR/upload.csv" --series "$OUT_DIR/upload-series.csv"
    --md "$OUT_DIR/upload.md" --machine "$MACHINE" --command "bench/upload.sh${ORIG_ARGS:+ $ORIG_ARGS}"
    --slow-desc "pg_sleep($SLOW_SLEEP) every $SLOW_EVERY rows, client aborts after ${SLOW_SECS}s"
    --rev "$REV")
if (( PLOT )); then
    ensure_python_matplotlib
    report_args+=(--png "$OUT_DIR/upload.png")
fi
python3 "$BENCH_DIR/upload_report.py" "${report_args[@]}"
log "wrote $OUT_DIR/upload.csv, upload-series.csv, upload.md (and upload.png unless --no-plot); raw files in $TMP_DIR"
cat "$OUT_DIR/upload.md"
