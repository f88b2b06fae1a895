//! Hostile plugins contained: deadlines, memory, quarantine, publish policy, the sandbox.

use super::*;

/// The manifest of a hostile plugin in `mode`: two attempts, quick
/// retries, and `extra` lines.
fn hostile(mode: &str, extra: &str) -> String {
    let attempts = if mode == "loop" { 1 } else { 2 };
    format!(
        "[config]\nmode = \"{mode}\"\n{extra}\n[retry]\nmax_attempts = {attempts}\nbackoff_ms_min = 10\nbackoff_ms_max = 20\n"
    )
}

/// `n` orders as one CloudEvents batch (one delivery, one batch per
/// plugin).
pub(crate) fn orders(h: &TestHost, n: usize) {
    let batch: Vec<Value> = (0..n)
        .map(|i| {
            json!({"specversion": "1.0", "id": format!("o-{i}"), "source": "/shop",
                   "type": "order.placed", "subject": format!("o-{i}"),
                   "data": order(&format!("o-{i}"), "widget", 1, 100)})
        })
        .collect();
    h.publish_batch(batch);
}

/// `plugin` never ran at `low_priority` or in the `background`: its
/// status has no time left there and the batches counted are 0.
pub(crate) fn never(h: &TestHost, plugin: &str, mode: &str) {
    let status = h.plugin(plugin).expect("listed");
    assert!(
        status.get(format!("{mode}_ms")).is_none(),
        "{plugin}: {status}"
    );
    assert_eq!(
        h.metric(&format!(
            "plugbus_plugin_{mode}_batches_total{{plugin=\"{plugin}\"}}"
        )),
        Some(0.0),
        "{plugin}: batches at {mode}"
    );
}

fn dead_letters(h: &TestHost, plugin: &str) -> Vec<Value> {
    h.get(&format!("/v1/dead/{plugin}"))
        .ok()
        .and_then(|v| v["dead_letters"].as_array().cloned())
        .unwrap_or_default()
}

pub(crate) fn reference_plugins_deliver(h: &TestHost, n: u64) {
    for p in ["email", "inventory", "analytics"] {
        h.wait_until(&format!("{p} to handle {n} orders"), WAIT, |h| {
            h.count(p, "handled") >= n
        })
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(h.count(p, "failed"), 0, "{p} never fails");
    }
}

#[test]
fn hostile_plugins_fail_alone_into_dead_letters_and_the_order_flow_goes_on() {
    let h = contained(&["loop", "alloc", "recurse", "deep", "trap", "big", "garbage"]);
    // The loop plugin ran under its manifest's deadline.
    let limits = &h.plugin("hostile_loop").expect("listed")["limits"];
    assert_eq!(limits["deadline_ms"], json!(100), "{limits}");
    assert_eq!(limits["manifest"], json!(true));
    let status = h.stop().expect("stops");
    assert!(status.success(), "clean shutdown: {status}");
}

/// The hostile plugins of `modes` (`deep`: `recurse` with a big stack cap)
/// beside the reference plugins: ten orders, every one handled by the
/// reference plugins without a failure or an offence, and each hostile
/// plugin's events dead letters naming what it did, after its retries ran
/// at low priority. Returns the host.
pub(crate) fn contained(modes: &[&str]) -> TestHost {
    let manifests: Vec<String> = modes
        .iter()
        .map(|&mode| {
            let (runs, extra) = match mode {
                // Its batch of ten runs past the deadline and is handled
                // again in halves, down to each event alone (19 calls, not
                // an attempt); each event then fails alone. One attempt,
                // so that its dead letters do not wait out a quarantine
                // of ten single-event batches failing in a row.
                "loop" => ("loop", "[limits]\ndeadline_ms = 100"),
                // A wasm stack far above the default: the host's threads
                // make room for it.
                "deep" => ("recurse", "[limits]\nstack_bytes_max = 1048576"),
                "big" => ("big", "[limits]\nmemory_bytes_max = 268435456"),
                other => (other, ""),
            };
            hostile(runs, extra)
        })
        .collect();
    let mut files = order_flow();
    let names: Vec<String> = modes.iter().map(|m| format!("hostile_{m}")).collect();
    for (name, manifest) in names.iter().zip(&manifests) {
        files.push(PluginFile::Wasm(name, artifacts::HOSTILE));
        files.push(PluginFile::Manifest(name, manifest));
    }
    let h = host(&files, &[]);
    const N: usize = 10;
    orders(&h, N);
    reference_plugins_deliver(&h, N as u64);
    // Each hostile plugin's events are dead letters after two failed
    // attempts, with the reason.
    for &mode in modes {
        let says = match mode {
            "loop" => "ran past its deadline of 100 ms of CPU time",
            "alloc" => "trapped",
            "recurse" | "deep" => "call stack exhausted",
            "trap" => "unreachable",
            "big" => "cut: the plugin's message was 104857600 bytes",
            "garbage" => "outcomes for a batch of",
            other => panic!("no hostile mode {other}"),
        };
        let name = format!("hostile_{mode}");
        h.wait_until(&format!("{name}: {N} dead letters"), WAIT, |h| {
            dead_letters(h, &name).len() == N
        })
        .unwrap_or_else(|e| panic!("{e}"));
        let letters = dead_letters(&h, &name);
        // The big message is on the first event of the batch.
        let error = letters
            .iter()
            .filter_map(|l| l["error"].as_str())
            .find(|e| e.contains(says))
            .unwrap_or_else(|| panic!("{name}: no error says {says:?}: {letters:?}"))
            .to_string();
        assert!(error.contains(says), "{name}: {error}");
        assert!(error.len() < 8192, "{name}: an error is kept short");
        match mode {
            "big" => {}
            "loop" => assert_eq!(letters[0]["attempts"], json!(1), "{name}"),
            _ => assert_eq!(letters[0]["attempts"], json!(2), "{name}"),
        }
        if mode == "loop" {
            let splits = h
                .metric("plugbus_plugin_batch_splits_total{plugin=\"hostile_loop\"}")
                .unwrap_or(0.0);
            assert!(
                splits >= 1.0,
                "its batch was split before any attempt: {splits}"
            );
        }
        let status = h.plugin(&name).expect("listed");
        assert_ne!(status["state"], json!("failed"), "{name}: {status}");
        // Misbehaving, it is handled at low CPU priority: its retries
        // ran so (`big` rejects at once: it has no second batch).
        let low = h
            .metric(&format!(
                "plugbus_plugin_low_priority_batches_total{{plugin=\"{name}\"}}"
            ))
            .unwrap_or(0.0);
        if mode != "big" {
            assert!(low >= 1.0, "{name}: {low} batches at low priority");
        }
    }
    for p in ["email", "inventory", "analytics"] {
        never(&h, p, "low_priority");
    }
    if modes.contains(&"trap") {
        // A guest's panic message reaches the log, tagged with the plugin.
        h.wait_log("this plugin traps on every event", WAIT)
            .expect("logged");
    }
    assert_eq!(h.get("/healthz").map(|_| ()), Ok(()));
    h
}

