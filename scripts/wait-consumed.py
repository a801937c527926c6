#!/usr/bin/env python3
"""Waits until ipstats has consumed TOTAL records, polling in-process.

    scripts/wait-consumed.py PORT TOTAL PID [DEADLINE_S]

Polls GET /api/v1/status every 20 ms over one keep-alive connection (no
process per poll, so the measurement takes next to no CPU from what it
measures) and prints two wall-clock times (epoch seconds): when
`records_consumed` first reached TOTAL, and when it was first above zero (the
start-up part of a run; `-` if the first answer already counted records).
Exits 1 if PID dies or the deadline passes first.
"""
import http.client
import json
import os
import sys
import time


def main():
    port, total, pid = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    deadline = time.monotonic() + (float(sys.argv[4]) if len(sys.argv) > 4 else 900)
    conn = None
    first = None
    polled = False
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            sys.exit(f"ipstats (pid {pid}) died")
        try:
            if conn is None:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", "/api/v1/status")
            response = conn.getresponse()
            body = response.read()
            if response.status == 200:
                consumed = json.loads(body)["records_consumed"]
                if consumed > 0 and first is None:
                    first = f"{time.time():.3f}" if polled else "-"
                polled = True
                if consumed >= total:
                    print(f"{time.time():.3f} {first}")
                    return
        except (OSError, http.client.HTTPException, ValueError, KeyError):
            conn = None
        time.sleep(0.02)
    sys.exit(f"ipstats did not consume {total} records in time")


main()
