#!/usr/bin/env python3
"""Questions asked at query time, timed against a running ipstats.

    scripts/query-bench.py PORT OUT_DIR

ipstats must hold a full window (every line consumed). Prints JSON rows:

  adhoc      distinct questions (windows of 2..60 s, by address and by /24,
             n=10 and n=100), each the first of its kind, in that order:
             p50 / p99 / max in ms (a range that mostly matches one merged
             lately is answered from it)
  cold       the whole 60 s window asked when no range merged lately
             helps (two one-pane windows asked just before): every pane
             merged
  cached     each of those asked again within the slide: served from the
             cache
  pane       distinct addresses in each one-second pane of the window, and
             their sum (pane entries, for memory per address per pane)
  wrk_alone  wrk, 64 connections for 10 s on /api/v1/top?n=100
  wrk_beside the same while two clients ask distinct ad-hoc questions
             without pause (503 answers counted: the bound on concurrent
             merges at work)

Latencies are measured in this process over one keep-alive connection, so
they include HTTP and JSON but no process start.
"""
import http.client
import json
import os
import re
import subprocess
import sys
import threading
import time


def get(conn, path):
    start = time.perf_counter()
    conn.request("GET", path)
    response = conn.getresponse()
    body = response.read()
    return response.status, body, (time.perf_counter() - start) * 1000


def percentile(values, p):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def questions(end):
    for n in (10, 100):
        for grouping in ("", "&prefix4=24&prefix6=64"):
            for seconds in range(2, 61):
                yield f"/api/v1/top?n={n}&window={seconds}s&end={end}{grouping}"


def wrk(port, seconds, out):
    text = subprocess.run(
        ["wrk", "-t2", "-c64", f"-d{seconds}s", "--latency", f"http://127.0.0.1:{port}/api/v1/top?n=100"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    with open(out, "w") as f:
        f.write(text)
    p99 = re.search(r"^\s*99%\s+([\d.]+)(us|ms|s)\s*$", text, re.M)
    scale = {"us": 0.001, "ms": 1, "s": 1000}[p99.group(2)]
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
    return float(p99.group(1)) * scale, rps


def main():
    port, out = int(sys.argv[1]), sys.argv[2]
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    status, body, _ = get(conn, "/api/v1/top?n=1")
    top = json.loads(body)
    end = top["window"]["end"]
    # Pane entries: the distinct addresses of each one-second pane.
    status, body, _ = get(conn, "/api/v1/status")
    per_pane = []
    end_s = time.mktime(time.strptime(end[:19], "%Y-%m-%dT%H:%M:%S")) - time.timezone
    for k in range(60):
        at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(end_s - k))
        status, body, _ = get(conn, f"/api/v1/top?n=1&window=1s&end={at}")
        if status == 200:
            per_pane.append(json.loads(body)["distinct_ips"])
    print(json.dumps({"row": "pane", "panes": len(per_pane), "pane_entries": sum(per_pane),
                      "distinct_ips": top["distinct_ips"], "requests": top["total_requests"]}))

    asked = list(questions(end))
    first, again = [], []
    for path in asked:
        status, _, ms = get(conn, path)
        if status != 200:
            sys.exit(f"{path}: {status}")
        first.append(ms)
        status, _, ms = get(conn, path)
        again.append(ms)
    cold = []
    for i in range(10):
        for k in (7, 13):
            at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(end_s - k - i))
            get(conn, f"/api/v1/top?n={500 + i}&window=1s&end={at}")
        status, _, ms = get(conn, f"/api/v1/top?n={500 + i}&window=60s&end={end}")
        if status != 200:
            sys.exit(f"cold question: {status}")
        cold.append(ms)
    for name, values in (("adhoc", first), ("cached", again), ("cold", cold)):
        print(json.dumps({"row": name, "questions": len(values), "p50_ms": percentile(values, 50),
                          "p99_ms": percentile(values, 99), "max_ms": max(values)}))

    p99, rps = wrk(port, 10, os.path.join(out, "wrk-alone.txt"))
    print(json.dumps({"row": "wrk_alone", "p99_ms": p99, "requests_per_s": rps}))

    # Distinct questions beside wrk: new `end`s are not possible (the data
    # stopped), so vary n: every question is a miss.
    stop = threading.Event()
    answered, refused = [0], [0]

    def asker(offset):
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        n = 1000 + offset
        while not stop.is_set():
            status, _, _ = get(c, f"/api/v1/top?n={n}&window={2 + n % 59}s&end={end}")
            if status == 200:
                answered[0] += 1
            else:
                refused[0] += 1
            n += 2

    threads = [threading.Thread(target=asker, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    try:
        p99, rps = wrk(port, 10, os.path.join(out, "wrk-beside.txt"))
    finally:
        stop.set()
        for t in threads:
            t.join()
    print(json.dumps({"row": "wrk_beside", "p99_ms": p99, "requests_per_s": rps,
                      "adhoc_answered": answered[0], "adhoc_refused": refused[0]}))


if __name__ == "__main__":
    main()
