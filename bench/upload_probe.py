#!/usr/bin/env python3
"""Upload a CSV file to POST /contacts while watching the server's memory.

    python3 bench/upload_probe.py --host 127.0.0.1 --port 18480 --file big.csv \
        --pid SERVER_PID --series out.csv --summary out.json \
        [--interval 0.05] [--abort-after SECS] [--max-seconds SECS] [--after SECS]

Used by bench/upload.sh for the 1 GiB runs. One process, stdlib only:

- sends `POST /contacts` (Content-Type: text/csv, Content-Length: the file's
  size, Connection: close) from a NON-BLOCKING socket, so `send` returns as
  soon as the kernel stops taking bytes: the bytes counted as sent are the
  bytes the kernel accepted, i.e. how far the server (and, behind it,
  PostgreSQL) let the client go;
- every --interval seconds records (time, bytes accepted, the server's VmRSS
  from /proc/PID/status) in --series (CSV: epoch_s,sent_bytes,rss_kib);
- reads the response (the server may answer early, e.g. 413) and waits for
  it after the last byte, up to --max-seconds in all;
- with --abort-after, closes the connection after that many seconds (the
  upload is incomplete: the server must roll it back), then keeps sampling
  for --after seconds;
- writes a JSON summary to --summary: VmRSS before, peak VmRSS while
  sampling, VmHWM before and after, bytes sent, seconds, the status line and
  body of the response (if any), whether it was aborted.

Exit status: 0 when the run went as asked (a complete upload answered 2xx,
or an aborted one), 1 otherwise; 2 on bad arguments.
"""

import argparse
import json
import os
import select
import socket
import sys
import time


