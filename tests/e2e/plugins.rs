//! Broken and trapping plugins, reported and contained.

use super::*;

#[test]
fn broken_plugins_are_reported_by_file_and_fix_while_the_others_run() {
    let h = host(
        &[
            PluginFile::Bytes("notwasm", b"#!/bin/sh\necho hi\n"),
            PluginFile::Wasm("future", artifacts::CONTRACT_V2),
            PluginFile::Wasm("needskey", artifacts::INIT_FAILS),
            PluginFile::Wasm("analytics", artifacts::ANALYTICS),
        ],
        &[],
    );
    let error_of = |name: &str| {
        let p = h.plugin(name).unwrap_or_else(|| panic!("{name} listed"));
        assert_eq!(p["state"], "failed", "{p}");
        p["error"].as_str().unwrap_or("").to_string()
    };
    let e = error_of("notwasm");
    assert!(
        e.contains("notwasm.wasm")
            && e.contains("not a WebAssembly file")
            && e.contains("wasm32-wasip1"),
        "{e}"
    );
    let e = error_of("future");
    assert!(
        e.contains("future.wasm")
            && e.contains("plugbus:plugin@0.2.0")
            && e.contains("plugbus:plugin@0.1.1"),
        "{e}"
    );
    let e = error_of("needskey");
    assert!(
        e.contains("needskey.wasm") && e.contains("config `api_key` is not set"),
        "{e}"
    );
    for name in ["notwasm.wasm", "future.wasm", "needskey.wasm"] {
        h.wait_log(
            &format!("plugin not loaded: {}", h.plugin_dir().join(name).display()),
            WAIT,
        )
        .expect("reported at startup");
    }

    assert_eq!(h.plugin("analytics").expect("listed")["state"], "running");
    h.publish("order.placed", &order("o-1", "w", 1, 100))
        .expect("publish");
    h.wait_until("analytics to handle", WAIT, |h| {
        h.count("analytics", "handled") == 1
    })
    .expect("the good plugin runs");
    let health = h.get("/healthz").expect("healthz");
    assert_eq!(health["plugins_running"], 1);
    assert_eq!(health["plugins_failed"], 3);
}

#[test]
fn a_trapping_plugin_is_reinstantiated_and_nothing_else_notices() {
    let h = host(
        &[
            PluginFile::Wasm("trap", artifacts::TRAP),
            PluginFile::Wasm("analytics", artifacts::ANALYTICS),
        ],
        // Memory mode: an event given up on is dropped and counted.
        &[&["--memory", "--batch-events-max", "1"][..], &GIVE_UP_FAST].concat(),
    );
    h.publish("order.placed", &json!({"total_cents": 1, "note": "boom"}))
        .expect("publish");
    h.publish("order.placed", &json!({"total_cents": 2}))
        .expect("publish");
    h.publish("order.placed", &json!({"total_cents": 3}))
        .expect("publish");
    h.wait_until("trap to give up on the bad event", WAIT, |h| {
        h.metric(r#"plugbus_events_dropped_total{plugin="trap",reason="retries_exhausted"}"#)
            == Some(1.0)
    })
    .expect("dropped after 2 attempts");
    h.wait_until("trap to ack the good ones", WAIT, |h| {
        h.count("trap", "handled") == 2
    })
    .expect("instance re-made");
    assert_eq!(h.count("trap", "failed"), 2, "two failed attempts");
    assert_eq!(h.count("trap", "retried"), 1);
    assert_eq!(
        h.metric(r#"plugbus_plugin_traps_total{plugin="trap"}"#),
        Some(2.0)
    );
    h.wait_log("plugin `trap` trapped", WAIT)
        .expect("trap logged");
    h.wait_log("boom in event", WAIT)
        .expect("the guest's panic message reaches the log");
    h.wait_until("analytics to handle all 3", WAIT, |h| {
        h.count("analytics", "handled") == 3
    })
    .expect("others unaffected");
    assert_eq!(h.count("analytics", "failed"), 0);
}
