#!/usr/bin/env bash
# Installs what the build and the tests use, if missing: the build's C
# toolchain and libraries (librdkafka is compiled from source; OpenSSL and
# zlib are linked), rustfmt and clippy, Debian packages for the tests
# (promtool, ZooKeeper, kcat, nginx, Alertmanager, Chromium, Node.js), a
# Python venv with schemathesis and mmdb-writer (the tests' MaxMind DB files), and playwright-core. The Kafka jars come
# with scripts/cluster.sh.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

need=()
# The build: a C compiler and make for librdkafka, pkg-config to find OpenSSL and zlib.
command -v cc >/dev/null || need+=(gcc libc6-dev)
command -v make >/dev/null || need+=(make)
command -v pkg-config >/dev/null || need+=(pkg-config)
pkg-config --exists openssl 2>/dev/null || need+=(libssl-dev)
pkg-config --exists zlib 2>/dev/null || need+=(zlib1g-dev)
command -v perl >/dev/null || need+=(perl)
# The tests.
command -v node >/dev/null || need+=(nodejs)
command -v npm >/dev/null || need+=(npm)
command -v promtool >/dev/null || need+=(prometheus)
command -v kcat >/dev/null || need+=(kcat)
[ -x /usr/share/zookeeper/bin/zkServer.sh ] || need+=(zookeeper)
command -v mvn >/dev/null || need+=(maven)
command -v curl >/dev/null || need+=(curl)
command -v shellcheck >/dev/null || need+=(shellcheck)
[ -x /usr/sbin/nginx ] || need+=(nginx-light)
[ -x /usr/bin/prometheus-alertmanager ] || need+=(prometheus-alertmanager)
command -v iptables >/dev/null || need+=(iptables)
command -v setpriv >/dev/null || need+=(util-linux)
command -v crowdsec-custom-bouncer >/dev/null || need+=(crowdsec-custom-bouncer)
command -v crowdsec-firewall-bouncer >/dev/null || need+=(crowdsec-firewall-bouncer)
command -v nft >/dev/null || need+=(nftables)
[ -x /usr/bin/chromium ] || need+=(chromium)
python3 -c 'import venv, ensurepip' 2>/dev/null || need+=(python3-venv)
if [ ${#need[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "setup: apt-get install ${need[*]}" >&2
  $sudo apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >&2
fi

# cargo fmt and clippy: rustup components, not part of every toolchain install.
for component in rustfmt clippy; do
  if ! cargo "${component/rustfmt/fmt}" --version >/dev/null 2>&1; then
    echo "setup: rustup component add $component" >&2
    rustup component add "$component" >&2
  fi
done

VENV="$ROOT/.cache/venv"
if [ ! -x "$VENV/bin/schemathesis" ] || ! "$VENV/bin/python" -c 'import mmdb_writer' 2>/dev/null; then
  echo "setup: python venv with schemathesis and mmdb-writer" >&2
  [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check -r "$ROOT/scripts/requirements-test.txt" >&2
fi

# playwright-core (pinned by tests/browser/package-lock.json) drives Debian's
# Chromium; it downloads no browser of its own.
if [ ! -d "$ROOT/tests/browser/node_modules/playwright-core" ]; then
  echo "setup: npm ci in tests/browser" >&2
  (cd "$ROOT/tests/browser" && npm ci --no-audit --no-fund >&2)
fi
