#!/usr/bin/env python3
"""Hold N idle HTTP/1.1 keep-alive connections to a server (stdlib only).

    hold_idle.py --port 18080 [--host 127.0.0.1] [--conns 10000] [--batch 500]
                 [--path /plaintext] [--max-hold 600] [--source 127.0.0.2]
                 [--tls-ca CA.pem]   (HTTPS: trust this CA, name "localhost")

Opens the connections in batches (so the server's listen backlog is never the
bottleneck); on each one it sends one full `GET PATH` request and reads the
whole response (status 200, Content-Length body), so the server has really
handled a request on it; the connection then stays open, idle, as a
keep-alive connection. When all are open it prints one line to stdout:

    READY opened=N failed=F open_s=SECONDS

and holds them until SIGUSR1, SIGTERM or SIGINT (or --max-hold seconds),
then checks which ones the server closed meanwhile, closes them all and prints

    DONE opened=N failed=F closed_by_server=C unexpected_data=U held_s=SECONDS

--source binds every connection to that local address: one address has about
28,000 ephemeral ports, so holders of more connections than that (on machines
whose open-files limit allows) each take their own 127.0.0.x.

Progress and errors go to stderr. Only loopback (127.0.0.0/8, ::1) targets are
accepted. Exit status: 0 if at least one connection was held, 1 otherwise.
"""

import argparse
import asyncio
import ipaddress
import resource
import signal
import socket
import sys
import time


def eprint(*a):
    print("hold_idle:", *a, file=sys.stderr, flush=True)


# Linux's IP_BIND_ADDRESS_NO_PORT (not in every Python's socket module).
IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)


async def connect_from(host, port, source):
    """A socket bound to `source` and connected to host:port. The port is
    chosen at connect time (IP_BIND_ADDRESS_NO_PORT), per destination: a
    plain bind(source, 0) would reserve ports for every destination, and
    19,000 of them starve everyone else's connects (wrk's included)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
        sock.bind((source, 0))
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, (host, port))
    except BaseException:
        sock.close()
        raise
    return await asyncio.open_connection(sock=sock)


TLS_CONTEXT = None


async def open_one(host, port, request, timeout, source):
    """Open a connection, do one request/response; return (reader, writer)."""
    if source:
        opening = connect_from(host, port, source)
    elif TLS_CONTEXT is not None:
        opening = asyncio.open_connection(host, port, ssl=TLS_CONTEXT, server_hostname="localhost")
    else:
        opening = asyncio.open_connection(host, port)
    reader, writer = await asyncio.wait_for(opening, timeout)
    try:
        writer.write(request)
        await asyncio.wait_for(writer.drain(), timeout)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
        lines = head.decode("latin-1").split("\r\n")
        status = lines[0].split(" ", 2)
        if len(status) < 2 or status[1] != "200":
            raise RuntimeError(f"unexpected status line {lines[0]!r}")
        length = None
        for line in lines[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length":
                length = int(value.strip())
            elif name.strip().lower() == "connection" and "close" in value.lower():
                raise RuntimeError("server answered Connection: close")
        if length is None:
            raise RuntimeError("response without Content-Length")
        await asyncio.wait_for(reader.readexactly(length), timeout)
        return reader, writer
    except BaseException:
        writer.transport.abort()
        raise


async def main(args):
    request = (
        f"GET {args.path} HTTP/1.1\r\nHost: {args.host}:{args.port}\r\nUser-Agent: hold_idle\r\n\r\n"
    ).encode()
    # Installed first: a signal during the opening phase stops it early.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGUSR1, signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    conns = []
    failed = 0
    errors = {}
    t0 = time.monotonic()
    for start in range(0, args.conns, args.batch):
        if stop.is_set():
            eprint("signalled while opening; stopping early")
            break
        n = min(args.batch, args.conns - start)
        results = await asyncio.gather(
            *(open_one(args.host, args.port, request, args.timeout, args.source) for _ in range(n)),
            return_exceptions=True,
        )
        for r in results:
            if isinstance(r, BaseException):
                failed += 1
                key = f"{type(r).__name__}: {r}"[:120]
                errors[key] = errors.get(key, 0) + 1
            else:
                conns.append(r)
        done = start + n
        if done % (args.batch * 4) == 0 or done == args.conns:
            eprint(f"{done}/{args.conns} attempted, {len(conns)} open, {failed} failed")
    open_s = time.monotonic() - t0
    for k, v in sorted(errors.items(), key=lambda kv: -kv[1])[:5]:
        eprint(f"{v} x {k}")

    print(f"READY opened={len(conns)} failed={failed} open_s={open_s:.2f}", flush=True)

    t_hold = time.monotonic()
    try:
        await asyncio.wait_for(stop.wait(), args.max_hold)
    except asyncio.TimeoutError:
        eprint(f"--max-hold {args.max_hold}s reached; closing")
    held_s = time.monotonic() - t_hold

    closed_by_server = 0
    unexpected = 0
    for reader, _ in conns:
        if reader.at_eof() or reader.exception() is not None:
            closed_by_server += 1
        elif len(reader._buffer):  # data the server sent on an idle connection
            unexpected += 1
    for _, writer in conns:
        writer.close()
    if conns:
        await asyncio.wait(
            [asyncio.ensure_future(w.wait_closed()) for _, w in conns], timeout=10
        )
    print(
        f"DONE opened={len(conns)} failed={failed} closed_by_server={closed_by_server} "
        f"unexpected_data={unexpected} held_s={held_s:.2f}",
        flush=True,
    )
    return 0 if conns else 1


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--conns", type=int, default=10000)
    ap.add_argument("--batch", type=int, default=500, help="connections opened concurrently (default 500)")
    ap.add_argument("--path", default="/plaintext")
    ap.add_argument("--timeout", type=float, default=10.0, help="per-step timeout of one connection (s)")
    ap.add_argument("--max-hold", type=float, default=600.0, help="hold at most this long (s)")
    ap.add_argument("--source", default=None, help="local address to bind (loopback only)")
    ap.add_argument("--tls-ca", default=None, help="speak HTTPS, trusting this CA (PEM)")
    a = ap.parse_args()
    try:
        ip = ipaddress.ip_address(a.host)
    except ValueError:
        ap.error(f"--host must be an IP address, got {a.host!r}")
    if not ip.is_loopback:
        ap.error(f"--host must be a loopback address (127.0.0.0/8 or ::1), got {a.host}")
    if a.source is not None:
        try:
            src = ipaddress.ip_address(a.source)
        except ValueError:
            ap.error(f"--source must be an IP address, got {a.source!r}")
        if not src.is_loopback:
            ap.error(f"--source must be a loopback address, got {a.source}")
    if a.conns < 1 or a.batch < 1:
        ap.error("--conns and --batch must be positive")
    if a.tls_ca and a.source:
        ap.error("--tls-ca and --source do not go together")
    return a


if __name__ == "__main__":
    args = parse_args()
    if args.tls_ca:
        import ssl

        TLS_CONTEXT = ssl.create_default_context(cafile=args.tls_ca)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    if args.conns + 64 > soft:
        eprint(f"--conns {args.conns} does not fit the open-files limit {soft} (need conns + 64)")
        sys.exit(2)
    sys.exit(asyncio.run(main(args)))
