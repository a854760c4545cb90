#!/usr/bin/env python3
"""Summarize bench/results/pgclient.csv (written by bench/pgclient.sh).

    python3 bench/pgclient_report.py --csv results/pgclient.csv --md results/pgclient.md \
        [--png results/pgclient.png] [--machine TEXT] [--command TEXT]

The Markdown has, per workload, one table of throughput (median and min-max
of queries/s per client and N, and the ratio ringside / tokio-postgres of the
medians, with the min-max of the per-round ratios) and one of latency (p50,
p99) and client CPU cost, then bench/pgclient-notes.md (hand-kept analysis)
if it exists. The PNG plots median qps (min-max error bars)
against N per client, one panel per workload. stdlib only, except matplotlib
for the PNG (installed with pip if missing).
"""

import argparse
import csv
import os
import statistics
import subprocess
import sys

CLIENTS = ["ringside", "tokio-postgres"]
COLORS = {"ringside": "#d9822b", "tokio-postgres": "#4a78b5"}
WORKLOAD_TITLE = {
    "int": "SELECT $1::int4",
    "orders": "SELECT title FROM orders ORDER BY id LIMIT 20",
}


def stats(vals):
    vals = [float(v) for v in vals if v not in ("", "NA", None)]
    if not vals:
        return None
    return statistics.median(vals), min(vals), max(vals)


def fmt(s, digits=0, unit=""):
    if s is None:
        return "n/a"
    f = f"{{:,.{digits}f}}"
    med, lo, hi = s
    return f"{f.format(med)}{unit} ({f.format(lo)} – {f.format(hi)})"


