#!/usr/bin/env bash
# Every order accounted for, measured (issue 25's "done when"): the
# reference order flow on the real binary with every default, with
# inventory's publish limit at 2,000/s, with 4 workers and strict ordering,
# and on Redis and NATS; for each, the time until every plugin is done and
# what the log, the dead letters, analytics' state and `plugbus audit` say,
# as a table.
#   scripts/accounting.sh   (PLUGBUS_ACCOUNTING_ORDERS, default 100000;
#                            PLUGBUS_ACCOUNTING_ONLY=TEXT runs the scenarios named so)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
apt_install redis-server
nats="$(nats_server)"
cargo build --release -p plugbus
cargo build --profile plugin --target wasm32-wasip1 \
  -p plugbus-plugin-email -p plugbus-plugin-inventory -p plugbus-plugin-analytics
python3 scripts/accounting.py "$CARGO_TARGET_DIR/release/plugbus" \
  "$CARGO_TARGET_DIR/wasm32-wasip1/plugin" "$nats"
