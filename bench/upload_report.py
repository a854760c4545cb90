#!/usr/bin/env python3
"""Summarize bench/upload.sh's runs: Markdown tables and a PNG.

    python3 bench/upload_report.py [--raw-dir results/tmp/upload-RUN] \
        --csv results/upload.csv --series results/upload-series.csv \
        --md results/upload.md [--png results/upload.png] \
        [--machine TEXT] [--command TEXT] [--slow-desc TEXT] [--rev REV]

With --raw-dir (what upload.sh does), first collects the run's raw files
(upload-rate.csv; normal.* and slowed.*: the probe's series and summary, the
pg_stat_progress_copy samples, CPU times) into --csv (one row per run: the
rows/s runs, then the two memory runs with their RSS and held-back figures)
and --series (both 1 GiB runs over time). Without it, re-draws the Markdown
and the PNG from those two files.

stdlib only, except matplotlib for the PNG (upload.sh installs it with pip
if missing).
"""

import argparse
import bisect
import csv
import json
import os
import statistics
import sys
from datetime import datetime

FIELDS = [
    "timestamp", "run", "round", "tool", "rows", "bytes", "wall_s", "rows_per_s", "mib_per_s",
    "server_cpu_s", "pg_cpu_s", "client_cpu_s", "other_cpu_s", "other_util", "status", "rev",
    "rss_before_kib", "rss_peak_kib", "rss_growth_kib", "rss_end_kib",
    "hwm_before_kib", "hwm_after_kib", "hwm_growth_kib",
    "sent_bytes", "window_s", "client_mib_s", "db_mib_s", "db_rows_s",
    "inflight_max_mib", "inflight_end_mib", "note",
]
SERIES_FIELDS = ["run", "t_s", "sent_bytes", "rss_kib", "db_bytes", "db_tuples"]
TOOLS = ["ringside", "psql"]
COLORS = {"ringside": "#d9822b", "psql": "#4a78b5", "normal": "#2a9d55", "slowed": "#c0392b"}
MIB = 1048576
NOISY_UTIL = 0.05
RSS_TARGET_MIB = 32
RATIO_TARGET = 0.90


# ------------------------------------------------------------- collect ---
def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def read_series(raw, name):
    """Probe samples [(t, sent, rss_kib)] and COPY progress [(t, bytes, tuples)]."""
    probe = []
    for r in read_csv(os.path.join(raw, f"{name}.series.csv")):
        rss = int(r["rss_kib"]) if r["rss_kib"] else None
        probe.append((float(r["epoch_s"]), int(r["sent_bytes"]), rss))
    prog = []
    path = os.path.join(raw, f"{name}.progress.csv")
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                parts = line.strip().split(",")
                if len(parts) != 3:
                    continue
                try:
                    prog.append((float(parts[0]), int(parts[1]), int(parts[2])))
                except ValueError:
                    continue
    return probe, prog


def sent_at(probe, t):
    """Bytes accepted at time t, interpolated between probe samples."""
    ts = [p[0] for p in probe]
    i = bisect.bisect_left(ts, t)
    if i <= 0:
        return probe[0][1]
    if i >= len(probe):
        return probe[-1][1]
    (t0, s0, _), (t1, s1, _) = probe[i - 1], probe[i]
    return s0 + (s1 - s0) * (t - t0) / (t1 - t0) if t1 > t0 else s1


def rate(points, lo, hi):
    """(value at end - value at start) / time over the samples in [lo, hi]."""
    pts = [p for p in points if lo <= p[0] <= hi]
    if len(pts) < 2 or pts[-1][0] <= pts[0][0]:
        return None
    return (pts[-1][1] - pts[0][1]) / (pts[-1][0] - pts[0][0])


