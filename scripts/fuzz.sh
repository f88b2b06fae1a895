#!/usr/bin/env bash
# Coverage-guided fuzzing (cargo fuzz, libFuzzer) of everything that parses
# outside input: the ingress parsers (plain JSON, CloudEvents structured,
# batch and binary), the log record decoder, the manifest parser, topic
# patterns, the token file, and the host's imports as a plugin calls them
# (arguments the plugin controls). Runs each target for a given time, then
# prints per target the runs, the coverage libFuzzer reached and any crash
# (kept in fuzz/artifacts/TARGET, with the command that replays it).
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]   (default 600, all)
#   scripts/fuzz.sh --smoke    the suite's short pass: each target from its
#                              seeds for 20,000 runs with a fixed seed
#                              (deterministic, whatever the machine's speed)
#
# cargo fuzz needs nightly-only flags; the machine's stable toolchain
# accepts them with RUSTC_BOOTSTRAP=1. The fuzz build (everything
# instrumented, wasmtime included) goes to its own target directory,
# ~/.cache/plugbus/fuzz-target. Corpora grow in ~/.cache/plugbus/fuzz-corpus
# from the seeds in fuzz/seeds.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
SMOKE=0
if [ "${1:-}" = "--smoke" ]; then
  SMOKE=1
  shift
fi
SECONDS_PER_TARGET="${1:-600}"
shift || true
TARGETS=("$@")
[ ${#TARGETS[@]} -eq 0 ] && TARGETS=(ingress record manifest topic tokens imports)

CARGO_FUZZ_VERSION=0.13.2
if ! cargo fuzz --version 2>/dev/null | grep -q "$CARGO_FUZZ_VERSION"; then
  echo "== installing cargo-fuzz $CARGO_FUZZ_VERSION" >&2
  cargo install cargo-fuzz --version "$CARGO_FUZZ_VERSION" --locked
fi
export RUSTC_BOOTSTRAP=1
export CARGO_TARGET_DIR="${PLUGBUS_FUZZ_TARGET_DIR:-$HOME/.cache/plugbus/fuzz-target}"
CORPUS="${PLUGBUS_FUZZ_CORPUS:-$HOME/.cache/plugbus/fuzz-corpus}"

echo "== building the fuzz targets (instrumented; the first build compiles wasmtime)" >&2
cargo fuzz build --release --sanitizer none --fuzz-dir fuzz

summary=()
failed=0
for t in "${TARGETS[@]}"; do
  mkdir -p "$CORPUS/$t" "fuzz/artifacts/$t"
  cp -n fuzz/seeds/"$t"/* "$CORPUS/$t/" 2>/dev/null || true
  log="$(mktemp)"
  if [ "$SMOKE" -eq 1 ]; then
    # A fresh corpus from the seeds alone, so that the pass is the same
    # every time.
    corpus="$(mktemp -d)"
    cp fuzz/seeds/"$t"/* "$corpus/" 2>/dev/null || true
    budget=(-runs=20000 -seed=1)
    what="20000 runs"
  else
    corpus="$CORPUS/$t"
    budget=(-max_total_time="$SECONDS_PER_TARGET")
    what="${SECONDS_PER_TARGET}s"
  fi
  echo "== fuzzing $t ($what)" >&2
  set +e
  cargo fuzz run --release --sanitizer none --fuzz-dir fuzz "$t" "$corpus" -- \
    "${budget[@]}" -print_final_stats=1 \
    -artifact_prefix="fuzz/artifacts/$t/" >"$log" 2>&1
  status=$?
  set -e
  runs="$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || true)"
  cov="$(grep -o 'cov: [0-9]*' "$log" | tail -1 | grep -o '[0-9]*' || true)"
  crashes="$(find "fuzz/artifacts/$t" -type f | wc -l)"
  summary+=("$(printf '%-9s %12s %12s runs  coverage %6s edges  crashes %s' "$t" "$what" "${runs:-?}" "${cov:-?}" "$crashes")")
  [ "$SMOKE" -eq 1 ] && rm -rf "$corpus"
  if [ "$status" -ne 0 ] || [ "$crashes" -ne 0 ]; then
    failed=1
    grep -E "panicked|ERROR|SUMMARY" "$log" | head -5 >&2 || true
    for a in "fuzz/artifacts/$t"/*; do
      [ -f "$a" ] && echo "   replay: RUSTC_BOOTSTRAP=1 cargo fuzz run --release --sanitizer none --fuzz-dir fuzz $t $a" >&2
    done
  fi
  rm -f "$log"
done
printf '%s\n' "${summary[@]}"
exit "$failed"
