//! The `analytics` reference plugin: a projection of the order stream. It
//! keeps the number of orders and the revenue, and logs the running totals.
//! Because it is derived from events alone, it can be rebuilt by replaying
//! the log.

use plugbus_sdk::{export_plugin, Config, Context, Event, Info, Outcome, Plugin};
use serde::Deserialize;

#[derive(Deserialize)]
struct Order {
    total_cents: u64,
}

struct Analytics {
    orders: u64,
    revenue_cents: u64,
}

impl Plugin for Analytics {
    fn init(_config: &Config) -> Result<Self, String> {
        Ok(Analytics {
            orders: 0,
            revenue_cents: 0,
        })
    }

    fn info(&self) -> Info {
        Info::new("analytics", env!("CARGO_PKG_VERSION"), ["order.placed"])
    }

    fn handle(&mut self, event: &Event<'_>, _ctx: &mut Context) -> Outcome {
        match event.json::<Order>() {
            Ok(order) => {
                self.orders += 1;
                self.revenue_cents += order.total_cents;
                plugbus_sdk::info!(
                    "totals: orders={} revenue_cents={}",
                    self.orders,
                    self.revenue_cents
                );
                Outcome::Ack
            }
            Err(e) => Outcome::reject(e.to_string()),
        }
    }
}

export_plugin!(Analytics);
