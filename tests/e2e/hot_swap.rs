//! Plugins replaced, broken, added and removed while events flow.

use super::*;

use plugbus_e2e::swapper_version as swapper;

fn version_of(tagged: &str) -> u32 {
    tagged
        .rsplit_once("@SWAPTAG:")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or_else(|| panic!("untagged entry {tagged}"))
}

#[test]
fn a_plugin_replaced_100_times_under_load_handles_every_event_once_in_order() {
    let (v0, _) = swapper(0);
    let h = host(&[PluginFile::Bytes("swapper", &v0)], &[]);
    swap_100_times_under_load(&h);
}

/// Replace the `swapper` plugin of `h` (running version 0) 100 times while
/// a publisher streams events over four subjects; check that every event
/// was handled once, in order per subject, never by an older version
/// after a newer one.
pub(crate) fn swap_100_times_under_load(h: &TestHost) {
    assert_eq!(
        h.plugin("swapper").expect("running")["version"],
        json!(swapper(0).1)
    );
    const SUBJECTS: usize = 4;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // A publisher streaming events over four subjects while the file is
    // replaced; it returns the ids accepted per subject, in order.
    let publisher = {
        let (url, stop) = (h.url.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut sent: Vec<Vec<String>> = vec![Vec::new(); SUBJECTS];
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Acquire) {
                let batch: Vec<Value> = (n..n + 8)
                    .map(|i| {
                        json!({"specversion": "1.0", "id": format!("e{i}"), "source": "/test",
                               "type": "swap.one", "subject": format!("k{}", i % SUBJECTS),
                               "data": {"i": i}})
                    })
                    .collect();
                let r = ureq::post(&format!("{url}/v1/events"))
                    .set("content-type", "application/cloudevents-batch+json")
                    .send_string(&Value::Array(batch).to_string());
                if matches!(r, Ok(ref r) if r.status() == 202) {
                    for i in n..n + 8 {
                        sent[i % SUBJECTS].push(format!("e{i}"));
                    }
                    n += 8;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            sent
        })
    };
    let started = Instant::now();
    for version in 1..=100 {
        let (bytes, tag) = swapper(version);
        deploy(h.plugin_dir(), "swapper.wasm", &bytes);
        h.wait_until(&format!("version {version} swapped in"), WAIT, |h| {
            h.plugin("swapper")
                .is_some_and(|p| p["version"] == json!(tag))
        })
        .expect("swapped");
    }
    let took = started.elapsed();
    stop.store(true, std::sync::atomic::Ordering::Release);
    let sent = publisher.join().expect("publisher");
    let total: usize = sent.iter().map(Vec::len).sum();
    h.wait_until("every event handled", WAIT, |h| {
        h.count("swapper", "handled") >= total as u64
    })
    .expect("handled");
    let kv = |key: &str| -> Value {
        h.get(&format!("/v1/plugins/swapper/kv/{key}"))
            .map(|v| v["value"].clone())
            .unwrap_or(Value::Null)
    };
    assert_eq!(kv("seen"), json!(total), "each event counted once");
    let mut versions = HashSet::new();
    for (k, ids) in sent.iter().enumerate() {
        let handled: Vec<String> = serde_json::from_value(kv(&format!("order.k{k}")))
            .unwrap_or_else(|e| panic!("order.k{k}: {e}"));
        let handled_ids: Vec<&str> = handled
            .iter()
            .map(|t| t.split_once('@').map_or(t.as_str(), |(id, _)| id))
            .collect();
        assert_eq!(
            handled_ids, *ids,
            "subject k{k}: every event handled once, in order"
        );
        // A version never handles an event after a newer one has.
        let seen: Vec<u32> = handled.iter().map(|t| version_of(t)).collect();
        assert!(
            seen.windows(2).all(|w| w[0] <= w[1]),
            "subject k{k}: an older version came back: {seen:?}"
        );
        versions.extend(seen);
    }
    assert_eq!(
        h.metric("plugbus_plugin_swaps_total{plugin=\"swapper\"}"),
        Some(100.0)
    );
    assert!(
        versions.len() > 10,
        "events were handled by many versions, not one: {versions:?}"
    );
    eprintln!(
        "{total} events; 100 swaps in {took:?}; handled by {} versions",
        versions.len()
    );
}

