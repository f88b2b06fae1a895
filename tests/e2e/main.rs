//! End-to-end tests: the real `plugbus` binary, real plugins compiled to
//! wasm32-wasip1 (built once per test run by plugbus-e2e's build script),
//! real HTTP on loopback.

use std::time::Duration;

use std::collections::HashSet;
use std::time::Instant;

use plugbus_e2e::{artifacts, PluginFile, TestDir, TestHost};
use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_plugbus");
const WAIT: Duration = Duration::from_secs(30);

/// A manifest lifting the guest output limit, for tests that read every
/// line a plugin logs (the recorder logs each event it handles).
const LOUD: &str = "[limits]\noutput_lines_per_s_max = 10000000\n";

fn order_flow() -> Vec<PluginFile<'static>> {
    vec![
        PluginFile::Wasm("email", artifacts::EMAIL),
        PluginFile::Wasm("inventory", artifacts::INVENTORY),
        PluginFile::Wasm("analytics", artifacts::ANALYTICS),
    ]
}

fn order(id: &str, sku: &str, qty: u64, total_cents: u64) -> Value {
    json!({
        "order_id": id,
        "customer": "alice@example.com",
        "items": [{"sku": sku, "qty": qty}],
        "total_cents": total_cents
    })
}

/// Put `file` (e.g. `email.wasm`, `email.toml`) with `bytes` in the plugin
/// directory the way the README says deploy scripts should: write beside,
/// rename into place.
fn deploy(dir: &std::path::Path, file: &str, bytes: &[u8]) {
    let tmp = dir.join(format!("{file}.tmp"));
    std::fs::write(&tmp, bytes).expect("write");
    std::fs::rename(&tmp, dir.join(file)).expect("rename");
}

