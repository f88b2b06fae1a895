//! `analytics` 2.0.0, for `order.placed` major 2: an order's total is
//! `total: {amount_cents, currency}` instead of `total_cents`. It declares
//! that it reads major 2, so the host upcasts older orders for it (the
//! topic's upcaster from 1 to 2); like analytics it keeps `orders` and
//! `revenue_cents` in its state.

use plugbus_sdk::{export_plugin, Config, Context, Event, Info, Outcome, Plugin, State};
use serde_json::Value;

struct AnalyticsV2 {
    state: State,
}

impl Plugin for AnalyticsV2 {
    fn init(_config: &Config) -> Result<Self, String> {
        let state = State::open().map_err(|e| format!("cannot open the state bucket: {e}"))?;
        Ok(AnalyticsV2 { state })
    }

    fn info(&self) -> Info {
        Info::new("analytics", "2.0.0", ["order.placed"])
    }

    fn handle(&mut self, event: &Event<'_>, _ctx: &mut Context) -> Outcome {
        let amount = event
            .json::<Value>()
            .ok()
            .and_then(|order| order["total"]["amount_cents"].as_u64());
        let Some(amount) = amount else {
            return Outcome::reject("not an order of major 2: no total.amount_cents");
        };
        let cents = i64::try_from(amount).unwrap_or(i64::MAX);
        let totals = self
            .state
            .increment("orders", 1)
            .and_then(|_| self.state.increment("revenue_cents", cents));
        match totals {
            Ok(_) => Outcome::Ack,
            Err(e) => Outcome::retry(format!("cannot update the totals: {e}")),
        }
    }
}

export_plugin!(AnalyticsV2);
plugbus_sdk::contracts!(include_bytes!("analytics_v2.json"));
