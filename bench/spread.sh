#!/usr/bin/env bash
# Accept spread: how SO_REUSEPORT hashes new connections over the cores.
#
#   bench/spread.sh [--connections N] [--rounds R] [--quick] [--out DIR]
#
# Starts ringside on all CPUs (2 here), opens N short connections (one
# request each, from many source ports), and reads the per-core accept
# counters from /metrics. Reports per-core counts and the imbalance
# (largest share / even share) per round, in results/spread.csv|md|png
# (--out: another results directory).
set -euo pipefail
. "$(dirname "$0")/lib.sh"
install_cleanup_trap

conns=20000 rounds=3 out=$BENCH_DIR/results
while (($#)); do
    case $1 in
        --connections) conns=$2; shift 2 ;;
        --rounds) rounds=$2; shift 2 ;;
        --quick) conns=5000; rounds=1; shift ;;
        --out) out=$2; shift 2 ;;
        *) die "unknown option $1" ;;
    esac
done
check_machine
(cd "$ROOT_DIR" && nice -n 10 cargo build --release --locked -q)
mkdir -p "$out"
csv=$out/spread.csv
echo "round,core,accepted,share" >"$csv.tmp"
port=18380
for r in $(seq 1 "$rounds"); do
    while ss -Htan "sport = :$port" | grep -q .; do port=$((port + 1)); done
    "$RINGSIDE_BIN" serve --listen "127.0.0.1:$port" 2>/dev/null &
    pid=$!
    track_pid "$pid"
    for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$port/healthz" >/dev/null && break; sleep 0.05; done
    timeout 300 python3 - "$port" "$conns" <<'PY'
import socket, sys
port, n = int(sys.argv[1]), int(sys.argv[2])
req = b"GET /plaintext HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n"
for _ in range(n):
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(req)
    while s.recv(4096):
        pass
    s.close()
PY
    metrics=$(curl -sf "http://127.0.0.1:$port/metrics")
    stop_pid "$pid"
    echo "$metrics" | awk -v r="$r" '/^ringside_accepted_connections_total\{/ {
        match($0, /core="[0-9]+"/); core = substr($0, RSTART + 6, RLENGTH - 7);
        n[core] = $NF; total += $NF }
      END { for (c in n) printf "%s,%s,%d,%.4f\n", r, c, n[c], n[c] / total }' >>"$csv.tmp"
done
mv "$csv.tmp" "$csv"
python3 - "$csv" "$out" <<'PY'
import csv, sys, statistics
rows = list(csv.DictReader(open(sys.argv[1])))
cores = sorted({int(r["core"]) for r in rows})
rounds = sorted({int(r["round"]) for r in rows})
out = ["# Accept spread over cores (SO_REUSEPORT)", "",
       "Short connections, one request each; accepts per core from `/metrics`.", "",
       "| round | " + " | ".join(f"core {c}" for c in cores) + " | imbalance (max share / even share) |",
       "|---|" + "---:|" * (len(cores) + 1)]
imb = []
for r in rounds:
    rr = {int(x["core"]): x for x in rows if int(x["round"]) == r}
    shares = [float(rr[c]["share"]) for c in cores if c in rr]
    i = max(shares) * len(cores)
    imb.append(i)
    out.append(f"| {r} | " + " | ".join(f'{rr[c]["accepted"]} ({float(rr[c]["share"]):.1%})' for c in cores if c in rr) + f" | {i:.3f} |")
out += ["", f"Median imbalance: {statistics.median(imb):.3f} (1.000 is perfectly even)."]
open(sys.argv[2] + "/spread.md", "w").write("\n".join(out) + "\n")
try:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 3.5))
    width = 0.8 / len(rounds)
    for i, r in enumerate(rounds):
        rr = {int(x["core"]): int(x["accepted"]) for x in rows if int(x["round"]) == r}
        ax.bar([c + i * width for c in cores], [rr.get(c, 0) for c in cores], width, label=f"round {r}")
    ax.set_xticks([c + 0.4 - width / 2 for c in cores], [f"core {c}" for c in cores])
    ax.set_ylabel("connections accepted")
    ax.set_title("SO_REUSEPORT accept spread")
    ax.legend()
    fig.tight_layout()
    fig.savefig(sys.argv[2] + "/spread.png", dpi=120)
except ImportError:
    print("matplotlib missing: no spread.png", file=sys.stderr)
PY
cat "$out/spread.md"
