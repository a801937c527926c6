#!/usr/bin/env python3
"""The deploy files against real parts: a real Prometheus scrapes a running
ipstats, loads deploy/prometheus/ipstats-rules.yml, and evaluates every
PromQL expression of the rules and of deploy/grafana/ipstats.json through its
HTTP API.

    scripts/check-deploy.py IPSTATS_PORT

Fails (exit 1, saying which) when an expression does not parse, a dashboard
panel returns no data, or a rule is not healthy in Prometheus. (That every
metric the files name is one ipstats declares is a unit test of
src/metrics.rs: families without series, such as the alert metrics of a
service without rules, are not in /metrics.)
"""
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RULES = os.path.join(ROOT, "deploy/prometheus/ipstats-rules.yml")
DASHBOARD = os.path.join(ROOT, "deploy/grafana/ipstats.json")
DEADLINE_S = 60


def fail(message):
    sys.exit(f"check-deploy: FAILED: {message}")


def get(url):
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read().decode()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait(what, probe):
    deadline = time.monotonic() + DEADLINE_S
    last = None
    while time.monotonic() < deadline:
        try:
            last = probe()
            if last is True:
                return
        except OSError as error:
            last = error
        time.sleep(0.2)
    fail(f"timed out waiting for {what}; last seen: {last}")


def dashboard_exprs():
    board = json.load(open(DASHBOARD))
    for panel in board["panels"]:
        for target in panel["targets"]:
            yield panel["title"], target["expr"]


def rule_exprs():
    # The rules file is YAML; its expressions are one line each.
    for line in open(RULES):
        match = re.match(r"\s*expr:\s*(.+)$", line)
        if match:
            yield match.group(1).strip()


def main():
    port = int(sys.argv[1])

    prometheus = shutil.which("prometheus")
    if not prometheus:
        fail("prometheus is not installed (scripts/setup.sh installs it)")
    work = tempfile.mkdtemp(prefix="ipstats-prometheus-")
    prom_port = free_port()
    with open(os.path.join(work, "prometheus.yml"), "w") as config:
        config.write(f"""global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files:
  - {RULES}
scrape_configs:
  - job_name: ipstats
    static_configs:
      - targets: ["127.0.0.1:{port}"]
""")
    log = open(os.path.join(work, "prometheus.log"), "w")
    child = subprocess.Popen(
        [prometheus, f"--config.file={work}/prometheus.yml", f"--storage.tsdb.path={work}/data",
         f"--web.listen-address=127.0.0.1:{prom_port}"],
        stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{prom_port}"
    try:
        def query(expr):
            url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
            try:
                return json.loads(get(url))
            except urllib.error.HTTPError as error:
                return json.loads(error.read().decode())

        # Enough scrapes for a rate over the panels' interval.
        wait("Prometheus to scrape ipstats five times", lambda: (
            (r := query('count_over_time(up{job="ipstats"}[1m])'))["status"] == "success"
            and r["data"]["result"] and float(r["data"]["result"][0]["value"][1]) >= 5) or r)
        checked = 0
        for title, expr in dashboard_exprs():
            concrete = expr.replace("$instance", ".*").replace("$__rate_interval", "10s")
            answer = query(concrete)
            if answer.get("status") != "success":
                fail(f"panel {title!r}: {expr} does not evaluate: {answer.get('error')}")
            if not answer["data"]["result"]:
                fail(f"panel {title!r}: {expr} returns no data on a running ipstats")
            checked += 1
        for expr in rule_exprs():
            answer = query(expr)
            if answer.get("status") != "success":
                fail(f"rule expression {expr} does not evaluate: {answer.get('error')}")
            checked += 1

        def rules_healthy():
            groups = json.loads(get(f"{base}/api/v1/rules"))["data"]["groups"]
            rules = [r for g in groups for r in g["rules"]]
            evaluated = [r for r in rules if r.get("lastEvaluation", "").startswith("0001") is False]
            if len(rules) == len(list(rule_exprs())) and all(r["health"] == "ok" for r in evaluated) \
                    and len(evaluated) == len(rules):
                return True
            return [(r["name"], r["health"], r.get("lastError")) for r in rules]
        wait("every rule evaluated healthy by Prometheus", rules_healthy)
        print(f"check-deploy: {checked} expressions evaluated by Prometheus, every dashboard panel has data, "
              f"{len(list(rule_exprs()))} rules healthy")
    finally:
        child.terminate()
        try:
            child.wait(timeout=10)
        except subprocess.TimeoutExpired:
            child.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
