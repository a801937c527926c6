#!/usr/bin/env bash
# Every test, on a fresh machine: installs what is missing (Debian packages,
# Kafka jars, a Python venv with schemathesis, playwright-core), starts the
# local Kafka + ZooKeeper cluster, runs lints and all tests, the fault suite,
# checks the live demo server with promtool and schemathesis, drives the
# dashboard in headless Chromium, and stops the cluster even when tests fail.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}

step() { printf '\n== %s\n' "$*" >&2; }

step "installing test tools"
scripts/setup.sh

step "format and lints"
shellcheck scripts/*.sh .ci/run
cargo fmt --all -- --check
cargo clippy --all-targets --locked -- -D warnings

step "starting the local Kafka + ZooKeeper cluster"
started=$SECONDS
cluster_env=$(scripts/cluster.sh up)
eval "$cluster_env"
echo "cluster started in $((SECONDS - started))s: $IPSTATS_BROKERS, ZooKeeper $IPSTATS_ZOOKEEPER" >&2
trap 'scripts/cluster.sh down' EXIT

# IPSTATS_TEST_BROKERS/ZOOKEEPER point the real-cluster tests at it; the service
# itself must not inherit the variables as its own settings.
run_tests() {
  IPSTATS_TEST_BROKERS=$IPSTATS_BROKERS IPSTATS_TEST_ZOOKEEPER=$IPSTATS_ZOOKEEPER \
    IPSTATS_TEST_SASL_BROKERS=$IPSTATS_SASL_BROKERS \
    env -u IPSTATS_BROKERS -u IPSTATS_ZOOKEEPER cargo test --locked "$@"
}

step "unit, property, router and integration tests"
run_tests --lib --bins --tests -- --skip fault_

step "benchmarks, each run once as a smoke test"
run_tests --benches

step "fault injection (kills and freezes shared cluster processes: alone, one at a time)"
rm -f test-artifacts/reliability.jsonl
run_tests --test faults -- --test-threads=1 --nocapture

step "live checks of the demo server"
env -u IPSTATS_BROKERS -u IPSTATS_ZOOKEEPER scripts/check-live.sh

step "dashboard in headless Chromium (screenshots in test-artifacts/)"
(cd tests/browser && env -u IPSTATS_BROKERS -u IPSTATS_ZOOKEEPER npm test)
