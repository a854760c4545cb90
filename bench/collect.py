#!/usr/bin/env python3
"""Builds bench/RESULTS.md from the scenario summaries in bench/results/.

    python3 bench/collect.py [RESULTS_DIR]

With a results directory other than bench/results (e.g. bench/run --quick's
bench/results/quick), RESULTS.md is written there and the targets are left
out: they judge the published figures, not a check run.

The header states machine, kernel, commit and date (machine and kernel
from RESULTS_DIR/MACHINE when that file exists: the figures may have been
measured on another machine than the one collecting them); then comes the
hand-kept assessment of the targets (bench/targets.md, if present), then
every scenario's Markdown summary (each names the command that produced it)
with its plot.
"""
import os
import platform
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")
ORDER = [
    ("http", "GET /plaintext: ringside vs hyper"),
    ("idle", "Idle keep-alive connections: memory"),
    ("pgclient", "PostgreSQL client: ringside vs tokio-postgres"),
    ("orders", "GET /orders: ringside vs threaded vs tokio"),
    ("orders-ab", "GET /orders: this commit against an earlier one (bench/orders.sh --before)"),
    ("orders-pg", "GET /orders against PostgreSQL alone, with and without coalescing"),
    ("orders-pg-ab", "GET /orders against PostgreSQL alone: this commit against an earlier one (--before)"),
    ("orders-tls", "GET /orders with PostgreSQL over TLS against plain TCP"),
    ("replica", "GET /orders with reads on a streaming replica, and the scale-out model"),
    ("tls", "HTTPS: ringside against nginx and against plain HTTP"),
    ("techempower-batch", "TechEmpower /db, /fortunes, /queries with and without --db-batch"),
    ("far", "GET /orders with a far-away database"),
    ("far-ab", "GET /orders with a far-away database: this commit against the session's first"),
    ("scale", "Connection scale: idle connections beside an /orders load"),
    ("upload", "CSV upload: POST /contacts vs psql \\copy"),
    ("spread", "Accept spread over cores"),
    ("hostile", "Hostile clients: slowloris and slow uploads beside /orders"),
    ("memory", "Memory after bursts, by allocator"),
    ("techempower", "TechEmpower test types: against published Rust implementations"),
]

# Scenarios whose summaries do not name their command: bench/run runs them
# with their defaults. (The others write the command they ran themselves.)
COMMANDS = {
    "http": "bench/http.sh",
    "idle": "bench/idle.sh",
    "spread": "bench/spread.sh",
}


def sh(*cmd):
    try:
        return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip()
    except Exception:
        return "unknown"


def cpu_model():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main(results=RESULTS):
    published = os.path.abspath(results) == RESULTS
    out = ["# ringside benchmark results", ""]
    machine = os.path.join(results, "MACHINE")
    if os.path.exists(machine):
        out += [l.rstrip() for l in open(machine) if l.strip()]
    else:
        out.append(
            f"- Machine: {os.cpu_count()} CPUs ({cpu_model()}), "
            f"{round(os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30)} GiB RAM"
        )
        out.append(f"- Kernel: Linux {platform.release()}")
    out.append(f"- Commit: {sh('git', '-C', HERE, 'rev-parse', '--short', 'HEAD')}")
    out.append(f"- Collected: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    out.append("- Reproduce everything: `bench/run` (about 37 min); one scenario: `bench/run --only NAME`.")
    out.append("  The pinning protocol and each script's options are in `bench/README.md`.")
    out.append("")
    targets = os.path.join(HERE, "targets.md")
    if published and os.path.exists(targets):
        out.append(open(targets).read().rstrip())
        out.append("")
    for name, title in ORDER:
        md = os.path.join(results, f"{name}.md")
        if not os.path.exists(md):
            continue
        out.append(f"## {title}")
        out.append("")
        body = open(md).read().strip().splitlines()
        # Demote the scenario's own headings below ours.
        out.extend(("#" + l if l.startswith("#") else l) for l in body)
        if name in COMMANDS and not any("bench/" in l for l in body):
            out += ["", f"Command: `{COMMANDS[name]}` (as `bench/run` runs it)."]
        png = os.path.join(results, f"{name}.png")
        if os.path.exists(png):
            rel = f"results/{name}.png" if published else f"{name}.png"
            out += ["", f"![{title}]({rel})"]
        out.append("")
    dest = os.path.join(HERE, "RESULTS.md") if published else os.path.join(results, "RESULTS.md")
    with open(dest, "w") as f:
        f.write("\n".join(out) + "\n")
    print(f"wrote {dest}")


if __name__ == "__main__":
    main(os.path.abspath(sys.argv[1]) if len(sys.argv) > 1 else RESULTS)