def load(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def group(rows):
    """(workload, n, client) -> rows, and the sorted workloads and Ns."""
    g = {}
    for r in rows:
        g.setdefault((r["workload"], int(r["n"]), r["client"]), []).append(r)
    workloads = sorted({k[0] for k in g}, key=lambda w: (w != "int", w))
    ns = sorted({k[1] for k in g})
    return g, workloads, ns


def ratio_stats(g, w, n):
    """Median ratio of medians, and min-max of per-round ratios."""
    a = g.get((w, n, "ringside"), [])
    b = g.get((w, n, "tokio-postgres"), [])
    if not a or not b:
        return None
    ma = statistics.median(float(r["qps"]) for r in a)
    mb = statistics.median(float(r["qps"]) for r in b)
    by_round_b = {r["round"]: float(r["qps"]) for r in b}
    per_round = [float(r["qps"]) / by_round_b[r["round"]] for r in a if r["round"] in by_round_b]
    lo, hi = (min(per_round), max(per_round)) if per_round else (ma / mb, ma / mb)
    return ma / mb, lo, hi


def markdown(rows, machine, command):
    g, workloads, ns = group(rows)
    rounds = len({r["round"] for r in rows})
    secs = sorted({r["seconds"] for r in rows})
    out = []
    if machine:
        out.append(f"Machine: {machine}.  ")
    if command:
        out.append(f"Command: `{command}`  ")
    revs = sorted({r.get("rev", "") for r in rows} - {""})
    stamps = sorted(r["timestamp"] for r in rows if r.get("timestamp"))
    if revs:
        out.append(f"Revision: {', '.join(revs)}.  ")
    if stamps:
        out.append(f"Measured: {stamps[0]} – {stamps[-1]}.  ")
    out.append(
        f"{rounds} round(s) of {', '.join(s.rstrip('0').rstrip('.') for s in secs)} s per client "
        "and N, one connection over TCP to 127.0.0.1, PostgreSQL on CPU 0, the client on CPU 1; "
        "each cell is the median (min – max) over the rounds."
    )
    out.append("")
    verdicts = []
    for w in workloads:
        out.append(f"### `{WORKLOAD_TITLE.get(w, w)}` ({w})")
        out.append("")
        out.append("| N | ringside q/s | tokio-postgres q/s | ringside / tokio-postgres |")
        out.append("|---:|---:|---:|---:|")
        for n in ns:
            cells = [fmt(stats(r["qps"] for r in g.get((w, n, c), []))) for c in CLIENTS]
            rs = ratio_stats(g, w, n)
            rtxt = "n/a" if rs is None else f"**{rs[0]:.2f}** ({rs[1]:.2f} – {rs[2]:.2f})"
            if rs is not None:
                verdicts.append((w, n, rs))
            out.append(f"| {n} | {cells[0]} | {cells[1]} | {rtxt} |")
        out.append("")
        out.append(
            "| N | client | p50 µs | p99 µs | client CPU % of a core | client CPU µs / query "
            "| PostgreSQL CPU µs / query |"
        )
        out.append("|---:|---|---:|---:|---:|---:|---:|")
        for n in ns:
            for c in CLIENTS:
                rs = g.get((w, n, c), [])
                if not rs:
                    continue
                per_q = [
                    float(r["client_cpu_pct"]) / 100.0 * 1e6 / float(r["qps"])
                    for r in rs
                    if float(r["qps"]) > 0
                ]
                pg_per_q = [
                    float(r["pg_cpu_s"]) * 1e6 / float(r["queries"])
                    for r in rs
                    if float(r["queries"]) > 0
                ]
                out.append(
                    f"| {n} | {c} | {fmt(stats(r['p50_us'] for r in rs), 1)} "
                    f"| {fmt(stats(r['p99_us'] for r in rs), 1)} "
                    f"| {fmt(stats(r['client_cpu_pct'] for r in rs))} "
                    f"| {fmt(stats(per_q), 2)} | {fmt(stats(pg_per_q), 2)} |"
                )
        out.append("")
    out.append(
        "Client CPU is measured inside the client over the measured window (getrusage); "
        "PostgreSQL CPU is the whole cluster's over the whole client run (connect, warm-up and "
        "measured window), divided by the measured queries, so it over-counts slightly."
    )
    out.append("")
    if verdicts:
        below = [(w, n, r) for w, n, r in verdicts if r[0] < 1.0]
        if below:
            out.append(
                "Target (ringside ≥ tokio-postgres at every N), by the medians: **not met** at "
                + ", ".join(
                    f"{w} N={n} ({r[0]:.2f}"
                    + ("; per-round ratios span 1.0, within run-to-run noise" if r[2] >= 1.0 else "")
                    + ")"
                    for w, n, r in below
                )
                + "."
            )
        else:
            out.append("Target (ringside ≥ tokio-postgres at every N): **met** by the medians.")
    return "\n".join(out) + "\n"


def plot(rows, path):
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        print("pgclient_report.py: matplotlib missing; installing it with pip", file=sys.stderr)
        subprocess.check_call([sys.executable, "-m", "pip", "install", "--quiet", "matplotlib"])
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    g, workloads, ns = group(rows)
    fig, axes = plt.subplots(1, len(workloads), figsize=(6 * len(workloads), 4.5), squeeze=False)
    for ax, w in zip(axes[0], workloads):
        for c in CLIENTS:
            xs, ys, lo, hi = [], [], [], []
            for n in ns:
                s = stats(r["qps"] for r in g.get((w, n, c), []))
                if s is None:
                    continue
                xs.append(n)
                ys.append(s[0])
                lo.append(s[0] - s[1])
                hi.append(s[2] - s[0])
            if xs:
                ax.errorbar(xs, ys, yerr=[lo, hi], marker="o", capsize=4, label=c, color=COLORS.get(c))
        ax.set_xscale("log", base=2)
        ax.set_xticks(ns)
        ax.set_xticklabels([str(n) for n in ns])
        ax.set_xlabel("concurrent queries on one connection (N)")
        ax.set_ylabel("queries / s (median, min–max)")
        ax.set_ylim(bottom=0)
        ax.set_title(WORKLOAD_TITLE.get(w, w), fontsize=10)
        ax.grid(True, alpha=0.3)
        ax.legend()
    fig.suptitle("PostgreSQL client throughput, one connection: ringside vs tokio-postgres 0.7")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--csv", required=True)
    ap.add_argument("--md", required=True)
    ap.add_argument("--png")
    ap.add_argument("--machine", default="")
    ap.add_argument("--command", default="")
    a = ap.parse_args()
    rows = load(a.csv)
    if not rows:
        sys.exit("pgclient_report.py: no rows in " + a.csv)
    md = markdown(rows, a.machine, a.command)
    # Hand-kept analysis (profile, causes), appended when present.
    notes = os.path.join(os.path.dirname(os.path.abspath(__file__)), "pgclient-notes.md")
    if os.path.exists(notes):
        md += "\n" + open(notes).read().strip() + "\n"
    with open(a.md, "w") as f:
        f.write(md)
    if a.png:
        try:
            plot(rows, a.png)
        except Exception as e:  # a missing plot must not lose the table
            print(f"pgclient_report.py: plotting failed: {e}", file=sys.stderr)


if __name__ == "__main__":
    main()
