#!/usr/bin/env python3
"""Waits for, and measures, ipstats instances answering as one (--cluster).

    scripts/cluster-bench.py complete PORT TOTAL [DEADLINE_S]
        polls /api/v1/offsets (the cluster's) every 20 ms over one keep-alive
        connection until every partition is counted to its log end (TOTAL
        records in all) and the answer is complete; prints the wall-clock
        time (epoch seconds) it happened.
    scripts/cluster-bench.py settled PORT INSTANCES PARTITIONS [DEADLINE_S]
        polls the cluster's /api/v1/top?n=1 until INSTANCES instances each hold
        partitions and PARTITIONS partitions are held in all (the group has
        settled); prints the wall-clock time it happened.
    scripts/cluster-bench.py latency PORT N
        asks /api/v1/top?n=100..196 N times across the cluster (each a new
        question), the same question again at once (merged answers are kept
        for a slide), and with ?scope=local, and prints one JSON row per kind
        with the p50 and p99 in milliseconds.
"""
import http.client
import json
import statistics
import sys
import time


def get(conn, path):
    conn.request("GET", path)
    response = conn.getresponse()
    return response.status, response.read()


def poll_until(port, path, reached, deadline_s, why):
    """Asks `path` every 20 ms over one keep-alive connection until
    `reached(answer)`; prints the wall-clock time it happened."""
    deadline = time.monotonic() + deadline_s
    conn = None
    while time.monotonic() < deadline:
        try:
            if conn is None:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            status, body = get(conn, path)
            if status == 200 and reached(json.loads(body)):
                print(f"{time.time():.3f}")
                return
        except (OSError, http.client.HTTPException, ValueError):
            conn = None
        time.sleep(0.02)
    sys.exit(why)


def complete(port, total, deadline_s):
    def reached(answer):
        parts = answer.get("partitions", [])
        counted = sum(p["until_offset"] for p in parts)
        caught_up = all(p["log_end"] is not None and p["until_offset"] >= p["log_end"] for p in parts)
        return answer.get("cluster", {}).get("complete") and caught_up and counted >= total
    poll_until(port, "/api/v1/offsets", reached, deadline_s, "the cluster did not count everything in time")


def settled(port, instances, partitions, deadline_s):
    def reached(answer):
        members = answer.get("cluster", {}).get("instances", [])
        holding = [m for m in members if m.get("reachable") and m.get("partitions")]
        held = {p for m in holding for p in m["partitions"]}
        return len(holding) == instances and len(held) == partitions
    poll_until(port, "/api/v1/top?n=1", reached, deadline_s, "the group did not settle in time")


def latency(port, n):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    took = {"cluster": [], "cluster repeated": [], "local": []}
    for i in range(n):
        # A new question each time (merged answers are kept for a slide),
        # the same question at once again, and this instance alone.
        k = 100 + i % 97
        paths = {"cluster": f"/api/v1/top?n={k}", "cluster repeated": f"/api/v1/top?n={k}",
                 "local": f"/api/v1/top?n={k}&scope=local"}
        for kind, path in paths.items():
            started = time.perf_counter()
            status, body = get(conn, path)
            took[kind].append((time.perf_counter() - started) * 1000)
            if status != 200:
                sys.exit(f"{path}: HTTP {status}: {body[:200]!r}")
    for kind, values in took.items():
        values.sort()
        p99 = values[min(len(values) - 1, int(len(values) * 0.99))]
        print(json.dumps({"row": f"top n~100 {kind}", "questions": n,
                          "p50_ms": statistics.median(values), "p99_ms": p99}))


if __name__ == "__main__":
    if sys.argv[1] == "complete":
        complete(int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]) if len(sys.argv) > 4 else 900)
    elif sys.argv[1] == "settled":
        settled(int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]),
                float(sys.argv[5]) if len(sys.argv) > 5 else 900)
    elif sys.argv[1] == "latency":
        latency(int(sys.argv[2]), int(sys.argv[3]))
    else:
        sys.exit(__doc__)
