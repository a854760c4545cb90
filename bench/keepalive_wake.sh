#!/usr/bin/env bash
# bench/keepalive_wake.sh: server CPU per request when every request wakes
# an idle connection (keep-alive connections that send one request every
# PERIOD seconds, longer than the busy window of one deadline tick).
#
# Usage: bench/keepalive_wake.sh [--before BIN] [--conns N] [--period S]
#                                [--duration S] [--rounds N]
# Prints one line per server per round: requests, server CPU ticks, µs/request.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

CONNS=1000 PERIOD=0.25 DURATION=10 ROUNDS=3 BEFORE_BIN=""
while (( $# )); do
    case $1 in
        --before) BEFORE_BIN=${2:?}; shift ;;
        --conns) CONNS=${2:?}; shift ;;
        --period) PERIOD=${2:?}; shift ;;
        --duration) DURATION=${2:?}; shift ;;
        --rounds) ROUNDS=${2:?}; shift ;;
        *) die "unknown argument: $1" ;;
    esac
    shift
done
[[ -x "$RINGSIDE_BIN" ]] || die "no ringside binary at $RINGSIDE_BIN (cargo build --release)"
servers=(ringside)
[[ -n "$BEFORE_BIN" ]] && servers+=(before)
port=18300
for round in $(seq 1 "$ROUNDS"); do
    for name in "${servers[@]}"; do
        bin=$RINGSIDE_BIN
        [[ $name == before ]] && bin=$BEFORE_BIN
        taskset -c 0 "$bin" serve --listen "127.0.0.1:$port" --cores 0-0 >/dev/null 2>&1 &
        pid=$!
        sleep 1
        t0=$(awk '{print $14 + $15}' "/proc/$pid/stat")
        reqs=$(taskset -c 1 python3 "$BENCH_DIR/keepalive_wake.py" 127.0.0.1 "$port" "$CONNS" "$PERIOD" "$DURATION")
        t1=$(awk '{print $14 + $15}' "/proc/$pid/stat")
        kill "$pid"; wait "$pid" 2>/dev/null || true
        awk -v n="$name" -v r="$round" -v q="$reqs" -v t=$(( t1 - t0 )) -v hz="$(getconf CLK_TCK)" \
            'BEGIN { printf "round %d %s: %d requests, %.2f CPU-s, %.1f us/request\n", r, n, q, t / hz, t / hz * 1e6 / q }'
        port=$((port + 1))
    done
done
