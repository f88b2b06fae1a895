//! OpenTelemetry export and JSON logs on the real binary: spans sent over
//! OTLP/HTTP to a receiver started by the test, and `--log-format json`.

use std::process::Command;

use super::*;
use plugbus_e2e::otlp::{Collector, Span};

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER: &str = "00f067aa0ba902b7";
const PRODUCER: i32 = 4;
const CONSUMER: i32 = 5;

#[test]
fn a_chain_is_exported_as_one_trace_of_publish_and_process_spans() {
    let collector = Collector::start().expect("receiver");
    let h = host(&order_flow(), &["--otlp", &collector.url]);
    let traceparent = format!("00-{TRACE}-{CALLER}-01");
    let (status, body) = h.post(
        "/v1/events/order.placed",
        Some("application/json"),
        &[("traceparent", &traceparent)],
        order("o-1", "gadget", 1000, 990).to_string().as_bytes(),
    );
    assert_eq!(status, 202, "{body}");
    h.wait_until("email to handle the order and the follow-up", WAIT, |h| {
        h.count("email", "handled") == 2
    })
    .expect("chain");
    let stored = h.get("/v1/log/1").expect("the order in the log");
    // The host stops: what is batched is sent.
    assert!(h.stop().expect("stops").success());
    let spans = collector.spans();
    let find = |name: &str, kind: i32, group: Option<&str>| -> Span {
        spans
            .iter()
            .find(|s| {
                s.name == name
                    && s.kind == kind
                    && group.is_none_or(|g| s.attribute("messaging.consumer.group.name") == Some(g))
            })
            .cloned()
            .unwrap_or_else(|| panic!("no span {name} (kind {kind}, {group:?}) in {spans:#?}"))
    };
    let publish = find("publish order.placed", PRODUCER, None);
    assert_eq!(publish.trace_id, TRACE);
    assert_eq!(
        publish.parent_span_id, CALLER,
        "a child of the caller's context"
    );
    assert_eq!(publish.service, "plugbus");
    assert_eq!(publish.attribute("messaging.system"), Some("plugbus"));
    assert_eq!(
        publish.attribute("messaging.destination.name"),
        Some("order.placed")
    );
    // The event keeps its publish span's context as its traceparent.
    assert_eq!(
        stored["traceparent"],
        json!(format!("00-{TRACE}-{}-01", publish.span_id)),
        "{stored}"
    );
    for plugin in ["inventory", "email", "analytics"] {
        let process = find("process order.placed", CONSUMER, Some(plugin));
        assert_eq!(process.trace_id, TRACE);
        assert_eq!(process.parent_span_id, publish.span_id, "{plugin}");
        assert_eq!(
            process.links,
            [(TRACE.to_string(), publish.span_id.clone())],
            "{plugin}"
        );
        assert_eq!(process.attribute("plugbus.outcome"), Some("ack"));
        assert_eq!(process.attribute("plugbus.plugin.version"), Some("0.1.0"));
    }
    let inventory = find("process order.placed", CONSUMER, Some("inventory"));
    let follow = find("publish inventory.insufficient", PRODUCER, None);
    assert_eq!(follow.trace_id, TRACE, "the chain is one trace");
    assert_eq!(
        follow.parent_span_id, inventory.span_id,
        "published while inventory handled it"
    );
    assert_eq!(follow.attribute("plugbus.published_by"), Some("inventory"));
    let id = body["id"].as_str().expect("id");
    assert_eq!(
        follow.attribute("messaging.message.conversation_id"),
        Some(id)
    );
    let last = find("process inventory.insufficient", CONSUMER, Some("email"));
    assert_eq!(last.parent_span_id, follow.span_id);
    assert_eq!(last.links, [(TRACE.to_string(), follow.span_id.clone())]);
}

#[test]
fn an_unreachable_collector_costs_spans_never_events() {
    // Nothing listens there: export fails in the background.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let url = format!("http://127.0.0.1:{port}");
    let h = host(&order_flow(), &["--otlp", &url]);
    h.publish("order.placed", &order("o-1", "widget", 1, 100))
        .expect("order");
    h.wait_until("the order handled", WAIT, |h| {
        h.count("analytics", "handled") == 1
    })
    .expect("handled");
    assert!(h.stop().expect("stops").success());
    let bad = Command::new(BIN)
        .args([
            "run",
            "--plugins",
            ".",
            "--memory",
            "--otlp",
            "localhost:4318",
        ])
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(!bad.status.success() && err.contains("http://"), "{err}");
}

#[test]
fn json_logs_carry_the_chain_of_the_batch_a_line_is_about() {
    let h = host(&order_flow(), &["--log-format", "json"]);
    let (status, accepted) = h.post(
        "/v1/events/order.placed",
        Some("application/json"),
        &[("traceparent", &format!("00-{TRACE}-{CALLER}-01"))],
        order("o-1", "widget", 1, 100).to_string().as_bytes(),
    );
    assert_eq!(status, 202, "{accepted}");
    let id = accepted["id"].as_str().expect("id").to_string();
    h.wait_log("your order o-1 is received", WAIT)
        .expect("email's line");
    let lines = h.log();
    for line in &lines {
        let v: Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
        assert!(v["level"].is_string() && v["fields"].is_object(), "{line}");
    }
    let email = lines
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| {
            v["fields"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("your order o-1 is received"))
        })
        .expect("email's line");
    assert_eq!(email["span"]["plugin"], "email", "{email}");
    assert_eq!(email["span"]["correlationid"], id.as_str(), "{email}");
    assert_eq!(email["span"]["trace_id"], TRACE, "{email}");
    assert!(email["span"]["first_sequence"].is_u64(), "{email}");
    assert!(h.stop().expect("stops").success());
}
