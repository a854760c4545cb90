#!/usr/bin/env bash
# bench/tls.sh: what HTTPS costs, ringside against nginx and against itself
# over plain HTTP.
#
# Scenarios (each server started fresh on CPU 0, one core; wrk -t1 on CPU 1;
# servers alternated within each round):
#   keepalive  GET /plaintext over 256 keep-alive connections: ringside over
#              HTTPS, ringside over plain HTTP, nginx over HTTPS (one worker,
#              `master_process off`, pinned to CPU 0, the same certificate).
#   handshake  GET /plaintext with `Connection: close` over 64 connections:
#              every request is a new TCP connection and a full TLS handshake
#              (wrk keeps no session), with an ECDSA P-256 and an RSA 2048
#              certificate; ringside and nginx.
#   idle       --idle N idle HTTPS keep-alive connections held by
#              bench/hold_idle.py (one request each): RSS per connection,
#              ringside over HTTPS against nginx and against ringside over
#              plain HTTP.
# On this machine one wrk core saturates before either server does, so the
# figures to compare are costs: server CPU per request and per handshake.
#
# Output: bench/results/tls.csv, tls.md, tls.png (bench/tls_report.py).
#
# Usage: bench/tls.sh [--rounds N] [--duration SECS] [--idle N] [--no-build]
#                     [--quick] (1 round of 3 s, 1,000 idle) [--out DIR]
set -euo pipefail

# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

ROUNDS=3
DURATION=8
IDLE=10000
BUILD=1
HOST=127.0.0.1
OUT_DIR="$BENCH_DIR/results"
while (( $# )); do
    case $1 in
        --rounds) ROUNDS=${2:?}; shift ;;
        --duration) DURATION=${2:?}; shift ;;
        --idle) IDLE=${2:?}; shift ;;
        --no-build) BUILD=0 ;;
        --quick) ROUNDS=1; DURATION=3; IDLE=1000 ;;
        --out) OUT_DIR=${2:?}; shift ;;
        -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument: $1" ;;
    esac
    shift
done

need_cmd wrk "apt-get install wrk"
need_cmd openssl "apt-get install openssl"
if ! command -v nginx >/dev/null 2>&1; then
    log "installing nginx (Debian's nginx-light) for the baseline"
    apt-get install -y -q nginx-light >/dev/null || die "cannot install nginx"
fi
NGINX_BIN=$(command -v nginx)
check_machine
raise_nofile
install_cleanup_trap
if (( BUILD )); then build_ringside; fi
[[ -x "$RINGSIDE_BIN" ]] || die "no ringside binary at $RINGSIDE_BIN (drop --no-build)"
snapshot_binaries ringside
REV=$(repo_rev)

TMP_DIR="$OUT_DIR/tmp/tls-$(date +%Y%m%d-%H%M%S)"
mkdir -p "$TMP_DIR"
TIMES_FILE="$TMP_DIR/times"
CSV="$TMP_DIR/tls.csv"
echo "timestamp,round,scenario,server,cert,conns,requests,seconds,rps,server_cpu_s,wrk_cpu_s,us_per_request,errors,bytes_per_conn,rev" >"$CSV"

# Certificates: a CA and, for each key type, a server certificate for
# localhost and 127.0.0.1.
CERTS="$TMP_DIR/certs"
mkdir -p "$CERTS"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj "/CN=bench CA" \
    -keyout "$CERTS/ca.key" -out "$CERTS/ca.pem" 2>/dev/null
for kind in ecdsa rsa; do
    case $kind in
        ecdsa) keyopt=(-newkey ec -pkeyopt ec_paramgen_curve:P-256) ;;
        rsa) keyopt=(-newkey rsa:2048) ;;
    esac
    openssl req -new "${keyopt[@]}" -nodes -subj "/CN=localhost" \
        -keyout "$CERTS/$kind.key" -out "$CERTS/$kind.csr" 2>/dev/null
    printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\n' >"$CERTS/ext"
    openssl x509 -req -in "$CERTS/$kind.csr" -CA "$CERTS/ca.pem" -CAkey "$CERTS/ca.key" \
        -CAcreateserial -days 2 -extfile "$CERTS/ext" -out "$CERTS/$kind.pem" 2>/dev/null
