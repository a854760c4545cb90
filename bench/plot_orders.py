#!/usr/bin/env python3
"""Plots GET /orders throughput, p99 and server CPU per request against
connections, one line per server (median over rounds, min–max as error
bars), from bench/results/orders.csv into bench/results/orders.png; the
far-away database bars from far.csv into far.png; and the page against
PostgreSQL alone (orders-pg.csv: req/s, and CPU 0's time per request split
between the server and PostgreSQL) into orders-pg.png.

    python3 bench/plot_orders.py
"""
import csv
import os
import statistics
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
RES = sys.argv[1] if len(sys.argv) > 1 else os.path.join(HERE, "results")

try:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker
except ImportError:
    sys.exit("plot_orders.py: matplotlib missing (pip install matplotlib)")


def load(name):
    path = os.path.join(RES, name)
    if not os.path.exists(path):
        return []
    return list(csv.DictReader(open(path)))


def series(rows, server, key):
    conns = sorted({int(r["connections"]) for r in rows if r["server"] == server})
    med, lo, hi = [], [], []
    for c in conns:
        v = [float(r[key]) for r in rows if r["server"] == server and int(r["connections"]) == c and r[key] not in ("", "NA")]
        if not v:
            v = [float("nan")]
        m = statistics.median(v)
        med.append(m)
        lo.append(m - min(v))
        hi.append(max(v) - m)
    return conns, med, [lo, hi]


def main():
    rows = load("orders.csv")
    if rows:
        servers = sorted({r["server"] for r in rows}, key=lambda s: (s != "ringside", s))
        fig, axes = plt.subplots(1, 3, figsize=(14, 4))
        for key, ax, label in [
            ("ok_rps", axes[0], "2xx requests/s"),
            ("p99_ms", axes[1], "p99 latency (ms)"),
            ("server_cpu_s_per_10k_req", axes[2], "server CPU-s per 10k requests"),
        ]:
            for s in servers:
                x, y, err = series(rows, s, key)
                ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label=s)
            ax.set_xscale("log", base=2)
            ax.set_xlabel("connections")
            ax.set_title(label)
            ax.grid(alpha=0.3)
        axes[0].legend()
        fig.suptitle("GET /orders (server + PostgreSQL on CPU 0, wrk on CPU 1)")
        fig.tight_layout()
        fig.savefig(os.path.join(RES, "orders.png"), dpi=110)
    far = load("far.csv")
    if far:
        servers = sorted({r["server"] for r in far}, key=lambda s: (s != "ringside", s))
        fig, ax = plt.subplots(figsize=(6, 3.5))
        meds = [statistics.median(float(r["ok_rps"]) for r in far if r["server"] == s) for s in servers]
        ax.bar(servers, meds, color=["#1f77b4", "#ff7f0e", "#2ca02c"][: len(servers)])
        ax.set_ylabel("2xx requests/s (median)")
        ax.set_title("GET /orders, database 20 ms away, 1000 connections")
        for i, m in enumerate(meds):
            ax.text(i, m, f"{m:,.0f}", ha="center", va="bottom")
        fig.tight_layout()
        fig.savefig(os.path.join(RES, "far.png"), dpi=110)
    plot_against_postgres(load("orders-pg.csv"))


def plot_against_postgres(rows):
    """Two panels: each server's req/s (median, min–max), and where CPU 0
    went per request: the server's share over PostgreSQL's (pgbench's own
    CPU is on the other CPU, as wrk's is)."""
    order = ["ringside", "coalesce", "pgbench", "pgbench-pipeline"]
    servers = [s for s in order if any(r["server"] == s for r in rows)]
    if not servers:
        return
    conns = max(int(r["connections"]) for r in rows)
    rows = [r for r in rows if int(r["connections"]) == conns]

    def values(server, key):
        return [float(r[key]) for r in rows if r["server"] == server and r[key] not in ("", "NA")]

    colors = {"ringside": "#1f77b4", "coalesce": "#9467bd", "pgbench": "#2ca02c", "pgbench-pipeline": "#98df8a"}
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4))
    meds, err = [], [[], []]
    for s in servers:
        v = values(s, "ok_rps")
        m = statistics.median(v)
        meds.append(m)
        err[0].append(m - min(v))
        err[1].append(max(v) - m)
    left.bar(servers, meds, yerr=err, capsize=4, color=[colors[s] for s in servers])
    left.set_yscale("log")
    left.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:,.0f}"))
    left.yaxis.set_minor_formatter(
        matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:,.0f}" if f"{v:.0f}"[0] in "25" else "")
    )
    left.set_ylabel("requests (pgbench: statements) per s, log scale")
    left.set_title(f"GET /orders at {conns} connections against PostgreSQL alone")
    for i, m in enumerate(meds):
        left.text(i, m + err[1][i], f"{m:,.0f}", ha="center", va="bottom")
    left.grid(axis="y", alpha=0.3)

    # Microseconds of CPU 0 per request: s per 10k requests x 100.
    cpu = [s for s in servers if s != "coalesce"]
    pg = [statistics.median(values(s, "pg_cpu_s_per_10k_req") or [0]) * 100 for s in cpu]
    srv = [statistics.median(values(s, "server_cpu_s_per_10k_req") or [0]) * 100 for s in cpu]
    right.bar(cpu, pg, color="#2ca02c", label="PostgreSQL")
    right.bar(cpu, srv, bottom=pg, color="#1f77b4", label="server")
    for i, (p, q) in enumerate(zip(pg, srv)):
        right.text(i, p + q, f"{p + q:.0f}", ha="center", va="bottom")
    right.set_ylabel("µs of CPU 0 per request (median)")
    right.set_title("Where CPU 0 goes (server and PostgreSQL share it)")
    right.legend(loc="lower right")
    right.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(os.path.join(RES, "orders-pg.png"), dpi=110)


if __name__ == "__main__":
    main()
