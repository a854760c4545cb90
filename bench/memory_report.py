#!/usr/bin/env python3
"""Turns results/memory.csv (bench/memory.sh) into results/memory.md and
results/memory.png.

    memory_report.py CSV MD COMMAND
"""
import csv
import os
import sys

from tables import fmt, med, num, rng


def within(after, steady):
    """RSS back within 10 % or 2 MiB (the larger) of the steady figure."""
    return after - steady <= max(0.10 * steady, 2048)


def main(path, out, command):
    rows = list(csv.DictReader(open(path)))
    bursts = sorted(k for k in rows[0] if k.startswith("after_burst")) if rows else []
    allocs = []
    for r in rows:
        if r["allocator"] not in allocs:
            allocs.append(r["allocator"])
    col = lambda a, k, d=0: rng([num(r[k]) for r in rows if r["allocator"] == a], d)
    lines = [
        f"Command: `{command}`. Each allocator on a freshly started server per round "
        "(alternated); RSS in KiB, medians (min – max). *Steady*: after a /orders load "
        "(256 connections), 3 s later. *Idle*: bytes per idle keep-alive connection. "
        "*Peak*: highest RSS sampled every 50 ms while they all close at once.",
        "",
        "| allocator | /orders req/s | steady | with idle conns open | bytes per idle conn | peak while closing | after close | "
        + " | ".join(f"after burst {i + 1}" for i in range(len(bursts)))
        + " |",
        "|---|" + "---:|" * (6 + len(bursts)),
    ]
    verdicts = []
    for a in allocs:
        lines.append(
            f"| {a} | {col(a, 'orders_rps')} | {col(a, 'steady_kib')} | {col(a, 'open_kib')} | "
            f"{col(a, 'bytes_per_idle')} | {col(a, 'close_peak_kib')} | {col(a, 'after_close_kib')} | "
            + " | ".join(col(a, b) for b in bursts)
            + " |"
        )
        runs = [r for r in rows if r["allocator"] == a]
        back = all(
            within(num(r["after_close_kib"]), num(r["steady_kib"]))
            and all(within(num(r[b]), num(r["steady_kib"])) for b in bursts)
            for r in runs
        )
        peak_ok = all(num(r["close_peak_kib"]) <= 1.5 * num(r["open_kib"]) for r in runs)
        verdicts.append(
            f"- {a}: RSS back within 10 % / 2 MiB of steady after the close and every burst in "
            f"every round: **{'yes' if back else 'no'}**; peak while closing ≤ 1.5× the RSS with "
            f"them open: **{'yes' if peak_ok else 'no'}**."
        )
    lines += [""] + verdicts
    with open(out, "w") as f:
        f.write("\n".join(lines) + "\n")
    plot(rows, allocs, bursts, os.path.join(os.path.dirname(out), "memory.png"))


def plot(rows, allocs, bursts, png):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    stages = [("steady_kib", "steady"), ("open_kib", "idle open"), ("close_peak_kib", "closing peak"),
              ("after_close_kib", "after close")] + [(b, f"burst {i + 1}") for i, b in enumerate(bursts)]
    fig, ax = plt.subplots(figsize=(9, 4.5))
    width = 0.8 / max(1, len(allocs))
    for i, a in enumerate(allocs):
        vals = [med([num(r[k]) for r in rows if r["allocator"] == a]) or 0 for k, _ in stages]
        ax.bar([x + i * width for x in range(len(stages))], [v / 1024 for v in vals], width, label=a)
    ax.set_xticks([x + width * (len(allocs) - 1) / 2 for x in range(len(stages))])
    ax.set_xticklabels([s for _, s in stages])
    ax.set_ylabel("server RSS (MiB), median")
    ax.set_title("ringside memory through idle connections and /orders bursts, by allocator")
    ax.legend()
    fig.tight_layout()
    fig.savefig(png, dpi=110)


if __name__ == "__main__":
    main(*sys.argv[1:4])