done

PORT=18400
SERVER_PID=""
# start SERVER CERT PORT: ringside-https, ringside-http or nginx-https.
start() {
    local server=$1 cert=$2 port=$3 logf="$TMP_DIR/$1-$2-$3.log" scheme=https
    port_in_use "$HOST" "$port" && die "port $port in use"
    case $server in
        ringside-https)
            taskset -c 0 "$RINGSIDE_BIN" serve --listen "$HOST:$port" --cores 0-0 \
                --tls-cert "$CERTS/$cert.pem" --tls-key "$CERTS/$cert.key" \
                --max-tls-handshakes-per-core 1024 >"$logf" 2>&1 &
            ;;
        ringside-http)
            scheme=http
            taskset -c 0 "$RINGSIDE_BIN" serve --listen "$HOST:$port" --cores 0-0 >"$logf" 2>&1 &
            ;;
        nginx-https)
            cat >"$TMP_DIR/nginx-$port.conf" <<EOF
daemon off;
master_process off;
worker_processes 1;
worker_rlimit_nofile 30000;
error_log $TMP_DIR/nginx-$port.err warn;
pid $TMP_DIR/nginx-$port.pid;
events { worker_connections 25000; }
http {
    access_log off;
    keepalive_requests 100000000;
    keepalive_timeout 75s;
    client_body_temp_path $TMP_DIR/nginx-body;
    server {
        listen $HOST:$port ssl;
        ssl_certificate $CERTS/$cert.pem;
        ssl_certificate_key $CERTS/$cert.key;
        ssl_protocols TLSv1.2 TLSv1.3;
        location = /plaintext { default_type text/plain; return 200 "Hello, World!"; }
    }
}
EOF
            taskset -c 0 "$NGINX_BIN" -c "$TMP_DIR/nginx-$port.conf" >"$logf" 2>&1 &
            ;;
        *) die "unknown server $server" ;;
    esac
    SERVER_PID=$!
    track_pid "$SERVER_PID"
    for _ in $(seq 1 100); do
        curl -sf --max-time 1 --cacert "$CERTS/ca.pem" -o /dev/null "$scheme://localhost:$port/plaintext" && return 0
        kill -0 "$SERVER_PID" 2>/dev/null || die "$server exited: $(tail -5 "$logf")"
        sleep 0.1
    done
    die "$server did not answer on $port"
}

# run_wrk ROUND SCENARIO SERVER CERT CONNS [wrk args...]
run_wrk() {
    local round=$1 scenario=$2 server=$3 cert=$4 conns=$5 scheme=https wlog c0 c1 before
    shift 5
    [[ $server == ringside-http ]] && scheme=http
    PORT=$((PORT + 1))
    start "$server" "$cert" "$PORT"
    taskset -c 1 wrk -t1 -c"$conns" -d2 "$@" "$scheme://$HOST:$PORT/plaintext" >/dev/null 2>&1 || true
    wlog="$TMP_DIR/wrk-r$round-$scenario-$server-$cert.log"
    c0=$(cpu_ticks "$SERVER_PID")
    children_ms; before=$CHILDREN_MS
    taskset -c 1 wrk -t1 -c"$conns" -d"$DURATION" --latency "$@" "$scheme://$HOST:$PORT/plaintext" >"$wlog" 2>&1 || true
    children_ms
    c1=$(cpu_ticks "$SERVER_PID")
    stop_pid "$SERVER_PID"
    local parsed requests secs rps errs
    parsed=$(parse_wrk "$wlog") || die "wrk output not understood: $wlog"
    read -r requests secs rps _ _ _ errs non2xx <<<"$parsed"
    awk -v ts="$(date -Iseconds)" -v r="$round" -v sc="$scenario" -v s="$server" -v c="$cert" \
        -v n="$conns" -v q="$requests" -v t="$secs" -v rps="$rps" -v cpu=$(( c1 - c0 )) \
        -v hz="$CLK_TCK" -v w=$(( CHILDREN_MS - before )) -v e=$(( errs + non2xx )) -v rev="$REV" \
        'BEGIN { printf "%s,%d,%s,%s,%s,%d,%d,%s,%s,%.3f,%.3f,%.2f,%d,,%s\n", ts, r, sc, s, c, n, q, t, rps, cpu / hz, w / 1000, cpu / hz * 1e6 / q, e, rev }' >>"$CSV"
    log "  $scenario $server $cert: $(tail -1 "$CSV" | cut -d, -f9-13)"
}

