#!/usr/bin/env python3
"""Summarize a connection-scale run (bench/orders.sh --scale).

    scale_report.py SCALE.csv OUT.md OUT.png NOISY_UTIL

Per server and idle level (0 = the active connections alone): /orders 2xx
req/s with the idle connections held and the share of the server's own
idle-free throughput it kept, p99, server RSS at start / with the idle
connections open / after they closed, and bytes per idle connection.
Medians over the rounds, (min - max) when there are several. The plot shows
RSS against idle connections (left) and throughput kept (right), one line per
server. Writes the PNG only if matplotlib is importable.
"""

import csv
import sys

from tables import fmt, med, num, rng


def main(src, dst_md, dst_png, noisy_util):
    rows = list(csv.DictReader(open(src)))
    if not rows:
        sys.exit("scale_report: no rows")
    servers = list(dict.fromkeys(r["server"] for r in rows))
    # RSS just before each level's idle connections were opened: the
    # server's start for the first level, the previous level's "after" next.
    prev_after = {}
    for r in rows:
        key = (r["server"], r["round"])
        if int(r["idle_requested"]) == 0:
            prev_after[key] = num(r["rss_start_kib"])
            continue
        before = num(r.get("rss_before_kib")) if r.get("rss_before_kib") else prev_after.get(key)
        if before is not None and num(r["rss_idle_kib"]) is not None and num(r["idle_open"]):
            r["bytes_per_idle"] = (num(r["rss_idle_kib"]) - before) * 1024 / num(r["idle_open"])
        prev_after[key] = num(r["rss_after_kib"])
    levels = {}
    for r in rows:
        levels.setdefault(r["server"], {}).setdefault(int(r["idle_requested"]), []).append(r)
    first = rows[0]
    out = [
        "# Connection scale: idle keep-alive connections held while 256 clients drive /orders",
        "",
        f"Server on CPU(s) {first['server_cpus']} with PostgreSQL on {first['pg_cpus']}; wrk -t1 "
        f"-c{first['connections']} on {first['wrk_cpus']} and the idle holders (bench/hold_idle.py) beside it; "
        f"{first['duration_s']} s per run; open-files limit {first['nofile_limit']} per process; rev {first['rev']}. "
        "Each server runs once per round: /orders alone (idle 0), then with each idle level held. "
        "kept = 2xx req/s with the idle connections / 2xx req/s without them, same server, same round. "
        "RSS start = after the run without idle connections; after = 5 s after the idle connections closed. "
        "B/idle = (RSS with them open, before the load − RSS just before they were opened) / idle connections open.",
        "",
        "| server | idle open | failed | 2xx req/s | kept | p99 ms | errors | RSS start MiB | RSS idle MiB | B/idle | RSS after MiB | after vs start | runs |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    died = []
    for s in servers:
        for lvl in sorted(levels.get(s, {})):
            rs = [r for r in levels[s][lvl] if r.get("outcome", "ok") == "ok"]
            for r in levels[s][lvl]:
                if r.get("outcome", "ok") != "ok":
                    died.append(f"- {s}, round {r['round']}: {r['outcome']} — while {r['idle_requested']} idle "
                                f"connections were being opened ({r['idle_open']} open, {r['idle_failed']} failed).")
            if not rs:
                out.append(f"| {s} | {lvl:,} requested | | | | | | | | | | failed, see below | 0 |")
                continue
            col = lambda k: [num(r[k]) for r in rs]
            growth = [
                (num(r["rss_after_kib"]) / num(r["rss_start_kib"]) - 1) * 100
                for r in rs
                if num(r["rss_start_kib"]) and num(r["rss_after_kib"]) is not None
            ]
            mib = lambda k: [x / 1024 if x is not None else None for x in col(k)]
            out.append(
                f"| {s} | {rng(col('idle_open'))} | {fmt(med(col('idle_failed')))} | {rng(col('ok_rps'))} | "
                f"{'—' if lvl == 0 else rng(col('kept'), 2)} | {rng(col('p99_ms'), 1)} | {fmt(med(col('errors')))} | "
                f"{fmt(med(mib('rss_start_kib')), 1)} | {fmt(med(mib('rss_idle_kib')), 1)} | "
                f"{'—' if lvl == 0 else rng(col('bytes_per_idle'))} | {fmt(med(mib('rss_after_kib')), 1)} | "
                f"{'—' if lvl == 0 else (rng(growth, 1) + ' %')} | {len(rs)} |"
            )
    if died:
        out += ["", "Servers that did not survive a level:", ""] + died
    all_rows = rows
    rows = [r for r in rows if r.get("outcome", "ok") == "ok"]
    noisy = [r for r in rows if (num(r["other_cpu_util"]) or 0) > noisy_util]
    if noisy:
        out += ["", f"**Warning:** {len(noisy)} of {len(rows)} runs had other processes using more than "
                f"{noisy_util:.0%} of the machine (other_cpu_util in the CSV); their figures are suspect."]
    open(dst_md, "w").write("\n".join(out) + "\n")

    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    for s in servers:
        pts = [(k, [r for r in rs if r.get("outcome", "ok") == "ok"]) for k, rs in sorted(levels.get(s, {}).items())]
        pts = [(k, rs) for k, rs in pts if rs]
        xs = [med([num(r["idle_open"]) for r in rs]) for _, rs in pts]
        rss = [med([num(r["rss_idle_kib"]) for r in rs]) / 1024 for _, rs in pts]
        after = [med([num(r["rss_after_kib"]) for r in rs]) / 1024 for _, rs in pts]
        line = ax1.plot(xs, rss, marker="o", label=f"{s}: idle open")[0]
        ax1.plot(xs[1:], after[1:], marker="x", linestyle=":", color=line.get_color(), label=f"{s}: after close")
        kept = [med([num(r["kept"]) for r in rs]) for _, rs in pts]
        ax2.plot(xs, [k * 100 if k is not None else None for k in kept], marker="o", label=s)
    for s in servers:
        dead = [r for r in all_rows if r["server"] == s and r.get("outcome", "ok") != "ok"]
        if dead:
            x = med([num(r["idle_open"]) for r in dead])
            ax2.annotate(f"{s} died near {x:,.0f}", xy=(x, 90), xytext=(x * 0.55, 82),
                         arrowprops={"arrowstyle": "->"}, fontsize=8)
    ax1.set_xlabel("idle keep-alive connections")
    ax1.set_ylabel("server RSS (MiB)")
    ax1.set_yscale("log")
    ax1.set_title("Server memory")
    ax1.legend(fontsize=8)
    ax1.grid(alpha=0.3)
    ax2.set_xlabel("idle keep-alive connections")
    ax2.set_ylabel("% of its own /orders req/s without them")
    ax2.set_title(f"/orders throughput kept ({first['connections']} active)")
    ax2.axhline(90, color="grey", linestyle="--", linewidth=0.8)
    ax2.legend(fontsize=8)
    ax2.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(dst_png, dpi=110)


if __name__ == "__main__":
    if len(sys.argv) != 5:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4]))
