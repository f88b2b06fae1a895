#!/usr/bin/env bash
# The seeded fault simulation (tests/e2e/simulation.rs), for as many seeds
# as you like: the reference order flow on the real binary under faults
# chosen by each seed (publish limits, traps, worker panics, hot swaps,
# kill -9 and restart, CPU hogs, strict ordering, several workers, a disk
# filled into its reserve (a tmpfs: run as root), Redis or NATS killed
# and restarted), each run checked by the audit, the log and the plugins'
# state.
#   scripts/simulate.sh [SEEDS] [SECS]
#   SEEDS  one seed (7), a list (1,4,9) or a range (1..201, the end excluded); default 1..11
#   SECS   seconds of faults per seed; default 20
# A failing seed prints the command that replays it.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
apt_install coreutils util-linux redis-server
PLUGBUS_NATS_SERVER="$(nats_server)"
export PLUGBUS_NATS_SERVER
SEEDS="${1:-1..11}"
SECS="${2:-20}"
out="$(mktemp)"
trap 'rm -f "$out"' EXIT
start=$(date +%s)
status=0
PLUGBUS_SIM_SEEDS="$SEEDS" PLUGBUS_SIM_SECS="$SECS" \
  cargo test --release -p plugbus --test e2e -- \
  simulation:: --nocapture --test-threads 1 >"$out" 2>&1 || status=$?
grep -E "^simulation seed|test result|panicked at|replay it" "$out" || true
end=$(date +%s)
echo "seeds $SEEDS, $SECS s of faults each; wall time $((end - start)) s; exit $status"
[ "$status" -eq 0 ] || echo "the whole output: rerun the command above, or see the test's log" >&2
exit "$status"