# run_idle ROUND SERVER: RSS per idle keep-alive connection.
run_idle() {
    local round=$1 server=$2 rss0 rss1 hout="$TMP_DIR/idle-r$1-$2.out" tls=() ready opened
    PORT=$((PORT + 1))
    start "$server" ecdsa "$PORT"
    [[ $server == *-https ]] && tls=(--tls-ca "$CERTS/ca.pem")
    sleep 1
    rss0=$(rss_bytes "$SERVER_PID")
    taskset -c 1 python3 "$BENCH_DIR/hold_idle.py" --host "$HOST" --port "$PORT" --conns "$IDLE" \
        "${tls[@]}" --max-hold 300 >"$hout" 2>"$hout.err" &
    local hpid=$!
    track_pid "$hpid"
    ready=""
    for _ in $(seq 1 1200); do
        ready=$(grep -m1 '^READY' "$hout" 2>/dev/null || true)
        [[ -n "$ready" ]] && break
        kill -0 "$hpid" 2>/dev/null || die "holder exited: $(tail -3 "$hout.err")"
        sleep 0.1
    done
    [[ -n "$ready" ]] || die "holder not ready"
    sleep 3
    rss1=$(rss_bytes "$SERVER_PID")
    opened=$(sed -n 's/.*opened=\([0-9]*\).*/\1/p' <<<"$ready")
    kill -USR1 "$hpid" 2>/dev/null || true
    stop_pid "$hpid"
    stop_pid "$SERVER_PID"
    awk -v ts="$(date -Iseconds)" -v r="$round" -v s="$server" -v n="$opened" -v a="$rss0" -v b="$rss1" -v rev="$REV" \
        'BEGIN { printf "%s,%d,idle,%s,ecdsa,%d,,,,,,,0,%.0f,%s\n", ts, r, s, n, (b - a) / n, rev }' >>"$CSV"
    log "  idle $server: $(tail -1 "$CSV" | cut -d, -f14) bytes per idle connection ($opened open)"
}

log "plan: $ROUNDS rounds of ${DURATION}s; keep-alive (ringside https/http, nginx), handshakes (ECDSA, RSA), $IDLE idle"
for round in $(seq 1 "$ROUNDS"); do
    log "round $round/$ROUNDS"
    for server in ringside-https nginx-https ringside-http; do
        run_wrk "$round" keepalive "$server" ecdsa 256
    done
    for cert in ecdsa rsa; do
        for server in ringside-https nginx-https; do
            run_wrk "$round" handshake "$server" "$cert" 64 -H "Connection: close"
        done
    done
    if (( IDLE > 0 )); then
        for server in ringside-https nginx-https ringside-http; do
            run_idle "$round" "$server"
        done
    fi
done

cp "$CSV" "$OUT_DIR/tls.csv"
python3 "$BENCH_DIR/tls_report.py" "$OUT_DIR/tls.csv" "$OUT_DIR/tls.md" "$OUT_DIR/tls.png" \
    "bench/tls.sh --rounds $ROUNDS --duration $DURATION --idle $IDLE"
cat "$OUT_DIR/tls.md"
