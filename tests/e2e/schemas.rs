//! Event contracts on the real binary (`../shared/research/schemas.md`):
//! a topic's declared schema refuses, at ingress, an event whose data does
//! not fit, naming the field and the rule, and publishes nothing of its
//! request; in mode warn it is accepted and counted; a plugin whose
//! follow-up does not fit is told at its publish, and nothing that does
//! not fit reaches a consumer. The schema outlives a restart.

use super::*;

/// The research scenario's `order.placed/1`: closed.
fn order_schema() -> Value {
    serde_json::from_str(include_str!("../fixtures/schemas/order.placed.json"))
        .expect("the fixture is JSON")
}

/// Order `i` as a CloudEvent; every 100th is invalid, three ways in turn.
fn placed(i: usize) -> Value {
    let mut data = order(&format!("o-{i}"), "gadget", 1, 100);
    if i % 100 == 99 {
        match (i / 100) % 3 {
            0 => drop(data.as_object_mut().map(|o| o.remove("items"))),
            1 => data["items"][0]["qty"] = json!(0),
            _ => data["coupon"] = json!("TENOFF"),
        }
    }
    json!({"specversion": "1.0", "id": format!("order-{i}"), "source": "/shop",
           "type": "order.placed", "data": data})
}

/// What each invalid order's refusal must name.
fn named(i: usize) -> [&'static str; 2] {
    match (i / 100) % 3 {
        0 => ["required", "items"],
        1 => ["minimum", "/items/0/qty"],
        _ => ["additionalProperties", "coupon"],
    }
}

const ORDERS: usize = 10_000;

fn declare(h: &TestHost, mode: &str) {
    let (status, body) = h.put_json(
        &format!("/v1/schemas/order.placed?mode={mode}"),
        &order_schema(),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["mode"], mode);
}

/// Publish the 10,000: the valid ones in batches of 99, each invalid one
/// alone. The answers of the invalid ones.
fn publish_all(h: &TestHost) -> Vec<(usize, u16, Value)> {
    let mut refused = Vec::new();
    let mut batch = Vec::new();
    for i in 0..ORDERS {
        if i % 100 == 99 {
            let (status, body) = h.post_event(&placed(i));
            refused.push((i, status, body));
        } else {
            batch.push(placed(i));
        }
        if batch.len() == 99 {
            h.publish_batch(std::mem::take(&mut batch));
        }
    }
    if !batch.is_empty() {
        h.publish_batch(batch);
    }
    refused
}

#[test]
fn ten_thousand_orders_with_a_hundred_invalid_are_refused_naming_the_field() {
    let h = host(&order_flow(), &[]);
    declare(&h, "enforce");
    let refused = publish_all(&h);
    assert_eq!(refused.len(), 100);
    for (i, status, body) in &refused {
        assert_eq!(*status, 400, "order {i}: {body}");
        let words = body["error"].as_str().unwrap_or_default();
        for name in named(*i) {
            assert!(words.contains(name), "order {i}: {words}");
        }
    }
    let accepted = (ORDERS - 100) as u64;
    h.wait_until("every accepted order handled", WAIT, |h| {
        order_flow_done(h, accepted)
    })
    .expect("handled");
    assert_eq!(
        h.metric("plugbus_schema_checks_total{topic=\"order.placed\",outcome=\"invalid\"}"),
        Some(100.0)
    );
    assert_eq!(
        h.metric("plugbus_schema_checks_total{topic=\"order.placed\",outcome=\"valid\"}"),
        Some(accepted as f64)
    );
    // The catalog names who broke it, and says which events it counted.
    let catalog = h.get("/v1/catalog").expect("catalog");
    let placed = topic_of(&catalog, "order.placed");
    assert_eq!(
        placed["violations"].as_array().map(Vec::len),
        Some(1),
        "{placed}"
    );
    let v = &placed["violations"][0];
    assert_eq!(
        (&v["producer"], &v["refused"], &v["warned"]),
        (&json!("outside"), &json!(100), &json!(0))
    );
    assert_eq!(placed["declared"]["topic"]["mode"], "enforce");
    let c = &catalog["coverage"];
    let counted: u64 = catalog["topics"]
        .as_array()
        .map(|ts| ts.iter().filter_map(|t| t["events"].as_u64()).sum())
        .unwrap_or_default();
    assert_eq!(c["events"].as_u64(), Some(counted), "{c}");
    let span =
        c["through_sequence"].as_u64().unwrap_or(0) + 1 - c["from_sequence"].as_u64().unwrap_or(1);
    assert_eq!(span, counted + c["uncounted"].as_u64().unwrap_or(0), "{c}");
    assert!(counted < accepted, "only the recent past is read back: {c}");
    h.audit_clean();
}

