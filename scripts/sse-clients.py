#!/usr/bin/env python3
"""Holds N event streams open on ipstats and reads everything they send.

    scripts/sse-clients.py PORT N PATH

Opens N connections to GET PATH (e.g. /api/v1/events?n=100), prints
"open N" once every stream has answered 200, then reads and discards until
SIGTERM or SIGINT, and prints the events and bytes received. Exits 1 if a
stream is refused.
"""
import asyncio
import signal
import sys


async def stream(port, path, opened, totals, stop):
    reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 20)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
    await writer.drain()
    status = await reader.readline()
    if b" 200 " not in status:
        raise SystemExit(f"stream refused: {status!r}")
    opened.release()
    while not stop.is_set():
        chunk = await reader.read(1 << 16)
        if not chunk:
            break
        totals[0] += len(chunk)
        totals[1] += chunk.count(b"event: snapshot")
    writer.close()


async def main():
    port, n, path = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    opened = asyncio.Semaphore(0)
    totals = [0, 0]
    tasks = [asyncio.create_task(stream(port, path, opened, totals, stop)) for _ in range(n)]
    for _ in range(n):
        await opened.acquire()
    print(f"open {n}", flush=True)
    await stop.wait()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    print(f"events {totals[1]} bytes {totals[0]}", flush=True)


asyncio.run(main())
