#!/usr/bin/env python3
"""Per-request counts from callgrind dumps (bench/techempower.sh --callgrind).

Usage: callgrind_report.py RUNS CSV_OUT MD_OUT

RUNS has one line per recorded run: round,server,test,wrk_log,dump_file. The
dump holds the server's counts over that run only (dumped before and after
it); the wrk log gives the requests answered. Per request: user-space
instructions (Ir), data reads and writes (Dr, Dw), simulated first-level
data-cache misses (D1mr + D1mw) and last-level ones (DLmr + DLmw). The
Markdown adds, per server, the functions with the most instructions of their
own (exclusive) per request in the first test.
"""

import collections
import csv
import statistics
import sys

EVENTS = ["Ir", "Dr", "Dw", "D1mr", "D1mw", "DLmr", "DLmw"]


def requests_of(wrk_log):
    with open(wrk_log) as f:
        for line in f:
            if " requests in " in line:
                return int(line.split()[0])
    raise SystemExit(f"callgrind_report.py: no request count in {wrk_log}")


def read_dump(path):
    """Totals per event, and exclusive Ir per function (uncompressed names)."""
    events, totals, own = None, None, collections.Counter()
    fn, after_calls = None, False
    with open(path) as f:
        for line in f:
            if line.startswith("events:"):
                events = line.split()[1:]
            elif line.startswith(("summary:", "totals:")):
                totals = [int(x) for x in line.split()[1:]]
            elif line.startswith("fn="):
                fn = line[3:].strip()
            elif line.startswith("calls="):
                # The cost line after a call line is the callee's, inclusive.
                after_calls = True
            elif line[:1].isdigit() or line[:1] in "+-*":
                parts = line.split()
                if len(parts) >= 2:
                    if after_calls:
                        after_calls = False
                    else:
                        own[fn] += int(parts[1])
    if events is None or totals is None:
        raise SystemExit(f"callgrind_report.py: {path} has no event totals")
    return dict(zip(events, totals)), own


def main():
    runs_path, csv_out, md_out = sys.argv[1:4]
    rows, own_by = [], {}
    with open(runs_path) as f:
        for line in f:
            rnd, server, test, wrk_log, dump = line.strip().split(",", 4)
            n = requests_of(wrk_log)
            totals, own = read_dump(dump)
            rows.append({"round": rnd, "server": server, "test": test, "requests": n,
                         **{e: totals.get(e, 0) / n for e in EVENTS}})
            own_by.setdefault((server, test), []).append({k: v / n for k, v in own.items()})
    if not rows:
        raise SystemExit("callgrind_report.py: no runs recorded")
    with open(csv_out, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["round", "server", "test", "requests"] + EVENTS)
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.2f}" if isinstance(v, float) else v) for k, v in r.items()})

    tests = list(dict.fromkeys(r["test"] for r in rows))
    servers = list(dict.fromkeys(r["server"] for r in rows))
    med = {}
    for (s, t) in {(r["server"], r["test"]) for r in rows}:
        sel = [r for r in rows if r["server"] == s and r["test"] == t]
        med[(s, t)] = {e: statistics.median(r[e] for r in sel) for e in EVENTS}
        med[(s, t)]["runs"] = len(sel)
    out = ["## Instructions and simulated cache misses per request (callgrind)", "",
           "User space only (the kernel's work is not counted). Medians over the runs; "
           "the last column is the instructions against ringside's.", ""]
    for t in tests:
        out += [f"### {t}", "",
                "| server | runs | instructions | data reads + writes | D1 misses | LL misses | instructions vs ringside |",
                "|---|---:|---:|---:|---:|---:|---:|"]
        base = med.get(("ringside", t))
        for s in servers:
            m = med.get((s, t))
            if m is None:
                continue
            ratio = f"{m['Ir'] / base['Ir']:.2f}×" if base else "–"
            out.append(f"| {s} | {m['runs']} | {m['Ir']:.0f} | {m['Dr'] + m['Dw']:.0f} | "
                       f"{m['D1mr'] + m['D1mw']:.2f} | {m['DLmr'] + m['DLmw']:.2f} | {ratio} |")
        out.append("")
    first = tests[0]
    out += [f"### Where the instructions go ({first}; exclusive, per request, first run)", ""]
    for s in servers:
        owns = own_by.get((s, first))
        if not owns:
            continue
        out += [f"{s}:", "", "| instructions | function |", "|---:|---|"]
        for fn, v in collections.Counter(owns[0]).most_common(12):
            name = fn if len(fn) <= 100 else fn[:97] + "..."
            out.append(f"| {v:.1f} | `{name}` |")
        out.append("")
    with open(md_out, "w") as f:
        f.write("\n".join(out))


if __name__ == "__main__":
    main()