def memory_row(raw, name, rev, slow_desc=""):
    summ = json.load(open(os.path.join(raw, f"{name}.summary.json")))
    cpu = {}
    if os.path.exists(os.path.join(raw, f"{name}.cpu.json")):
        cpu = json.load(open(os.path.join(raw, f"{name}.cpu.json")))
    probe, prog = read_series(raw, name)
    t0 = summ["t0"]
    secs = summ["seconds"]
    if summ["aborted"]:
        # Steady state: past the first seconds, in which the socket buffers
        # between client and database fill up.
        lo, hi = t0 + min(5.0, secs / 4), t0 + secs
        client = rate([(t, s) for t, s, _ in probe], lo, hi)
    else:
        lo, hi = t0, t0 + summ["last_send_s"]
        client = summ["sent_bytes"] / summ["last_send_s"] if summ["last_send_s"] > 0 else None
    db = rate([(t, b) for t, b, _ in prog], lo, hi)
    dbr = rate([(t, n) for t, _, n in prog], lo, hi)
    inflight = [sent_at(probe, t) - b for t, b, _ in prog if t <= t0 + secs]
    rows = ""
    body = summ.get("body") or ""
    if '"rows":' in body:
        rows = body.rsplit('"rows":', 1)[1].rstrip("}\n ")
    elif prog:
        rows = str(prog[-1][2])
    rps = ""
    if rows and not summ["aborted"] and secs > 0:
        rps = f"{int(rows) / secs:.0f}"
    ts = datetime.fromtimestamp(t0).astimezone().isoformat(timespec="seconds")
    f = lambda v, d=2: "" if v is None else f"{v:.{d}f}"
    return {
        "timestamp": ts, "run": f"memory-{name}", "round": 1, "tool": "ringside",
        "rows": rows, "bytes": summ["file_bytes"], "wall_s": f"{secs:.3f}",
        "rows_per_s": rps,
        "mib_per_s": "" if summ["aborted"] else f(summ["sent_bytes"] / secs / MIB),
        "server_cpu_s": cpu.get("server_cpu_s", ""), "pg_cpu_s": cpu.get("pg_cpu_s", ""),
        "status": "aborted" if summ["aborted"] else summ["status"], "rev": rev,
        "rss_before_kib": summ["rss_before_kib"], "rss_peak_kib": summ["rss_peak_kib"],
        "rss_growth_kib": summ["rss_peak_kib"] - summ["rss_before_kib"],
        "rss_end_kib": summ.get("rss_end_kib") or "",
        "hwm_before_kib": summ["hwm_before_kib"], "hwm_after_kib": summ["hwm_after_kib"] or "",
        "hwm_growth_kib": (summ["hwm_after_kib"] - summ["hwm_before_kib"]) if summ["hwm_after_kib"] else "",
        "sent_bytes": summ["sent_bytes"], "window_s": f"{hi - lo:.1f}",
        "client_mib_s": f(client / MIB if client is not None else None),
        "db_mib_s": f(db / MIB if db is not None else None),
        "db_rows_s": f(dbr, 0),
        "inflight_max_mib": f(max(inflight) / MIB if inflight else None),
        "inflight_end_mib": f(inflight[-1] / MIB if inflight else None),
        "note": f"{summ['samples']} RSS samples every {summ['interval_s']}s"
                + (f"; {slow_desc}" if slow_desc and name == "slowed" else ""),
    }


def series_rows(raw, name):
    summ = json.load(open(os.path.join(raw, f"{name}.summary.json")))
    probe, prog = read_series(raw, name)
    t0 = summ["t0"]
    out = [{"run": name, "t_s": f"{t - t0:.3f}", "sent_bytes": s, "rss_kib": "" if r is None else r,
            "db_bytes": "", "db_tuples": ""} for t, s, r in probe]
    out += [{"run": name, "t_s": f"{t - t0:.3f}", "sent_bytes": "", "rss_kib": "",
             "db_bytes": b, "db_tuples": n} for t, b, n in prog]
    out.sort(key=lambda r: float(r["t_s"]))
    return out


def collect(raw, csv_path, series_path, rev, slow_desc):
    rows = []
    rate_csv = os.path.join(raw, "upload-rate.csv")
    if os.path.exists(rate_csv):
        rows += read_csv(rate_csv)
    series = []
    for name in ("normal", "slowed"):
        if os.path.exists(os.path.join(raw, f"{name}.summary.json")):
            rows.append(memory_row(raw, name, rev, slow_desc))
            series += series_rows(raw, name)
    with open(csv_path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: r.get(k, "") for k in FIELDS})
    with open(series_path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=SERIES_FIELDS)
        w.writeheader()
        w.writerows(series)


# -------------------------------------------------------------- report ---
def num(v):
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def stats(vals):
    vals = [v for v in (num(x) for x in vals) if v is not None]
    if not vals:
        return None
    return statistics.median(vals), min(vals), max(vals)


def fmt(s, digits=0, unit=""):
    if s is None:
        return "n/a"
    f = f"{{:,.{digits}f}}"
    med, lo, hi = s
    if lo == hi:
        return f"{f.format(med)}{unit}"
    return f"{f.format(med)}{unit} ({f.format(lo)} – {f.format(hi)})"


def mib(kib):
    v = num(kib)
    return "n/a" if v is None else f"{v / 1024:,.1f} MiB"


