//! What event contracts cost. The order flow (the three reference plugins
//! on the real binary, durable, every default: each follow-up inventory
//! publishes is checked against the writer schema it declares) beside the
//! same flow with topic schemas enforced on `order.placed` (each order
//! checked at ingress) and on inventory's two follow-up topics (each
//! follow-up checked against the topic's schema too, parsed once for
//! both), in turns in the same run (five rounds; each ratio is against
//! the run just before, and the median is reported); and each check on
//! its own: a schema compiled once, the data parsed and validated, beside
//! parsing alone.
//!
//! The goal (issue 30): the flow with validation on within 10 % of the
//! flow without it.

use std::fmt::Write as _;

use super::orderflow::{orders, plugbus, Run};
use super::*;

/// Checks timed per schema.
const CHECKS: usize = 200_000;
/// Rounds of the flow without and with the topic schemas, in turns.
const ROUNDS: usize = 5;

/// The research's order schema, closed (a producer's).
fn order_schema() -> serde_json::Value {
    serde_json::from_str(include_str!(
        "../../../tests/fixtures/schemas/order.placed.json"
    ))
    .expect("the fixture is JSON")
}

/// (topic, schema, a payload that fits) for the three topics: the order
/// schema, and inventory's declared writer schemas.
fn contracts() -> Vec<(String, serde_json::Value, Vec<u8>)> {
    let declared: serde_json::Value =
        serde_json::from_str(include_str!("../../../plugins/inventory/contracts.json"))
            .expect("inventory's contracts.json is JSON");
    let order = br#"{"order_id":"o-1","customer":"c1@example.com","items":[{"sku":"sku-1","qty":2}],"total_cents":200}"#;
    let reserved =
        br#"{"order_id":"o-1","customer":"c1@example.com","items":[{"sku":"sku-1","qty":2}]}"#;
    let short =
        br#"{"order_id":"o-1","customer":"c1@example.com","sku":"sku-1","wanted":2,"available":1}"#;
    vec![
        ("order.placed".into(), order_schema(), order.to_vec()),
        (
            "inventory.reserved".into(),
            declared["publishes"]["inventory.reserved"]["schema"].clone(),
            reserved.to_vec(),
        ),
        (
            "inventory.insufficient".into(),
            declared["publishes"]["inventory.insufficient"]["schema"].clone(),
            short.to_vec(),
        ),
    ]
}

/// Nanoseconds per check of `data` on `topic` (compiled once), and per
/// parse alone; an error when the payload does not fit.
fn per_check(topic: &str, schema: &serde_json::Value, data: &[u8]) -> Result<(f64, f64), String> {
    let schemas = plugbus::schema::Schemas::default();
    schemas
        .put(topic, schema.to_string().as_bytes(), None, None)
        .map_err(|e| e.to_string())?;
    schemas
        .check(topic, data, "bench")
        .map_err(|v| format!("the bench's {topic} payload does not fit: {v}"))?;
    let start = Instant::now();
    for _ in 0..CHECKS {
        let _ = std::hint::black_box(schemas.check(topic, std::hint::black_box(data), "bench"));
    }
    let check = start.elapsed().as_nanos() as f64 / CHECKS as f64;
    let start = Instant::now();
    for _ in 0..CHECKS {
        let _ = std::hint::black_box(serde_json::from_slice::<serde_json::Value>(
            std::hint::black_box(data),
        ));
    }
    let parse = start.elapsed().as_nanos() as f64 / CHECKS as f64;
    Ok((check, parse))
}

/// The schema directory enforcing the three topics' schemas.
fn schema_dir(dir: &Path) -> Result<PathBuf, String> {
    let root = dir.join("validation-schemas");
    let _ = std::fs::remove_dir_all(&root);
    for (topic, schema, _) in contracts() {
        let at = root.join(&topic);
        std::fs::create_dir_all(&at).map_err(|e| e.to_string())?;
        std::fs::write(at.join("1.json"), schema.to_string()).map_err(|e| e.to_string())?;
    }
    Ok(root)
}

/// Measure; the table, to print.
pub(crate) fn table(dir: &Path) -> String {
    let n: usize = std::env::var("PLUGBUS_BENCH_ORDERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    let mut out = String::from("\nWhat event contracts cost, per check (compiled once; parse and validate), beside parsing alone:\n\n| topic (schema) | ns per check | ns to parse alone |\n|---|---:|---:|\n");
    for (topic, schema, data) in contracts() {
        let _ = match per_check(&topic, &schema, &data) {
            Ok((check, parse)) => writeln!(out, "| {topic} | {check:.0} | {parse:.0} |"),
            Err(e) => writeln!(out, "| {topic} | - | - ({e}) |"),
        };
    }
    let schemas = match schema_dir(dir) {
        Ok(s) => s,
        Err(e) => return format!("{out}\nThe order flow with validation: skipped ({e}).\n"),
    };
    let schemas_arg = schemas.display().to_string();
    let batches = orders(n);
    let flow = ["email", "inventory", "analytics"];
    let plain: &[&str] = &["--fsync", "always"];
    let enforced: &[&str] = &["--fsync", "always", "--schemas", &schemas_arg];
    let mut runs: Vec<(&str, Result<Run, String>)> = Vec::new();
    for _ in 0..ROUNDS {
        runs.push((
            "every default (inventory's follow-ups checked against its declared writer schemas)",
            plugbus(dir, &flow, plain, &batches, n),
        ));
        runs.push((
            "every default + topic schemas enforced on order.placed and inventory's two topics",
            plugbus(dir, &flow, enforced, &batches, n),
        ));
    }
    let _ = std::fs::remove_dir_all(&schemas);
    let _ = writeln!(out, "\nThe order flow ({n} orders in CloudEvents batches, fsync always, until the audit is clean at rest), in turns:\n\n| run | orders/s | CPU s per 100k orders |\n|---|---:|---:|");
    for (name, run) in &runs {
        let _ = match run {
            Ok(r) => writeln!(
                out,
                "| {name} | {:.0} | {:.2} |",
                n as f64 / r.seconds,
                r.cpu_seconds * 100_000.0 / n as f64
            ),
            Err(e) => writeln!(out, "| {name} | - | - ({e}) |"),
        };
    }
    // Each round's enforced run against the plain run just before it.
    let mut rate = Vec::new();
    let mut cpu = Vec::new();
    for pair in runs.chunks(2) {
        if let [(_, Ok(plain)), (_, Ok(enforced))] = pair {
            rate.push(plain.seconds / enforced.seconds);
            cpu.push(enforced.cpu_seconds / plain.cpu_seconds);
        }
    }
    let rounds = rate.len();
    match (median(&mut rate), median(&mut cpu)) {
        (Some(rate), Some(cpu)) if rounds == ROUNDS => {
            let _ = writeln!(out, "\nWith the topic schemas enforced the flow runs at {rate:.2}x the rate without them (median of {ROUNDS} rounds; goal ≥ 0.9) and uses {cpu:.2}x the CPU.");
        }
        _ => out.push_str("\nThe ratio: not measured (a run failed).\n"),
    }
    out
}

/// The median of `values` (none: empty).
fn median(values: &mut [f64]) -> Option<f64> {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied()
}
