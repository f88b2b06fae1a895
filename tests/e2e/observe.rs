//! What an operator sees of the flow: the multiplexed event stream (live
//! tail, rates, plugin changes, resume by Last-Event-ID), the observed flow
//! graph and the topic catalog, on the real binary with the reference
//! plugins.

use super::*;

/// An order that inventory cannot fill: order.placed → inventory →
/// inventory.insufficient → email. Returns the order's id.
fn short_order(h: &TestHost, id: &str) -> String {
    let accepted = h
        .publish("order.placed", &order(id, "gadget", 1000, 990))
        .expect("order");
    accepted["id"].as_str().expect("id").to_string()
}

#[test]
fn the_stream_tails_a_chain_as_it_is_committed_and_resumes_after_the_last_event_id() {
    let h = host(&order_flow(), &[]);
    let mut s = h
        .stream("/v1/stream?topic=order.*,inventory.>&rates=0", None)
        .expect("stream");
    let hello = s.until("hello", |_| true).expect("hello");
    assert_eq!(hello.json()["mode"], "durable", "{}", hello.data);
    // Every plugin is announced at the start.
    let mut announced = Vec::new();
    while announced.len() < 3 {
        let p = s.until("plugin", |_| true).expect("plugin");
        announced.push(p.json()["name"].as_str().unwrap_or_default().to_string());
    }
    announced.sort();
    assert_eq!(announced, ["analytics", "email", "inventory"]);
    let id = short_order(&h, "o-1");
    let placed = s
        .until("tail", |f| f.json()["id"] == id.as_str())
        .expect("the order in the tail");
    let follow = s
        .until("tail", |f| f.json()["correlationid"] == id.as_str())
        .expect("its follow-up in the tail");
    assert_eq!(follow.json()["type"], "inventory.insufficient");
    assert_eq!(follow.json()["published_by"], "inventory");
    let placed_seq: u64 = placed.id.as_deref().expect("id").parse().expect("seq");
    let follow_seq: u64 = follow.id.as_deref().expect("id").parse().expect("seq");
    assert_eq!(follow.json()["sequence"], follow_seq);
    drop(s);

    // A client that went away after the order resumes from the log.
    let mut again = h
        .stream("/v1/stream?rates=0&plugins=0", Some(placed_seq))
        .expect("resumed stream");
    let first = again.until("tail", |_| true).expect("first after resume");
    assert_eq!(first.id.as_deref(), Some(follow_seq.to_string().as_str()));
    drop(again);
    // A filter by chain gives that chain only, from the log too.
    let other = short_order(&h, "o-2");
    let mut chain = h
        .stream(
            &format!("/v1/stream?from=0&correlationid={id}&plugins=0&rates=0"),
            None,
        )
        .expect("chain stream");
    let a = chain.until("tail", |_| true).expect("root");
    let b = chain.until("tail", |_| true).expect("follow-up");
    assert_eq!(a.json()["id"], id.as_str());
    assert_eq!(b.json()["correlationid"], id.as_str());
    assert_ne!(b.json()["correlationid"], other.as_str());
    drop(chain);
    // Bad filters are named.
    let bad = h.get("/v1/stream?topic=order..x").expect_err("400");
    assert!(bad.contains("400"), "{bad}");
    let status = h.stop().expect("stops");
    assert!(status.success(), "a host with streams open stops: {status}");
}

#[test]
fn rates_and_plugin_changes_arrive_every_second() {
    let h = host(&order_flow(), &[]);
    let mut s = h.stream("/v1/stream?tail=0", None).expect("stream");
    short_order(&h, "o-1");
    let rates = s
        .until("rates", |f| {
            f.json()["plugins"]
                .as_array()
                .is_some_and(|ps| ps.iter().any(|p| p["name"] == "email" && p["handled"] == 2))
        })
        .expect("rates with email's two events");
    let topics = rates.json()["topics"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        topics
            .iter()
            .any(|t| t["topic"] == "order.placed" && t["total"] == 1),
        "{}",
        rates.data
    );
    // A plugin removed from the directory is announced as gone.
    std::fs::remove_file(h.plugin_dir().join("analytics.wasm")).expect("remove");
    let gone = s
        .until("plugin_gone", |f| f.json()["name"] == "analytics")
        .expect("analytics gone");
    assert_eq!(gone.json()["name"], "analytics");
    drop(s);
    assert!(h.stop().expect("stops").success());
}