def ratio(rate_rows):
    a = [r for r in rate_rows if r["tool"] == "ringside"]
    b = [r for r in rate_rows if r["tool"] == "psql"]
    if not a or not b:
        return None
    ma = statistics.median(float(r["rows_per_s"]) for r in a)
    mb = statistics.median(float(r["rows_per_s"]) for r in b)
    by_round = {r["round"]: float(r["rows_per_s"]) for r in b}
    per = [float(r["rows_per_s"]) / by_round[r["round"]] for r in a if r["round"] in by_round]
    return ma / mb, (min(per) if per else ma / mb), (max(per) if per else ma / mb)


def markdown(rows, args):
    rate_rows = [r for r in rows if r["run"] == "rate"]
    mem = {r["run"]: r for r in rows if r["run"].startswith("memory-")}
    out = ["# CSV upload: POST /contacts against psql \\copy", ""]
    if args.machine:
        out.append(f"Machine: {args.machine}.  ")
    if args.command:
        out.append(f"Command: `{args.command}`.  ")
    revs = sorted({r["rev"] for r in rows if r.get("rev")})
    if revs:
        out.append(f"Revision: {', '.join(revs)}.  ")
    stamps = sorted(r["timestamp"] for r in rows if r.get("timestamp"))
    if stamps:
        out.append(f"Measured: {stamps[0]} – {stamps[-1]}.")
    out.append("")
    out.append("Pinning: ringside (`--cores 0-0`) and every PostgreSQL process on CPU 0; "
               "curl, psql and the probe on CPU 1. The server shares CPU 0 with the backend "
               "running the COPY, whereas psql's own work (reading the file, framing CopyData) "
               "runs on CPU 1. Cluster: scripts/pg-test-cluster (fsync off, "
               "synchronous_commit off, full_page_writes off, shared_buffers 32MB).")
    out.append("")

    if rate_rows:
        n = rate_rows[0]["rows"]
        nbytes = int(rate_rows[0]["bytes"])
        rounds = len({r["round"] for r in rate_rows})
        out.append(f"## Rows per second: {int(n):,} rows ({nbytes / MIB:,.1f} MiB), {rounds} round(s)")
        out.append("")
        out.append("Median (min – max) over the rounds; wall time of the client process; "
                   "each run into an emptied table (TRUNCATE, VACUUM, CHECKPOINT), in one transaction. "
                   "CPU-seconds per run.")
        out.append("")
        out.append("| tool | rows/s | MiB/s | wall s | server CPU s | PostgreSQL CPU s | client CPU s |")
        out.append("|---|---:|---:|---:|---:|---:|---:|")
        for tool in TOOLS:
            rs = [r for r in rate_rows if r["tool"] == tool]
            if not rs:
                continue
            label = "ringside (curl -T → POST /contacts)" if tool == "ringside" else "psql `\\copy`"
            server = fmt(stats(r["server_cpu_s"] for r in rs), 2) if tool == "ringside" else "–"
            out.append(f"| {label} | {fmt(stats(r['rows_per_s'] for r in rs))} "
                       f"| {fmt(stats(r['mib_per_s'] for r in rs), 1)} "
                       f"| {fmt(stats(r['wall_s'] for r in rs), 2)} | {server} "
                       f"| {fmt(stats(r['pg_cpu_s'] for r in rs), 2)} "
                       f"| {fmt(stats(r['client_cpu_s'] for r in rs), 2)} |")
        rt = ratio(rate_rows)
        out.append("")
        if rt:
            verdict = "meets" if rt[0] >= RATIO_TARGET else "misses"
            out.append(f"**ringside / psql = {rt[0]:.2f}** (per round {rt[1]:.2f} – {rt[2]:.2f}); "
                       f"target ≥ {RATIO_TARGET:.2f}: {verdict} it.")
        noisy = [r for r in rate_rows if (num(r.get("other_util")) or 0) > NOISY_UTIL]
        if noisy:
            out.append("")
            out.append(f"**Warning**: {len(noisy)} run(s) shared the machine with other processes "
                       f"(> {NOISY_UTIL:.0%} of it busy with them: "
                       + ", ".join(f"{r['tool']} round {r['round']} {float(r['other_util']):.0%}" for r in noisy)
                       + "); do not trust these figures.")
        out.append("")

    if mem:
        out.append("## Server memory during a large upload")
        out.append("")
        out.append("A fresh server for each run; VmRSS of /proc/PID/status sampled every 50 ms "
                   "from just before the request to the response (the slowed run: until 5 s "
                   "after the client aborted). Growth = peak − before.")
        out.append("")
        out.append("| run | file | sent | seconds | rows/s | RSS before | RSS peak | **growth** | VmHWM growth | result |")
        out.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
        for key, label in (("memory-normal", "normal"), ("memory-slowed", "slowed")):
            r = mem.get(key)
            if not r:
                continue
            if key == "memory-slowed" and "; " in r.get("note", ""):
                label = f"slowed: {r['note'].split('; ', 1)[1]}"
            rps = f"{float(r['rows_per_s']):,.0f}" if num(r["rows_per_s"]) else "–"
            res = (f"HTTP {r['status']}, {int(r['rows']):,} rows" if r["status"] != "aborted"
                   else f"aborted by the client, {int(r['rows'] or 0):,} rows copied, rolled back")
            out.append(f"| {label} | {int(r['bytes']) / MIB:,.0f} MiB | {int(r['sent_bytes']) / MIB:,.1f} MiB "
                       f"| {float(r['wall_s']):.1f} | {rps} | {mib(r['rss_before_kib'])} | {mib(r['rss_peak_kib'])} "
                       f"| **{mib(r['rss_growth_kib'])}** | {mib(r['hwm_growth_kib'])} | {res} |")
        growth = [num(r["rss_growth_kib"]) for r in mem.values() if num(r["rss_growth_kib"]) is not None]
        if growth:
            worst = max(growth) / 1024
            verdict = "meets" if worst < RSS_TARGET_MIB else "misses"
            out.append("")
            out.append(f"Largest RSS growth {worst:.1f} MiB; target < {RSS_TARGET_MIB} MiB: {verdict} it.")
        n, s = mem.get("memory-normal"), mem.get("memory-slowed")
        if s:
            out.append("")
            out.append("### Back-pressure: the client held back by a slow database")
            out.append("")
            out.append("Bytes the kernel accepted from the client (non-blocking socket) against the "
                       "bytes PostgreSQL's COPY had processed (pg_stat_progress_copy, every 0.25 s). "
                       "In flight = accepted − processed: what sits in the socket buffers between "
                       "client, server and database, plus the server's chunk.")
            out.append("")
            out.append("| run | window | client sent MiB/s | COPY processed MiB/s | COPY rows/s | in flight, max | in flight, end |")
            out.append("|---|---:|---:|---:|---:|---:|---:|")
            for label, r in (("normal", n), ("slowed", s)):
                if not r:
                    continue
                win = "while sending" if label == "normal" else f"{float(r['window_s']):.0f} s before the abort"
                g = lambda k, d=1: f"{float(r[k]):,.{d}f}" if num(r[k]) is not None else "n/a"
                out.append(f"| {label} | {win} | {g('client_mib_s', 2)} | {g('db_mib_s', 2)} | {g('db_rows_s', 0)} "
                           f"| {g('inflight_max_mib')} MiB | {g('inflight_end_mib')} MiB |")
            if n and num(n["client_mib_s"]) and num(s["client_mib_s"]):
                out.append("")
                out.append(f"Slowed, the client's rate fell to {float(s['client_mib_s']) / float(n['client_mib_s']):.1%} "
                           f"of the normal run's and followed the database's "
                           f"({s['client_mib_s']} vs {s['db_mib_s']} MiB/s) while the server's RSS grew "
                           f"{mib(s['rss_growth_kib'])}.")
        out.append("")
    if args.png:
        out.append(f"![upload]({os.path.basename(args.png)})")
        out.append("")
    out.append("Raw data: `upload.csv` (one row per run), `upload-series.csv` (the large uploads over time).")
    return "\n".join(out) + "\n"


