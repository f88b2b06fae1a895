#!/usr/bin/env bash
# What the plugin author's loop costs, with the real binary: plugbus new to
# the first handled event (Rust cold, from an empty cargo home, and warm, on
# the shared target directory), edit to the new version handling events in
# plugbus dev, artifact sizes, start from a warm compile cache, and events/s
# of the Python template beside the Rust one. Prints a table. Installs the
# pinned componentize-py (scripts/env.sh). Needs the crates.io registry for
# the cold row. About 6 minutes on two cores.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
PLUGBUS_COMPONENTIZE_PY="$(componentize_py)"
export PLUGBUS_COMPONENTIZE_PY
cargo bench -p plugbus --bench authoring
