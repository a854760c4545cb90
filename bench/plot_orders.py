#!/usr/bin/env python3
"""Plots GET /orders throughput, p99 and server CPU per request against
connections, one line per server (median over rounds, min–max as error
bars), from bench/results/orders.csv into bench/results/orders.png; and the
far-away database bars from far.csv into far.png.

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


if __name__ == "__main__":
    main()