def plot(rows, series, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib missing: no PNG", file=sys.stderr)
        return
    rate_rows = [r for r in rows if r["run"] == "rate"]
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))
    ax = axes[0]
    xs, meds, los, his, cols, labels = [], [], [], [], [], []
    for i, tool in enumerate(TOOLS):
        s = stats(r["rows_per_s"] for r in rate_rows if r["tool"] == tool)
        if not s:
            continue
        xs.append(i); meds.append(s[0]); los.append(s[0] - s[1]); his.append(s[2] - s[0])
        cols.append(COLORS[tool]); labels.append("ringside\nPOST /contacts" if tool == "ringside" else "psql \\copy")
    from matplotlib.ticker import FuncFormatter
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
    if xs:
        ax.bar(xs, meds, yerr=[los, his], color=cols, capsize=6, width=0.6)
        ax.set_xticks(xs, labels)
        for x, m in zip(xs, meds):
            ax.text(x, m * 0.5, f"{m:,.0f}", ha="center", color="white", fontweight="bold")
        rt = ratio(rate_rows)
        n = int(rate_rows[0]["rows"])
        ax.set_title(f"{n:,} rows: rows/s (median, min–max)" + (f"\nringside / psql = {rt[0]:.2f}" if rt else ""))
    else:
        ax.set_title("rows/s: not measured")
    ax.set_ylabel("rows/s")
    ax.grid(axis="y", alpha=0.3)

    by_run = {}
    for r in series:
        by_run.setdefault(r["run"], []).append(r)
    ax = axes[1]
    mem = {r["run"]: r for r in rows if r["run"].startswith("memory-")}
    top = 0.0
    for run in ("normal", "slowed"):
        pts = [(float(r["t_s"]), float(r["rss_kib"]) / 1024) for r in by_run.get(run, []) if r["rss_kib"]]
        if pts:
            m = mem.get(f"memory-{run}", {})
            g = num(m.get("rss_growth_kib"))
            label = run + (f" (+{g / 1024:.1f} MiB peak growth)" if g is not None else "")
            ax.plot([p[0] for p in pts], [p[1] for p in pts], color=COLORS[run], label=label, lw=1.4)
            top = max(top, max(p[1] for p in pts))
    before = [num(m.get("rss_before_kib")) for m in mem.values() if num(m.get("rss_before_kib"))]
    if before:
        limit = min(before) / 1024 + RSS_TARGET_MIB
        ax.axhline(limit, color="k", ls=":", lw=1, label=f"target: before + {RSS_TARGET_MIB} MiB")
        top = max(top, limit)
    ax.set_ylim(0, top * 1.15 if top else 1)
    ax.set_xlabel("seconds since the request")
    ax.set_ylabel("server VmRSS (MiB)")
    size = next((int(r["bytes"]) for r in mem.values()), 0)
    ax.set_title(f"server RSS during a {size / MIB:,.0f} MiB upload\n(VmRSS every 50 ms)")
    ax.legend(fontsize=8, loc="center right")
    ax.grid(alpha=0.3)

    ax = axes[2]
    for run in ("normal", "slowed"):
        pts = [(float(r["t_s"]), float(r["sent_bytes"]) / MIB) for r in by_run.get(run, []) if r["sent_bytes"]]
        db = [(float(r["t_s"]), float(r["db_bytes"]) / MIB) for r in by_run.get(run, []) if r["db_bytes"]]
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], color=COLORS[run], label=f"{run}: accepted from the client", lw=1.5)
        if db:
            ax.plot([p[0] for p in db], [p[1] for p in db], color=COLORS[run], ls="--", lw=1.2,
                    label=f"{run}: processed by COPY")
        m = mem.get(f"memory-{run}")
        if m and m["status"] == "aborted":
            ax.axvline(float(m["wall_s"]), color=COLORS[run], ls=":", lw=1)
            ax.text(float(m["wall_s"]) - 0.3, 0.24, "slowed: the client\naborts", color=COLORS[run],
                    fontsize=8, ha="right", transform=ax.get_xaxis_transform())
        elif m and pts:
            done = next(p for p in pts if p[1] >= pts[-1][1])
            ax.annotate("all sent; the COPY ends (FK checks)\nand the 201 comes at the line's end", done,
                        xytext=(8, -30), textcoords="offset points", ha="left",
                        color=COLORS[run], fontsize=8)
    ax.set_xlabel("seconds since the request")
    ax.set_ylabel("MiB")
    ax.set_ylim(bottom=0)
    ax.set_title("upload progress: bytes accepted from the client\nand processed by COPY")
    ax.legend(fontsize=8, loc="center right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {path}", file=sys.stderr)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--raw-dir")
    ap.add_argument("--csv", required=True)
    ap.add_argument("--series", required=True)
    ap.add_argument("--md", required=True)
    ap.add_argument("--png")
    ap.add_argument("--machine", default="")
    ap.add_argument("--command", default="")
    ap.add_argument("--slow-desc", default="")
    ap.add_argument("--rev", default="")
    args = ap.parse_args()
    if args.raw_dir:
        collect(args.raw_dir, args.csv, args.series, args.rev, args.slow_desc)
    rows = read_csv(args.csv)
    series = read_csv(args.series) if os.path.exists(args.series) else []
    with open(args.md, "w") as f:
        f.write(markdown(rows, args))
    if args.png:
        plot(rows, series, args.png)
    return 0


if __name__ == "__main__":
    sys.exit(main())
