//! Timers a plugin sets (the `scheduler` import) on the real binary: each
//! fires once, not before it is due, keeps its chain; a cancel committed
//! before it fires wins; what was set survives a kill -9 and what fell due
//! while the host was down fires at start. And a plugin built against the
//! contract before timers (0.1.0) still loads.

use super::*;

fn timer_event(id: &str, topic: &str, data: Value) -> Value {
    json!({"specversion": "1.0", "id": id, "source": "/test", "type": topic, "data": data})
}

fn kv(h: &TestHost, key: &str) -> Option<Value> {
    h.get(&format!("/v1/plugins/timers/kv/{key}"))
        .ok()
        .map(|v| v["value"].clone())
        .filter(|v| !v.is_null())
}

#[test]
fn a_timer_fires_once_when_due_keeps_its_chain_and_a_cancel_before_it_wins() {
    fires_once_keeps_its_chain_and_a_cancel_before_it_wins(&[]);
}

#[test]
fn on_redis_a_timer_fires_once_keeps_its_chain_and_a_cancel_before_it_wins() {
    let redis = plugbus_e2e::brokers::Redis::start().unwrap_or_else(|e| panic!("{e}"));
    fires_once_keeps_its_chain_and_a_cancel_before_it_wins(&["--broker", &redis.url]);
}

#[test]
fn on_nats_a_timer_fires_once_keeps_its_chain_and_a_cancel_before_it_wins() {
    let nats = plugbus_e2e::brokers::Nats::start().unwrap_or_else(|e| panic!("{e}"));
    fires_once_keeps_its_chain_and_a_cancel_before_it_wins(&["--broker", &nats.url]);
}

/// On the backend `args` choose.
fn fires_once_keeps_its_chain_and_a_cancel_before_it_wins(args: &[&str]) {
    let h = host(&[PluginFile::Wasm("timers", artifacts::TIMERS)], args);
    h.publish_batch(vec![
        timer_event("set-a", "timer.set", json!({"key": "a", "after_ms": 300})),
        // Called off long before it is due (a busy machine cannot make the
        // cancel late): it is gone, and never fires.
        timer_event(
            "set-b",
            "timer.set",
            json!({"key": "b", "after_ms": 60_000}),
        ),
        timer_event("cancel-b", "timer.cancel", json!({"key": "b"})),
        // Replaced before it is due: fires once, when the second says.
        timer_event(
            "set-c1",
            "timer.set",
            json!({"key": "c", "after_ms": 3_600_000}),
        ),
        timer_event("set-c2", "timer.set", json!({"key": "c", "after_ms": 200})),
    ]);
    h.wait_until("a and c fired", WAIT, |h| {
        kv(h, "fired.a").is_some() && kv(h, "fired.c").is_some()
    })
    .expect("fired");
    h.wait_until("no timer left", WAIT, |h| {
        h.metric("plugbus_timers_pending{plugin=\"timers\"}") == Some(0.0)
    })
    .expect("none pending");
    let fired = h.log_events(Some("timer.fired"));
    let keys: Vec<&str> = fired
        .iter()
        .filter_map(|e| e["data"]["key"].as_str())
        .collect();
    assert_eq!(keys.len(), 2, "each once, b never: {fired:?}");
    assert!(keys.contains(&"a") && keys.contains(&"c"), "{keys:?}");
    let a = fired.iter().find(|e| e["data"]["key"] == "a").expect("a");
    assert_eq!(a["causationid"], "set-a");
    assert_eq!(a["correlationid"], "set-a");
    assert!(
        a["scheduledat"].is_string() && a["latems"].is_string(),
        "{a}"
    );
    assert_eq!(
        kv(&h, "early.a"),
        Some(json!(false)),
        "never before it is due"
    );
    assert_eq!(kv(&h, "early.c"), Some(json!(false)));
    assert_eq!(kv(&h, "fired.a"), Some(json!(1)));
    assert_eq!(h.metric("plugbus_timers_fired_total"), Some(2.0));
    assert_eq!(
        h.metric("plugbus_timers_cancelled_total{plugin=\"timers\"}"),
        Some(1.0)
    );
    h.audit_clean();
}

