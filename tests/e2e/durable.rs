//! The durable log: a slow reader, restarts, kill -9, dedup, retention,
//! and where a new plugin starts.

use super::*;

#[test]
fn a_slow_plugin_delays_its_own_reader_and_loses_nothing() {
    let h = host(
        &[
            PluginFile::Wasm("slow", artifacts::SLOW),
            PluginFile::Wasm("analytics", artifacts::ANALYTICS),
        ],
        &["--queue-events-max", "1", "--batch-events-max", "1"],
    );
    let batch: Vec<Value> = (0..30)
        .map(|i| {
            json!({"specversion": "1.0", "id": format!("d-{i}"), "source": "/t",
                        "type": "order.placed", "data": {"total_cents": 1}})
        })
        .collect();
    let (status, body) = h.post(
        "/v1/events",
        Some("application/cloudevents-batch+json"),
        &[],
        Value::Array(batch).to_string().as_bytes(),
    );
    assert_eq!(
        status, 202,
        "durable mode never answers 503 for a full queue: {body}"
    );
    h.wait_until("analytics", WAIT, |h| h.count("analytics", "handled") == 30)
        .expect("fast one");
    h.wait_until("slow to catch up", WAIT, |h| {
        h.count("slow", "handled") == 30
    })
    .expect("slow one");
    // The cursor moves just after the handled count.
    h.wait_until("slow's cursor at the end", WAIT, |h| {
        h.plugin("slow")
            .is_some_and(|p| p["cursor"] == 30 && p["lag"] == 0)
    })
    .expect("cursor 30, lag 0");
    assert_eq!(
        h.metric(r#"plugbus_events_dropped_total{plugin="slow",reason="queue_full"}"#),
        None
    );
}

#[test]
fn after_a_restart_each_plugin_resumes_at_its_cursor() {
    let data = TestDir::new("restart");
    let args = ["--data", &data.arg()];
    let h = host(
        &[PluginFile::Wasm("analytics", artifacts::ANALYTICS)],
        &args,
    );
    for i in 0..3 {
        h.publish("order.placed", &order(&format!("o-{i}"), "w", 1, 100))
            .expect("publish");
    }
    h.wait_until("analytics", WAIT, |h| h.count("analytics", "handled") == 3)
        .expect("handled");
    assert!(h.stop().expect("stops").success());

    // Again, with a plugin the log has never seen.
    let h = host(
        &[
            PluginFile::Wasm("analytics", artifacts::ANALYTICS),
            PluginFile::Wasm("email", artifacts::EMAIL),
        ],
        &args,
    );
    h.publish("order.placed", &order("o-3", "w", 1, 100))
        .expect("publish");
    h.wait_until("email to read the whole log", WAIT, |h| {
        h.count("email", "handled") == 4
    })
    .expect("a new plugin starts at the earliest event");
    h.wait_until("analytics", WAIT, |h| h.count("analytics", "handled") == 1)
        .expect("only the new order");
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        h.count("analytics", "handled"),
        1,
        "nothing handled before the restart comes again"
    );
    assert_eq!(h.plugin("analytics").expect("listed")["cursor"], 4);
}

