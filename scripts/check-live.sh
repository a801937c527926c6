#!/usr/bin/env bash
# Runs the service as `cargo run` would (embedded demo) and checks it from
# outside: readiness, moving numbers, `promtool check metrics`, and
# schemathesis against the served OpenAPI spec (every response validated).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
BIN=${IPSTATS_BIN:-$ROOT/target/debug/ipstats}
[ -x "$BIN" ] || cargo build --locked
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
base="http://127.0.0.1:$port"
work=$(mktemp -d)
# Databases of owners over the demo's addresses, so that the answers by AS
# and country are checked against the spec too.
"$ROOT/.cache/venv/bin/python" scripts/make-mmdb.py asn "$work/asn.mmdb" 0.0.0.0/2=64500:FIRST-QUARTER \
  64.0.0.0/2=64501:SECOND-QUARTER 128.0.0.0/1=64502:UPPER-HALF 2000::/3=64510:V6-GLOBAL
"$ROOT/.cache/venv/bin/python" scripts/make-mmdb.py country "$work/country.mmdb" 0.0.0.0/1=DE 128.0.0.0/2=FR 2000::/3=NL
"$BIN" --listen "127.0.0.1:$port" --batch 200ms --slide 1s --window 20s \
  --checkpoint-dir "$work/checkpoint" --asn-db "$work/asn.mmdb" --country-db "$work/country.mmdb" \
  >"$work/ipstats.log" 2>&1 &
pid=$!
cleanup() { kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
fail() { echo "check-live: FAILED: $*" >&2; tail -20 "$work/ipstats.log" >&2; exit 1; }

# Wait on conditions, each with a deadline.
wait_for() {
  local what=$1 deadline=$((SECONDS + 60))
  shift
  until "$@"; do
    kill -0 "$pid" 2>/dev/null || fail "ipstats exited while waiting for $what"
    [ $SECONDS -lt $deadline ] || fail "timed out waiting for $what"
    sleep 0.2
  done
}
ready() { curl -fsS "$base/readyz" >/dev/null 2>&1; }
consumed() { curl -fsS "$base/api/v1/status" | python3 -c 'import json,sys; print(json.load(sys.stdin)["records_consumed"])'; }
has_top() { [ "$(curl -fsS "$base/api/v1/top?n=5" | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["top"]))')" -eq 5 ]; }

wait_for readiness ready
wait_for "a filled top-5" has_top
first=$(consumed)
moved() { [ "$(consumed)" -gt "$first" ]; }
wait_for "numbers to move" moved
echo "check-live: demo is live ($(consumed) records consumed)"

curl -fsS "$base/metrics" >"$work/metrics.txt"
promtool check metrics <"$work/metrics.txt" || fail "promtool check metrics found problems"
echo "check-live: promtool check metrics: clean"

(cd "$ROOT/deploy/prometheus" && promtool check rules ipstats-rules.yml >/dev/null &&
  promtool test rules ipstats-rules.test.yml >/dev/null) ||
  fail "deploy/prometheus/ipstats-rules.yml: promtool check or test rules failed"
echo "check-live: promtool check rules and test rules: passed"
"$ROOT/scripts/check-deploy.py" "$port" || fail "the deploy files against a real Prometheus"

status=$(curl -s -o /dev/null -w '%{http_code}' "$base/api/v1/top?n=0")
[ "$status" = 400 ] || fail "n=0 answered $status, not 400"
busiest() { curl -fsS "$base/api/v1/top?group=asn&n=1" | python3 -c 'import json,sys; print(json.load(sys.stdin)["top"][0]["org"])'; }
case $(busiest) in *QUARTER | UPPER-HALF | V6-GLOBAL) ;; *) fail "group=asn named no AS of the database: $(busiest)" ;; esac
echo "check-live: answers by AS name the database's organisations"

events=$(curl -sN --max-time 30 "$base/api/v1/events?limit=2&n=3" | grep -c '^event: snapshot$' || true)
[ "$events" = 2 ] || fail "/api/v1/events?limit=2 sent $events snapshot events, not 2"
echo "check-live: /api/v1/events streams snapshots"

"$ROOT/.cache/venv/bin/schemathesis" --config-file "$ROOT/scripts/schemathesis.toml" \
  run "$base/openapi.yaml" --checks all \
  --max-examples "${SCHEMATHESIS_EXAMPLES:-200}" --no-color --seed 1 \
  || fail "schemathesis found failures"
echo "check-live: 6 passed, 0 failed"
