//! End-to-end tests: the real `plugbus` binary, real plugins compiled to
//! wasm32-wasip1 (built once per test run by plugbus-e2e's build script),
//! real HTTP on loopback.

use std::time::Duration;

use std::collections::HashSet;
use std::time::Instant;

use plugbus_e2e::{artifacts, PluginFile, TestDir, TestHost};
use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_plugbus");
/// How long a test waits for something to happen before it fails: a bound
/// for liveness only, far above what a busy machine needs, never a timing
/// a test asserts.
const WAIT: Duration = Duration::from_secs(120);

/// A manifest lifting the guest output limit, for tests that read every
/// line a plugin logs (the recorder logs each event it handles).
const LOUD: &str = "[limits]\noutput_lines_per_s_max = 10000000\n";

fn order_flow() -> Vec<PluginFile<'static>> {
    vec![
        PluginFile::Wasm("email", artifacts::EMAIL),
        PluginFile::Wasm("inventory", artifacts::INVENTORY),
        PluginFile::Wasm("analytics", artifacts::ANALYTICS),
    ]
}

/// Every plugin of the order flow has finished `n` orders (email also
/// hears inventory's shortages: it has read everything there is).
fn order_flow_done(h: &TestHost, n: u64) -> bool {
    ["inventory", "analytics"]
        .iter()
        .all(|p| h.count(p, "handled") == n)
        && h.count("email", "handled") >= n
        && h.count("email", "lag") == 0
        && h.count("email", "queue_depth") == 0
}

fn order(id: &str, sku: &str, qty: u64, total_cents: u64) -> Value {
    json!({
        "order_id": id,
        "customer": "alice@example.com",
        "items": [{"sku": sku, "qty": qty}],
        "total_cents": total_cents
    })
}

/// Put `file` (e.g. `email.wasm`, `email.toml`) with `bytes` in the plugin
/// directory the way the README says deploy scripts should: write beside,
/// rename into place.
fn deploy(dir: &std::path::Path, file: &str, bytes: &[u8]) {
    let tmp = dir.join(format!("{file}.tmp"));
    std::fs::write(&tmp, bytes).expect("write");
    std::fs::rename(&tmp, dir.join(file)).expect("rename");
}

/// How many dead letters `GET path` lists (none while it does not answer).
fn dead_count(h: &TestHost, path: &str) -> Option<usize> {
    h.get(path)
        .ok()
        .and_then(|v| v["dead_letters"].as_array().map(Vec::len))
}

/// Give up on an event after two attempts, retried within milliseconds.
const GIVE_UP_FAST: [&str; 6] = [
    "--max-attempts",
    "2",
    "--backoff-ms-min",
    "10",
    "--backoff-ms-max",
    "20",
];

/// Run the host with `args` and no plugins, as a start that should be
/// refused; what it printed and how it ended.
fn start_output(args: &[&str]) -> std::process::Output {
    std::process::Command::new(BIN)
        .args([
            "run",
            "--plugins",
            "/nonexistent",
            "--listen",
            "127.0.0.1:0",
        ])
        .args(args)
        .output()
        .expect("run")
}

fn host(plugins: &[PluginFile<'_>], args: &[&str]) -> TestHost {
    TestHost::start(BIN, plugins, args).unwrap_or_else(|e| panic!("host did not start: {e}"))
}

mod abuse;
mod accounting;
mod auth;
mod author;
mod backup;
mod brokers;
mod busy;
mod concurrency;
mod console;
mod contracts;
mod dead_letters;
mod disk;
mod durable;
mod hot_swap;
mod ingress;
mod isolation;
mod manifests;
mod observe;
mod on_brokers;
mod operations;
mod order_flow;
mod plugins;
mod release;
mod repair;
mod saga;
mod schemas;
mod simulation;
mod state;
mod storms;
mod telemetry;
mod tiers;
mod timers;
mod upcasting;
mod upgrade;
