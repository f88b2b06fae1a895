//! The `analytics` reference plugin: a projection of the order stream. It
//! keeps the number of orders and the revenue in its state, under the keys
//! `orders` and `revenue_cents`, and logs the running totals. The host
//! commits the totals with the plugin's progress through the log, so each
//! order is counted exactly once, even across a crash; and because the
//! projection is derived from events alone, it can be cleared and rebuilt
//! by replaying the log (`plugbus replay analytics --from-seq 1
//! --reset-state`).

use plugbus_sdk::{export_plugin, Config, Context, Event, Info, Outcome, Plugin, State};
use serde::Deserialize;

#[derive(Deserialize)]
struct Order {
    total_cents: u64,
}

struct Analytics {
    state: State,
}

impl Plugin for Analytics {
    fn init(_config: &Config) -> Result<Self, String> {
        let state = State::open().map_err(|e| format!("cannot open the state bucket: {e}"))?;
        Ok(Analytics { state })
    }

    fn info(&self) -> Info {
        Info::new("analytics", env!("CARGO_PKG_VERSION"), ["order.placed"])
    }

    fn handle(&mut self, event: &Event<'_>, _ctx: &mut Context) -> Outcome {
        let order = match event.json::<Order>() {
            Ok(order) => order,
            Err(e) => return Outcome::reject(e.to_string()),
        };
        let totals = self.state.increment("orders", 1).and_then(|orders| {
            let cents = i64::try_from(order.total_cents).unwrap_or(i64::MAX);
            Ok((orders, self.state.increment("revenue_cents", cents)?))
        });
        match totals {
            Ok((orders, revenue_cents)) => {
                plugbus_sdk::info!("totals: orders={orders} revenue_cents={revenue_cents}");
                Outcome::Ack
            }
            Err(e) => Outcome::retry(format!("cannot update the totals: {e}")),
        }
    }
}

export_plugin!(Analytics);
// The schemas it reads and writes, embedded for the host (docs/plugins/contracts.md).
plugbus_sdk::contracts!(include_bytes!("../contracts.json"));

#[cfg(test)]
mod tests {
    use super::*;
    use plugbus_sdk::testing::{Harness, TestEvent};
    use serde_json::json;

    #[test]
    fn orders_and_revenue_are_counted_once_per_acked_order() {
        let mut h = Harness::<Analytics>::new().expect("init");
        let outcomes = h.deliver_batch([
            TestEvent::json("order.placed", &json!({"total_cents": 500})),
            TestEvent::json("order.placed", &json!({"no_total": true})),
            TestEvent::json("order.placed", &json!({"total_cents": 250})),
        ]);
        let acked: Vec<bool> = outcomes.iter().map(|d| d.outcome.is_ack()).collect();
        assert_eq!(acked, [true, false, true]);
        assert_eq!(h.state().counter("orders"), 2);
        assert_eq!(h.state().counter("revenue_cents"), 750);
        let last = h.logs().last().expect("a line");
        assert_eq!(last.message, "totals: orders=2 revenue_cents=750");
    }

    #[test]
    fn the_projection_continues_from_kept_totals() {
        let mut h = Harness::<Analytics>::new().expect("init");
        h.seed_json("orders", &10).seed_json("revenue_cents", &1000);
        h.deliver(TestEvent::json("order.placed", &json!({"total_cents": 1})));
        assert_eq!(h.state().counter("orders"), 11);
        assert_eq!(h.state().counter("revenue_cents"), 1001);
    }
}
