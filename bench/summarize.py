#!/usr/bin/env python3
"""Turn the raw benchmark CSVs into Markdown tables (stdlib only).

    summarize.py http bench/results/http.csv bench/results/http.md
    summarize.py idle bench/results/idle.csv bench/results/idle.md

Each call also rebuilds bench/results/RESULTS.md (next to the .md it wrote)
from http.md and idle.md, whichever exist.
"""

import csv
import os
import platform
import statistics
import subprocess
import sys
from datetime import datetime, timezone

NOISY = 0.05  # other processes' share of the machine's CPU above which a run is flagged

PINNING_HTTP = """\
Pinning protocol (2-CPU machine, CPUs 0 and 1):

- **1 core**: the server runs on CPU 0 (`taskset -c 0`; ringside `--cores 0-0`,
  hyper `--threads 1`), wrk runs on CPU 1 with one thread (`taskset -c 1 wrk -t1`).
  Server and load generator each own one CPU.
- **2 cores**: the server runs on CPUs 0,1 (ringside `--cores 0,1`, hyper
  `--threads 2`) and wrk runs on the same CPUs 0,1 with two threads
  (`taskset -c 0,1 wrk -t2`). wrk **shares** the cores with the server, so the
  2-core figures are load-generator bound: they compare the servers with each
  other under CPU contention, they are not a scaling measurement.

Each server is started fresh per round (servers alternate A B A B across
rounds), warmed up, then measured once without and once with pipelining.
Server CPU = utime+stime of the server process (fields 14+15 of
`/proc/PID/stat`, / `getconf CLK_TCK`) sampled right before and after each wrk
run. `server util` = server CPU-seconds / (wall seconds x cores);
`wrk util` = wrk CPU-seconds / (wall seconds x wrk threads). A value near 1.00
says that side was saturated (the bottleneck).
"""

PINNING_IDLE = """\
Pinning: the server runs on 1 core, CPU 0 (`taskset -c 0`; ringside
`--cores 0-0`, hyper `--threads 1`); the holder (`bench/hold_idle.py`, its own
process, as the open-files limit is per process) runs on CPU 1. Each of the N
connections sends one full `GET /plaintext` and reads its response, then stays
open idle (keep-alive). RSS is VmRSS of `/proc/PID/status`: *before* = server
started and answered its health checks; *open* = all N connections idle (after
the hold period); *after* = a few seconds after the holder closed them all.
Per idle connection = (open - before) / connections actually open.
*Peak while opening* = (VmHWM once all are open - before) / connections open,
the peak reset (`/proc/PID/clear_refs`) right before they open: what opening
them and answering their first requests cost at most, transient state included.
"""


def read_rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def fnum(x):
    try:
        return float(x)
    except (TypeError, ValueError):
        return None


def med(vals):
    vals = [v for v in vals if v is not None]
    return statistics.median(vals) if vals else None


def rng(vals):
    vals = [v for v in vals if v is not None]
    return (min(vals), max(vals)) if vals else (None, None)


def fmt(v, spec=",.0f"):
    return "n/a" if v is None else format(v, spec)


def fmt_range(vals, spec=",.0f"):
    lo, hi = rng(vals)
    return "n/a" if lo is None else f"{format(lo, spec)} – {format(hi, spec)}"


def machine_lines():
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        with open("/proc/meminfo") as f:
            mem_kb = int(f.readline().split()[1])
        mem = f"{mem_kb / 1024 / 1024:.0f} GiB"
    except (OSError, ValueError, IndexError):
        mem = "?"
    return f"{os.cpu_count()} CPUs ({cpu}), {mem} RAM, Linux {platform.release()}"


def tool_version(cmd):
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=5)
        return (out.stdout + out.stderr).strip().splitlines()[0]
    except (OSError, IndexError, subprocess.SubprocessError):
        return "unknown"


def header(title, rows):
    revs = sorted({r.get("rev", "") for r in rows if r.get("rev")})
    stamps = sorted(r["timestamp"] for r in rows if r.get("timestamp"))
    when = f"{stamps[0]} .. {stamps[-1]}" if stamps else "?"
    return [
        f"# {title}",
        "",
        f"- Generated: {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}; runs {when}",
        f"- Machine: {machine_lines()}",
        f"- ringside repo revision: {', '.join(revs) or '?'}",
    ]