/// `name`'s entry in a catalog.
fn topic_of<'a>(catalog: &'a Value, name: &str) -> &'a Value {
    catalog["topics"]
        .as_array()
        .and_then(|ts| ts.iter().find(|t| t["topic"] == name))
        .unwrap_or_else(|| panic!("{name} is not in the catalog: {catalog}"))
}

#[test]
fn in_mode_warn_every_order_is_accepted_and_the_invalid_ones_counted() {
    let h = host(&order_flow(), &[]);
    declare(&h, "warn");
    let refused = publish_all(&h);
    assert!(
        refused.iter().all(|(_, status, _)| *status == 202),
        "{refused:?}"
    );
    h.wait_until("every order handled", WAIT, |h| {
        h.count("analytics", "handled") == ORDERS as u64
    })
    .expect("handled");
    assert_eq!(
        h.metric("plugbus_schema_checks_total{topic=\"order.placed\",outcome=\"warned\"}"),
        Some(100.0)
    );
    let catalog = h.get("/v1/catalog").expect("catalog");
    let v = &topic_of(&catalog, "order.placed")["violations"][0];
    assert_eq!(
        (&v["producer"], &v["refused"], &v["warned"]),
        (&json!("outside"), &json!(0), &json!(100))
    );
    h.audit_clean();
}

#[test]
fn a_plugin_whose_follow_up_does_not_fit_is_told_and_no_consumer_sees_it() {
    let data = TestDir::new("schemas-publish");
    let h = host(
        &order_flow(),
        &[&["--data", &data.arg()][..], &GIVE_UP_FAST[..]].concat(),
    );
    // inventory publishes `sku` as text; this schema wants a number.
    let (status, body) = h.put_json(
        "/v1/schemas/inventory.insufficient",
        &json!({"type": "object", "required": ["sku"], "properties": {"sku": {"type": "integer"}}}),
    );
    assert_eq!(status, 200, "{body}");
    h.publish("order.placed", &order("o-1", "gadget", 5000, 100))
        .expect("short of stock");
    h.publish("order.placed", &order("o-2", "gadget", 1, 100))
        .expect("in stock");
    h.wait_until("the short order is a dead letter", WAIT, |h| {
        dead_count(h, "/v1/dead/inventory") == Some(1)
    })
    .expect("dead letter");
    let dead = h.get("/v1/dead/inventory").expect("dead").to_string();
    assert!(
        dead.contains("does not fit its schema") && dead.contains("/sku") && dead.contains("type"),
        "{dead}"
    );
    h.wait_until(
        "both orders reached email, and the other was reserved",
        WAIT,
        |h| h.count("email", "handled") == 2 && h.count("inventory", "handled") == 1,
    )
    .expect("handled");
    let log = h.get("/v1/log?from=1&limit=100").expect("log");
    let topics: Vec<&str> = log["events"]
        .as_array()
        .map(|a| a.iter().filter_map(|e| e["type"].as_str()).collect())
        .unwrap_or_default();
    assert!(!topics.contains(&"inventory.insufficient"), "{topics:?}");
    // The catalog names the plugin that broke it.
    let catalog = h.get("/v1/catalog").expect("catalog");
    let v = &topic_of(&catalog, "inventory.insufficient")["violations"][0];
    assert_eq!(v["producer"], "inventory", "{v}");
    assert!(v["refused"].as_u64() >= Some(1), "{v}");
    assert_eq!(
        (&v["pointer"], &v["keyword"]),
        (&json!("/sku"), &json!("type"))
    );
    // The follow-up that was published names the major its producer
    // declares.
    let reserved = log["events"]
        .as_array()
        .and_then(|a| a.iter().find(|e| e["type"] == "inventory.reserved"))
        .expect("reserved in the log");
    assert_eq!(
        reserved["dataschema"], "/v1/schemas/inventory.reserved/1",
        "{reserved}"
    );
    // Kept in the data directory: still declared after a restart.
    assert!(h.stop().expect("stops").success());
    let h = host(&order_flow(), &["--data", &data.arg()]);
    let kept = h.get("/v1/schemas/inventory.insufficient").expect("kept");
    assert_eq!(kept["major"], 1);
    assert_eq!(kept["mode"], "enforce");
}
