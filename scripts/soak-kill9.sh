#!/usr/bin/env bash
# Soak: kill -9 the host during a publish storm, many times on one data
# directory, and check that every event acknowledged with a 202 was handled.
#   PLUGBUS_KILL9_ROUNDS  how many kills (default 200; the test suite does 20)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
export PLUGBUS_KILL9_ROUNDS="${PLUGBUS_KILL9_ROUNDS:-200}"
cargo test --release -p plugbus --test e2e kill_9 -- --nocapture
