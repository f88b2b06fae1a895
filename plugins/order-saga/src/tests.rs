use super::*;
use plugbus_sdk::testing::{Harness, Published, TestEvent};
use serde_json::Value;
use std::time::Duration;

fn saga() -> Harness<OrderSaga> {
    Harness::<OrderSaga>::with_config([("payment_timeout_ms", "2000"), ("gc_after_ms", "60000")])
        .expect("init")
}

fn placed(order: &str) -> TestEvent {
    TestEvent::json(
        "order.placed",
        &json!({"order_id": order, "customer": "a@x", "total_cents": 100,
                "items": [{"sku": "widget", "qty": 1}]}),
    )
    .id(&format!("placed-{order}"))
}

fn about(topic: &str, order: &str) -> TestEvent {
    TestEvent::json(
        topic,
        &json!({"order_id": order, "authorization_id": format!("auth-{order}"),
                "items": [{"sku": "widget", "qty": 1}], "refund_id": format!("refund-{order}")}),
    )
    .correlation_id(&format!("placed-{order}"))
}

fn topics(published: &[Published]) -> Vec<String> {
    published.iter().map(|p| p.topic.clone()).collect()
}

fn reason(published: &[Published]) -> Option<String> {
    published
        .iter()
        .find(|p| p.topic == "order.cancelled")
        .map(|p| {
            p.json::<Value>().expect("json")["reason"]
                .as_str()
                .unwrap_or("")
                .to_string()
        })
}

#[test]
fn an_order_paid_and_in_stock_is_confirmed_once_and_forgotten_after_the_horizon() {
    let mut h = saga();
    let d = h.deliver(placed("o-1"));
    assert_eq!(topics(&d.published), ["payment.authorize.requested"]);
    assert_eq!(h.timers().len(), 1, "the payment timeout");
    h.deliver(about("inventory.reserved", "o-1"));
    let d = h.deliver(about("payment.authorized", "o-1"));
    assert_eq!(topics(&d.published), ["order.confirmed"]);
    assert_eq!(
        h.timers(),
        vec![("gc.o-1".to_string(), h.now_ms() + 60_000)]
    );
    // Again: nothing more.
    assert!(h
        .deliver(about("payment.authorized", "o-1"))
        .published
        .is_empty());
    assert!(
        h.advance(Duration::from_secs(30)).is_empty(),
        "the timeout was called off"
    );
    let gc = h.advance(Duration::from_secs(30));
    assert_eq!(gc.len(), 1);
    h.deliver(gc.into_iter().next().expect("gc"));
    assert!(
        h.state().keys().is_empty(),
        "nothing kept: {:?}",
        h.state().keys()
    );
}

#[test]
fn stock_short_after_payment_is_compensated_refund_first_then_cancel() {
    let mut h = saga();
    h.deliver(placed("o-2"));
    h.deliver(about("inventory.insufficient", "o-2"));
    let d = h.deliver(about("payment.authorized", "o-2"));
    assert_eq!(topics(&d.published), ["payment.refund.requested"]);
    let d = h.deliver(about("payment.refunded", "o-2"));
    assert_eq!(reason(&d.published).as_deref(), Some("out_of_stock"));
    assert!(h
        .deliver(about("payment.refunded", "o-2"))
        .published
        .is_empty());
}

#[test]
fn a_payment_that_never_answers_cancels_and_releases_the_stock() {
    let mut h = saga();
    h.deliver(placed("o-3"));
    h.deliver(about("inventory.reserved", "o-3"));
    let fired = h.advance(Duration::from_millis(2_000));
    assert_eq!(fired.len(), 1);
    assert_eq!(fired[0].topic, "saga.payment-timeout");
    assert_eq!(fired[0].causation_id.as_deref(), Some("placed-o-3"));
    let d = h.deliver(fired.into_iter().next().expect("timeout"));
    assert_eq!(reason(&d.published).as_deref(), Some("payment_timeout"));
    assert!(topics(&d.published).contains(&"inventory.release.requested".to_string()));
    assert!(!topics(&d.published).contains(&"payment.refund.requested".to_string()));
}

#[test]
fn a_late_authorization_after_the_timeout_is_refunded_once() {
    let mut h = saga();
    h.deliver(placed("o-4"));
    h.deliver(about("inventory.reserved", "o-4"));
    let timeout = h.advance(Duration::from_millis(2_000)).remove(0);
    let d = h.deliver(timeout);
    assert_eq!(reason(&d.published).as_deref(), Some("payment_timeout"));
    let d = h.deliver(about("payment.authorized", "o-4"));
    assert_eq!(topics(&d.published), ["payment.refund.requested"]);
    assert!(h
        .deliver(about("payment.authorized", "o-4"))
        .published
        .is_empty());
    assert!(h
        .deliver(about("payment.refunded", "o-4"))
        .published
        .is_empty());
    let ends = h
        .published()
        .iter()
        .filter(|p| p.topic == "order.cancelled" || p.topic == "order.confirmed")
        .count();
    assert_eq!(ends, 1, "one end per order");
}

#[test]
fn answers_before_the_order_wait_for_it() {
    let mut h = saga();
    h.deliver(about("inventory.reserved", "o-5"));
    assert!(h
        .deliver(about("payment.authorized", "o-5"))
        .published
        .is_empty());
    let d = h.deliver(placed("o-5"));
    assert!(
        topics(&d.published).contains(&"order.confirmed".to_string()),
        "{:?}",
        topics(&d.published)
    );
}
