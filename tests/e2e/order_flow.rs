//! The reference order flow: every plugin gets an order, the chain keeps its correlation.

use super::*;

#[test]
fn an_order_reaches_every_plugin_and_the_chain_keeps_its_correlation() {
    let h = host(&order_flow(), &[]);
    two_orders_through(&h);
    let status = h.stop().expect("stops");
    assert!(status.success(), "clean exit on SIGTERM, got {status}");
}

#[test]
fn a_chain_is_traced_by_its_correlation_id() {
    let h = host(&order_flow(), &[]);
    let accepted = h
        .publish("order.placed", &order("o-1", "gadget", 1000, 990))
        .expect("order");
    let id = accepted["id"].as_str().expect("id").to_string();
    h.publish("order.placed", &order("o-2", "widget", 1, 100))
        .expect("another chain");
    h.wait_until("email to handle both orders and the follow-up", WAIT, |h| {
        h.count("email", "handled") == 3
    })
    .expect("chain");
    // Each consumer's delivery is in the trace once it is settled: email
    // being done says nothing of analytics on a busy machine.
    let delivered = |t: &Value| -> usize {
        t["events"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|e| e["deliveries"].as_array().map_or(0, Vec::len))
            .sum()
    };
    h.wait_until("the chain's four deliveries in its trace", WAIT, |h| {
        h.get(&format!("/v1/trace/{id}"))
            .is_ok_and(|t| delivered(&t) >= 4)
    })
    .expect("trace");
    let trace = h.get(&format!("/v1/trace/{id}")).expect("trace");
    let events = trace["events"].as_array().expect("events");
    let types: Vec<&str> = events.iter().filter_map(|e| e["type"].as_str()).collect();
    assert_eq!(types, ["order.placed", "inventory.insufficient"], "{trace}");
    assert_eq!(events[0]["id"], id.as_str());
    assert!(events[0]["published_by"].is_null(), "from outside");
    assert_eq!(events[1]["published_by"], "inventory");
    assert_eq!(events[1]["causationid"], id.as_str());
    assert_eq!(events[1]["correlationid"], id.as_str());
    assert!(
        events[1]["after_cause_ms"]
            .as_f64()
            .is_some_and(|ms| ms >= 0.0),
        "{trace}"
    );
    assert_eq!(trace["truncated"], false);
    // What each consumer did with each event of the chain.
    let outcomes = |e: &Value| -> Vec<(String, String)> {
        e["deliveries"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|d| {
                let s = |k: &str| d[k].as_str().unwrap_or_default().to_string();
                (s("plugin"), s("outcome"))
            })
            .collect()
    };
    let handled = |p: &str| (p.to_string(), "handled".to_string());
    assert_eq!(
        outcomes(&events[0]),
        [handled("analytics"), handled("email"), handled("inventory")],
        "{trace}"
    );
    assert_eq!(outcomes(&events[1]), [handled("email")], "{trace}");
    let missing = h.get("/v1/trace/no-such-chain").expect_err("404");
    assert!(missing.contains("404"), "{missing}");
    let status = h.stop().expect("stops");
    assert!(status.success(), "clean exit on SIGTERM, got {status}");
}

/// Two orders through the reference plugins of `h`, which has seen no
/// order yet: each plugin did its part, and inventory's follow-up keeps the
/// chain's correlation id.
pub(crate) fn two_orders_through(h: &TestHost) {
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
    // Inventory's follow-up is visible once committed, and its counter
    // moves when its worker next runs: on a busy machine email can be
    // first.
    h.wait_until("inventory to count 2", WAIT, |h| {
        h.count("inventory", "handled") == 2
    })
    .expect("inventory");

    h.wait_log("[email] to alice@example.com from orders@shop.example: your order o-1 is received, total 25.00", WAIT)
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
