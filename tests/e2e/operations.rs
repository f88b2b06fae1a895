//! What operators use: metrics, the CLI and its errors.

use super::*;

#[test]
fn metrics_expose_per_plugin_counters_depth_and_latency() {
    let h = host(&order_flow(), &[]);
    h.publish("order.placed", &order("o-1", "w", 1, 100))
        .expect("publish");
    h.wait_until("analytics", WAIT, |h| h.count("analytics", "handled") == 1)
        .expect("handled");
    // The order and inventory's follow-up.
    h.wait_until("the follow-up", WAIT, |h| {
        h.metric("plugbus_events_published_total") == Some(2.0)
    })
    .expect("follow-up published");
    // analytics does not subscribe to the follow-up; its cursor passes
    // it when the worker takes the (empty) delivery that accounts for it.
    h.wait_until("analytics' cursor past the follow-up", WAIT, |h| {
        h.plugin("analytics").and_then(|p| p["lag"].as_u64()) == Some(0)
    })
    .expect("caught up");
    let text = h.get_text("/metrics").expect("metrics");
    for series in [
        r#"plugbus_events_handled_total{plugin="analytics"} 1"#,
        r#"plugbus_events_failed_total{plugin="analytics"} 0"#,
        r#"plugbus_events_retried_total{plugin="analytics"} 0"#,
        r#"plugbus_queue_depth_events{plugin="analytics"} 0"#,
        r#"plugbus_handle_duration_seconds_count{plugin="analytics"} 1"#,
        "plugbus_events_published_total 2",
        "plugbus_log_events 2",
        r#"plugbus_lag_events{plugin="analytics"} 0"#,
        "plugbus_fsync_duration_seconds_count",
        "plugbus_log_bytes",
        r#"plugbus_delivery_latency_seconds_count{plugin="analytics"} 1"#,
    ] {
        assert!(text.contains(series), "missing {series} in\n{text}");
    }
}

#[test]
fn the_cli_publishes_and_lists_plugins() {
    let h = host(&order_flow(), &[]);
    let out = std::process::Command::new(BIN)
        .args(["publish", "--url", &h.url, "order.placed"])
        .arg(order("o-cli", "w", 1, 4200).to_string())
        .output()
        .expect("run publish");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("published order.placed id="));
    h.wait_until("analytics", WAIT, |h| h.count("analytics", "handled") == 1)
        .expect("handled");

    let out = std::process::Command::new(BIN)
        .args(["plugins", "--url", &h.url])
        .output()
        .expect("run plugins");
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    for name in ["analytics", "email", "inventory"] {
        assert!(
            table
                .lines()
                .any(|l| l.starts_with(name) && l.contains("running")),
            "{table}"
        );
    }

    let out = std::process::Command::new(BIN)
        .args(["publish", "--url", &h.url, "order.placed", "{not json"])
        .output()
        .expect("run publish");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not valid JSON"));
}

#[test]
fn cli_errors_name_the_fix() {
    let out = std::process::Command::new(BIN)
        .args(["plugins", "--url", "http://127.0.0.1:9"])
        .output()
        .expect("run plugins");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("is `plugbus run` running there?"));

    let out = std::process::Command::new(BIN)
        .args([
            "run",
            "--plugins",
            "/nonexistent/plugbus-dir",
            "--listen",
            "127.0.0.1:0",
        ])
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("/nonexistent/plugbus-dir") && err.contains("--plugins"),
        "{err}"
    );

    let out = std::process::Command::new(BIN)
        .arg("--help")
        .output()
        .expect("help");
    let help = String::from_utf8_lossy(&out.stdout);
    for word in ["run", "publish", "plugins"] {
        assert!(help.contains(word), "{help}");
    }
}

#[test]
fn readyz_names_what_is_wrong_and_plugbus_audit_prints_the_accounts() {
    let mut files = order_flow();
    let h = host(&files, &[]);
    let ready = h.get("/readyz").expect("ready");
    assert_eq!(ready["status"], "ready", "{ready}");
    two_orders_through_quietly(&h);
    let out = std::process::Command::new(BIN)
        .args(["audit", "--url", &h.url])
        .output()
        .expect("run audit");
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{table}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(table.contains("UNACCOUNTED"), "{table}");
    for name in ["analytics", "email", "inventory"] {
        assert!(
            table
                .lines()
                .any(|l| l.starts_with(name) && l.trim_end().ends_with(" 0")),
            "{name} accounted: {table}"
        );
    }
    h.stop().expect("stops");

    // A plugin that does not start: not ready, named, with the reason;
    // liveness stays 200.
    files.push(PluginFile::Wasm("broken", artifacts::INIT_FAILS));
    let h = host(&files, &[]);
    let (status, body) = get_status(&h, "/readyz");
    assert_eq!(status, 503, "{body}");
    let reasons = body["reasons"].to_string();
    assert!(reasons.contains("plugin broken failed to load"), "{body}");
    assert_eq!(get_status(&h, "/healthz").0, 200);
    h.stop().expect("stops");
}

/// Two orders through the reference plugins, waited for.
fn two_orders_through_quietly(h: &TestHost) {
    for id in ["o-r1", "o-r2"] {
        h.publish("order.placed", &order(id, "widget", 1, 100))
            .expect("order");
    }
    h.wait_until("analytics to handle both", WAIT, |h| {
        h.count("analytics", "handled") == 2 && h.count("inventory", "handled") == 2
    })
    .unwrap_or_else(|e| panic!("{e}"));
}

/// GET `path`: the status and the JSON body, whatever the status.
pub(crate) fn get_status(h: &TestHost, path: &str) -> (u16, Value) {
    match ureq::get(&format!("{}{path}", h.url)).call() {
        Ok(r) => (r.status(), r.into_json().unwrap_or(Value::Null)),
        Err(ureq::Error::Status(code, r)) => (code, r.into_json().unwrap_or(Value::Null)),
        Err(e) => panic!("GET {path}: {e}"),
    }
}
