//! Nothing lost, ever: the reference order flow at full speed, with every
//! default and with the limits users set, ends with every order handled
//! by every plugin and exactly one inventory follow-up per order; a limit
//! slows a plugin down and never fails its work; a plugin that overruns
//! its deadline on a batch the host chose is given smaller batches; a
//! hostile key and a panicking worker lose nothing.

use super::*;

/// `n` orders, each its own subject, posted as CloudEvents batches of
/// 1,000 (ids `o-0`…).
pub(crate) fn post_orders(h: &TestHost, n: usize) {
    for start in (0..n).step_by(1000) {
        let batch: Vec<Value> = (start..n.min(start + 1000))
            .map(|i| {
                json!({"specversion": "1.0", "id": format!("o-{i}"), "source": "/shop",
                       "type": "order.placed", "subject": format!("o-{i}"),
                       "data": order(&format!("o-{i}"), "widget", 1, 100)})
            })
            .collect();
        h.publish_batch(batch);
    }
}

/// Every event of the log, read in pages.
pub(crate) fn whole_log(h: &TestHost) -> Vec<Value> {
    let mut out: Vec<Value> = Vec::new();
    let mut from = 1;
    loop {
        let page = h
            .get(&format!("/v1/log?from={from}&limit=1000"))
            .unwrap_or_else(|e| panic!("log: {e}"));
        let events = page["events"].as_array().cloned().unwrap_or_default();
        let Some(last) = events.last().and_then(|e| e["sequence"].as_u64()) else {
            return out;
        };
        from = last + 1;
        out.extend(events);
    }
}

/// Each of `orders` has exactly one inventory follow-up in `log`, and no
/// reference plugin of `h` has a dead letter.
pub(crate) fn one_follow_up_each_and_no_dead_letters(
    h: &TestHost,
    log: &[Value],
    orders: &HashSet<&str>,
) {
    let mut follow_ups: std::collections::HashMap<&str, usize> = Default::default();
    for e in log.iter().filter(|e| {
        e["type"]
            .as_str()
            .is_some_and(|t| t.starts_with("inventory."))
    }) {
        *follow_ups
            .entry(e["causationid"].as_str().unwrap_or_default())
            .or_default() += 1;
    }
    let missing: Vec<&&str> = orders
        .iter()
        .filter(|o| !follow_ups.contains_key(**o))
        .take(10)
        .collect();
    assert!(
        missing.is_empty(),
        "{} orders have no inventory follow-up, e.g. {missing:?}",
        orders
            .iter()
            .filter(|o| !follow_ups.contains_key(**o))
            .count()
    );
    let twice: Vec<_> = follow_ups.iter().filter(|(_, &c)| c != 1).collect();
    assert!(
        twice.is_empty(),
        "orders with more than one follow-up: {twice:?}"
    );
    for p in ["email", "inventory", "analytics"] {
        assert_eq!(dead_count(h, &format!("/v1/dead/{p}")), Some(0), "{p}");
    }
}

