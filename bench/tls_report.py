#!/usr/bin/env python3
"""Summarises bench/tls.sh's CSV: tables (Markdown) and a plot (PNG).

    tls_report.py tls.csv tls.md tls.png "COMMAND"
"""
import csv
import statistics
import sys


def med(vals):
    vals = [v for v in vals if v is not None]
    return statistics.median(vals) if vals else None


def num(x):
    try:
        return float(x)
    except (TypeError, ValueError):
        return None


def main(csv_path, md_path, png_path, command):
    rows = list(csv.DictReader(open(csv_path)))
    groups = {}
    for r in rows:
        groups.setdefault((r["scenario"], r["server"], r["cert"]), []).append(r)

    def stat(key, col):
        vals = [num(r[col]) for r in groups.get(key, [])]
        vals = [v for v in vals if v is not None]
        if not vals:
            return None, None, None
        return statistics.median(vals), min(vals), max(vals)

    rounds = len({r["round"] for r in rows})
    rev = rows[0]["rev"] if rows else "?"
    out = [
        "## HTTPS: ringside against nginx and against plain HTTP",
        "",
        f"Command: `{command}` ({rounds} rounds, rev {rev}). Each server on CPU 0 (one core; nginx: one",
        "worker, `master_process off`), `wrk -t1` on CPU 1, servers alternated within each round, the",
        "same certificates (made by the script with openssl). Server CPU = utime+stime of the server",
        "process. Medians over the rounds (min – max). One wrk core saturates before either server",
        "does, so compare the CPU each server spends per request or handshake, not requests per second.",
        "",
        "### Keep-alive `GET /plaintext`, 256 connections (ECDSA P-256 certificate)",
        "",
        "| server | req/s | server µs per request | vs ringside over HTTPS | errors |",
        "|---|---:|---:|---:|---:|",
    ]
    base = stat(("keepalive", "ringside-https", "ecdsa"), "us_per_request")[0]
    for server in ["ringside-https", "nginx-https", "ringside-http"]:
        key = ("keepalive", server, "ecdsa")
        if key not in groups:
            continue
        rps = stat(key, "rps")
        us = stat(key, "us_per_request")
        errs = sum(int(num(r["errors"]) or 0) for r in groups[key])
        ratio = f"{us[0] / base:.2f}" if base and us[0] else "n/a"
        out.append(f"| {server} | {rps[0]:,.0f} | {us[0]:.1f} ({us[1]:.1f} – {us[2]:.1f}) | {ratio} | {errs} |")
    out += [
        "",
        "### New connections: a full TLS handshake per request (`Connection: close`, 64 connections)",
        "",
        "| certificate | server | handshakes/s | server µs per handshake | handshakes per server CPU-second | ringside / nginx (per CPU-second) |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for cert in ["ecdsa", "rsa"]:
        per_cpu = {}
        for server in ["ringside-https", "nginx-https"]:
            key = ("handshake", server, cert)
            if key in groups:
                per_cpu[server] = 1e6 / stat(key, "us_per_request")[0]
        for server in ["ringside-https", "nginx-https"]:
            key = ("handshake", server, cert)
            if key not in groups:
                continue
            rps = stat(key, "rps")
            us = stat(key, "us_per_request")
            ratio = ""
            if server == "ringside-https" and "nginx-https" in per_cpu:
                ratio = f"**{per_cpu['ringside-https'] / per_cpu['nginx-https']:.2f}**"
            name = {"ecdsa": "ECDSA P-256", "rsa": "RSA 2048"}[cert]
            out.append(f"| {name} | {server} | {rps[0]:,.0f} | {us[0]:.0f} ({us[1]:.0f} – {us[2]:.0f}) | {1e6 / us[0]:,.0f} | {ratio} |")
    idle = [(s, stat(("idle", s, "ecdsa"), "bytes_per_conn"), groups.get(("idle", s, "ecdsa"), [])) for s in ["ringside-https", "nginx-https", "ringside-http"]]
    if any(g for _, _, g in idle):
        out += [
            "",
            "### Idle keep-alive connections: RSS per connection",
            "",
            "| server | connections | bytes per idle connection |",
            "|---|---:|---:|",
        ]
        for s, st, g in idle:
            if g:
                out.append(f"| {s} | {g[0]['conns']} | {st[0]:,.0f} ({st[1]:,.0f} – {st[2]:,.0f}) |")
    out += ["", "Raw runs: `tls.csv`. Plot: `tls.png`.", "", "![HTTPS costs](results/tls.png)", ""]
    open(md_path, "w").write("\n".join(out))

    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("tls_report.py: no matplotlib; no plot", file=sys.stderr)
        return
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.5))
    colors = {"ringside-https": "#d9822b", "nginx-https": "#4a78b5", "ringside-http": "#9aa5b1"}

    def bars(ax, items, title, ylabel):
        for i, (label, server, st) in enumerate(items):
            if st[0] is None:
                continue
            ax.bar(i, st[0], color=colors[server], yerr=[[st[0] - st[1]], [st[2] - st[0]]], capsize=4)
            ax.text(i, st[2], f"{st[0]:,.1f}" if st[0] < 100 else f"{st[0]:,.0f}", ha="center", va="bottom", fontsize=8)
        ax.set_xticks(range(len(items)))
        ax.set_xticklabels([x[0] for x in items], fontsize=8)
        ax.set_title(title, fontsize=10)
        ax.set_ylabel(ylabel)

    bars(axes[0], [(s.replace("-", "\n"), s, stat(("keepalive", s, "ecdsa"), "us_per_request")) for s in ["ringside-https", "nginx-https", "ringside-http"]],
         "keep-alive /plaintext", "server µs per request (lower is better)")
    hs = []
    for cert in ["ecdsa", "rsa"]:
        for s in ["ringside-https", "nginx-https"]:
            st = stat(("handshake", s, cert), "us_per_request")
            hs.append((f"{s.split('-')[0]}\n{cert}", s, st))
    bars(axes[1], hs, "full handshakes", "server µs per handshake (lower is better)")
    bars(axes[2], [(s.replace("-", "\n"), s, st) for s, st, g in idle if g], "idle keep-alive connections", "bytes of RSS per connection")
    fig.tight_layout()
    fig.savefig(png_path, dpi=110)
    print(f"tls_report.py: wrote {png_path}")


if __name__ == "__main__":
    main(*sys.argv[1:5])
