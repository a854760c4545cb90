#!/usr/bin/env python3
"""Plot the benchmark CSVs (bench/results/http.csv, idle.csv) as PNGs.

    python3 bench/plot.py [--results DIR]

http.png: per configuration (cores x pipelining), grouped bars per server of
median req/s with min-max error bars, median p99 latency (min-max) and server
CPU-seconds per 100k requests. idle.png: bytes of server RSS per idle
keep-alive connection per server (median, min-max), and the RSS before / with
the connections open / after they closed. A missing CSV is skipped.
Installs matplotlib with pip when it is missing.
"""

import argparse
import csv
import os
import statistics
import subprocess
import sys


def import_pyplot():
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        print("plot.py: matplotlib missing; installing it with pip", file=sys.stderr)
        subprocess.check_call([sys.executable, "-m", "pip", "install", "--quiet", "matplotlib"])
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


SERVER_ORDER = ["ringside", "hyper"]
COLORS = {"ringside": "#d9822b", "hyper": "#4a78b5"}


def read(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def stats(vals):
    vals = [float(v) for v in vals if v not in ("", "NA", None)]
    if not vals:
        return None
    return statistics.median(vals), min(vals), max(vals)


def servers_in(rows):
    present = {r["server"] for r in rows}
    return [s for s in SERVER_ORDER if s in present] + sorted(present - set(SERVER_ORDER))


def human(v):
    if v >= 1e6:
        return f"{v / 1e6:.2f}M"
    if v >= 1e3:
        return f"{v / 1e3:.0f}k"
    return f"{v:.3g}"


def grouped_bars(ax, configs, servers, data, ylabel, title, label_fmt, missing_label=None):
    """data[(config, server)] = (median, lo, hi) or missing."""
    n = len(servers)
    width = 0.8 / max(n, 1)
    for i, s in enumerate(servers):
        xs, ys, lo, hi = [], [], [], []
        for j, c in enumerate(configs):
            st = data.get((c, s))
            if st is None:
                if missing_label:
                    ax.annotate(f"{s}:\n{missing_label}", (j + (i - (n - 1) / 2) * width, 0), xytext=(0, 4),
                                textcoords="offset points", ha="center", va="bottom", fontsize=8, color="dimgray")
                continue
            m, mn, mx = st
            xs.append(j + (i - (n - 1) / 2) * width)
            ys.append(m)
            lo.append(m - mn)
            hi.append(mx - m)
        if not xs:
            continue
        bars = ax.bar(xs, ys, width * 0.95, yerr=[lo, hi], capsize=4, label=s,
                      color=COLORS.get(s), edgecolor="black", linewidth=0.5,
                      error_kw={"elinewidth": 1, "ecolor": "black"})
        for b, y, h in zip(bars, ys, hi):
            ax.annotate(label_fmt(y), (b.get_x() + b.get_width() / 2, y + h),
                        xytext=(0, 3), textcoords="offset points", ha="center", va="bottom", fontsize=8)
    ax.set_xlim(-0.5, len(configs) - 0.5)
    ax.set_xticks(range(len(configs)))
    ax.set_xticklabels([c[2] for c in configs], fontsize=9)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=11)
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    ax.margins(y=0.15)
    ax.legend(fontsize=9)


