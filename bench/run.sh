#!/usr/bin/env bash
# Benchmarks smartproxy-native side by side with HAProxy (with and without splice), nginx and a
# plain Node proxy, in one run, with ../shared/bench (copied to bench/.harness, since shared/ is
# read-only and the harness writes certificates and results next to itself).
#
#   bash bench/run.sh                         # layer-4 rows: throughput, connection churn, idle memory
#   TESTS="http_keepalive https_keepalive https_handshake h2 idle_tls" bash bench/run.sh   # HTTP rows
#   TESTS="tcp_churn" RUNS=5 bash bench/run.sh
#
# Builds the addon in release mode first. Needs root for apt-get and sysctl (setup.sh).
# Not a test: results go to bench/.harness/results/<stamp>/summary.md; copy the tables into
# bench/RESULTS.md with the machine they ran on.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
SHARED=${SHARED_BENCH:-$ROOT/../shared/bench}
WORK=$HERE/.harness
mkdir -p "$WORK"
cp "$SHARED"/*.sh "$SHARED"/*.py "$SHARED"/*.js "$SHARED"/README.md "$WORK"/
if [ "${SKIP_APT:-0}" != 1 ]; then
  # setup.sh installs nginx-light, which conflicts with an installed nginx; install the pieces here.
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq haproxy nginx libnginx-mod-stream wrk nghttp2-client iperf3 socat hyperfine openssl curl python3 >/dev/null
fi
SKIP_APT=1 bash "$WORK/setup.sh" >/dev/null
(cd "$ROOT" && pnpm run build >/dev/null)
export CUSTOM_PROXY_NAME=smartproxy-native
export CUSTOM_PROXY_CMD="node $HERE/launcher.js"
export CUSTOM_PROXY_MODES=${CUSTOM_PROXY_MODES:-"tcp http https h2"}
export TESTS=${TESTS:-"tcp_throughput tcp_churn idle_tcp"}
export PROXIES=${PROXIES:-"haproxy haproxy-splice nginx node"}
bash "$WORK/bench.sh"