def proc_kib(pid, field):
    """VmRSS / VmHWM of pid in KiB, or None if the process is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def response_complete(data):
    """True once a response with a Content-Length has all of its body."""
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        return False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            try:
                return len(body) >= int(value.strip())
            except ValueError:
                return False
    return False


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--path", default="/contacts")
    ap.add_argument("--file", required=True)
    ap.add_argument("--pid", type=int, required=True, help="server pid to sample")
    ap.add_argument("--series", required=True)
    ap.add_argument("--summary", required=True)
    ap.add_argument("--interval", type=float, default=0.05)
    ap.add_argument("--abort-after", type=float, default=0.0)
    ap.add_argument("--after", type=float, default=5.0,
                    help="seconds to keep sampling after an abort")
    ap.add_argument("--max-seconds", type=float, default=900.0)
    # Small enough that the byte count advances smoothly: a non-blocking
    # send takes a whole 64 KiB piece as soon as that much buffer is free.
    ap.add_argument("--buffer", type=int, default=1 << 16, help="file read size")
    a = ap.parse_args()
    if not a.host.startswith("127."):
        print("only loopback (127.0.0.0/8) targets are allowed", file=sys.stderr)
        return 2

    size = os.path.getsize(a.file)
    rss_before = proc_kib(a.pid, "VmRSS")
    hwm_before = proc_kib(a.pid, "VmHWM")
    if rss_before is None:
        print(f"no process {a.pid}", file=sys.stderr)
        return 1

    series = open(a.series, "w")
    series.write("epoch_s,sent_bytes,rss_kib\n")
    peak = rss_before
    samples = 0

    def sample(t, sent):
        nonlocal peak, samples
        rss = proc_kib(a.pid, "VmRSS")
        if rss is not None:
            peak = max(peak, rss)
        series.write(f"{t:.3f},{sent},{'' if rss is None else rss}\n")
        samples += 1

    fd = os.open(a.file, os.O_RDONLY)
    sock = socket.create_connection((a.host, a.port), timeout=10)
    sock.setblocking(False)
    head = (
        f"POST {a.path} HTTP/1.1\r\nHost: {a.host}:{a.port}\r\n"
        f"Content-Type: text/csv\r\nContent-Length: {size}\r\n"
        f"Connection: close\r\nUser-Agent: ringside-upload-probe\r\n\r\n"
    ).encode()
    pending = memoryview(head)
    head_left = len(head)
    sent = 0  # body bytes accepted by the kernel
    eof_file = False
    response = b""
    closed_by_server = False
    aborted = False
    send_error = None

    t0 = time.time()
    sample(t0, 0)
    next_sample = t0 + a.interval
    deadline = t0 + a.max_seconds
    abort_at = t0 + a.abort_after if a.abort_after > 0 else None
    last_send = t0

    while True:
        now = time.time()
        if now >= deadline:
            break
        if abort_at is not None and now >= abort_at:
            aborted = True
            break
        if now >= next_sample:
            sample(now, sent)
            next_sample += a.interval
            if next_sample < now:
                next_sample = now + a.interval
            continue
        if not pending and not eof_file and send_error is None:
            data = os.read(fd, a.buffer)
            if data:
                pending = memoryview(data)
            else:
                eof_file = True
        want_write = bool(pending) and send_error is None
        timeout = max(0.0, min(next_sample, deadline, abort_at or deadline) - now)
        r, w, _ = select.select([sock], [sock] if want_write else [], [], timeout)
        if r:
            try:
                chunk = sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                chunk = None
            except OSError as e:  # reset by the server
                send_error = send_error or str(e)
                closed_by_server = True
                break
            if chunk == b"":
                closed_by_server = True
                break
            if chunk:
                response += chunk
                if response_complete(response):
                    break
        if w and pending:
            try:
                n = sock.send(pending)
            except (BlockingIOError, InterruptedError):
                n = 0
            except OSError as e:  # the server closed after answering early
                send_error = str(e)
                n = 0
            if n:
                if head_left:
                    used = min(n, head_left)
                    head_left -= used
                    sent += n - used
                else:
                    sent += n
                pending = pending[n:]
                last_send = time.time()

    t_end = time.time()
    sample(t_end, sent)
    if aborted:
        # Abrupt end: the server sees the body stop short of Content-Length.
        sock.close()
        after_end = time.time() + a.after
        while True:
            now = time.time()
            if now >= after_end:
                break
            time.sleep(max(0.0, min(next_sample, after_end) - now))
            now = time.time()
            if now >= next_sample:
                sample(now, sent)
                next_sample += a.interval
    else:
        sock.close()
    os.close(fd)
    series.close()

    text = response.decode("utf-8", "replace")
    status_line = text.split("\r\n", 1)[0] if text else ""
    body = text.split("\r\n\r\n", 1)[1] if "\r\n\r\n" in text else ""
    status = 0
    parts = status_line.split(" ")
    if len(parts) >= 2 and parts[1].isdigit():
        status = int(parts[1])
    summary = {
        "file_bytes": size,
        "sent_bytes": sent,
        "seconds": round(t_end - t0, 3),
        "last_send_s": round(last_send - t0, 3),
        "t0": round(t0, 3),
        "aborted": aborted,
        "timed_out": (not aborted) and t_end >= deadline,
        "send_error": send_error,
        "status": status,
        "body": body.strip(),
        "rss_before_kib": rss_before,
        "rss_peak_kib": peak,
        "rss_end_kib": proc_kib(a.pid, "VmRSS"),
        "hwm_before_kib": hwm_before,
        "hwm_after_kib": proc_kib(a.pid, "VmHWM"),
        "samples": samples,
        "interval_s": a.interval,
    }
    with open(a.summary, "w") as f:
        json.dump(summary, f, indent=1)
    print(json.dumps(summary))
    growth = (peak - rss_before) / 1024
    print(
        f"{sent} of {size} bytes accepted in {t_end - t0:.1f} s"
        + (", then aborted" if aborted else f", HTTP {status} {summary['body']}")
        + f"; VmRSS {rss_before / 1024:.1f} MiB before, peak {peak / 1024:.1f} MiB (+{growth:.1f} MiB)"
        + f"; VmHWM {(hwm_before or 0) / 1024:.1f} -> {(summary['hwm_after_kib'] or 0) / 1024:.1f} MiB",
        file=sys.stderr,
    )
    ok = aborted or (200 <= status < 300 and sent == size)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
