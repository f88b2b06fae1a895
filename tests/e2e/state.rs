//! Plugin key-value state: kept only for acked events, across kill -9 and in memory.

use super::*;

fn tally_batch(ids: &[(&str, Value)]) -> Vec<u8> {
    let events: Vec<Value> = ids
        .iter()
        .map(|(id, data)| {
            let mut e = json!({"specversion": "1.0", "id": id, "source": "/test",
                               "type": "tally.one", "data": data});
            if let Some(subject) = data["subject"].as_str() {
                e["subject"] = json!(subject);
            }
            e
        })
        .collect();
    Value::Array(events).to_string().into_bytes()
}

#[test]
fn strict_ordering_holds_later_events_of_the_same_subject_behind_a_retry() {
    let retry = json!({"subject": "A", "retry_until_attempt": 3, "delay_ms": 40});
    let batch = [
        ("a1", retry),
        ("a2", json!({"subject": "A"})),
        ("b1", json!({"subject": "B"})),
        ("a3", json!({"subject": "A"})),
        ("n1", json!({})),
    ];
    for (ordering, want) in [("strict", ["a1", "a2", "a3"]), ("none", ["a2", "a3", "a1"])] {
        let h = host(
            &[PluginFile::Wasm("tally", artifacts::TALLY)],
            &["--ordering", ordering],
        );
        let (status, body) = send(&h, &batch);
        assert_eq!(status, 202, "{body}");
        h.wait_until("all acked", WAIT, |h| h.count("tally", "handled") == 5)
            .expect("acked");
        assert_eq!(
            kv(&h, "order.A"),
            Some(json!(want)),
            "--ordering {ordering}"
        );
        assert_eq!(
            kv(&h, "order.B"),
            Some(json!(["b1"])),
            "other subjects go on"
        );
        assert_eq!(kv(&h, "seen"), Some(json!(5)), "each counted once");
        assert_eq!(kv(&h, "attempt.a1"), Some(json!(3)));
        assert_eq!(
            h.count("tally", "retried"),
            2,
            "held events are not retries"
        );
    }
    // Per plugin: the flag names the plugin.
    let h = host(
        &[PluginFile::Wasm("tally", artifacts::TALLY)],
        &["--ordering-for", "tally=strict", "--memory"],
    );
    let (status, _) = send(&h, &batch);
    assert_eq!(status, 202);
    h.wait_until("all acked", WAIT, |h| h.count("tally", "handled") == 5)
        .expect("acked");
    assert_eq!(kv(&h, "order.A"), Some(json!(["a1", "a2", "a3"])));
}

/// POST tally events as one CloudEvents batch.
fn send(h: &TestHost, ids: &[(&str, Value)]) -> (u16, Value) {
    h.post(
        "/v1/events",
        Some("application/cloudevents-batch+json"),
        &[],
        &tally_batch(ids),
    )
}

fn kv(h: &TestHost, key: &str) -> Option<Value> {
    h.get(&format!("/v1/plugins/tally/kv/{key}"))
        .ok()
        .map(|v| v["value"].clone())
}

#[test]
fn state_keeps_only_acked_events_writes_and_pending_retries_survive_kill_9() {
    let data = TestDir::new("state");
    let args = ["--data", &data.arg()];
    let plugins = [PluginFile::Wasm("tally", artifacts::TALLY)];
    let h = host(&plugins, &args);
    // One batch of ten; two of them are retried twice inside it. Every
    // call writes, so the batch is re-handled event by event and only
    // acked events' writes are kept.
    let retry = json!({"retry_until_attempt": 3, "delay_ms": 30});
    let ids: Vec<(String, Value)> = (0..10)
        .map(|i| {
            let data = if i == 3 || i == 7 {
                retry.clone()
            } else {
                json!({})
            };
            (format!("t{i}"), data)
        })
        .collect();
    let borrowed: Vec<(&str, Value)> = ids.iter().map(|(i, d)| (i.as_str(), d.clone())).collect();
    let (status, body) = send(&h, &borrowed);
    assert_eq!(status, 202, "{body}");
    h.wait_until("ten acked", WAIT, |h| h.count("tally", "handled") == 10)
        .expect("all acked");
    assert_eq!(kv(&h, "seen"), Some(json!(10)), "each event counted once");
    assert_eq!(kv(&h, "attempt.t3"), Some(json!(3)));
    assert_eq!(kv(&h, "attempt.t0"), Some(json!(1)));
    assert_eq!(h.count("tally", "retried"), 4);

    // A retry waiting when the host is killed is still owed after it, and
    // still waits for its time.
    let sent = std::time::Instant::now();
    let late = json!({"retry_until_attempt": 2, "delay_ms": 5_000});
    let (status, body) = send(&h, &[("late", late)]);
    assert_eq!(status, 202, "{body}");
    h.wait_until("the first attempt", WAIT, |h| {
        h.count("tally", "retried") == 5
    })
    .expect("retried");
    h.kill9();
    let h = host(&plugins, &args);
    h.wait_until("the owed retry", WAIT, |h| {
        kv(h, "attempt.late") == Some(json!(2))
    })
    .expect("delivered after the restart, as attempt 2");
    assert!(
        sent.elapsed() >= Duration::from_millis(5_000),
        "the restart cut the retry's delay short: delivered after {:?}",
        sent.elapsed()
    );
    assert_eq!(kv(&h, "seen"), Some(json!(11)), "nothing counted twice");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        h.count("tally", "handled"),
        1,
        "only the owed event came again"
    );
}

#[test]
fn state_works_in_memory_mode_too() {
    let h = host(
        &[PluginFile::Wasm("tally", artifacts::TALLY)],
        &["--memory"],
    );
    let (status, _) = send(
        &h,
        &[
            ("m1", json!({})),
            ("m2", json!({"retry_until_attempt": 2, "delay_ms": 10})),
        ],
    );
    assert_eq!(status, 202);
    h.wait_until("both acked", WAIT, |h| h.count("tally", "handled") == 2)
        .expect("acked");
    assert_eq!(kv(&h, "seen"), Some(json!(2)));
    let list = h.get("/v1/plugins/tally/kv").expect("list");
    let keys: Vec<&str> = list["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .filter_map(|e| e["key"].as_str())
        .collect();
    assert_eq!(keys, ["attempt.m1", "attempt.m2", "order.-", "seen"]);
}
