//! Manifests: overrides, bad keys named, overflow policy.

use super::*;

#[test]
fn a_manifest_overrides_subscriptions_and_limits_and_a_bad_key_is_named() {
    let h = host(
        &[
            PluginFile::Wasm("tally", artifacts::TALLY),
            PluginFile::Manifest(
                "tally",
                "subscriptions = [\"audit.>\"]\nbatch_events_max = 3\n[limits]\nstack_bytes_max = 262144\n",
            ),
            PluginFile::Wasm("broken", artifacts::NOOP),
            PluginFile::Manifest("broken", "concurency = 2\n"),
        ],
        &[],
    );
    let broken = h.plugin("broken").expect("listed");
    assert_eq!(broken["state"], json!("failed"));
    let error = broken["error"].as_str().unwrap_or("");
    assert!(
        error.contains("broken.toml") && error.contains("concurency"),
        "names the file and the key: {error}"
    );
    let tally = h.plugin("tally").expect("running");
    assert_eq!(tally["subscriptions"], json!(["audit.>"]));
    assert_eq!(tally["limits"]["batch_events_max"], json!(3));
    assert_eq!(tally["limits"]["stack_bytes_max"], json!(262144));
    h.publish("audit.checked", &json!({})).expect("publish");
    h.publish("tally.ignored", &json!({})).expect("publish");
    h.wait_until("tally to handle the audit event", WAIT, |h| {
        h.count("tally", "handled") == 1
    })
    .expect("subscribed by manifest");
    // A changed manifest restarts the plugin with it, at its cursor.
    deploy(
        &h.dir,
        "tally.toml",
        "subscriptions = [\"audit.>\"]\nbatch_events_max = 7\n".as_bytes(),
    );
    h.wait_until("the new manifest", WAIT, |h| {
        h.plugin("tally")
            .is_some_and(|p| p["limits"]["batch_events_max"] == json!(7))
    })
    .expect("restarted with it");
    h.publish("audit.again", &json!({})).expect("publish");
    h.wait_until("tally to handle the second", WAIT, |h| {
        h.count("tally", "handled") == 1 // counters are per start
            || h.count("tally", "handled") == 2
    })
    .expect("handled");
    // A broken manifest is reported; the plugin keeps its settings.
    deploy(
        &h.dir,
        "tally.toml",
        "[limits]\ndeadline_ms = \"soon\"\n".as_bytes(),
    );
    h.wait_until("the broken manifest to be reported", WAIT, |h| {
        h.plugin("tally").is_some_and(|p| {
            p["error"].as_str().unwrap_or("").contains("deadline_ms")
                && p["state"] == json!("running")
        })
    })
    .expect("reported");
    assert_eq!(
        h.plugin("tally").expect("running")["limits"]["batch_events_max"],
        json!(7)
    );
    // A fixed manifest for the failed plugin starts it.
    deploy(&h.dir, "broken.toml", "concurrency = 2\n".as_bytes());
    h.wait_until("broken to start", WAIT, |h| {
        h.plugin("broken").is_some_and(|p| {
            p["state"] == json!("running") && p["limits"]["concurrency"] == json!(2)
        })
    })
    .expect("started");
}

#[test]
fn memory_mode_overflow_drop_counts_instead_of_refusing() {
    let h = host(
        &[
            PluginFile::Wasm("slow", artifacts::SLOW),
            PluginFile::Manifest("slow", "[overflow]\npolicy = \"drop\"\n"),
        ],
        &[
            "--memory",
            "--queue-events-max",
            "64",
            "--batch-events-max",
            "1",
        ],
    );
    let batch: Vec<Value> = (0..64)
        .map(|i| json!({"specversion": "1.0", "id": format!("d{i}"), "source": "/t", "type": "order.placed", "data": {}}))
        .collect();
    for _ in 0..4 {
        // Drop never refuses a publisher.
        h.publish_batch(batch.clone());
    }
    h.wait_until("drops to be counted", WAIT, |h| {
        h.metric(r#"plugbus_events_dropped_total{plugin="slow",reason="overflow_drop"}"#)
            .is_some_and(|n| n > 0.0)
    })
    .expect("counted");
}

#[test]
fn a_plugin_reads_its_config_through_wasi_config_store_as_on_spin_and_wasmcloud() {
    let manifest = "[config]\ngreeting = \"hello\"\nregion = \"eu\"\n";
    let h = host(
        &[
            PluginFile::Wasm("config_reader", artifacts::CONFIG_READER),
            PluginFile::Manifest("config_reader", manifest),
        ],
        &[],
    );
    let kv = |key: &str| {
        h.get(&format!("/v1/plugins/config_reader/kv/{key}"))
            .map(|v| v["value"].clone())
            .unwrap_or_default()
    };
    // Spin's version and wasmCloud's read the manifest's [config] alike.
    assert_eq!(kv("draft.greeting"), json!("hello"));
    assert_eq!(kv("rc1.greeting"), json!("hello"));
    assert_eq!(kv("draft.keys"), json!(2));
    assert_eq!(kv("rc1.keys"), json!(2));
    assert!(h.stop().expect("stops").success());
}
