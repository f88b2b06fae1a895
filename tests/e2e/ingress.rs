//! HTTP ingress: CloudEvents modes, bad requests refused whole, a full queue.

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
    let batch =
        json!([ce("g-1"), {"specversion": "1.0", "id": "g-2", "type": "order.placed"}]).to_string();
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
