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

#[test]
fn a_request_s_trace_context_rides_the_whole_chain_and_a_bad_one_is_named() {
    const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let h = host(&order_flow(), &[]);
    // Out of stock: inventory publishes inventory.insufficient, which
    // email handles.
    let (status, body) = h.post(
        "/v1/events/order.placed",
        Some("application/json"),
        &[("traceparent", TP), ("tracestate", "shop=1")],
        order("o-1", "gadget", 1000, 990).to_string().as_bytes(),
    );
    assert_eq!(status, 202, "{body}");
    h.wait_until("email to handle the order and the follow-up", WAIT, |h| {
        h.count("email", "handled") == 2
    })
    .expect("chain");
    let log = h.get("/v1/log?from=1&limit=10").expect("log");
    let events = log["events"].as_array().expect("events");
    let types: Vec<&str> = events.iter().filter_map(|e| e["type"].as_str()).collect();
    assert_eq!(types, ["order.placed", "inventory.insufficient"]);
    for e in events {
        assert_eq!(e["traceparent"], TP, "{e}");
        assert_eq!(e["tracestate"], "shop=1", "{e}");
    }

    // An event's own trace context wins over the request's.
    let own = "00-11111111111111111111111111111111-2222222222222222-00";
    let mut event = ce("ce-own");
    event["traceparent"] = json!(own);
    let (status, body) = h.post(
        "/v1/events",
        Some("application/cloudevents+json"),
        &[("traceparent", TP)],
        event.to_string().as_bytes(),
    );
    assert_eq!(status, 202, "{body}");
    let stored = h
        .get(&format!("/v1/log/{}", body["sequence"]))
        .expect("event");
    assert_eq!(stored["traceparent"], own);

    // A bad attribute is refused, naming it; a bad header is ignored, as
    // W3C Trace Context says.
    let mut bad = ce("ce-bad");
    bad["traceparent"] = json!("00-xyz");
    let (status, body) = h.post(
        "/v1/events",
        Some("application/cloudevents+json"),
        &[],
        bad.to_string().as_bytes(),
    );
    assert_eq!(status, 400, "{body}");
    assert!(body.to_string().contains("traceparent"), "{body}");
    let (status, body) = h.post(
        "/v1/events/order.placed",
        Some("application/json"),
        &[("traceparent", "garbage")],
        order("o-2", "widget", 1, 100).to_string().as_bytes(),
    );
    assert_eq!(status, 202, "{body}");
    let stored = h
        .get(&format!("/v1/log/{}", body["sequence"]))
        .expect("event");
    assert!(stored.get("traceparent").is_none(), "{stored}");
}
