#!/usr/bin/env bash
# Side-by-side benchmarks on the local real cluster, all in one run on the
# same machine and data, reported as ratios (these machines are noisy).
#
#   scripts/bench.sh            5,000,000 realistic lines over 6 partitions, 3 alternating rounds
#   scripts/bench.sh --smoke    200,000 lines, 1 round (a quick check that everything runs)
#
#   BENCH_LINES, BENCH_ROUNDS override the size; BENCH_ONLY=ingest,streams,spark,file,wrk,memory
#   runs only those sections. Results go to bench-results/
#   (results.jsonl: one JSON object per measurement) and a table to stdout.
#
# Rows: kcat (a bare librdkafka consumer: the limit), ipstats end to end
# (whole process, fresh group and checkpoint, start until every record is
# counted), GoAccess vs `ipstats count` on the same file, wrk on
# /api/v1/top?n=100 during full-speed ingest, and resident memory per
# distinct IP with about a million IPs in the window.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

LINES=${BENCH_LINES:-5000000}
ROUNDS=${BENCH_ROUNDS:-3}
PARTITIONS=6
if [ "${1:-}" = --smoke ]; then
  LINES=${BENCH_LINES:-200000}
  ROUNDS=${BENCH_ROUNDS:-1}
fi
OUT="$ROOT/bench-results"
mkdir -p "$OUT"
RESULTS="$OUT/results.jsonl"
: >"$RESULTS"
BIN="$ROOT/target/release/ipstats"
CLK_TCK=$(getconf CLK_TCK)

log() { printf 'bench: %s\n' "$*" >&2; }

