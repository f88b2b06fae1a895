//! The `email` reference plugin: tells the customer what happened to their
//! order. It reacts to `order.placed` (a confirmation) and to
//! `inventory.insufficient` (an apology). It sends nothing for real; it logs
//! the message it would send, so the demo shows it.

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
            ["order.placed", "inventory.insufficient"],
        )
    }

    fn handle(&mut self, event: &Event<'_>, _ctx: &mut Context) -> Outcome {
        match event.topic() {
            "order.placed" => match event.json::<Order>() {
                Ok(o) => {
                    plugbus_sdk::info!(
                        "to {} from {}: your order {} is confirmed, total {}.{:02}",
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
            other => Outcome::reject(format!("email does not handle `{other}`")),
        }
    }
}

export_plugin!(Email);
