#!/usr/bin/env bash
# The benchmark: plugbus against a crossbeam floor, the bare wasm
# call, redis-server pub/sub, durable publishing against NATS JetStream and
# Redis Streams, plugbus itself on Redis Streams and NATS JetStream (one
# host and two, and latency), HTTP
# ingress under wrk, and publish-to-handled latency at
# fixed rates, in one run; prints
# a table. Installs redis-server and wrk from Debian and a pinned nats-server
# (scripts/env.sh) when missing.
#   PLUGBUS_BENCH_EVENTS  events per in-process measurement (default 1000000)
#   PLUGBUS_BENCH_ORDERS  orders through the order flow (default 200000)
#   PLUGBUS_BENCH_ONLY    rows to run (e.g. orderflow; see host/benches/fanout.rs)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
apt_install redis-server wrk
PLUGBUS_NATS_SERVER="$(nats_server)"
export PLUGBUS_NATS_SERVER
PLUGBUS_PEER_PYTHON="$(peer_python)"
export PLUGBUS_PEER_PYTHON
# The Debian package starts a system redis on :6379; the benchmark starts its
# own on a free loopback port and stops it by pid, so that one is not used.
cargo bench -p plugbus --bench fanout
