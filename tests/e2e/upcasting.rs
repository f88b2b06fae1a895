//! Versioned events (`../shared/research/schemas.md`, scenario 6): 1,000
//! orders of `order.placed` major 1 in the log; major 2 replaces
//! `total_cents` with `total: {amount_cents, currency}` and ships an
//! upcaster; analytics 2.0.0 reads major 2. Replaying the log through it
//! from the start gives the same revenue, each order upcast once as it is
//! delivered, and the log's events are the same before and after.

use super::*;

const ORDERS: u64 = 1_000;

fn revenue(h: &TestHost) -> Option<u64> {
    let v = h.get("/v1/plugins/analytics/kv/revenue_cents").ok()?;
    match &v["value"] {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

fn major_2() -> Value {
    json!({
        "type": "object", "additionalProperties": false,
        "required": ["order_id", "customer", "items", "total"],
        "properties": {
            "order_id": {"type": "string"}, "customer": {"type": "string"},
            "items": {"type": "array"},
            "total": {"type": "object", "additionalProperties": false,
                      "required": ["amount_cents", "currency"],
                      "properties": {"amount_cents": {"type": "integer", "minimum": 0},
                                     "currency": {"type": "string"}}}
        }
    })
}

#[test]
fn replaying_old_orders_through_a_major_2_projection_gives_the_same_revenue() {
    let h = host(&order_flow(), &[]);
    let events: Vec<Value> = (0..ORDERS)
        .map(|i| {
            json!({"specversion": "1.0", "id": format!("order-{i}"), "source": "/shop",
                   "type": "order.placed",
                   "data": order(&format!("o-{i}"), "gadget", 1, 100 + i)})
        })
        .collect();
    for chunk in events.chunks(100) {
        h.publish_batch(chunk.to_vec());
    }
    h.wait_until("every order counted", WAIT, |h| order_flow_done(h, ORDERS))
        .expect("counted");
    let before = revenue(&h).expect("revenue");
    assert_eq!(before, (0..ORDERS).map(|i| 100 + i).sum::<u64>());
    let log_before = h.log_events(None);

    let (status, body) = h.put_json("/v1/schemas/order.placed?major=2", &major_2());
    assert_eq!(status, 200, "{body}");
    let (status, body) = h.put_json(
        "/v1/schemas/order.placed/upcasters/1",
        &json!({"rules": [
            {"move": {"from": "/total_cents", "to": "/total/amount_cents"}},
            {"default": {"at": "/total/currency", "value": "EUR"}}
        ]}),
    );
    assert_eq!(status, 200, "{body}");
    let v2 = std::fs::read(artifacts::ANALYTICS_V2).expect("built");
    deploy(h.plugin_dir(), "analytics.wasm", &v2);
    h.wait_until("analytics 2.0.0 runs", WAIT, |h| {
        h.plugin("analytics")
            .is_some_and(|p| p["version"] == "2.0.0" && p["error"].is_null())
    })
    .expect("swapped");

    h.replay_from_start("analytics");
    // Handled once by 1.0 and once more, from the start, by 2.0.0.
    h.wait_until("the replay is through", WAIT, |h| {
        h.count("analytics", "handled") == 2 * ORDERS && h.count("analytics", "lag") == 0
    })
    .expect("replayed");
    assert_eq!(revenue(&h), Some(before), "the same revenue from major 2");
    assert_eq!(dead_count(&h, "/v1/dead/analytics"), Some(0));
    assert_eq!(h.log_events(None), log_before, "the log is untouched");
    h.audit_clean();
}
