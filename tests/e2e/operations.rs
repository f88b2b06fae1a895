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
