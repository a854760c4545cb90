#!/usr/bin/env python3
"""bench/replica_report.py CSV COMMAND [PNG]: the Markdown summary of bench/replica.sh
(and, with PNG and matplotlib, a chart of req/s and CPU per request by layout).

Medians per layout (primary only, reads on a replica), the ratio, and the
scale-out model built from the measured CPU cost per request of each part.
"""
import csv
import statistics
import sys


def median(rows, key):
    return statistics.median(float(r[key]) for r in rows)


def main():
    path, command = sys.argv[1], sys.argv[2]
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    by = {l: [r for r in rows if r["layout"] == l] for l in ("primary", "replica")}
    if not by["primary"] or not by["replica"]:
        sys.exit("replica_report.py: both layouts are needed")
    p, r = by["primary"], by["replica"]
    out = []
    w = out.append
    w(f"# /orders with reads on a streaming replica ({len(p)} round(s), "
      f"{p[0]['connections']} connections, rev {p[0]['rev']})\n")
    w(f"Command: `{command}`\n")
    w(f"ringside on CPU {p[0]['server_cpus']}, primary on CPU {p[0]['pg_cpus']}, replica on CPU "
      f"{p[0]['replica_cpus']}, wrk -t1 on CPU {p[0]['wrk_cpus']} (the replica shares its CPU with wrk).\n")
    w("| layout | req/s | p99 ms | errors | ringside CPU µs/req | primary CPU µs/req | replica CPU µs/req | reads on the replica |")
    w("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, rs in (("primary only", p), ("reads on the replica", r)):
        w(f"| {name} | {median(rs, 'rps'):,.0f} | {median(rs, 'p99_ms'):.1f} | "
          f"{sum(int(x['errors']) for x in rs)} | "
          f"{median(rs, 'server_cpu_s_per_10k') * 100:.1f} | {median(rs, 'primary_cpu_s_per_10k') * 100:.1f} | "
          f"{median(rs, 'replica_cpu_s_per_10k') * 100:.1f} | {median(rs, 'replica_routed_share') * 100:.1f}% |")
    ratios = [float(b["rps"]) / float(a["rps"]) for a, b in zip(p, r)]
    w(f"\nReads on the replica / primary only, req/s per round: "
      + ", ".join(f"{x:.2f}×" for x in ratios) + f" (median {statistics.median(ratios):.2f}×).\n")

    server_us = median(r, "server_cpu_s_per_10k") * 100
    replica_us = median(r, "replica_cpu_s_per_10k") * 100
    primary_us = median(p, "primary_cpu_s_per_10k") * 100
    per_instance_core = 1e6 / server_us
    per_replica_core = 1e6 / replica_us
    w("## Scale-out model\n")
    w("Measured above, per `/orders` request: ringside "
      f"{server_us:.1f} µs of CPU, a replica {replica_us:.1f} µs (the primary, serving the same read, "
      f"{primary_us:.1f} µs). So one ringside core carries about {per_instance_core:,.0f} req/s and one "
      f"replica core about {per_replica_core:,.0f} req/s of this page; the page costs PostgreSQL "
      f"{replica_us / server_us:.1f}× what it costs ringside. Instances and replicas share nothing, "
      "so capacity adds up until the primary's writes, the network or HAProxy bind "
      "(none of which this page exercises):\n")
    w("| hosts of 8 cores | ringside capacity (req/s) | replicas needed to match | total PostgreSQL cores |")
    w("|---:|---:|---:|---:|")
    for n in (1, 2, 4, 8):
        cap = n * 8 * per_instance_core
        m = cap / (8 * per_replica_core)
        w(f"| {n} | {cap:,.0f} | {m:.1f} | {m * 8:.0f} |")
    w("\nA projection from per-request CPU, not a measurement of N hosts: this machine has 2 CPUs.")
    print("\n".join(out))
    if len(sys.argv) > 3:
        plot(sys.argv[3], p, r)


def plot(path, p, r):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    names = ["primary only", "reads on the replica"]
    a.bar(names, [median(p, "rps"), median(r, "rps")], color=["#888", "#2a7"])
    a.set_title("/orders req/s (median)")
    parts = [("ringside", "server_cpu_s_per_10k"), ("primary", "primary_cpu_s_per_10k"),
             ("replica", "replica_cpu_s_per_10k")]
    bottom = [0.0, 0.0]
    for label, key in parts:
        vals = [median(p, key) * 100, median(r, key) * 100]
        b.bar(names, vals, bottom=bottom, label=label)
        bottom = [x + y for x, y in zip(bottom, vals)]
    b.set_title("CPU µs per request, by process")
    b.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    main()