#[test]
fn timers_survive_a_kill_9_and_those_due_while_down_fire_at_start() {
    let data = TestDir::new("timers");
    let args = ["--data", &data.arg()];
    let plugins = [PluginFile::Wasm("timers", artifacts::TIMERS)];
    let h = host(&plugins, &args);
    h.publish_batch(vec![
        timer_event("set-e", "timer.set", json!({"key": "e", "after_ms": 1_000})),
        timer_event("cancel-e", "timer.cancel", json!({"key": "e"})),
        timer_event(
            "set-f",
            "timer.set",
            json!({"key": "f", "after_ms": 3_600_000}),
        ),
    ]);
    h.wait_until("set", WAIT, |h| h.count("timers", "handled") == 3)
        .expect("handled");
    // A timer that is still set when the host is killed: on a busy machine
    // the host may take longer than a delay to handle it, so the delay
    // grows until one is seen set (nothing is asserted about the time).
    let (mut after, mut handled) = (1_000u64, 3);
    let key = loop {
        let key = format!("d{after}");
        h.publish("timer.set", &json!({"key": key, "after_ms": after}))
            .expect("published");
        handled += 1;
        h.wait_until("set", WAIT, |h| h.count("timers", "handled") == handled)
            .expect("handled");
        let set = h.plugin("timers").is_some_and(|p| p["timers"] == json!(2));
        if set && kv(&h, &format!("fired.{key}")).is_none() {
            break key;
        }
        assert!(
            after < 64_000,
            "no timer stayed set long enough to kill the host"
        );
        after *= 4;
    };
    h.kill9();
    // Down past its time (it was set after the publish, so due by then).
    std::thread::sleep(Duration::from_millis(after + 500));
    let h = host(&plugins, &args);
    h.wait_until("it fired after the restart", WAIT, |h| {
        kv(h, &format!("fired.{key}")).is_some()
    })
    .expect("fired");
    let late: u64 = kv(&h, &format!("late.{key}"))
        .and_then(|v| v.as_u64().or_else(|| v.as_str()?.parse().ok()))
        .expect("late");
    assert!(
        late >= 500,
        "it fell due while the host was down: {late} ms late"
    );
    assert_eq!(kv(&h, &format!("fired.{key}")), Some(json!(1)));
    assert_eq!(kv(&h, "fired.e"), None, "set and called off in one commit");
    assert_eq!(
        h.metric("plugbus_timers_pending{plugin=\"timers\"}"),
        Some(1.0),
        "f is still set"
    );
    h.audit_clean();
}

#[test]
fn memory_mode_keeps_timers_while_it_runs() {
    let h = host(
        &[PluginFile::Wasm("timers", artifacts::TIMERS)],
        &["--memory"],
    );
    h.publish_batch(vec![
        timer_event("set-a", "timer.set", json!({"key": "a", "after_ms": 200})),
        timer_event(
            "set-b",
            "timer.set",
            json!({"key": "b", "after_ms": 60_000}),
        ),
        timer_event("cancel-b", "timer.cancel", json!({"key": "b"})),
    ]);
    h.wait_until("a fired and b gone", WAIT, |h| {
        kv(h, "fired.a").is_some() && h.plugin("timers").is_some_and(|p| p["timers"] == json!(0))
    })
    .expect("fired");
    assert_eq!(kv(&h, "early.a"), Some(json!(false)));
    assert_eq!(kv(&h, "fired.b"), None, "the cancel came first");
    assert_eq!(h.metric("plugbus_timers_fired_total"), Some(1.0));
}

#[test]
fn a_plugin_built_against_the_contract_before_timers_still_runs() {
    let h = host(&[PluginFile::Wasm("old", artifacts::CONTRACT_V010)], &[]);
    h.publish("old.ping", &json!({})).expect("published");
    h.wait_log("contract 0.1.0 plugin handled 1 events", WAIT)
        .expect("handled");
    assert_eq!(h.count("old", "handled"), 1);
}

#[test]
fn an_event_published_for_later_waits_for_its_time_across_a_kill_9() {
    const LATER: Duration = Duration::from_secs(6);
    let data = TestDir::new("deliverat");
    let args = ["--data", &data.arg()];
    let plugins = [PluginFile::Wasm("tally", artifacts::TALLY)];
    let h = host(&plugins, &args);
    let posted = std::time::Instant::now();
    let at = humantime::format_rfc3339_millis(std::time::SystemTime::now() + LATER).to_string();
    let event = json!({"specversion": "1.0", "id": "later-1", "source": "/test",
                       "type": "tally.later", "data": {}, "deliverat": at});
    let (status, body) = h.post_event(&event);
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["id"], "later-1");
    assert!(body["scheduled"].is_string(), "{body}");
    // The CLI schedules the same way.
    let out = std::process::Command::new(BIN)
        .args([
            "publish",
            "tally.cli",
            "{}",
            "--after",
            "6s",
            "--url",
            &h.url,
        ])
        .output()
        .expect("plugbus publish");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && said.contains("scheduled tally.cli"),
        "{said}"
    );
    // Refused with the attribute named.
    let bad = json!({"specversion": "1.0", "id": "bad-1", "source": "/test",
                     "type": "tally.later", "data": {}, "deliverat": "tomorrow"});
    let (status, body) = h.post_event(&bad);
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|e| e.contains("`deliverat`")),
        "{body}"
    );
    // Nothing before its time (only meaningful while it has not come).
    let before = h.count("tally", "handled");
    let waited = posted.elapsed();
    h.kill9();
    if waited < LATER {
        assert_eq!(before, 0, "delivered before its time");
    }
    std::thread::sleep((LATER + Duration::from_millis(500)).saturating_sub(posted.elapsed()));
    let h = host(&plugins, &args);
    // Counted in the plugin's state, which survives the kill.
    h.wait_until("both delivered", WAIT, |h| {
        h.get("/v1/plugins/tally/kv/seen")
            .ok()
            .and_then(|v| v["value"].as_u64())
            == Some(2)
    })
    .expect("delivered");
    let later = h.log_events(Some("tally.later"));
    assert_eq!(later.len(), 1, "once: {later:?}");
    assert_eq!(later[0]["id"], "later-1", "under its own id");
    let late: u64 = later[0]["latems"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .expect("latems");
    if waited < LATER {
        // Its time came while the host was down.
        assert!(late >= 400, "{late} ms late");
    }
    h.audit_clean();
}
