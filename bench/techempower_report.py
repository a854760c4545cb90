#!/usr/bin/env python3
"""Summarize a TechEmpower run (bench/techempower.sh).

    techempower_report.py TECHEMPOWER.csv OUT.md OUT.png NOISY_UTIL [DISCARDED.csv MAX_STEAL]

Per test and server: successful req/s (median, min - max over the rounds),
p99, errors, server CPU-seconds per 10,000 requests, wrk's CPU use; then per
test the ratio of ringside to the best peer (by median req/s), of the medians
and, paired round by round, its span. The plot has
one panel per test, one bar per server with its min - max as an error bar.
With DISCARDED.csv (the runs measured again because the host stole more than
MAX_STEAL of the machine's CPU time during them), the report counts them.
"""

import csv
import statistics
import sys

from tables import fmt, med, num, rng

TITLES = {
    "db": "/db",
    "fortunes": "/fortunes",
    "plaintext": "/plaintext, 16 pipelined",
    "json": "/json",
    "queries": "/queries, 20 per request",
    "updates": "/updates, 20 per request",
}


def main(src, dst_md, dst_png, noisy_util, discarded_src=None, max_steal=None):
    rows = list(csv.DictReader(open(src)))
    if not rows:
        sys.exit("techempower_report: no rows")
    servers = list(dict.fromkeys(r["server"] for r in rows))
    tests = list(dict.fromkeys(r["test"] for r in rows))
    g = {}
    for r in rows:
        g.setdefault((r["test"], r["server"]), []).append(r)
    first = rows[0]
    out = [
        "# TechEmpower test types: ringside vs published Rust implementations",
        "",
        f"Every server and PostgreSQL on CPU 0, wrk -t1 on CPU 1; {first['connections']} connections, "
        f"{first['duration_s']} s per run; rev {first['rev']}. Median over the rounds (min – max). "
        "ok req/s counts 2xx responses; CPU/10k = server CPU-seconds per 10,000 requests; PostgreSQL CPU s/10k = "
        "the cluster's, which shares CPU 0 with the server, so a server whose queries cost PostgreSQL less leaves itself more; "
        "wrk util = wrk's share of its own core (near 1.0: wrk is the bottleneck).",
        "",
        "| test | server | ok req/s | p99 ms | errors | server CPU s/10k | PostgreSQL CPU s/10k | server util | wrk util | runs |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for t in tests:
        for s in servers:
            rs = g.get((t, s), [])
            if not rs:
                continue
            col = lambda k: [num(r[k]) for r in rs]
            errors = [num(r["non2xx"]) + num(r["socket_errors"]) for r in rs]
            pg_per_10k = [num(r["pg_cpu_s"]) / num(r["requests"]) * 10000 for r in rs]
            out.append(
                f"| {TITLES.get(t, t)} | {s} | {rng(col('ok_rps'))} | {rng(col('p99_ms'), 1)} | {fmt(med(errors))} | "
                f"{fmt(med(col('server_cpu_s_per_10k_req')), 3)} | {fmt(med(pg_per_10k), 3)} | "
                f"{fmt(med(col('server_cpu_util')), 2)} | "
                f"{fmt(med(col('wrk_cpu_util')), 2)} | {len(rs)} |"
            )
    ours = [s for s in servers if s == "ringside" or s.startswith("ringside-")]
    peers = [s for s in servers if s not in ours]
    if peers and ours:
        out += ["", "Ratio of ringside (and its variants) to the best peer (by median ok req/s; "
                "CPU per request: lower is better for ringside):", "",
                "| test | server | best peer | req/s ratio | CPU/10k ratio | req/s ratio by round | CPU/10k ratio by round |",
                "|---|---|---|---:|---:|---:|---:|"]
        # The same round's runs side by side: the VM's speed drifts between
        # rounds more than between two servers of one round.
        by_round = {(r["test"], r["server"], r["round"]): r for r in rows}
        for t in tests:
            meds = {s: med([num(r["ok_rps"]) for r in g.get((t, s), [])]) for s in servers}
            cands = [p for p in peers if meds.get(p)]
            if not cands:
                continue
            best = max(cands, key=lambda p: meds[p])
            for o in ours:
                if not meds.get(o):
                    continue
                cpu = {s: med([num(r["server_cpu_s_per_10k_req"]) for r in g.get((t, s), [])]) for s in (o, best)}
                cpu_ratio = cpu[o] / cpu[best] if cpu[o] and cpu[best] else None
                paired = {"ok_rps": [], "server_cpu_s_per_10k_req": []}
                for rd in dict.fromkeys(r["round"] for r in g.get((t, o), [])):
                    a, b = by_round.get((t, o, rd)), by_round.get((t, best, rd))
                    for k in paired:
                        if a and b and num(a[k]) and num(b[k]):
                            paired[k].append(num(a[k]) / num(b[k]))
                spans = [f"{min(v):.2f} – {max(v):.2f}" if v else "NA" for v in paired.values()]
                out.append(f"| {TITLES.get(t, t)} | {o} | {best} | {meds[o] / meds[best]:.2f} | {fmt(cpu_ratio, 2)} | "
                           f"{spans[0]} | {spans[1]} |")
    noisy = [r for r in rows if (num(r["other_cpu_util"]) or 0) > noisy_util]
    if noisy:
        out += ["", f"**Warning:** {len(noisy)} of {len(rows)} runs had other processes using more than "
                f"{noisy_util:.0%} of the machine (other_cpu_util in the CSV); their figures are suspect."]
    if max_steal is not None:
        discarded = list(csv.DictReader(open(discarded_src))) if discarded_src else []
        steals = [num(r.get("steal_share")) for r in rows if num(r.get("steal_share")) is not None]
        stolen = [s for s in steals if s > max_steal]
        note = (f"Host steal: {len(discarded)} run(s) discarded and measured again because the host took more "
                f"than {max_steal:.1%} of the machine's CPU time during them (the same rule for every server); "
                f"kept runs' steal share: median {fmt(med(steals), 3)}, max {fmt(max(steals) if steals else None, 3)}.")
        if stolen:
            note += (f" **{len(stolen)} kept run(s) still above it** (their retries ran out): "
                     "their figures are suspect.")
        out += ["", note]
    open(dst_md, "w").write("\n".join(out) + "\n")

    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, axes = plt.subplots(1, len(tests), figsize=(3.2 * len(tests) + 1, 4), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, t in zip(axes[0], tests):
        vals, lo, hi, names = [], [], [], []
        for s in servers:
            v = [num(r["ok_rps"]) for r in g.get((t, s), []) if num(r["ok_rps"]) is not None]
            if not v:
                continue
            m = statistics.median(v)
            names.append(s)
            vals.append(m / 1000)
            lo.append((m - min(v)) / 1000)
            hi.append((max(v) - m) / 1000)
        ax.bar(range(len(vals)), vals, yerr=[lo, hi], capsize=3,
               color=[colors[servers.index(s) % len(colors)] for s in names])
        ax.set_xticks(range(len(vals)))
        ax.set_xticklabels(names, rotation=30, ha="right", fontsize=8)
        ax.set_title(TITLES.get(t, t), fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel("thousand ok req/s (1 server core)")
    fig.tight_layout()
    fig.savefig(dst_png, dpi=110)


if __name__ == "__main__":
    if len(sys.argv) not in (5, 7):
        sys.exit(__doc__)
    extra = (sys.argv[5], float(sys.argv[6])) if len(sys.argv) == 7 else ()
    main(sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4]), *extra)