def summarize_http(rows):
    rounds = len({r["round"] for r in rows})
    durations = sorted({r["duration_s"] for r in rows})
    conns = sorted({r["connections"] for r in rows})
    out = header("HTTP benchmark: GET /plaintext", rows)
    out += [
        f"- Load generator: {tool_version(['wrk', '--version'])}",
        f"- {rounds} round(s) of {', '.join(durations)} s per run, {', '.join(conns)} connections; "
        "figures are median and min – max over the rounds",
        "",
        PINNING_HTTP,
        "| cores | pipelining | server | runs | req/s median | req/s min – max | p99 ms median | p99 ms min – max "
        "| server CPU-s per 100k req | server util | wrk util | machine idle | other load | errors |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    groups = {}
    for r in rows:
        key = (int(r["cores"]), int(r["pipeline_depth"]), r["server"])
        groups.setdefault(key, []).append(r)
    order = {"ringside": 0, "hyper": 1}
    keys = sorted(groups, key=lambda k: (k[0], k[1], order.get(k[2], 9), k[2]))
    medians = {}
    noisy = []
    for k in keys:
        g = groups[k]
        rps = [fnum(r["rps"]) for r in g]
        p99 = [v if v is not None and v > 0 else None for v in (fnum(r["p99_ms"]) for r in g)]
        cpu = [fnum(r["cpu_s_per_100k_req"]) for r in g]
        sutil = [fnum(r["server_cpu_util"]) for r in g]
        wutil = [fnum(r["wrk_cpu_util"]) for r in g]
        other = [fnum(r.get("other_cpu_util")) for r in g]
        noisy += [r for r in g if (fnum(r.get("other_cpu_util")) or 0) > NOISY]
        errs = sum(int(fnum(r["socket_errors"]) or 0) + int(fnum(r["non2xx"]) or 0) for r in g)
        medians[k] = med(rps)
        pipe = "none" if k[1] == 1 else f"depth {k[1]}"
        p99_med = fmt(med(p99), ".2f")
        valid = sum(v is not None for v in p99)
        if valid < len(g):
            p99_med += f" ({valid}/{len(g)} valid)"
        if k[1] > 1 and valid:
            p99_med += " †"
        out.append(
            f"| {k[0]} | {pipe} | {k[2]} | {len(g)} | {fmt(med(rps))} | {fmt_range(rps)} | "
            f"{p99_med} | {fmt_range(p99, '.2f')} | {fmt(med(cpu), '.3f')} | "
            f"{fmt(med(sutil), '.2f')} | {fmt(med(wutil), '.2f')} | {fmt(med([fnum(r.get('machine_idle')) for r in g]), '.2f')} | {fmt(max((v for v in other if v is not None), default=None), '.2f')} | {errs} |"
        )
    if noisy:
        out += [
            "",
            f"**Warning: {len(noisy)} run(s) shared the machine with other work (other load > {NOISY:.2f}); "
            "their figures are not trustworthy. Re-run on a quiet machine.** Runs: "
            + ", ".join(f"round {r['round']} {r['server']} {r['cores']}c depth {r['pipeline_depth']} "
                        f"({float(r['other_cpu_util']):.2f})" for r in noisy),
        ]
    # Paired ratios: ringside vs hyper within the same round (run minutes apart),
    # which cancels most of the slow drift of this VM's speed.
    ratio_rows = []
    for (cores, depth, server), m in sorted(medians.items()):
        if server != "ringside" or (cores, depth, "hyper") not in groups:
            continue
        r_by_round = {r["round"]: r for r in groups[(cores, depth, "ringside")]}
        h_by_round = {r["round"]: r for r in groups[(cores, depth, "hyper")]}
        both = sorted(set(r_by_round) & set(h_by_round), key=int)
        rps_ratios = [fnum(r_by_round[k]["rps"]) / fnum(h_by_round[k]["rps"]) for k in both]
        cpu_ratios = [
            fnum(r_by_round[k]["cpu_s_per_100k_req"]) / fnum(h_by_round[k]["cpu_s_per_100k_req"])
            for k in both
            if fnum(h_by_round[k]["cpu_s_per_100k_req"])
        ]
        pipe = "none" if depth == 1 else f"depth {depth}"
        ratio_rows.append(
            f"| {cores} | {pipe} | {fmt(med(rps_ratios), '.2f')}x | {fmt_range(rps_ratios, '.2f')} | "
            f"{fmt(med(cpu_ratios), '.2f')}x | {fmt_range(cpu_ratios, '.2f')} |"
        )
    if ratio_rows:
        out += [
            "",
            "ringside / hyper, paired by round (each round runs both servers minutes apart, so this "
            "cancels most of the VM's slow drift in speed):",
            "",
            "| cores | pipelining | req/s ratio median | min – max | CPU per request ratio median | min – max |",
            "|---|---|---:|---:|---:|---:|",
        ] + ratio_rows
    out += [
        "",
        "p99: wrk's `--latency` 99th percentile. With pipelining wrk records one latency per batch of "
        "requests (from the write of the batch to its last response). † wrk 4.1 then applies its "
        "coordinated-omission correction with an interval computed per *response* (16x too short), which "
        "adds synthetic samples: pipelined percentiles are indicative only, and when the correction puts "
        "samples below the histogram minimum wrk prints `0.00us` (recorded as NA, shown as not valid). "
        "Compare pipelined servers by req/s and CPU per request, not by p99.",
        "",
        "`server util`, `wrk util`, `machine idle`: medians. `machine idle` = idle share of both CPUs "
        "during the run (`/proc/stat`); idle time while neither side is saturated points to the two "
        "waiting on each other (wake-up latency on this VM) rather than to other processes taking the CPU.",
        "",
        "`other load` = the largest share of the machine's CPU (both CPUs) that processes other than the "
        "server and wrk used during a run (user+system time from `/proc/stat`; irq/softirq time, mostly "
        f"loopback networking, excluded). Above {NOISY:.2f} a run is flagged as noisy.",
        "",
        "`errors` = wrk socket errors (connect/read/write/timeout) + non-2xx responses, summed over the runs.",
        "Raw runs: `http.csv` (one row per wrk run). Plot: `http.png`.",
    ]
    return "\n".join(out) + "\n"


def summarize_idle(rows):
    n = sorted({r["conns_requested"] for r in rows})
    holds = sorted({r["hold_s"] for r in rows})
    rounds = len({r["round"] for r in rows})
    out = header("Idle keep-alive connections: server memory", rows)
    out += [
        f"- {rounds} round(s); {', '.join(n)} idle connections held {', '.join(holds)} s; "
        "figures are median and min – max over the rounds",
        "",
        PINNING_IDLE,
        "| idle conns | server | runs | conns open | server fds | bytes per idle conn median | min – max | peak while opening, bytes per conn | RSS before MiB | RSS open MiB "
        "| RSS after close MiB | retained after close MiB | server CPU-s while idle | failed / closed by server |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    groups = {}
    for r in rows:
        groups.setdefault((int(r["conns_requested"]), r["server"]), []).append(r)
    order = {"ringside": 0, "before": 1, "hyper": 2}
    mib = 1024 * 1024
    for level, s in sorted(groups, key=lambda k: (k[0], order.get(k[1], 9), k[1])):
        g = groups[(level, s)]
        per = [fnum(r["bytes_per_conn"]) for r in g]
        opened = [fnum(r["conns_open"]) for r in g]

        def m(col, scale=1.0):
            v = med([fnum(r.get(col)) for r in g])
            return None if v is None else v / scale

        fails = sum(int(fnum(r["conn_failures"]) or 0) for r in g)
        closed = sum(int(fnum(r["closed_by_server"]) or 0) for r in g)
        out.append(
            f"| {level:,} | {s} | {len(g)} | {fmt(med(opened))} | {fmt(m('server_fds_open'))} | {fmt(med(per))} | {fmt_range(per)} | "
            f"{fmt(m('peak_bytes_per_conn'))} | {fmt(m('rss_before_bytes', mib), '.1f')} | {fmt(m('rss_open_bytes', mib), '.1f')} | "
            f"{fmt(m('rss_after_bytes', mib), '.1f')} | {fmt(m('retained_after_close_bytes', mib), '.1f')} | "
            f"{fmt(m('idle_cpu_s'), '.2f')} | {fails} / {closed} |"
        )
    out += [
        "",
        "`server fds` = open descriptors of the server while the connections were held (N plus its listener, rings, ...). "
        "`failed` = connections the holder could not open or whose first request failed; "
        "`closed by server` = connections the server closed during the hold (an idle timeout would show here).",
        "Raw runs: `idle.csv`. Plot: `idle.png`.",
    ]
    return "\n".join(out) + "\n"


def write_results_index(out_dir):
    parts = [
        "# ringside benchmark results",
        "",
        "Produced by `bench/http.sh` and `bench/idle.sh` (see `bench/README.md`).",
        "",
    ]
    for name, png in (("http.md", "http.png"), ("idle.md", "idle.png")):
        p = os.path.join(out_dir, name)
        if os.path.exists(p):
            with open(p) as f:
                text = f.read().rstrip("\n")
            # demote the section's title one level
            text = "\n".join(("#" + line) if line.startswith("#") else line for line in text.splitlines())
            parts += [text, ""]
            if os.path.exists(os.path.join(out_dir, png)):
                parts += [f"![{png}]({png})", ""]
    with open(os.path.join(out_dir, "RESULTS.md"), "w") as f:
        f.write("\n".join(parts))


def main():
    if len(sys.argv) != 4 or sys.argv[1] not in ("http", "idle"):
        sys.exit(__doc__)
    kind, csv_path, md_path = sys.argv[1:]
    rows = read_rows(csv_path)
    if not rows:
        sys.exit(f"summarize.py: {csv_path} has no rows")
    text = summarize_http(rows) if kind == "http" else summarize_idle(rows)
    with open(md_path, "w") as f:
        f.write(text)
    write_results_index(os.path.dirname(os.path.abspath(md_path)))


if __name__ == "__main__":
    main()