def plot_http(plt, rows, out):
    from matplotlib.ticker import FuncFormatter

    servers = servers_in(rows)
    depths = sorted({int(r["pipeline_depth"]) for r in rows})
    cores_list = sorted({int(r["cores"]) for r in rows})
    configs = [
        (c, 0, f"{c} core{'s' if c > 1 else ''}\n" + ("(wrk shares the CPUs)" if c > 1 else "(wrk on its own CPU)"))
        for c in cores_list
    ]
    by = {}
    for r in rows:
        by.setdefault((int(r["cores"]), int(r["pipeline_depth"]), r["server"]), []).append(r)

    def collect(col, depth):
        d = {}
        for c in configs:
            for s in servers:
                g = by.get((c[0], depth, s))
                if g:
                    vals = [r[col] for r in g]
                    if col == "p99_ms":  # NA or 0: wrk printed no valid percentile
                        vals = [v for v in vals if v not in ("", "NA") and float(v) > 0]
                    st = stats(vals)
                    if st:
                        d[(c, s)] = st
        return d

    nrounds = len({r["round"] for r in rows})
    conns = ",".join(sorted({r["connections"] for r in rows}))
    ncol = len(depths)
    fig, axes = plt.subplots(3, ncol, figsize=(6.2 * ncol, 13), squeeze=False)
    for j, depth in enumerate(depths):
        pipe = "no pipelining" if depth == 1 else f"pipelining depth {depth}"
        ax = axes[0][j]
        grouped_bars(ax, configs, servers, collect("rps", depth), "requests / s",
                     f"throughput, {pipe}", human)
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: human(v) if v else "0"))
        grouped_bars(axes[1][j], configs, servers, collect("p99_ms", depth), "p99 latency (ms)",
                     f"p99 latency, {pipe}" + (" (per batch, indicative)" if depth > 1 else ""),
                     lambda v: f"{v:.2f}", missing_label="no valid p99\n(wrk 4.1 bug,\nsee http.md)")
        grouped_bars(axes[2][j], configs, servers, collect("cpu_s_per_100k_req", depth),
                     "server CPU-seconds / 100k requests", f"server CPU per 100k requests, {pipe} (lower is better)",
                     lambda v: f"{v:.3f}")
    fig.suptitle(f"GET /plaintext, {conns} connections: median of {nrounds} round(s), "
                 "error bars = min – max", fontsize=12)
    fig.tight_layout(rect=(0, 0, 1, 0.98))
    fig.savefig(out, dpi=110)
    plt.close(fig)
    print(f"plot.py: wrote {out}")


def plot_idle(plt, rows, out):
    servers = servers_in(rows)
    by = {}
    for r in rows:
        by.setdefault(r["server"], []).append(r)
    levels = sorted({int(r["conns_requested"]) for r in rows})
    nrounds = len({r["round"] for r in rows})
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 5))
    from matplotlib.ticker import FuncFormatter

    # One group of bars per level of idle connections, in both panels.
    cfg = [(i, 0, f"{level:,} idle") for i, level in enumerate(levels)]
    for ax, col, ylabel, title in (
        (ax1, "bytes_per_conn", "bytes of server RSS per idle connection",
         f"RSS per idle connection (median of {nrounds}, bars = min–max)"),
        (ax2, "peak_bytes_per_conn", "bytes of peak RSS per connection",
         "peak while they open and make their first request"),
    ):
        d = {}
        for c, level in zip(cfg, levels):
            for s in servers:
                st = stats([r.get(col) for r in by[s] if int(r["conns_requested"]) == level and r.get(col)])
                if st:
                    d[(c, s)] = st
        grouped_bars(ax, cfg, servers, d, ylabel, title, lambda v: f"{v:,.0f} B")
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    print(f"plot.py: wrote {out}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--results", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    args = ap.parse_args()
    http_csv = os.path.join(args.results, "http.csv")
    idle_csv = os.path.join(args.results, "idle.csv")
    todo = [(p, f) for p, f in ((http_csv, plot_http), (idle_csv, plot_idle)) if os.path.exists(p)]
    if not todo:
        sys.exit(f"plot.py: neither {http_csv} nor {idle_csv} exists; run bench/http.sh or bench/idle.sh first")
    plt = import_pyplot()
    for path, fn in todo:
        rows = read(path)
        if not rows:
            print(f"plot.py: {path} is empty; skipped", file=sys.stderr)
            continue
        fn(plt, rows, path[: -len(".csv")] + ".png")


if __name__ == "__main__":
    main()
