#!/usr/bin/env bash
# The whole test suite: formatting, clippy with warnings as errors, unit
# tests, doc tests, end-to-end tests (the real binary with real plugins
# built to wasm32-wasip1 once for the run), the static aarch64 binary under
# qemu, and a fuzz smoke pass of every parser of outside input. Everything
# runs in release: wasmtime's compiler is too slow unoptimised.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
# Real clients and servers the end-to-end tests use: curl, openssl (a test
# CA for TLS), yes (CPU hogs for the busy-machine tests), mount and
# fallocate (small file systems filled up), redis-server and
# the pinned nats-server (the brokers; tests start their own on loopback),
# systemd-analyze (the shipped unit is verified), chromium and its
# WebDriver (the console's tests drive a real headless browser).
apt_install curl openssl coreutils util-linux redis-server systemd chromium chromium-driver
PLUGBUS_NATS_SERVER="$(nats_server)"
export PLUGBUS_NATS_SERVER
# componentize-py, pinned: the Python plugin template is built and run.
PLUGBUS_COMPONENTIZE_PY="$(componentize_py)"
export PLUGBUS_COMPONENTIZE_PY
rustup component list --installed | grep -q '^clippy' || rustup component add clippy
rustup component list --installed | grep -q '^rustfmt' || rustup component add rustfmt

echo "== cargo fmt --check" >&2
cargo fmt --all --check
echo "== cargo clippy -D warnings" >&2
cargo clippy --release --workspace --all-targets -- -D warnings
# The default members hold every test: host, guest-sdk, tests, and the
# reference plugins, whose unit tests run natively against the SDK's test
# harness (their exports exist only in the wasm32-wasip1 build, which the
# e2e tests compile).
# The static aarch64 release binary, built for the edge; the e2e test
# `release::` runs it under qemu-user with the reference plugins and an
# order through (scripts/release.sh builds every platform and measures).
echo "== static aarch64 binary" >&2
bash scripts/release.sh --build-only aarch64-unknown-linux-musl
PLUGBUS_RELEASE_BINARIES="$(release_binary aarch64)"
export PLUGBUS_RELEASE_BINARIES
echo "== cargo test" >&2
cargo test --release
# A short deterministic pass of each fuzz target (scripts/fuzz.sh runs them
# for longer). Its instrumented build has its own target directory.
echo "== fuzz smoke pass" >&2
bash scripts/fuzz.sh --smoke