need=()
for tool in goaccess wrk kcat bc; do command -v "$tool" >/dev/null || need+=("$tool"); done
[ -x /usr/bin/time ] || need+=(time)
if [ ${#need[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >&2
fi
log "building ipstats (release)"
cargo build --release --locked --bin ipstats >&2
eval "$(scripts/cluster.sh up)"
BROKERS=$IPSTATS_BROKERS
unset IPSTATS_BROKERS IPSTATS_ZOOKEEPER

record() { echo "$1" >>"$RESULTS"; }

ONLY=${BENCH_ONLY:-ingest,streams,spark,file,wrk,memory}
section() { [[ ",$ONLY," == *",$1,"* ]]; }

# stop_ipstats PID: SIGTERM and wait until it is gone (it is not our child).
stop_ipstats() {
  kill -TERM "$1" 2>/dev/null || true
  while kill -0 "$1" 2>/dev/null; do sleep 0.05; done
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

topic_size() {
  scripts/cluster.sh kafka-get-offsets --bootstrap-server "$BROKERS" --topic "$1" 2>/dev/null |
    awk -F: '{ s += $3 } END { print s + 0 }'
}

# ---- the data -------------------------------------------------------------------
TOPIC="bench-$LINES"
DATA="$OUT/lines-$LINES.log"
if [ "$(topic_size "$TOPIC")" != "$LINES" ] || [ ! -s "$DATA" ]; then
  log "producing $LINES lines into $TOPIC ($PARTITIONS partitions) and $DATA"
  scripts/cluster.sh kafka-topics --bootstrap-server "$BROKERS" --delete --topic "$TOPIC" >/dev/null 2>&1 || true
  "$BIN" produce --brokers "$BROKERS" --topic "$TOPIC" --partitions "$PARTITIONS" --count "$LINES" \
    --rate 0 --ips 100000 --zipf 1.1 --seed 5 --malformed-ratio 0.01 --out "$DATA" >&2
fi
BYTES=$(stat -c %s "$DATA")
log "data: $LINES lines, $((BYTES / 1024 / 1024)) MiB, average $((BYTES / LINES)) bytes per line"

# ---- helpers ----------------------------------------------------------------------

# time_cmd NAME ROUND CMD...: wall, CPU and peak RSS of a command.
time_cmd() {
  local name=$1 round=$2
  shift 2
  local t="$OUT/time.$$"
  /usr/bin/time -f '%e %U %S %M' -o "$t" "$@" >/dev/null
  read -r wall user sys rss <"$t"
  record "$(printf '{"row":"%s","round":%d,"records":%d,"wall_s":%s,"cpu_s":%s,"peak_rss_kib":%d}' \
    "$name" "$round" "$LINES" "$wall" "$(echo "$user + $sys" | bc)" "$rss")"
  log "$name round $round: ${wall}s wall, $(echo "$user + $sys" | bc)s CPU, ${rss} KiB peak"
}

proc_cpu_s() { awk -v hz="$CLK_TCK" '{ printf "%.2f", ($14 + $15) / hz }' "/proc/$1/stat"; }
proc_hwm_kib() { awk '/VmHWM/ { print $2 }' "/proc/$1/status"; }
proc_rss_kib() { awk '/VmRSS/ { print $2 }' "/proc/$1/status"; }

counted() { curl -fsS "http://127.0.0.1:$1/api/v1/offsets" 2>/dev/null | python3 -c '
import json, sys
print(sum(p["until_offset"] - p["from_offset"] for p in json.load(sys.stdin)["partitions"]))' 2>/dev/null || echo 0; }

# start_ipstats TOPIC PORT DIR: ipstats on a fresh group and checkpoint directory.
start_ipstats() {
  "$BIN" --brokers "$BROKERS" --topics "$1" --group "bench-$RANDOM$RANDOM" --checkpoint-dir "$3" \
    --listen "127.0.0.1:$2" --batch 200ms --slide 200ms --window 600s >"$OUT/ipstats.log" 2>&1 &
  echo $!
}

# wait_counted PORT TOTAL PID: until every record is in the window (deadline 15 min).
wait_counted() {
  local deadline=$((SECONDS + 900))
  until [ "$(counted "$1")" -ge "$2" ]; do
    kill -0 "$3" 2>/dev/null || { log "ipstats died: $(tail -5 "$OUT/ipstats.log")"; exit 1; }
    [ $SECONDS -lt $deadline ] || { log "ipstats did not catch up"; exit 1; }
    sleep 0.05
  done
}

# ---- a, b: kcat and ipstats, alternating rounds -----------------------------------------
section ingest && for round in $(seq 1 "$ROUNDS"); do
  time_cmd kcat "$round" kcat -C -b "$BROKERS" -t "$TOPIC" -o beginning -e -q
  port=$(free_port)
  dir=$(mktemp -d)
  started=$(date +%s.%N)
  pid=$(start_ipstats "$TOPIC" "$port" "$dir")
  wait_counted "$port" "$LINES" "$pid"
  ended=$(date +%s.%N)
  cpu=$(proc_cpu_s "$pid")
  hwm=$(proc_hwm_kib "$pid")
  stop_ipstats "$pid"
  rm -rf "$dir"
  wall=$(echo "$ended - $started" | bc)
  record "$(printf '{"row":"ipstats","round":%d,"records":%d,"wall_s":%s,"cpu_s":%s,"peak_rss_kib":%d}' \
    "$round" "$LINES" "$wall" "$cpu" "$hwm")"
  log "ipstats round $round: ${wall}s wall, ${cpu}s CPU, ${hwm} KiB peak"
done

# ---- c: the Kafka Streams peer (bench/peers/kafka-streams), whole JVM process ---------------
streams_rows() {
  local peer="$ROOT/bench/peers/kafka-streams" valid
  if [ ! -d "$peer/target/libs" ]; then
    log "building the Kafka Streams peer"
    (cd "$peer" && mvn -q -B package -DskipTests >&2)
  fi
  # It runs until every valid record has reached its windowed count.
  valid=$("$BIN" count "$DATA" -n 1 2>/dev/null | python3 -c 'import json,sys; print(json.load(sys.stdin)["total_requests"])')
  for round in $(seq 1 "$ROUNDS"); do
    time_cmd "kafka streams" "$round" java -Xmx2g -cp "$peer/target/classes:$peer/target/libs/*" \
      ipstats.bench.IpWindowCount "$BROKERS" "$TOPIC" "$valid"
  done
}
if section streams; then streams_rows; fi

# ---- d: Spark Structured Streaming (pyspark from PyPI, Kafka source from Maven Central) ------
spark_rows() {
  local peer="$ROOT/bench/peers/spark" venv="$ROOT/.cache/venv-spark" jars="$ROOT/.cache/spark-kafka-jars"
  if [ ! -x "$venv/bin/spark-submit" ]; then
    log "installing pyspark"
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q -r "$peer/requirements.txt" >&2
  fi
  if [ ! -d "$jars" ]; then
    (cd "$peer" && mvn -q -B dependency:copy-dependencies -DoutputDirectory="$jars" >&2)
  fi
  # Only the Kafka source and its client: pyspark ships Spark's own jars.
  local list
  list=$(find "$jars" -name 'spark-sql-kafka-*.jar' -o -name 'spark-token-provider-kafka-*.jar' \
    -o -name 'kafka-clients-*.jar' -o -name 'commons-pool2-*.jar' | paste -sd, -)
  local spark_home
  spark_home=$("$venv/bin/python" -c 'import os, pyspark; print(os.path.dirname(pyspark.__file__))')
  for round in $(seq 1 "$ROUNDS"); do
    time_cmd "spark" "$round" env SPARK_HOME="$spark_home" PYSPARK_PYTHON="$venv/bin/python" \
      "$venv/bin/spark-submit" --master 'local[2]' --jars "$list" \
      "$peer/ip_window_count.py" "$BROKERS" "$TOPIC" "$LINES"
  done
}
if section spark; then spark_rows; fi

# ---- e: GoAccess vs ipstats count on the same file ------------------------------------
GOACCESS_FORMAT='{"time_local":"%d:%t %^","client_real_ip":"%h","request":"%r","status":"%s","body_bytes_sent":"%b","http_referer":"%R","http_user_agent":"%u","request_time":"%T"}'
section file && for round in $(seq 1 "$ROUNDS"); do
  time_cmd goaccess "$round" goaccess "$DATA" --log-format="$GOACCESS_FORMAT" \
    --date-format='%d/%b/%Y' --time-format='%H:%M:%S' --no-global-config -o "$OUT/goaccess.json"
  time_cmd "ipstats count" "$round" "$BIN" count "$DATA" -n 100
done

# ---- wrk on /api/v1/top?n=100 during full-speed ingest ------------------------------------
wrk_row() {
port=$(free_port)
dir=$(mktemp -d)
pid=$(start_ipstats "$TOPIC" "$port" "$dir")
until curl -fsS "http://127.0.0.1:$port/readyz" >/dev/null 2>&1; do sleep 0.05; done
before=$(counted "$port")
wrk -t2 -c64 -d15s --latency "http://127.0.0.1:$port/api/v1/top?n=100" >"$OUT/wrk.txt"
after=$(counted "$port")
stop_ipstats "$pid"
rm -rf "$dir"
rps=$(awk '/Requests\/sec/ { print $2 }' "$OUT/wrk.txt")
p99=$(awk '$1 == "99%" { print $2 }' "$OUT/wrk.txt")
record "$(printf '{"row":"wrk top n=100","connections":64,"requests_per_s":%s,"p99":"%s","ingested_during_wrk":%d,"wrk_s":15}' \
  "$rps" "$p99" "$((after - before))")"
log "wrk: $rps requests/s, p99 $p99, ingest during wrk $(((after - before) / 15)) records/s"
}
if section wrk; then wrk_row; fi

# ---- memory per distinct IP ----------------------------------------------------------
memory_row() {
MEM_TOPIC="bench-memory-$LINES"
MEM_LINES=$((LINES < 3000000 ? LINES : 3000000))
if [ "$(topic_size "$MEM_TOPIC")" != "$MEM_LINES" ]; then
  scripts/cluster.sh kafka-topics --bootstrap-server "$BROKERS" --delete --topic "$MEM_TOPIC" >/dev/null 2>&1 || true
  "$BIN" produce --brokers "$BROKERS" --topic "$MEM_TOPIC" --partitions "$PARTITIONS" --count "$MEM_LINES" \
    --rate 0 --ips 1000000 --zipf 0 --seed 6 --malformed-ratio 0 >&2
fi
port=$(free_port)
dir=$(mktemp -d)
pid=$(start_ipstats "$MEM_TOPIC" "$port" "$dir")
until curl -fsS "http://127.0.0.1:$port/readyz" >/dev/null 2>&1; do sleep 0.05; done
base_rss=$(proc_rss_kib "$pid")
wait_counted "$port" "$MEM_LINES" "$pid"
full_rss=$(proc_rss_kib "$pid")
distinct=$(curl -fsS "http://127.0.0.1:$port/api/v1/top?n=1" | python3 -c 'import json,sys; print(json.load(sys.stdin)["distinct_ips"])')
stop_ipstats "$pid"
rm -rf "$dir"
record "$(printf '{"row":"memory","distinct_ips":%d,"records":%d,"rss_before_kib":%d,"rss_after_kib":%d,"bytes_per_ip":%.1f}' \
  "$distinct" "$MEM_LINES" "$base_rss" "$full_rss" "$(echo "($full_rss - $base_rss) * 1024 / $distinct" | bc -l)")"
log "memory: $distinct IPs, RSS $base_rss → $full_rss KiB"
}
if section memory; then memory_row; fi

# ---- the table ------------------------------------------------------------------------
python3 - "$RESULTS" <<'EOF'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
def median(name, key):
    values = [r[key] for r in rows if r.get("row") == name]
    return statistics.median(values) if values else None
print("| row | records/s (median) | CPU s | records per CPU s | peak RSS MiB |")
print("|---|---:|---:|---:|---:|")
per_cpu = {}
for name in ["kcat", "ipstats", "kafka streams", "spark", "goaccess", "ipstats count"]:
    wall, cpu, rss = median(name, "wall_s"), median(name, "cpu_s"), median(name, "peak_rss_kib")
    if wall is None:
        continue
    records = next(r["records"] for r in rows if r.get("row") == name)
    per_cpu[name] = records / cpu if cpu else float("nan")
    print(f"| {name} | {records / wall:,.0f} | {cpu:.2f} | {per_cpu[name]:,.0f} | {rss / 1024:.0f} |")
rate = {n: next(r["records"] for r in rows if r.get("row") == n) / median(n, "wall_s")
        for n in ["kcat", "ipstats", "kafka streams", "spark", "goaccess", "ipstats count"] if median(n, "wall_s")}
if "kcat" in rate and "ipstats" in rate:
    print(f"\nipstats / kcat records/s: {rate['ipstats'] / rate['kcat']:.2f}x")
if "kafka streams" in per_cpu and "ipstats" in per_cpu:
    print(f"ipstats / Kafka Streams records per CPU s: {per_cpu['ipstats'] / per_cpu['kafka streams']:.1f}x")
if "spark" in per_cpu and "ipstats" in per_cpu:
    print(f"ipstats / Spark records per CPU s: {per_cpu['ipstats'] / per_cpu['spark']:.1f}x")
if "goaccess" in rate and "ipstats count" in rate:
    print(f"ipstats count / GoAccess records/s: {rate['ipstats count'] / rate['goaccess']:.1f}x")
for r in rows:
    if r.get("row") in ("wrk top n=100", "memory"):
        print(json.dumps(r))
EOF