/// The reference plugins of `h` were sent `n` orders (`post_orders`): wait
/// until each is done, then check every order is accounted for: inventory
/// and analytics handled each once, each order has exactly one inventory
/// follow-up in the log, email handled every order and every
/// `inventory.insufficient`, analytics counted every order, no dead letter
/// anywhere, and the audit is clean.
pub(crate) fn order_flow_accounted(h: &TestHost, n: u64) {
    for p in ["inventory", "analytics"] {
        h.wait_until(&format!("{p} to handle {n} orders"), WAIT, |h| {
            h.count(p, "handled") >= n
        })
        .unwrap_or_else(|e| panic!("{e}"));
    }
    // Inventory's follow-ups are in the log with its acks.
    let log = whole_log(h);
    let insufficient = log
        .iter()
        .filter(|e| e["type"] == "inventory.insufficient")
        .count() as u64;
    h.wait_until(
        &format!("email to handle {n} orders and {insufficient} follow-ups"),
        WAIT,
        |h| h.count("email", "handled") >= n + insufficient,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let orders: HashSet<&str> = log
        .iter()
        .filter(|e| e["type"] == "order.placed")
        .filter_map(|e| e["id"].as_str())
        .collect();
    assert_eq!(orders.len() as u64, n, "every order is in the log once");
    one_follow_up_each_and_no_dead_letters(h, &log, &orders);
    // Handled exactly once each: the counters equal the orders.
    assert_eq!(h.count("inventory", "handled"), n);
    assert_eq!(h.count("analytics", "handled"), n);
    assert_eq!(h.count("email", "handled"), n + insufficient);
    let orders_counted = h
        .get("/v1/plugins/analytics/kv/orders")
        .unwrap_or_else(|e| panic!("analytics' count: {e}"));
    let counted = match &orders_counted["value"] {
        Value::String(s) => s.parse().ok(),
        v => v.as_u64(),
    };
    assert_eq!(counted, Some(n), "{orders_counted}");
    h.audit_at_rest(3, Duration::from_secs(60));
}

#[test]
fn the_order_flow_at_full_speed_with_every_default_loses_nothing() {
    let h = host(&order_flow(), &[]);
    const N: usize = 20_000;
    post_orders(&h, N);
    order_flow_accounted(&h, N as u64);
    assert_eq!(h.count("inventory", "failed"), 0, "never failed");
    h.stop().expect("stops");
}

#[test]
fn a_publish_limit_holds_deliveries_and_never_fails_a_publish() {
    let mut files = order_flow();
    files.push(PluginFile::Manifest(
        "inventory",
        "[publish]\nrate_events_per_s_max = 200\n",
    ));
    let h = host(&files, &[]);
    const N: usize = 2_000;
    post_orders(&h, N);
    // 2,000 follow-ups at 200 a second take ten seconds, held most of
    // them: the status says why.
    h.wait_until("inventory's status to say it is held", WAIT, |h| {
        h.plugin("inventory").is_some_and(|p| {
            p["held"]
                .as_str()
                .is_some_and(|why| why.contains("publish rate limit of 200 events/s"))
        })
    })
    .unwrap_or_else(|e| panic!("{e}"));
    order_flow_accounted(&h, N as u64);
    // Held, not refused.
    let over = h
        .metric("plugbus_plugin_publish_throttled_total{plugin=\"inventory\"}")
        .unwrap_or(0.0);
    assert!(over > 0.0, "inventory went over its rate: {over}");
    assert_eq!(h.count("inventory", "failed"), 0, "no publish failed");
    assert_eq!(
        h.count("inventory", "retried"),
        0,
        "nothing pushed into retries"
    );
    h.stop().expect("stops");
}

#[test]
fn the_order_flow_with_strict_ordering_and_four_workers_loses_nothing() {
    let mut files = order_flow();
    files.push(PluginFile::Manifest(
        "inventory",
        "concurrency = 4\nordering_key = \"subject\"\n[retry]\nordering = \"strict\"\n[publish]\nrate_events_per_s_max = 2000\n",
    ));
    let h = host(&files, &[]);
    const N: usize = 10_000;
    post_orders(&h, N);
    order_flow_accounted(&h, N as u64);
    assert_eq!(h.count("inventory", "failed"), 0, "never failed");
    h.stop().expect("stops");
}

#[test]
fn a_huge_key_is_an_error_to_the_plugin_and_a_dead_letter_not_a_panic() {
    let mut files = order_flow();
    files.push(PluginFile::Wasm("hostile_hugekey", artifacts::HOSTILE));
    files.push(PluginFile::Manifest(
        "hostile_hugekey",
        "[config]\nmode = \"hugekey\"\n[retry]\nmax_attempts = 2\nbackoff_ms_min = 10\nbackoff_ms_max = 20\n",
    ));
    let h = host(&files, &[]);
    post_orders(&h, 10);
    h.wait_until("hostile_hugekey: 10 dead letters", WAIT, |h| {
        dead_count(h, "/v1/dead/hostile_hugekey") == Some(10)
    })
    .unwrap_or_else(|e| panic!("{e}"));
    let letters = h.get("/v1/dead/hostile_hugekey").expect("dead letters");
    let error = letters["dead_letters"][0]["error"]
        .as_str()
        .unwrap_or_default();
    assert!(
        error.contains("the key is 1048576 bytes, over the limit of 1024"),
        "{letters}"
    );
    order_flow_accounted(&h, 10);
    let log = h.log().join("\n");
    assert!(
        !log.contains("panicked"),
        "no panic in the host log:\n{log}"
    );
    assert_eq!(h.count("hostile_hugekey", "worker_deaths"), 0);
    h.stop().expect("stops");
}

#[test]
fn a_worker_that_panics_is_reported_and_its_batch_delivered_again() {
    let files = order_flow();
    let h = TestHost::start_with_env(
        BIN,
        &files,
        // Every panic costs the batch in hand an attempt: enough of them
        // that one order hit five times does not become a dead letter.
        &["--batch-events-max", "16", "--max-attempts", "100"],
        &[(
            "PLUGBUS_FAULT_WORKER_PANIC",
            std::ffi::OsStr::new("inventory:5"),
        )],
    )
    .unwrap_or_else(|e| panic!("host did not start: {e}"));
    const N: usize = 1_000;
    post_orders(&h, N);
    order_flow_accounted(&h, N as u64);
    let inventory = h.plugin("inventory").expect("listed");
    let deaths = inventory["worker_deaths"].as_u64().unwrap_or(0);
    assert!(deaths > 0, "{inventory}");
    assert_eq!(
        h.metric("plugbus_plugin_worker_deaths_total{plugin=\"inventory\"}"),
        Some(deaths as f64)
    );
    let said = inventory["worker_death"].as_str().unwrap_or_default();
    assert!(
        said.contains("fault injected by PLUGBUS_FAULT_WORKER_PANIC"),
        "{inventory}"
    );
    assert_eq!(inventory["state"], "running", "it goes on: {inventory}");
    // Each panic counted the batch in hand a failed attempt, retried.
    assert!(inventory["retried"].as_u64() >= Some(1), "{inventory}");
    h.stop().expect("stops");
}

#[test]
fn a_batch_too_heavy_for_one_call_is_split_and_stays_in_the_foreground() {
    // 5 ms of work per event: a default batch of 256 would use more than a
    // second in one call; cut at 100 ms of CPU, it is handled again in
    // halves until a call fits, never in the background, never a failure.
    let mut files = order_flow();
    files.push(PluginFile::Wasm("busy", artifacts::HOSTILE));
    files.push(PluginFile::Manifest(
        "busy",
        "[config]\nmode = \"work\"\nwork_us = \"5000\"\nsubscribe = \"order.placed\"\n",
    ));
    let h = host(&files, &[]);
    const N: u64 = 600;
    post_orders(&h, N as usize);
    h.wait_until("busy to handle every order", WAIT, |h| {
        h.count("busy", "handled") >= N
    })
    .unwrap_or_else(|e| panic!("{e}"));
    let busy = h.plugin("busy").expect("listed");
    assert_eq!(busy["handled"], N, "each once: {busy}");
    assert_eq!(busy["failed"], 0, "no attempt counted: {busy}");
    assert_eq!(busy["retried"], 0, "{busy}");
    let metric = |m: &str| {
        h.metric(&format!("plugbus_{m}{{plugin=\"busy\"}}"))
            .unwrap_or(0.0)
    };
    assert!(metric("plugin_batch_splits_total") >= 1.0, "split: {busy}");
    crate::isolation::never(&h, "busy", "background");
    crate::isolation::never(&h, "busy", "low_priority");
    let cap = busy["batch_events"].as_u64().unwrap_or(256);
    assert!(cap < 256, "runs at a smaller cap: {busy}");
    assert!(
        busy["batch_note"]
            .as_str()
            .is_some_and(|n| n.contains("events per call")),
        "says why: {busy}"
    );
    h.wait_log("used 100 ms of CPU time: handled again in halves", WAIT)
        .expect("the cut is logged");
    order_flow_accounted(&h, N);
    h.stop().expect("stops");
}

#[test]
fn a_slow_plugin_gets_smaller_batches_not_quarantine() {
    let mut files = order_flow();
    files.push(PluginFile::Wasm("slow", artifacts::SLOW));
    let h = host(&files, &[]);
    // One delivery of 200: as one batch it needs 3.2 s of a 1 s deadline.
    const N: u64 = 200;
    post_orders(&h, N as usize);
    h.wait_until("slow to handle every order", WAIT, |h| {
        h.count("slow", "handled") >= N
    })
    .unwrap_or_else(|e| panic!("{e}"));
    let slow = h.plugin("slow").expect("listed");
    assert_eq!(slow["failed"], 0, "no attempt counted: {slow}");
    assert_eq!(slow["quarantines"], 0, "{slow}");
    assert_eq!(dead_count(&h, "/v1/dead/slow"), Some(0));
    let splits = h
        .metric("plugbus_plugin_batch_splits_total{plugin=\"slow\"}")
        .unwrap_or(0.0);
    assert!(splits > 0.0, "its batches were split: {slow}");
    order_flow_accounted(&h, N);
    h.stop().expect("stops");
}