#[test]
fn a_plugin_over_its_output_limit_is_not_deprioritized() {
    // email logs a line per order: over a limit of 1 line/s most are
    // dropped, which is no offence.
    let mut files = order_flow();
    files.push(PluginFile::Manifest(
        "email",
        "[limits]\noutput_lines_per_s_max = 1\n",
    ));
    let h = host(&files, &[]);
    const N: usize = 30;
    orders(&h, N);
    reference_plugins_deliver(&h, N as u64);
    let dropped = h
        .metric("plugbus_plugin_output_dropped_lines_total{plugin=\"email\"}")
        .unwrap_or(0.0);
    assert!(dropped >= 1.0, "{dropped} lines dropped");
    never(&h, "email", "low_priority");
}

#[test]
fn an_honest_heavy_plugin_runs_in_the_background_and_handles_every_event_once() {
    // 600 ms of work per event, on the wall clock (so beside CPU hogs
    // still well over 100 ms of CPU): a batch is cut in the foreground at
    // 100 ms of CPU and handled again in halves down to one event, which
    // is cut too and runs again in the background, where it finishes.
    let mut files = order_flow();
    files.push(PluginFile::Wasm("heavy", artifacts::HOSTILE));
    files.push(PluginFile::Manifest(
        "heavy",
        "batch_events_max = 4\n[config]\nmode = \"work\"\nwork_us = \"600000\"\nsubscribe = \"order.placed\"\n",
    ));
    let h = host(&files, &[]);
    const N: usize = 12;
    orders(&h, N);
    reference_plugins_deliver(&h, N as u64);
    h.wait_until("heavy to handle every order", WAIT, |h| {
        h.count("heavy", "handled") >= N as u64
    })
    .unwrap_or_else(|e| panic!("{e}"));
    let metric = |m: &str| {
        h.metric(&format!("plugbus_{m}{{plugin=\"heavy\"}}"))
            .unwrap_or(0.0)
    };
    assert!(
        metric("plugin_background_batches_total") >= 1.0,
        "its batches ran in the background"
    );
    // Cut and run again is no failure, no retry, no offence, and no
    // event is counted twice.
    assert_eq!(h.count("heavy", "handled"), N as u64);
    assert_eq!(h.count("heavy", "failed"), 0);
    assert_eq!(metric("events_retried_total"), 0.0);
    assert_eq!(metric("plugin_traps_total"), 0.0);
    never(&h, "heavy", "low_priority");
    assert!(dead_letters(&h, "heavy").is_empty());
    h.wait_log("in the background (yielding to the other plugins)", WAIT)
        .expect("logged");
    let status = h.plugin("heavy").expect("listed");
    assert!(status["background_ms"].as_u64() > Some(0), "{status}");
    for p in ["email", "inventory", "analytics"] {
        never(&h, p, "background");
    }
}