fn host(plugins: &[PluginFile<'_>], args: &[&str]) -> TestHost {
    TestHost::start(BIN, plugins, args).unwrap_or_else(|e| panic!("host did not start: {e}"))
}

mod order_flow {
    use super::*;

    #[test]
    fn an_order_reaches_every_plugin_and_the_chain_keeps_its_correlation() {
        let h = host(&order_flow(), &[]);
        h.publish("order.placed", &order("o-1", "widget", 2, 2500))
            .expect("first order");
        let second = h
            .publish("order.placed", &order("o-2", "gadget", 1000, 990))
            .expect("second order");
        let second_id = second["id"]
            .as_str()
            .expect("id in the 202 body")
            .to_string();

        // email gets both orders and inventory's follow-up for the second.
        h.wait_until("email to handle 3 events", WAIT, |h| {
            h.count("email", "handled") == 3
        })
        .expect("email");
        h.wait_until("analytics to handle 2", WAIT, |h| {
            h.count("analytics", "handled") == 2
        })
        .expect("analytics");
        assert_eq!(h.count("inventory", "handled"), 2);

        h.wait_log("[email] to alice@example.com from orders@shop.example: your order o-1 is confirmed, total 25.00", WAIT)
            .expect("confirmation");
        h.wait_log("[inventory] order o-1: reserved widget -2 (left 98)", WAIT)
            .expect("stock change");
        h.wait_log("[analytics] totals: orders=2 revenue_cents=3490", WAIT)
            .expect("running totals");
        // The follow-up names the order as its cause and keeps the chain's
        // correlation id: the order's id, since the order started the chain.
        h.wait_log(
            &format!("order o-2 is delayed: gadget is out of stock (correlation {second_id}, caused by {second_id})"),
            WAIT,
        )
        .expect("choreography chain");
        let status = h.stop().expect("stops");
        assert!(status.success(), "clean exit on SIGTERM, got {status}");
    }

    #[test]
    fn an_order_without_items_is_rejected_and_counted_not_retried() {
        let h = host(&order_flow(), &[]);
        h.publish(
            "order.placed",
            &json!({"order_id": "o-9", "customer": "bob", "total_cents": 5}),
        )
        .expect("accepted: it is valid JSON");
        h.wait_until("inventory to reject", WAIT, |h| {
            h.count("inventory", "failed") == 1
        })
        .expect("rejected");
        assert_eq!(
            h.count("inventory", "retried"),
            0,
            "a reject is never retried"
        );
        // Durable mode keeps it as a dead letter rather than dropping it.
        assert_eq!(
            h.metric(r#"plugbus_events_dead_lettered_total{plugin="inventory"}"#),
            Some(1.0)
        );
        assert_eq!(
            h.metric(r#"plugbus_events_dropped_total{plugin="inventory",reason="rejected"}"#),
            Some(0.0)
        );
        h.wait_log("order o-9 has no items", WAIT)
            .expect("reason logged");
    }
}

mod ingress {
    use super::*;

    fn ce(id: &str) -> Value {
        json!({"specversion": "1.0", "id": id, "source": "/shop", "type": "order.placed",
               "datacontenttype": "application/json", "data": order(id, "w", 1, 100)})
    }

    #[test]
    fn structured_binary_and_batch_modes_are_accepted() {
        let h = host(&[PluginFile::Wasm("analytics", artifacts::ANALYTICS)], &[]);
        let (status, body) = h.post(
            "/v1/events",
            Some("application/cloudevents+json"),
            &[],
            ce("ce-1").to_string().as_bytes(),
        );
        assert_eq!(status, 202, "{body}");
        assert_eq!(body["id"], "ce-1", "the publisher's id is kept");

        let data = order("bin-1", "w", 1, 100).to_string();
        let (status, body) = h.post(
            "/v1/events",
            Some("application/json"),
            &[
                ("ce-specversion", "1.0"),
                ("ce-id", "bin-1"),
                ("ce-source", "/shop"),
                ("ce-type", "order.placed"),
            ],
            data.as_bytes(),
        );
        assert_eq!(status, 202, "{body}");

        let batch = json!([ce("b-1"), ce("b-2"), ce("b-3")]).to_string();
        let (status, body) = h.post(
            "/v1/events",
            Some("application/cloudevents-batch+json"),
            &[],
            batch.as_bytes(),
        );
        assert_eq!(status, 202, "{body}");
        assert_eq!(body["accepted"], 3);

        h.wait_until("analytics to count 5 orders", WAIT, |h| {
            h.count("analytics", "handled") == 5
        })
        .expect("all five delivered");
        h.wait_log("totals: orders=5 revenue_cents=500", WAIT)
            .expect("totals");
    }

    #[test]
    fn bad_requests_are_refused_whole_with_the_reason() {
        let h = host(&[PluginFile::Wasm("analytics", artifacts::ANALYTICS)], &[]);

        let (status, body) = h.post(
            "/v1/events/order.placed",
            Some("application/json"),
            &[],
            b"{\"order_id\": ",
        );
        assert_eq!(status, 400);
        assert!(
            body["error"]
                .as_str()
                .unwrap_or("")
                .contains("not valid JSON"),
            "{body}"
        );

        let mut missing = ce("m-1");
        missing.as_object_mut().expect("object").remove("source");
        let (status, body) = h.post(
            "/v1/events",
            Some("application/cloudevents+json"),
            &[],
            missing.to_string().as_bytes(),
        );
        assert_eq!(status, 400);
        assert!(
            body["error"].as_str().unwrap_or("").contains("`source`"),
            "names the attribute: {body}"
        );

        let (status, body) = h.post("/v1/events", Some("text/plain"), &[], b"hello");
        assert_eq!(status, 415);
        assert!(
            body["error"]
                .as_str()
                .unwrap_or("")
                .contains("application/cloudevents+json"),
            "{body}"
        );

        let big = format!("{{\"pad\": \"{}\"}}", "x".repeat(1 << 20));
        let (status, body) = h.post(
            "/v1/events/order.placed",
            Some("application/json"),
            &[],
            big.as_bytes(),
        );
        assert_eq!(status, 413);
        assert!(
            body["error"]
                .as_str()
                .unwrap_or("")
                .contains("body_bytes_max"),
            "{body}"
        );

        let (status, body) = h.post("/v1/events/order.*", Some("application/json"), &[], b"{}");
        assert_eq!(status, 400, "{body}");

        // A batch with one bad event publishes none of it.
        let batch = json!([ce("g-1"), {"specversion": "1.0", "id": "g-2", "type": "order.placed"}])
            .to_string();
        let (status, body) = h.post(
            "/v1/events",
            Some("application/cloudevents-batch+json"),
            &[],
            batch.as_bytes(),
        );
        assert_eq!(status, 400);
        assert!(
            body["error"].as_str().unwrap_or("").contains("event [1]"),
            "{body}"
        );

        assert_eq!(
            h.metric("plugbus_events_published_total"),
            Some(0.0),
            "nothing half-accepted"
        );
        assert_eq!(h.count("analytics", "handled"), 0);
    }

    #[test]
    fn a_full_queue_answers_503_naming_the_plugin_and_counts_the_drop() {
        // Memory mode: slow takes 50 ms an event and its queue holds one
        // event; the publisher waits at most 10 ms for room.
        let h = host(
            &[
                PluginFile::Wasm("slow", artifacts::SLOW),
                PluginFile::Wasm("analytics", artifacts::ANALYTICS),
            ],
            &[
                "--memory",
                "--queue-events-max",
                "1",
                "--batch-events-max",
                "1",
                "--publish-timeout-ms",
                "10",
            ],
        );
        let order = |i: usize| {
            json!({"specversion": "1.0", "id": format!("s-{i}"), "source": "/t",
                   "type": "order.placed", "data": {"total_cents": 1}})
        };
        // Five events keep slow busy for 250 ms.
        let batch = Value::Array((0..5).map(order).collect()).to_string();
        let (status, body) = h.post(
            "/v1/events",
            Some("application/cloudevents-batch+json"),
            &[],
            batch.as_bytes(),
        );
        assert_eq!(status, 202, "an empty queue takes a batch: {body}");
        let mut accepted = 5;
        let mut refusal = None;
        for i in 5..20 {
            let (status, body) = h.post(
                "/v1/events",
                Some("application/cloudevents+json"),
                &[],
                order(i).to_string().as_bytes(),
            );
            match status {
                202 => accepted += 1,
                503 => {
                    refusal = Some(body);
                    break;
                }
                other => panic!("unexpected {other}: {body}"),
            }
        }
        let body = refusal.expect("slow's queue fills within a few single publishes");
        assert_eq!(body["plugin"], "slow");
        assert_eq!(body["accepted"], 0);
        assert!(
            body["error"]
                .as_str()
                .unwrap_or("")
                .contains("queue of plugin `slow` is full"),
            "{body}"
        );
        assert_eq!(
            h.metric(r#"plugbus_events_dropped_total{plugin="slow",reason="queue_full"}"#),
            Some(1.0)
        );
        // analytics had room: it gets every accepted event and the one slow missed.
        h.wait_until("analytics to catch up", WAIT, |h| {
            h.count("analytics", "handled") == accepted + 1
        })
        .expect("analytics");
        h.wait_until("slow to finish", WAIT, |h| {
            h.count("slow", "handled") == accepted
        })
        .expect("slow handles what it accepted");
    }
}

mod plugins {
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
                && e.contains("plugbus:plugin@0.1.0"),
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
            &[
                "--memory",
                "--max-attempts",
                "2",
                "--backoff-ms-min",
                "10",
                "--backoff-ms-max",
                "20",
                "--batch-events-max",
                "1",
            ],
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
}

mod operations {
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
}

mod durable {
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
                            let ids: Vec<String> = (0..5).map(|j| format!("r{round}-p{p}-{k}-{j}")).collect();
                            let batch: Vec<Value> = ids
                                .iter()
                                .map(|id| json!({"specversion": "1.0", "id": id, "source": "/storm",
                                                 "type": "order.placed", "data": {"total_cents": 1}}))
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
        let deadline = Instant::now() + Duration::from_secs(5);
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

    /// Mount a tmpfs of `size` at `dir` (root only: CI runs as root).
    fn mount_tmpfs(dir: &std::path::Path, size: &str) {
        std::fs::create_dir_all(dir).expect("mount point");
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .expect("run mount");
        assert!(
            status.success(),
            "mounting a tmpfs failed: this test needs root (it fills a small file system)"
        );
    }

    struct Unmount(std::path::PathBuf);

    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
        }
    }

    #[test]
    fn a_full_disk_answers_507_loses_nothing_acknowledged_and_recovers_without_restart() {
        let top = TestDir::new("diskfull");
        let mnt = top.0.join("mnt");
        // 24 MiB, of which the host keeps 16 MiB free.
        mount_tmpfs(&mnt, "24m");
        let _unmount = Unmount(mnt.clone());
        let data = mnt.join("data");
        let data_arg = data.display().to_string();
        let h = host(
            &[
                PluginFile::Wasm("recorder", artifacts::RECORDER),
                PluginFile::Manifest("recorder", LOUD),
            ],
            &["--data", &data_arg, "--disk-reserve-bytes", "16777216"],
        );
        // Incompressible padding (the store compresses).
        let noise = |seed: usize| -> String {
            let mut x = seed as u64 | 1;
            (0..8 * 1024)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    char::from(b"0123456789abcdef"[(x % 16) as usize])
                })
                .collect()
        };
        let send = |k: usize| {
            let ids: Vec<String> = (0..10).map(|j| format!("f-{k}-{j}")).collect();
            let batch: Vec<Value> = ids
                .iter()
                .enumerate()
                .map(|(j, id)| {
                    json!({"specversion": "1.0", "id": id, "source": "/fill",
                           "type": "order.placed", "data": {"pad": noise(k * 10 + j + 7)}})
                })
                .collect();
            let (status, body) = h.post(
                "/v1/events",
                Some("application/cloudevents-batch+json"),
                &[],
                Value::Array(batch).to_string().as_bytes(),
            );
            (status, body, ids)
        };
        let mut acked = Vec::new();
        let mut refusal = None;
        for k in 0..1000 {
            match send(k) {
                (202, _, ids) => acked.extend(ids),
                (507, body, _) => {
                    refusal = Some(body);
                    break;
                }
                (status, body, _) => panic!("unexpected {status}: {body}"),
            }
        }
        let body = refusal.expect("the file system fills up");
        let message = body["error"].as_str().unwrap_or("");
        assert!(
            message.contains(&data_arg) && message.contains("full"),
            "{message}"
        );
        assert!(!acked.is_empty(), "some batches fit before the disk filled");

        // Make room: publishing resumes in the same process.
        let status = std::process::Command::new("mount")
            .args(["-o", "remount,size=64m"])
            .arg(&mnt)
            .status()
            .expect("remount");
        assert!(status.success());
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (status, body, ids) = send(1000);
            if status == 202 {
                acked.extend(ids);
                break;
            }
            assert!(
                Instant::now() < deadline,
                "publishing did not resume: {status} {body}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        h.wait_until("the recorder to catch up", WAIT, |h| {
            h.plugin("recorder").and_then(|p| p["lag"].as_u64()) == Some(0)
        })
        .expect("caught up");
        // The cursor moves after the handler logged; the log reaches the
        // test through a pipe, so give it a moment.
        let handled_all = |log: &[String]| -> Vec<String> {
            acked
                .iter()
                .filter(|id| !log.iter().any(|l| l.ends_with(&format!("handled {id}"))))
                .cloned()
                .collect()
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut lost = handled_all(&h.log());
        while !lost.is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
            lost = handled_all(&h.log());
        }
        assert!(lost.is_empty(), "acknowledged but never handled: {lost:?}");
    }

    /// Damage the journal of a stopped host's data directory: cut its used
    /// part to two thirds, or flip 40 bytes in its middle. (The engine
    /// recovers the prefix before a cut, and refuses or recovers a prefix
    /// around flipped bytes, depending on where they land.)
    fn damage_journal(data: &std::path::Path, flip: bool) {
        let journal = std::fs::read_dir(data)
            .expect("data dir")
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| p.extension().is_some_and(|x| x == "jnl"))
            .expect("a journal file");
        let mut bytes = std::fs::read(&journal).expect("read journal");
        let used = bytes.iter().rposition(|b| *b != 0).map_or(0, |i| i + 1);
        if flip {
            for b in &mut bytes[used / 2..used / 2 + 40] {
                *b ^= 0x5a;
            }
        } else {
            bytes.truncate(used * 2 / 3);
        }
        std::fs::write(&journal, bytes).expect("write journal");
    }

    /// Build the LD_PRELOAD shim that makes fsync fail on demand
    /// (`tests/faults/fsync_fails.c`) into `dir`.
    fn fsync_fault_shim(dir: &std::path::Path) -> std::path::PathBuf {
        let src = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/faults/fsync_fails.c");
        let out = dir.join("libfsync_fails.so");
        let status = std::process::Command::new("cc")
            .args(["-shared", "-fPIC", "-O2", "-o"])
            .arg(&out)
            .arg(src)
            .arg("-ldl")
            .status()
            .expect("run cc (the C compiler the Rust toolchain links with)");
        assert!(status.success(), "building the fsync fault shim failed");
        out
    }

    #[test]
    fn a_failed_fsync_is_never_retried_then_acknowledged() {
        let data = TestDir::new("fsync-fault");
        let shim = fsync_fault_shim(&data.0);
        let trigger = data.0.join("fail-fsync-now");
        let args = ["--data", &format!("{}/db", data.arg()), "--fsync", "always"];
        let plugins = [
            PluginFile::Wasm("recorder", artifacts::RECORDER),
            PluginFile::Manifest("recorder", LOUD),
        ];
        let h = TestHost::start_with_env(
            BIN,
            &plugins,
            &args,
            &[
                ("LD_PRELOAD", shim.as_os_str()),
                ("PLUGBUS_FAULT_FSYNC", trigger.as_os_str()),
            ],
        )
        .expect("starts with the shim");
        let publish = |h: &TestHost, id: &str| {
            let event = json!({"specversion": "1.0", "id": id, "source": "/t",
                               "type": "order.placed", "data": {"total_cents": 1}});
            h.post(
                "/v1/events",
                Some("application/cloudevents+json"),
                &[],
                event.to_string().as_bytes(),
            )
        };
        for id in ["ok-1", "ok-2"] {
            assert_eq!(publish(&h, id).0, 202, "fsync works before the fault");
        }
        // The disk fails: the publish is refused, not acknowledged.
        std::fs::write(&trigger, b"").expect("trigger");
        let (status, body) = publish(&h, "during-fault");
        assert_eq!(status, 500, "{body}");
        let error = body["error"].as_str().unwrap_or_default();
        assert!(
            error.contains("fsync failed") && error.contains("restart"),
            "names the failure and the fix: {error}"
        );
        // The disk seems fine again, but the kernel may have dropped the
        // dirty pages: nothing more is acknowledged until a restart, not
        // even the same event sent again.
        std::fs::remove_file(&trigger).expect("untrigger");
        for id in ["during-fault", "after-fault"] {
            let (status, body) = publish(&h, id);
            assert_eq!(status, 500, "{id}: {body}");
            assert!(
                body["error"]
                    .as_str()
                    .unwrap_or_default()
                    .contains("refuses writes until plugbus is restarted"),
                "{body}"
            );
        }
        let before = h.kill9();
        // After a restart everything acknowledged is there and handled, and
        // publishing works again. (The event whose fsync failed may be in
        // the log, as may any event whose answer a publisher never got; it
        // was not acknowledged.)
        let h = host(&plugins, &args);
        assert_eq!(publish(&h, "after-restart").0, 202);
        h.wait_log("[recorder] handled after-restart", WAIT)
            .expect("publishing works again");
        let handled = |id: &str| {
            before
                .iter()
                .chain(h.log().iter())
                .any(|l| l.ends_with(&format!("[recorder] handled {id}")))
        };
        assert!(
            handled("ok-1") && handled("ok-2"),
            "acknowledged events handled"
        );
        assert!(
            !handled("after-fault"),
            "an event refused while poisoned was never stored"
        );
    }

    #[test]
    fn a_damaged_journal_recovers_a_prefix_says_so_and_skips_nothing_new() {
        for flip in [false, true] {
            let data = TestDir::new("damaged");
            let args = ["--data", &data.arg()];
            let plugins = [
                PluginFile::Wasm("recorder", artifacts::RECORDER),
                PluginFile::Manifest("recorder", LOUD),
            ];
            let h = host(&plugins, &args);
            for i in 0..20 {
                h.publish("order.placed", &json!({ "n": i }))
                    .expect("publish");
            }
            h.wait_until("the recorder", WAIT, |h| {
                h.count("recorder", "handled") == 20
            })
            .expect("handled");
            assert!(h.stop().expect("stops").success());

            damage_journal(&data.0, flip);
            // Refused, naming the journal and the choices.
            let out = std::process::Command::new(BIN)
                .args([
                    "run",
                    "--plugins",
                    "/nonexistent",
                    "--listen",
                    "127.0.0.1:0",
                ])
                .args(["--data", &data.arg()])
                .output()
                .expect("run");
            assert!(
                !out.status.success(),
                "a store that lost acknowledged events must not start silently"
            );
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(err.contains(".jnl"), "names the journal: {err}");
            // Either the engine refuses the damaged journal outright...
            if err.contains("the store is damaged") {
                assert!(err.contains("Restore the directory from a backup"), "{err}");
                continue;
            }
            // ...or it recovers a prefix, which plugbus refuses until told.
            assert!(
                err.contains("were acknowledged") && err.contains("--accept-lost-events"),
                "{err}"
            );
            // Accepted knowingly: reported, and nothing new is skipped.
            let h = host(&plugins, &["--data", &data.arg(), "--accept-lost-events"]);
            let line = h
                .wait_log("going on as --accept-lost-events asks", WAIT)
                .expect("the loss is reported");
            assert!(
                line.contains(&data.arg()) && line.contains("up to 20"),
                "{line}"
            );
            let after = h
                .publish("order.placed", &json!({ "n": "new" }))
                .expect("publish");
            assert!(
                after["sequence"].as_u64() > Some(20),
                "numbered after every cursor: {after}"
            );
            // (The recovered cursor may sit before the recovered end: those
            // events come again, at least once. The new one must come too.)
            let id = after["id"].as_str().expect("id");
            h.wait_log(&format!("handled {id}"), WAIT)
                .expect("it is the new one");
        }
    }

    fn cli(args: &[&str]) -> (bool, String, String) {
        let out = std::process::Command::new(BIN)
            .args(args)
            .output()
            .expect("run the cli");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    #[test]
    fn given_up_events_become_dead_letters_that_a_fixed_plugin_gets_when_redriven() {
        let data = TestDir::new("dead");
        let args = [
            "--data",
            &data.arg(),
            "--max-attempts",
            "2",
            "--backoff-ms-min",
            "10",
            "--backoff-ms-max",
            "20",
            "--batch-events-max",
            "1",
        ];
        let h = host(
            &[
                PluginFile::Wasm("trap", artifacts::TRAP),
                PluginFile::Wasm("inventory", artifacts::INVENTORY),
            ],
            &args,
        );
        let no_items = h
            .publish(
                "order.placed",
                &json!({"order_id": "o-1", "customer": "c", "total_cents": 1}),
            )
            .expect("publish");
        let boom = h
            .publish(
                "order.placed",
                &json!({"order_id": "o-2", "customer": "c", "note": "boom",
                                             "items": [{"sku": "w", "qty": 1}]}),
            )
            .expect("publish");
        h.wait_until("two dead letters", WAIT, |h| {
            h.get("/v1/dead")
                .ok()
                .and_then(|v| v["dead_letters"].as_array().map(Vec::len))
                == Some(2)
        })
        .expect("dead-lettered");
        let list = h.get("/v1/dead").expect("list");
        let letter = |plugin: &str| {
            list["dead_letters"]
                .as_array()
                .and_then(|l| l.iter().find(|d| d["plugin"] == plugin).cloned())
                .unwrap_or_else(|| panic!("{plugin} in {list}"))
        };
        let inv = letter("inventory");
        assert_eq!(
            (inv["attempts"].as_u64(), inv["id"].clone()),
            (Some(1), no_items["id"].clone()),
            "a reject is not retried"
        );
        assert!(
            inv["error"].as_str().unwrap_or("").contains("has no items"),
            "{inv}"
        );
        let trap = letter("trap");
        assert_eq!(
            (trap["attempts"].as_u64(), trap["id"].clone()),
            (Some(2), boom["id"].clone())
        );
        assert!(
            trap["error"].as_str().unwrap_or("").contains("trapped"),
            "{trap}"
        );
        assert_eq!(
            h.metric(r#"plugbus_events_dead_lettered_total{plugin="trap"}"#),
            Some(1.0)
        );

        let (ok, out, _) = cli(&["dead", "list", "--url", &h.url]);
        assert!(
            ok && out.contains("inventory") && out.contains("trap"),
            "{out}"
        );
        let seq = trap["sequence"].as_u64().expect("sequence").to_string();
        let (ok, out, _) = cli(&["dead", "show", "trap", &seq, "--url", &h.url]);
        assert!(
            ok && out.contains("boom"),
            "the letter carries its event: {out}"
        );
        assert!(h.stop().expect("stops").success());

        // The fix is deployed under the same name; re-drive to it.
        let h = host(
            &[
                PluginFile::Wasm("trap", artifacts::NOOP),
                PluginFile::Wasm("inventory", artifacts::INVENTORY),
            ],
            &args,
        );
        let (ok, out, err) = cli(&["dead", "redrive", "trap", "--all", "--url", &h.url]);
        assert!(ok && out.contains("re-driven: 1"), "{out}{err}");
        h.wait_until("the fixed plugin to handle it", WAIT, |h| {
            h.count("trap", "handled") == 1
        })
        .expect("re-driven");
        assert_eq!(
            h.get("/v1/dead/trap").expect("list")["dead_letters"],
            json!([])
        );
        let (ok, out, _) = cli(&["dead", "purge", "inventory", "--all", "--url", &h.url]);
        assert!(ok && out.contains("purged: 1"), "{out}");
        let (ok, _, err) = cli(&["dead", "redrive", "trap", "--url", &h.url]);
        assert!(
            !ok && err.contains("--all"),
            "a selection is required: {err}"
        );
        assert!(h.stop().expect("stops").success());

        // Handled once is done: a restart does not bring it again.
        let h = host(&[PluginFile::Wasm("trap", artifacts::NOOP)], &args);
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(h.count("trap", "handled"), 0);
        assert_eq!(h.get("/v1/dead").expect("list")["dead_letters"], json!([]));
    }

    #[test]
    fn dead_letters_need_durable_mode() {
        let h = host(
            &[PluginFile::Wasm("analytics", artifacts::ANALYTICS)],
            &["--memory"],
        );
        let status = match ureq::get(&format!("{}/v1/dead", h.url)).call() {
            Err(ureq::Error::Status(code, r)) => {
                let body = r.into_string().unwrap_or_default();
                assert!(body.contains("durable mode"), "{body}");
                code
            }
            other => panic!("expected a refusal, got {other:?}"),
        };
        assert_eq!(status, 409);
    }

    #[test]
    fn replay_rebuilds_a_projection_from_the_log_by_sequence_or_time() {
        let h = host(
            &[
                PluginFile::Wasm("analytics", artifacts::ANALYTICS),
                PluginFile::Wasm("inventory", artifacts::INVENTORY),
            ],
            &[],
        );
        let mut acks = Vec::new();
        for (i, cents) in [100u64, 250, 400, 800, 1600].iter().enumerate() {
            if i == 2 {
                std::thread::sleep(Duration::from_millis(20));
            }
            acks.push(
                h.publish("order.placed", &order(&format!("o-{i}"), "w", 1, *cents))
                    .expect("publish"),
            );
        }
        let all = "[analytics] totals: orders=5 revenue_cents=3150";
        h.wait_log(all, WAIT).expect("projection built");

        let (ok, out, _) = cli(&["log", "tail", "-n", "3", "--url", &h.url]);
        assert!(ok && out.lines().count() == 3, "{out}");
        assert!(out.lines().all(|l| l.contains("\"sequence\"")), "{out}");
        let first = acks[0]["sequence"].as_u64().expect("sequence").to_string();
        let (ok, out, _) = cli(&["log", "get", &first, "--url", &h.url]);
        assert!(ok && out.contains("o-0"), "{out}");

        // The projection is the plugin's state, readable from outside.
        let kv = |key: &str| {
            h.get(&format!("/v1/plugins/analytics/kv/{key}"))
                .map(|v| v["value"].clone())
        };
        assert_eq!(kv("orders").expect("orders"), json!(5));
        assert_eq!(kv("revenue_cents").expect("revenue"), json!(3150));
        assert_eq!(
            h.get("/v1/plugins/inventory/kv/stock.w").expect("stock")["value"],
            json!(95),
            "inventory keeps its stock in its state"
        );

        // Event sourcing: cleared, then rebuilt from the log, identical.
        let (ok, out, err) = cli(&[
            "replay",
            "analytics",
            "--from-seq",
            "1",
            "--reset-state",
            "--url",
            &h.url,
        ]);
        assert!(
            ok && out.contains("replays from sequence 1 with its state cleared"),
            "{out}{err}"
        );
        h.wait_until("the rebuilt totals", WAIT, |h| {
            h.log().iter().filter(|l| l.ends_with(all)).count() == 2
        })
        .expect("rebuilt, identical");
        h.wait_until("the rebuilt state", WAIT, |_| {
            kv("orders").ok() == Some(json!(5))
        })
        .expect("state rebuilt");
        assert_eq!(kv("revenue_cents").expect("revenue"), json!(3150));

        // Time travel: from the third order on.
        let third = acks[2]["sequence"].as_u64().expect("sequence");
        let time = h.get(&format!("/v1/log/{third}")).expect("event")["time"]
            .as_str()
            .expect("time")
            .to_string();
        let (ok, out, err) = cli(&[
            "replay",
            "analytics",
            "--from-time",
            &time,
            "--reset-state",
            "--url",
            &h.url,
        ]);
        assert!(ok, "{out}{err}");
        h.wait_log("[analytics] totals: orders=3 revenue_cents=2800", WAIT)
            .expect("the projection of the later orders");

        // Without --reset-state the replayed events add to what is kept.
        let (ok, out, err) = cli(&[
            "replay",
            "analytics",
            "--from-seq",
            &third.to_string(),
            "--url",
            &h.url,
        ]);
        assert!(ok && !out.contains("cleared"), "{out}{err}");
        h.wait_log("[analytics] totals: orders=6 revenue_cents=5600", WAIT)
            .expect("added to the kept state");

        // The CLI reads state too; values show as JSON.
        let (ok, out, err) = cli(&["kv", "list", "analytics", "--url", &h.url]);
        assert!(ok, "{err}");
        assert_eq!(
            out.lines().collect::<Vec<_>>(),
            ["orders\t6", "revenue_cents\t5600"]
        );
        let (ok, out, _) = cli(&["kv", "get", "analytics", "orders", "--url", &h.url]);
        assert!(ok && out.trim() == "6", "{out}");
        let (ok, _, err) = cli(&["kv", "get", "analytics", "nothing", "--url", &h.url]);
        assert!(!ok && err.contains("no key `nothing`"), "{err}");
        let (ok, _, err) = cli(&["kv", "list", "nobody", "--url", &h.url]);
        assert!(!ok && err.contains("no plugin named `nobody`"), "{err}");

        let (ok, _, err) = cli(&["replay", "nobody", "--from-seq", "1", "--url", &h.url]);
        assert!(
            !ok && err.contains("no running plugin is called `nobody`"),
            "{err}"
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
        h.wait_log(
            "retention: removed the oldest finished events",
            Duration::from_secs(15),
        )
        .expect("trimmed within a few seconds");
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
}

mod state {
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
        let borrowed: Vec<(&str, Value)> =
            ids.iter().map(|(i, d)| (i.as_str(), d.clone())).collect();
        let (status, body) = send(&h, &borrowed);
        assert_eq!(status, 202, "{body}");
        h.wait_until("ten acked", WAIT, |h| h.count("tally", "handled") == 10)
            .expect("all acked");
        assert_eq!(kv(&h, "seen"), Some(json!(10)), "each event counted once");
        assert_eq!(kv(&h, "attempt.t3"), Some(json!(3)));
        assert_eq!(kv(&h, "attempt.t0"), Some(json!(1)));
        assert_eq!(h.count("tally", "retried"), 4);

        // A retry waiting when the host is killed is still owed after it.
        let late = json!({"retry_until_attempt": 2, "delay_ms": 60_000});
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
}

mod hot_swap {
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
        let (v0, tag0) = swapper(0);
        let h = host(&[PluginFile::Bytes("swapper", &v0)], &[]);
        assert_eq!(
            h.plugin("swapper").expect("running")["version"],
            json!(tag0)
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
}

mod isolation {
    use super::*;

    /// The manifest of a hostile plugin in `mode`: two attempts, quick
    /// retries, and `extra` lines.
    fn hostile(mode: &str, extra: &str) -> String {
        format!(
            "[config]\nmode = \"{mode}\"\n{extra}\n[retry]\nmax_attempts = 2\nbackoff_ms_min = 10\nbackoff_ms_max = 20\n"
        )
    }

    /// `n` orders as one CloudEvents batch (one delivery, one batch per
    /// plugin).
    fn orders(h: &TestHost, n: usize) {
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
    fn never(h: &TestHost, plugin: &str, mode: &str) {
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

    fn reference_plugins_deliver(h: &TestHost, n: u64) {
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
        let manifests: Vec<(String, String)> = [
            ("loop", "[limits]\ndeadline_ms = 100"),
            ("alloc", ""),
            ("recurse", ""),
            // A wasm stack far above the default: the host's threads make
            // room for it.
            ("deep", "[limits]\nstack_bytes_max = 1048576"),
            ("trap", ""),
            ("big", "[limits]\nmemory_bytes_max = 268435456"),
            ("garbage", ""),
        ]
        .iter()
        .map(|(mode, extra)| {
            let runs = if *mode == "deep" { "recurse" } else { mode };
            (format!("hostile_{mode}"), hostile(runs, extra))
        })
        .collect();
        let mut files = order_flow();
        for (name, manifest) in &manifests {
            files.push(PluginFile::Wasm(name, artifacts::HOSTILE));
            files.push(PluginFile::Manifest(name, manifest));
        }
        let h = host(&files, &[]);
        const N: usize = 10;
        orders(&h, N);
        reference_plugins_deliver(&h, N as u64);
        // Each hostile plugin's events are dead letters after two failed
        // attempts, with the reason.
        for (mode, says) in [
            ("loop", "interrupt"),
            ("alloc", "trapped"),
            ("recurse", "call stack exhausted"),
            ("deep", "call stack exhausted"),
            ("trap", "unreachable"),
            ("big", "cut: the plugin's message was 104857600 bytes"),
            ("garbage", "outcomes for a batch of"),
        ] {
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
            if mode != "big" {
                assert_eq!(letters[0]["attempts"], json!(2), "{name}");
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
        // A guest's panic message reaches the log, tagged with the plugin.
        h.wait_log("this plugin traps on every event", WAIT)
            .expect("logged");
        assert_eq!(h.get("/healthz").map(|_| ()), Ok(()));
        // The loop plugin ran under its manifest's deadline.
        let limits = &h.plugin("hostile_loop").expect("listed")["limits"];
        assert_eq!(limits["deadline_ms"], json!(100), "{limits}");
        assert_eq!(limits["manifest"], json!(true));
        let status = h.stop().expect("stops");
        assert!(status.success(), "clean shutdown: {status}");
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
        // 150 ms of work per event: each batch is cut in the foreground at
        // 100 ms and run again in the background, where it finishes.
        let mut files = order_flow();
        files.push(PluginFile::Wasm("heavy", artifacts::HOSTILE));
        files.push(PluginFile::Manifest(
            "heavy",
            "batch_events_max = 4\n[config]\nmode = \"work\"\nwork_us = \"150000\"\nsubscribe = \"order.placed\"\n",
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
        h.wait_log("at low CPU priority", WAIT).expect("logged");
        let status = h.plugin("heavy").expect("listed");
        assert!(status["background_ms"].as_u64() > Some(0), "{status}");
        for p in ["email", "inventory", "analytics"] {
            never(&h, p, "background");
        }
    }

    #[test]
    fn a_plugin_failing_every_event_is_quarantined_until_a_new_version_comes() {
        let manifest =
            "batch_events_max = 1\n[config]\nmode = \"trap\"\n[retry]\nmax_attempts = 1\n";
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
            refused.contains("order.placed: PublishError::Denied")
                && refused.contains("not allowed"),
            "the plugin sees the refusal: {refused}"
        );
        assert!(
            refused.contains("storm.noise: PublishError::Denied") && refused.contains("rate limit"),
            "{refused}"
        );
        let sent = kv("storm.sent");
        let sent = sent["value"]
            .as_i64()
            .or_else(|| sent.as_i64())
            .unwrap_or(-1);
        assert!((1..=60).contains(&sent), "about a second's worth: {sent}");
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
}

mod manifests {
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
}

mod concurrency {
    use super::*;

    #[test]
    fn four_workers_keep_each_subject_in_order_and_handle_every_event_once() {
        let h = host(
            &[
                PluginFile::Wasm("tally", artifacts::TALLY),
                PluginFile::Manifest("tally", "concurrency = 4\nordering_key = \"subject\"\n"),
            ],
            &[],
        );
        const SUBJECTS: usize = 8;
        const N: usize = 400;
        let mut sent: Vec<Vec<String>> = vec![Vec::new(); SUBJECTS];
        for chunk in (0..N).collect::<Vec<_>>().chunks(50) {
            let batch: Vec<Value> = chunk
                .iter()
                .map(|&i| {
                    sent[i % SUBJECTS].push(format!("c{i}"));
                    json!({"specversion": "1.0", "id": format!("c{i}"), "source": "/t",
                           "type": "tally.one", "subject": format!("s{}", i % SUBJECTS), "data": {}})
                })
                .collect();
            h.publish_batch(batch);
        }
        h.wait_until("all handled", WAIT, |h| {
            h.count("tally", "handled") == N as u64
        })
        .expect("handled");
        let p = h.plugin("tally").expect("running");
        assert_eq!(p["limits"]["concurrency"], json!(4));
        for (s, ids) in sent.iter().enumerate() {
            let order = h
                .get(&format!("/v1/plugins/tally/kv/order.s{s}"))
                .expect("order kept");
            let order: Vec<String> =
                serde_json::from_value(order.get("value").cloned().unwrap_or(order.clone()))
                    .unwrap_or_else(|e| panic!("order.s{s}: {e}: {order}"));
            assert_eq!(&order, ids, "subject s{s}: every event once, in order");
        }
        // Every worker's cursor moves past the end, its events or not.
        h.wait_until("the workers' cursors to reach the end", WAIT, |h| {
            h.plugin("tally").is_some_and(|p| p["lag"] == json!(0))
        })
        .expect("cursors at the end");
    }
}

mod tiers {
    use super::*;

    /// Files in the compile cache `dir`.
    fn entries(dir: &std::path::Path) -> usize {
        std::fs::read_dir(dir).map_or(0, |d| {
            d.filter_map(Result::ok)
                .filter(|e| e.path().extension().is_some_and(|x| x == "cwasm"))
                .count()
        })
    }

    /// The host's `plugin loaded` log lines (each says its `tier=`).
    fn loaded_lines(h: &TestHost) -> Vec<String> {
        h.log()
            .into_iter()
            .filter(|l| l.contains("plugin loaded"))
            .collect()
    }

    /// `plugbus compile --cache-dir CACHE FILE`.
    fn compile(cache: &std::path::Path, file: &std::path::Path) -> std::process::Output {
        std::process::Command::new(BIN)
            .arg("compile")
            .arg("--cache-dir")
            .arg(cache)
            .arg(file)
            .output()
            .expect("plugbus compile runs")
    }

    /// Tally events `from..to`, over 4 subjects.
    fn tally_events(from: usize, to: usize) -> Vec<Value> {
        (from..to)
            .map(|i| {
                json!({"specversion": "1.0", "id": format!("t{i}"), "source": "/t",
                       "type": "tally.one", "subject": format!("s{}", i % 4), "data": {}})
            })
            .collect()
    }

    #[test]
    fn a_cold_start_serves_a_baseline_build_then_swaps_the_optimized_one_in_losing_nothing() {
        let cache = TestDir::new("tiers-cache");
        let cache_arg = cache.arg();
        let mut plugins = order_flow();
        plugins.push(PluginFile::Wasm("tally", artifacts::TALLY));
        let h = host(&plugins, &["--cache-dir", &cache_arg]);
        // Started on baseline builds, each compiled by a child into the cache.
        let loaded = loaded_lines(&h);
        assert_eq!(loaded.len(), 4, "{loaded:?}");
        assert!(
            loaded.iter().all(|l| l.contains("tier=baseline")),
            "{loaded:?}"
        );
        // Events flow while the optimized builds are compiled and swapped in.
        const N: usize = 400;
        let mut sent = 0;
        while sent < N {
            h.publish_batch(tally_events(sent, sent + 20));
            h.publish(
                "order.placed",
                &order(&format!("o-{sent}"), "widget", 1, 100),
            )
            .expect("order accepted");
            sent += 20;
            std::thread::sleep(Duration::from_millis(10));
        }
        h.wait_until("every plugin on its optimized build", WAIT, |h| {
            h.get("/v1/plugins").is_ok_and(|v| {
                let list = v["plugins"].as_array().cloned().unwrap_or_default();
                list.len() == 4 && list.iter().all(|p| p["tier"] == json!("optimized"))
            })
        })
        .expect("optimized");
        h.publish_batch(tally_events(N, N + 40));
        h.wait_until("every tally event handled", WAIT, |h| {
            h.count("tally", "handled") == (N + 40) as u64
        })
        .expect("handled");
        for s in 0..4 {
            let want: Vec<String> = (0..N + 40)
                .filter(|i| i % 4 == s)
                .map(|i| format!("t{i}"))
                .collect();
            let got = h
                .get(&format!("/v1/plugins/tally/kv/order.s{s}"))
                .expect("order kept");
            let got: Vec<String> =
                serde_json::from_value(got.get("value").cloned().unwrap_or(got.clone()))
                    .expect("a list of ids");
            assert_eq!(got, want, "subject s{s}: every event once, in order");
        }
        let orders = (N / 20) as u64;
        h.wait_until("every order handled", WAIT, |h| {
            ["email", "inventory", "analytics"]
                .iter()
                .all(|p| h.count(p, "handled") >= orders)
        })
        .expect("orders handled");
        // The same code optimized is not a new version.
        assert_eq!(
            h.metric("plugbus_plugin_swaps_total{plugin=\"tally\"}"),
            Some(0.0)
        );
        let swapped = h
            .log()
            .iter()
            .filter(|l| l.contains("optimized build swapped in"))
            .count();
        assert_eq!(swapped, 4, "one tier-up per plugin");
        // Both builds of each plugin are in the cache.
        assert_eq!(entries(&cache.0), 8);
        h.stop().expect("clean stop");

        // Started again, every plugin starts optimized from the cache.
        let h = host(&plugins, &["--cache-dir", &cache_arg]);
        let loaded = loaded_lines(&h);
        assert!(
            loaded.iter().all(|l| l.contains("tier=optimized")),
            "{loaded:?}"
        );
        assert!(!h
            .log()
            .iter()
            .any(|l| l.contains("optimized build compiled")));
        h.stop().expect("clean stop");
    }

    #[test]
    fn plugbus_compile_fills_the_cache_ahead_of_a_start() {
        let cache = TestDir::new("tiers-aot");
        let out = compile(&cache.0, std::path::Path::new(artifacts::EMAIL));
        assert!(out.status.success(), "{out:?}");
        assert_eq!(entries(&cache.0), 1);
        let h = host(
            &[PluginFile::Wasm("email", artifacts::EMAIL)],
            &["--cache-dir", &cache.arg()],
        );
        assert!(
            loaded_lines(&h)
                .iter()
                .any(|l| l.contains("tier=optimized")),
            "{:?}",
            h.log()
        );
        h.stop().expect("clean stop");

        // A file that is not wasm: the error names it, nothing is cached.
        let junk = cache.0.join("junk.wasm");
        std::fs::write(&junk, b"not wasm").expect("write");
        let out = compile(&cache.0, &junk);
        assert!(!out.status.success());
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(said.contains("junk.wasm"), "{said}");
        assert_eq!(entries(&cache.0), 1);
    }

    #[test]
    fn without_tiering_a_cold_start_compiles_optimized_at_once() {
        let cache = TestDir::new("tiers-off");
        let h = host(
            &[PluginFile::Wasm("email", artifacts::EMAIL)],
            &["--cache-dir", &cache.arg(), "--no-tiering"],
        );
        assert!(
            loaded_lines(&h)
                .iter()
                .any(|l| l.contains("tier=optimized")),
            "{:?}",
            h.log()
        );
        assert_eq!(entries(&cache.0), 1);
        h.stop().expect("clean stop");
    }
}