/// kill -9 during a publish storm, 20 times on one data directory:
/// every event that got a 202 is handled at least once in the end.
#[test]
fn kill_9_during_a_publish_storm_loses_no_acknowledged_event() {
    let data = TestDir::new("kill9");
    let args = ["--data", &data.arg(), "--fsync", "always"];
    let plugins = [
        PluginFile::Wasm("recorder", artifacts::RECORDER),
        PluginFile::Manifest("recorder", LOUD),
        PluginFile::Wasm("analytics", artifacts::ANALYTICS),
    ];
    let mut acked: HashSet<String> = HashSet::new();
    let mut handled: HashSet<String> = HashSet::new();
    let collect = |log: &[String], into: &mut HashSet<String>| {
        for line in log {
            if let Some(id) = line.split("[recorder] handled ").nth(1) {
                into.insert(id.trim().to_string());
            }
        }
    };
    // 20 rounds in the suite; scripts/soak-kill9.sh runs many more.
    let rounds: u64 = std::env::var("PLUGBUS_KILL9_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    for round in 0..rounds {
        let h = host(&plugins, &args);
        let url = h.url.clone();
        let stop = Instant::now() + Duration::from_millis(150 + 20 * (round % 5));
        // Four publishers, each sending batches of 5 until the host dies.
        let publishers: Vec<_> = (0..4)
            .map(|p| {
                let url = url.clone();
                std::thread::spawn(move || {
                    let mut ok = Vec::new();
                    for k in 0.. {
                        let ids: Vec<String> =
                            (0..5).map(|j| format!("r{round}-p{p}-{k}-{j}")).collect();
                        let batch: Vec<Value> = ids
                            .iter()
                            .map(|id| {
                                json!({"specversion": "1.0", "id": id, "source": "/storm",
                                             "type": "order.placed", "data": {"total_cents": 1}})
                            })
                            .collect();
                        let sent = ureq::post(&format!("{url}/v1/events"))
                            .set("content-type", "application/cloudevents-batch+json")
                            .timeout(Duration::from_secs(5))
                            .send_string(&Value::Array(batch).to_string());
                        match sent {
                            Ok(r) if r.status() == 202 => ok.extend(ids),
                            _ => break,
                        }
                    }
                    ok
                })
            })
            .collect();
        while Instant::now() < stop {
            std::thread::sleep(Duration::from_millis(10));
        }
        collect(&h.kill9(), &mut handled);
        for p in publishers {
            acked.extend(p.join().expect("publisher"));
        }
    }
    // One last start delivers whatever the kills interrupted.
    let h = host(&plugins, &args);
    h.wait_until("the plugins to catch up", WAIT, |h| {
        ["recorder", "analytics"]
            .iter()
            .all(|p| h.plugin(p).and_then(|p| p["lag"].as_u64()) == Some(0))
    })
    .expect("caught up");
    // The log reaches the test through a pipe: wait for the lines.
    let deadline = Instant::now() + WAIT;
    loop {
        collect(&h.log(), &mut handled);
        if acked.is_subset(&handled) || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!(
        "kill -9 x{rounds}: {} events acknowledged, {} distinct handled",
        acked.len(),
        handled.len()
    );
    assert!(
        acked.len() > 100,
        "the storm published something: {}",
        acked.len()
    );
    let lost: Vec<&String> = acked.difference(&handled).collect();
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged events never handled, e.g. {:?}",
        lost.len(),
        acked.len(),
        &lost[..lost.len().min(5)]
    );
    // Exactly once in state: analytics counted each order in the log
    // (every acknowledged one, and any stored just before a kill
    // reached its publisher) once, whatever the kills interrupted.
    let mut in_log: HashSet<String> = HashSet::new();
    let mut from = 1;
    loop {
        let page = h
            .get(&format!("/v1/log?from={from}&limit=1000"))
            .expect("log");
        let events = page["events"].as_array().expect("events").clone();
        let Some(last) = events.last().and_then(|e| e["sequence"].as_u64()) else {
            break;
        };
        in_log.extend(
            events
                .iter()
                .filter_map(|e| e["id"].as_str().map(String::from)),
        );
        from = last + 1;
    }
    assert!(
        acked.is_subset(&in_log),
        "every acknowledged event is in the log"
    );
    let orders = h.get("/v1/plugins/analytics/kv/orders").expect("orders")["value"].as_u64();
    let cents = h
        .get("/v1/plugins/analytics/kv/revenue_cents")
        .expect("revenue")["value"]
        .as_u64();
    eprintln!(
        "analytics: orders={orders:?} revenue_cents={cents:?}; log holds {} orders, {} acknowledged",
        in_log.len(),
        acked.len()
    );
    assert_eq!(
        orders,
        Some(in_log.len() as u64),
        "each order counted exactly once"
    );
    assert_eq!(
        cents,
        Some(in_log.len() as u64),
        "1 cent each, counted once"
    );
}

