//! The `email` reference plugin: tells the customer what happened to their
//! order. It reacts to `order.placed` (a receipt) and to
//! `inventory.insufficient` (an apology), and, where `order-saga` runs, to
//! the order's end: `order.confirmed` (on its way) or `order.cancelled`
//! (why). It sends nothing for real; it logs the message it would send, so
//! the demo shows it.

use plugbus_sdk::{export_plugin, Config, Context, Event, Info, Outcome, Plugin};
use serde::Deserialize;

#[derive(Deserialize)]
struct Order {
    order_id: String,
    customer: String,
    #[serde(default)]
    total_cents: u64,
}

#[derive(Deserialize)]
struct OrderEnd {
    order_id: String,
    #[serde(default)]
    customer: String,
    #[serde(default)]
    reason: String,
}

#[derive(Deserialize)]
struct Shortage {
    order_id: String,
    customer: String,
    sku: String,
}

struct Email {
    from: String,
}

impl Plugin for Email {
    fn init(config: &Config) -> Result<Self, String> {
        Ok(Email {
            from: config
                .get("from")
                .unwrap_or("orders@shop.example")
                .to_string(),
        })
    }

    fn info(&self) -> Info {
        Info::new(
            "email",
            env!("CARGO_PKG_VERSION"),
            [
                "order.placed",
                "inventory.insufficient",
                "order.confirmed",
                "order.cancelled",
            ],
        )
    }

    fn handle(&mut self, event: &Event<'_>, _ctx: &mut Context) -> Outcome {
        match event.topic() {
            "order.placed" => match event.json::<Order>() {
                Ok(o) => {
                    plugbus_sdk::info!(
                        "to {} from {}: your order {} is received, total {}.{:02}",
                        o.customer,
                        self.from,
                        o.order_id,
                        o.total_cents / 100,
                        o.total_cents % 100
                    );
                    Outcome::Ack
                }
                Err(e) => Outcome::reject(e.to_string()),
            },
            "inventory.insufficient" => match event.json::<Shortage>() {
                Ok(s) => {
                    plugbus_sdk::info!(
                        "to {} from {}: sorry, order {} is delayed: {} is out of stock (correlation {}, caused by {})",
                        s.customer,
                        self.from,
                        s.order_id,
                        s.sku,
                        event.correlation_id().unwrap_or("-"),
                        event.causation_id().unwrap_or("-")
                    );
                    Outcome::Ack
                }
                Err(e) => Outcome::reject(e.to_string()),
            },
            "order.confirmed" | "order.cancelled" => match event.json::<OrderEnd>() {
                Ok(o) if event.topic() == "order.confirmed" => {
                    plugbus_sdk::info!(
                        "to {} from {}: your order {} is paid and on its way",
                        o.customer,
                        self.from,
                        o.order_id
                    );
                    Outcome::Ack
                }
                Ok(o) => {
                    plugbus_sdk::info!(
                        "to {} from {}: your order {} is cancelled ({}); any payment is refunded",
                        o.customer,
                        self.from,
                        o.order_id,
                        o.reason
                    );
                    Outcome::Ack
                }
                Err(e) => Outcome::reject(e.to_string()),
            },
            other => Outcome::reject(format!("email does not handle `{other}`")),
        }
    }
}

export_plugin!(Email);
// The schemas it reads and writes, embedded for the host (docs/plugins/contracts.md).
plugbus_sdk::contracts!(include_bytes!("../contracts.json"));

#[cfg(test)]
mod tests {
    use super::*;
    use plugbus_sdk::testing::{Harness, TestEvent};
    use serde_json::json;

    #[test]
    fn an_order_is_acknowledged_and_a_shortage_apologised_for_in_the_chain() {
        let mut h = Harness::<Email>::with_config([("from", "shop@x.example")]).expect("init");
        assert_eq!(
            h.info().subscriptions,
            [
                "order.placed",
                "inventory.insufficient",
                "order.confirmed",
                "order.cancelled"
            ]
        );
        let order = json!({"order_id": "o-1", "customer": "a@b.c", "total_cents": 1234});
        assert!(h
            .deliver(TestEvent::json("order.placed", &order))
            .outcome
            .is_ack());
        assert_eq!(
            h.logs()[0].message,
            "to a@b.c from shop@x.example: your order o-1 is received, total 12.34"
        );
        let shortage = json!({"order_id": "o-1", "customer": "a@b.c", "sku": "w"});
        let e = TestEvent::json("inventory.insufficient", &shortage)
            .correlation_id("root-1")
            .causation_id("order-1");
        assert!(h.deliver(e).outcome.is_ack());
        assert!(h.logs()[1]
            .message
            .ends_with("(correlation root-1, caused by order-1)"));
        assert!(h.published().is_empty(), "email publishes nothing");
    }

    #[test]
    fn what_email_cannot_read_is_rejected_not_retried() {
        let mut h = Harness::<Email>::new().expect("init");
        let bad = h.deliver(TestEvent::json("order.placed", &json!({"order_id": 1})));
        assert!(matches!(bad.outcome, Outcome::Reject(_)), "{bad:?}");
        let other = h.deliver(TestEvent::json("order.shipped", &json!({})));
        assert_eq!(
            other.outcome,
            Outcome::reject("email does not handle `order.shipped`")
        );
    }
}
