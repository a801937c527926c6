#!/usr/bin/env bash
# Installs the tools the tests use, if missing: Debian packages (promtool,
# ZooKeeper, kcat, nginx, Alertmanager), the Kafka jars, and a Python venv with schemathesis.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

need=()
command -v promtool >/dev/null || need+=(prometheus)
command -v kcat >/dev/null || need+=(kcat)
[ -x /usr/share/zookeeper/bin/zkServer.sh ] || need+=(zookeeper)
command -v mvn >/dev/null || need+=(maven)
command -v curl >/dev/null || need+=(curl)
command -v shellcheck >/dev/null || need+=(shellcheck)
[ -x /usr/sbin/nginx ] || need+=(nginx-light)
[ -x /usr/bin/prometheus-alertmanager ] || need+=(prometheus-alertmanager)
command -v iptables >/dev/null || need+=(iptables)
[ -x /usr/bin/chromium ] || need+=(chromium)
python3 -c 'import venv, ensurepip' 2>/dev/null || need+=(python3-venv)
if [ ${#need[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "setup: apt-get install ${need[*]}" >&2
  $sudo apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >&2
fi

VENV="$ROOT/.cache/venv"
if [ ! -x "$VENV/bin/schemathesis" ]; then
  echo "setup: python venv with schemathesis" >&2
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check -r "$ROOT/scripts/requirements-test.txt" >&2
fi

# playwright-core (pinned by tests/browser/package-lock.json) drives Debian's
# Chromium; it downloads no browser of its own.
if [ ! -d "$ROOT/tests/browser/node_modules/playwright-core" ]; then
  echo "setup: npm ci in tests/browser" >&2
  (cd "$ROOT/tests/browser" && npm ci --no-audit --no-fund >&2)
fi