#[test]
fn a_publisher_retrying_with_the_same_id_gets_the_original_sequence() {
    let h = host(&[PluginFile::Wasm("analytics", artifacts::ANALYTICS)], &[]);
    let event = json!({"specversion": "1.0", "id": "retry-me", "source": "/shop",
                       "type": "order.placed", "data": {"total_cents": 700}});
    let send = || {
        h.post(
            "/v1/events",
            Some("application/cloudevents+json"),
            &[],
            event.to_string().as_bytes(),
        )
    };
    let (s1, first) = send();
    let (s2, again) = send();
    assert_eq!((s1, s2), (202, 202));
    assert_eq!(first["duplicate"], false);
    assert_eq!(again["duplicate"], true, "{again}");
    assert_eq!(first["sequence"], again["sequence"]);
    let batch = json!([event, {"specversion": "1.0", "id": "new-one", "source": "/shop",
                                "type": "order.placed", "data": {"total_cents": 1}}]);
    let (_, b) = h.post(
        "/v1/events",
        Some("application/cloudevents-batch+json"),
        &[],
        batch.to_string().as_bytes(),
    );
    assert_eq!(b["duplicates"], 1, "{b}");
    h.wait_until("analytics", WAIT, |h| h.count("analytics", "handled") == 2)
        .expect("two distinct");
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        h.count("analytics", "handled"),
        2,
        "the retried event is handled once"
    );
    h.wait_log("totals: orders=2 revenue_cents=701", WAIT)
        .expect("counted once");
}

#[test]
fn retention_trims_finished_events_and_publishing_goes_on() {
    let h = host(
        &[PluginFile::Wasm("analytics", artifacts::ANALYTICS)],
        &["--retention-bytes", "1"],
    );
    for i in 0..20 {
        h.publish("order.placed", &order(&format!("o-{i}"), "w", 1, 1))
            .expect("publish");
    }
    h.wait_until("analytics", WAIT, |h| h.count("analytics", "handled") == 20)
        .expect("handled");
    h.wait_log("retention: removed the oldest finished events", WAIT)
        .expect("trimmed");
    let log = h.get("/v1/log?from=1&limit=100").expect("log");
    assert_eq!(
        log["events"],
        json!([]),
        "every finished event is gone: {log}"
    );
    let next = h
        .publish("order.placed", &order("o-20", "w", 1, 1))
        .expect("publish goes on");
    assert_eq!(next["sequence"], 21);
    h.wait_until("analytics", WAIT, |h| h.count("analytics", "handled") == 21)
        .expect("handled");
}

#[test]
fn a_new_plugin_can_start_at_the_latest_event() {
    let data = TestDir::new("latest");
    let h = host(
        &[PluginFile::Wasm("analytics", artifacts::ANALYTICS)],
        &["--data", &data.arg()],
    );
    for i in 0..3 {
        h.publish("order.placed", &order(&format!("o-{i}"), "w", 1, 1))
            .expect("publish");
    }
    h.wait_until("analytics", WAIT, |h| h.count("analytics", "handled") == 3)
        .expect("handled");
    assert!(h.stop().expect("stops").success());
    let args = ["--data", &data.arg(), "--new-plugins-start", "latest"];
    let plugins = [
        PluginFile::Wasm("analytics", artifacts::ANALYTICS),
        PluginFile::Wasm("late", artifacts::RECORDER),
        PluginFile::Manifest("late", LOUD),
    ];
    let h = host(&plugins, &args);
    assert_eq!(
        h.plugin("late").expect("listed")["cursor"],
        3,
        "starts after what is there"
    );
    let new = h
        .publish("order.placed", &order("o-3", "w", 1, 1))
        .expect("publish");
    h.wait_until("late", WAIT, |h| h.count("late", "handled") == 1)
        .expect("only the new one");
    h.wait_log(
        &format!("handled {}", new["id"].as_str().expect("id")),
        WAIT,
    )
    .expect("the new one");
    assert!(h.stop().expect("stops").success());
    // The starting point stuck: no replay of the old events on restart.
    let h = host(&plugins, &["--data", &data.arg()]);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(h.count("late", "handled"), 0);
}
