# Keep-alive connections that each send GET /plaintext every PERIOD s (each
# request arrives after its connection went idle). Prints the requests done.
import asyncio, sys, time
host, port, n, period, dur = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5])
REQ = b"GET /plaintext HTTP/1.1\r\nHost: x\r\n\r\n"
done = 0
async def one(i):
    global done
    r, w = await asyncio.open_connection(host, port)
    await asyncio.sleep(period * i / n)
    end = time.time() + dur
    while time.time() < end:
        w.write(REQ)
        await r.readuntil(b"Hello, World!")
        done += 1
        await asyncio.sleep(period)
    w.close()
async def main():
    await asyncio.gather(*(one(i) for i in range(n)))
asyncio.run(main())
print(done)