#[test]
fn a_broken_new_version_is_reported_and_the_running_one_keeps_serving() {
    let (v0, tag0) = swapper(0);
    let h = host(&[PluginFile::Bytes("swapper", &v0)], &["--memory"]);
    // Half a file, as a copy in progress leaves it.
    let (v1, _) = swapper(1);
    std::fs::write(h.plugin_dir().join("swapper.wasm"), &v1[..v1.len() / 2]).expect("write");
    h.wait_until("the failure is reported", WAIT, |h| {
        h.plugin("swapper").is_some_and(|p| {
            p["error"]
                .as_str()
                .is_some_and(|e| e.contains("keeps serving"))
        })
    })
    .expect("reported");
    let p = h.plugin("swapper").expect("still listed");
    assert_eq!(p["state"], "running");
    assert_eq!(p["version"], json!(tag0), "the old version serves");
    assert_eq!(
        h.metric("plugbus_plugin_load_failures_total{plugin=\"swapper\"}"),
        Some(1.0)
    );
    let (status, _) = h.post(
        "/v1/events",
        Some("application/cloudevents+json"),
        &[],
        json!({"specversion": "1.0", "id": "x1", "source": "/t", "type": "swap.one",
               "subject": "k0"})
        .to_string()
        .as_bytes(),
    );
    assert_eq!(status, 202);
    h.wait_until("handled by the old version", WAIT, |h| {
        h.count("swapper", "handled") == 1
    })
    .expect("handled");
    // The rest of the file arrives: the new version is swapped in and
    // the error clears.
    let (v2, tag2) = swapper(2);
    deploy(h.plugin_dir(), "swapper.wasm", &v2);
    h.wait_until("the complete file is swapped in", WAIT, |h| {
        h.plugin("swapper")
            .is_some_and(|p| p["version"] == json!(tag2) && p["error"].is_null())
    })
    .expect("swapped");
}

#[test]
fn plugins_come_and_go_with_their_files_and_keep_their_cursor() {
    let h = host(&[], &[]);
    let (v0, _) = swapper(0);
    deploy(h.plugin_dir(), "swapper.wasm", &v0);
    h.wait_until("a new file starts a plugin", WAIT, |h| {
        h.plugin("swapper").is_some()
    })
    .expect("started");
    let send = |id: &str| {
        let (status, body) = h.post(
            "/v1/events",
            Some("application/cloudevents+json"),
            &[],
            json!({"specversion": "1.0", "id": id, "source": "/t", "type": "swap.one",
                   "subject": "k0"})
            .to_string()
            .as_bytes(),
        );
        assert_eq!(status, 202, "{body}");
    };
    send("a1");
    h.wait_until("handled", WAIT, |h| h.count("swapper", "handled") == 1)
        .expect("handled");
    std::fs::remove_file(h.plugin_dir().join("swapper.wasm")).expect("remove");
    h.wait_until("a removed file stops the plugin", WAIT, |h| {
        h.plugin("swapper").is_none()
    })
    .expect("stopped");
    // Published while it is away: delivered when it comes back, once.
    send("a2");
    let (v1, _) = swapper(1);
    deploy(h.plugin_dir(), "swapper.wasm", &v1);
    h.wait_until("back, and caught up", WAIT, |h| {
        h.get("/v1/plugins/swapper/kv/order.k0")
            .is_ok_and(|v| v["value"].as_array().is_some_and(|a| a.len() == 2))
    })
    .expect("caught up");
    let order = h
        .get("/v1/plugins/swapper/kv/order.k0")
        .expect("state kept")["value"]
        .clone();
    assert_eq!(
        order,
        json!(["a1@SWAPTAG:00000000", "a2@SWAPTAG:00000001"]),
        "state and cursor kept while away"
    );
}