#[test]
fn a_plugin_failing_every_event_is_quarantined_until_a_new_version_comes() {
    let manifest = "batch_events_max = 1\n[config]\nmode = \"trap\"\n[retry]\nmax_attempts = 1\n";
    let mut files = order_flow();
    files.push(PluginFile::Wasm("bad", artifacts::HOSTILE));
    files.push(PluginFile::Manifest("bad", manifest));
    let h = host(&files, &[]);
    for i in 0..12 {
        h.publish("order.placed", &order(&format!("q-{i}"), "widget", 1, 100))
            .expect("publish");
    }
    h.wait_until("bad to be quarantined", WAIT, |h| {
        h.plugin("bad")
            .is_some_and(|p| p["state"] == json!("quarantined"))
    })
    .expect("quarantined");
    let p = h.plugin("bad").expect("listed");
    assert!(p["quarantines"].as_u64() >= Some(1), "{p}");
    assert!(
        p["error"]
            .as_str()
            .unwrap_or("")
            .contains("failing every event"),
        "{p}"
    );
    // Not spinning: while it waits, no more attempts are made.
    let failed = h.count("bad", "failed");
    std::thread::sleep(Duration::from_millis(500));
    assert!(h.count("bad", "failed") <= failed + 1, "paused");
    reference_plugins_deliver(&h, 12);
    h.wait_log("quarantined: 5 batches in a row failed", WAIT)
        .expect("logged");
    // A working version (the reference email plugin's build under this
    // name) ends the quarantine at once and gets the waiting events.
    let email = std::fs::read(artifacts::EMAIL).expect("built");
    deploy(&h.dir, "bad.wasm", &email);
    h.wait_until("bad to ack again", WAIT, |h| {
        h.plugin("bad")
            .is_some_and(|p| p["state"] == json!("running") && p["handled"].as_u64() > Some(0))
    })
    .expect("out of quarantine");
}

#[test]
fn a_publish_storm_is_held_to_the_allowed_topics_and_rate() {
    let manifest = hostile(
        "storm",
        "[publish]\nallow = [\"storm.>\"]\nrate_events_per_s_max = 50",
    );
    let mut files = order_flow();
    files.push(PluginFile::Wasm("storm", artifacts::HOSTILE));
    files.push(PluginFile::Manifest("storm", &manifest));
    let h = host(&files, &[]);
    orders(&h, 5);
    h.wait_until("storm to handle 5", WAIT, |h| {
        h.count("storm", "handled") == 5
    })
    .expect("storm acks");
    let kv = |key: &str| {
        h.get(&format!("/v1/plugins/storm/kv/{key}"))
            .unwrap_or_else(|e| panic!("{key}: {e}"))
    };
    let refused = kv("storm.refused").to_string();
    assert!(
        refused.contains("order.placed: PublishError::Denied") && refused.contains("not allowed"),
        "the plugin sees the refusal: {refused}"
    );
    // The rate never refuses: what stops a storm within one call is the
    // cap per handled event; the rate then holds its next deliveries.
    assert!(
        refused.contains("storm.noise: PublishError::Invalid")
            && refused.contains("follow-up events per handled event"),
        "{refused}"
    );
    assert!(!refused.contains("rate limit"), "{refused}");
    let sent = kv("storm.sent");
    let sent = sent["value"]
        .as_i64()
        .or_else(|| sent.as_i64())
        .unwrap_or(-1);
    assert!((1..=5 * 64).contains(&sent), "at most 64 per event: {sent}");
    // The order flow saw only the 5 real orders: nothing of the storm.
    reference_plugins_deliver(&h, 5);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(h.count("analytics", "handled"), 5);
    assert!(h.metric(r#"plugbus_plugin_publish_throttled_total{plugin="storm"}"#) >= Some(1.0));
}

#[test]
fn the_sandbox_grants_no_files_sockets_or_environment() {
    let manifest = hostile("sandbox", "");
    let mut files = order_flow();
    files.push(PluginFile::Wasm("sandbox", artifacts::HOSTILE));
    files.push(PluginFile::Manifest("sandbox", &manifest));
    let h = TestHost::start_with_env(
        BIN,
        &files,
        &[],
        &[("PLUGBUS_SECRET", std::ffi::OsStr::new("hunter2"))],
    )
    .expect("starts");
    orders(&h, 1);
    h.wait_until("sandbox to ack", WAIT, |h| {
        h.count("sandbox", "handled") == 1
    })
    .expect("acks");
    let seen = h
        .get("/v1/plugins/sandbox/kv/sandbox")
        .expect("kept what it saw")
        .to_string();
    for line in [
        "open /etc/passwd: refused",
        "open ./secret: refused",
        "create /tmp/plugbus-escape: refused",
        "list /: refused",
        "connect 127.0.0.1:22: refused",
        "env: 0 variables",
        "args: 0",
        "wall clock: true",
        "monotonic clock: true",
    ] {
        assert!(seen.contains(line), "{line} in {seen}");
    }
    assert!(!seen.contains("hunter2"));
    assert!(!std::path::Path::new("/tmp/plugbus-escape").exists());
    reference_plugins_deliver(&h, 1);
}