#[test]
fn the_flow_graph_and_the_catalog_show_what_was_observed() {
    let h = host(&order_flow(), &[]);
    let id = short_order(&h, "o-1");
    h.publish("order.placed", &order("o-2", "widget", 1, 100))
        .expect("an order inventory fills");
    h.wait_until("email to handle both orders and the follow-up", WAIT, |h| {
        h.count("email", "handled") == 3 && h.count("inventory", "handled") == 2
    })
    .expect("flow");
    let flow = h.get("/v1/flow").expect("flow");
    let edges = flow["edges"].as_array().expect("edges");
    let edge = |from: &str, to: &str, kind: &str| {
        edges
            .iter()
            .find(|e| e["from"] == from && e["to"] == to && e["kind"] == kind)
            .cloned()
    };
    for plugin in ["inventory", "email", "analytics"] {
        assert!(
            edge(
                "topic:order.placed",
                &format!("plugin:{plugin}"),
                "subscribes"
            )
            .is_some(),
            "order.placed → {plugin}: {flow}"
        );
    }
    let short = edge(
        "plugin:inventory",
        "topic:inventory.insufficient",
        "publishes",
    )
    .unwrap_or_else(|| panic!("inventory → inventory.insufficient observed: {flow}"));
    assert_eq!(short["total"], 1);
    assert!(
        short["latency_ms"].as_f64().is_some_and(|ms| ms >= 0.0),
        "{short}"
    );
    assert!(edge("plugin:inventory", "topic:inventory.reserved", "publishes").is_some());
    assert!(edge("topic:inventory.insufficient", "plugin:email", "subscribes").is_some());
    let nodes = flow["nodes"].as_array().expect("nodes");
    let placed = nodes.iter().find(|n| n["id"] == "topic:order.placed");
    assert_eq!(placed.expect("order.placed")["total"], 2);
    // The same graph has the same revision; a new topic changes it.
    let again = h.get("/v1/flow").expect("flow");
    assert_eq!(again["revision"], flow["revision"]);
    h.publish("audit.noted", &json!({"by": "ops"}))
        .expect("publish");
    h.wait_until("the new topic in the graph", WAIT, |h| {
        h.get("/v1/flow")
            .is_ok_and(|f| f["revision"] != flow["revision"])
    })
    .expect("revision");

    let catalog = h.get("/v1/catalog").expect("catalog");
    let topics = catalog["topics"].as_array().expect("topics");
    let placed = topics
        .iter()
        .find(|t| t["topic"] == "order.placed")
        .expect("order.placed in the catalog");
    assert_eq!(
        placed["consumers"],
        json!(["analytics", "email", "inventory"])
    );
    assert_eq!(placed["publishers"], json!([{"plugin": null, "events": 2}]));
    assert_eq!(
        placed["example"]["data"]["order_id"], "o-1",
        "sampled once a second: {placed}"
    );
    assert_eq!(placed["schema"]["type"], "object");
    let required = placed["schema"]["required"].as_array().expect("required");
    assert!(required.contains(&json!("order_id")), "{placed}");
    assert_eq!(
        placed["schema"]["properties"]["items"]["items"]["properties"]["qty"]["type"],
        "integer"
    );
    let short = topics
        .iter()
        .find(|t| t["topic"] == "inventory.insufficient")
        .expect("the follow-up's topic");
    assert_eq!(
        short["publishers"],
        json!([{"plugin": "inventory", "events": 1}])
    );
    assert_eq!(short["example"]["data"]["order_id"], "o-1");
    let _ = id;
    assert!(h.stop().expect("stops").success());
}

#[test]
fn a_tail_that_does_not_read_never_holds_publishers_back_and_what_it_missed_is_counted() {
    let h = host(&[], &[]);
    // Connected, then not read while the events are published.
    let mut s = h
        .stream("/v1/stream?rate=5000&rates=0&plugins=0", None)
        .expect("stream");
    const EVENTS: usize = 40_000;
    for b in 0..EVENTS / 1000 {
        let batch: Vec<Value> = (0..1000)
            .map(|i| {
                json!({"specversion": "1.0", "id": format!("e-{b}-{i}"), "source": "/load",
                       "type": "load.tick", "data": {"n": i}})
            })
            .collect();
        h.publish_batch(batch);
    }
    let dropped = |reason: &str| {
        h.metric(&format!(
            "plugbus_tail_dropped_total{{reason=\"{reason}\"}}"
        ))
        .unwrap_or(0.0)
    };
    assert!(
        dropped("queue_full") + dropped("rate_cap") > 0.0,
        "a reader that reads nothing misses events"
    );
    // Every event is either sent or counted as missed, none in silence.
    let (mut sent, mut missed) = (0u64, 0u64);
    while sent + missed < EVENTS as u64 {
        let f = s.next_frame().expect("the stream goes on");
        match f.event.as_str() {
            "tail" => sent += 1,
            "missed" => {
                let m = f.json();
                missed =
                    m["queue_full"].as_u64().unwrap_or(0) + m["rate_cap"].as_u64().unwrap_or(0);
            }
            _ => {}
        }
    }
    assert_eq!(sent + missed, EVENTS as u64);
    assert!(missed > 0);
    drop(s);
    assert!(h.stop().expect("stops").success());
}
