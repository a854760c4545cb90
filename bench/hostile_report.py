#!/usr/bin/env python3
"""Turns results/hostile.csv (bench/hostile.sh) into results/hostile.md.

    hostile_report.py CSV MD COMMAND

Ratios are paired by round (attacked / calm of the same round), then the
median over rounds is taken, so a VM that drifts between rounds does not
bias the ratio."""
import csv
import os
import sys

from tables import fmt, med, num, rng


def main(path, out, command):
    rows = list(csv.DictReader(open(path)))
    by = {}
    for r in rows:
        by.setdefault(r["run"], []).append(r)
    rounds = sorted({r["round"] for r in rows})
    pair = {
        rd: {r["run"]: r for r in rows if r["round"] == rd}
        for rd in rounds
    }
    tput, p99 = [], []
    for rd, runs in pair.items():
        if "calm" in runs and "attacked" in runs:
            c, a = runs["calm"], runs["attacked"]
            if num(c["rps"]) and num(a["rps"]):
                tput.append(num(a["rps"]) / num(c["rps"]))
            if num(c["p99_ms"]) and num(a["p99_ms"]):
                p99.append(num(a["p99_ms"]) / num(c["p99_ms"]))
    col = lambda run, k, d=0: rng([num(r[k]) for r in by.get(run, [])], d)
    att = by.get("attacked", [{}])[0]
    lines = [
        f"Command: `{command}`. {len(rounds)} round(s); per round one run without attackers "
        "(calm) and one with them (attacked), each on a freshly started server; "
        "medians (min – max).",
        "",
        "| run | /orders req/s | p50 ms | p99 ms | errors | server CPU-s | PostgreSQL CPU-s | wrk CPU-s | attackers' CPU-s | server RSS KiB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for run in ("calm", "attacked"):
        lines.append(
            f"| {run} | {col(run, 'rps')} | {col(run, 'p50_ms', 1)} | {col(run, 'p99_ms', 1)} | "
            f"{col(run, 'errors')} | {col(run, 'server_cpu_s', 2)} | {col(run, 'pg_cpu_s', 2)} | "
            f"{col(run, 'wrk_cpu_s', 2)} | {col(run, 'attacker_cpu_s', 2)} | {col(run, 'rss_kib')} |"
        )
    t, p = med(tput), med(p99)
    lines += [
        "",
        f"- Throughput kept under attack: **{fmt(t, 2)}×** of calm (target ≥ 0.90: "
        f"{'met' if t is not None and t >= 0.9 else 'missed'}); per round {', '.join(fmt(x, 2) for x in tput)}.",
        f"- p99 under attack: **{fmt(p, 2)}×** of calm (target ≤ 2: "
        f"{'met' if p is not None and p <= 2 else 'missed'}); per round {', '.join(fmt(x, 2) for x in p99)}.",
    ]
    if att:
        answered = lambda k: sum(int(num(r[k]) or 0) for r in by.get("attacked", []))
        lines.append(
            f"- What the attackers were told (all attacked runs): {answered('answered_408'):,} × 408, "
            f"{answered('answered_503'):,} × 503, {answered('answered_other'):,} other, "
            f"{answered('closed'):,} closed without an answer; "
            f"{answered('attackers_opened'):,} attacker connections opened in all (each cut one is replaced)."
        )
    with open(out, "w") as f:
        f.write("\n".join(lines) + "\n")
    plot(by, os.path.join(os.path.dirname(out), "hostile.png"))


def plot(by, png):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    runs = [r for r in ("calm", "attacked") if r in by]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(8, 3.6))
    for ax, key, label in ((a1, "rps", "/orders req/s"), (a2, "p99_ms", "/orders p99 (ms)")):
        vals = [med([num(r[key]) for r in by[run]]) or 0 for run in runs]
        lows = [v - min(num(r[key]) for r in by[run]) for v, run in zip(vals, runs)]
        highs = [max(num(r[key]) for r in by[run]) - v for v, run in zip(vals, runs)]
        ax.bar(runs, vals, yerr=[lows, highs], capsize=4, color=["#4c72b0", "#c44e52"][: len(runs)])
        ax.set_title(label)
    fig.suptitle("64 clients on /orders, without and with 5,000 slowloris + 5,000 slow uploads")
    fig.tight_layout()
    fig.savefig(png, dpi=110)


if __name__ == "__main__":
    main(*sys.argv[1:4])
