//! The `payment` reference plugin: the payment provider a saga talks to.
//!
//! - `payment.authorize.requested {order_id, customer, amount_cents}` is
//!   answered with `payment.authorized {order_id, customer, authorization_id}`;
//!   for a customer in config `silent_customers` (comma-separated) it never
//!   answers, and for one in `late_customers` it answers `late_ms` (config,
//!   default 3000) later, by a timer: the two kinds of trouble a saga's
//!   timeout is for.
//! - `payment.refund.requested {order_id, refund_id}` refunds once per
//!   refund id however often it is asked: the first request counts the
//!   refund (`refunded.<refund_id>`, and `refunds` in all) and publishes
//!   `payment.refunded {order_id, refund_id}`; a repeat is acked and does
//!   nothing. The effect and the answer commit together with the ack.

use std::collections::HashSet;

use plugbus_sdk::{export_plugin, Config, Context, Event, Info, Outcome, Plugin, State, When};
use serde::{Deserialize, Serialize};

#[derive(Deserialize)]
struct AuthorizeRequested {
    order_id: String,
    customer: String,
    #[serde(default)]
    amount_cents: u64,
}

#[derive(Serialize)]
struct Authorized<'a> {
    order_id: &'a str,
    customer: &'a str,
    authorization_id: String,
    amount_cents: u64,
}

#[derive(Deserialize, Serialize)]
struct Refund {
    order_id: String,
    refund_id: String,
}

struct Payment {
    silent: HashSet<String>,
    late: HashSet<String>,
    late_ms: u64,
    state: State,
}

fn customers(config: &Config, key: &str) -> HashSet<String> {
    config
        .get(key)
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .map(str::to_string)
        .collect()
}

impl Payment {
    fn authorize(&mut self, event: &Event<'_>, ctx: &mut Context) -> Outcome {
        let req: AuthorizeRequested = match event.json() {
            Ok(r) => r,
            Err(e) => return Outcome::reject(e.to_string()),
        };
        if self.silent.contains(&req.customer) {
            plugbus_sdk::info!("order {}: no answer for {}", req.order_id, req.customer);
            return Outcome::Ack;
        }
        let answer = Authorized {
            order_id: &req.order_id,
            customer: &req.customer,
            authorization_id: format!("auth-{}", req.order_id),
            amount_cents: req.amount_cents,
        };
        let sent = if self.late.contains(&req.customer) {
            // Late, by a timer: it survives a restart like the saga's own.
            let key = format!("late.{}", req.order_id);
            ctx.schedule(
                &key,
                When::AfterMs(self.late_ms),
                "payment.authorized",
                &answer,
            )
        } else {
            ctx.publish("payment.authorized", &answer)
        };
        match sent {
            Ok(()) => Outcome::Ack,
            Err(e) => Outcome::retry(e.to_string()),
        }
    }

    fn refund(&mut self, event: &Event<'_>, ctx: &mut Context) -> Outcome {
        let req: Refund = match event.json() {
            Ok(r) => r,
            Err(e) => return Outcome::reject(e.to_string()),
        };
        let done = format!("refunded.{}", req.refund_id);
        match self.state.get(&done) {
            Ok(Some(_)) => {
                plugbus_sdk::info!("refund {} was made already", req.refund_id);
                return Outcome::Ack;
            }
            Ok(None) => {}
            Err(e) => return Outcome::retry(e.to_string()),
        }
        let kept = self
            .state
            .set(&done, req.order_id.as_bytes())
            .and_then(|()| self.state.increment("refunds", 1).map(|_| ()));
        if let Err(e) = kept {
            return Outcome::retry(e.to_string());
        }
        plugbus_sdk::info!("order {}: refunded ({})", req.order_id, req.refund_id);
        match ctx.publish("payment.refunded", &req) {
            Ok(()) => Outcome::Ack,
            Err(e) => Outcome::retry(e.to_string()),
        }
    }
}

impl Plugin for Payment {
    fn init(config: &Config) -> Result<Self, String> {
        let late_ms = match config.get("late_ms") {
            Some(v) => v
                .parse()
                .map_err(|_| format!("config `late_ms` = `{v}` is not a whole number of ms"))?,
            None => 3_000,
        };
        Ok(Payment {
            silent: customers(config, "silent_customers"),
            late: customers(config, "late_customers"),
            late_ms,
            state: State::open().map_err(|e| format!("cannot open the state bucket: {e}"))?,
        })
    }

    fn info(&self) -> Info {
        Info::new(
            "payment",
            env!("CARGO_PKG_VERSION"),
            ["payment.authorize.requested", "payment.refund.requested"],
        )
    }

    fn handle(&mut self, event: &Event<'_>, ctx: &mut Context) -> Outcome {
        match event.topic() {
            "payment.authorize.requested" => self.authorize(event, ctx),
            "payment.refund.requested" => self.refund(event, ctx),
            other => Outcome::reject(format!("payment does not handle `{other}`")),
        }
    }
}

export_plugin!(Payment);
// The schemas it reads and writes, embedded for the host (docs/plugins/contracts.md).
plugbus_sdk::contracts!(include_bytes!("../contracts.json"));

#[cfg(test)]
mod tests {
    use super::*;
    use plugbus_sdk::testing::{Harness, TestEvent};
    use serde_json::json;
    use std::time::Duration;

    fn authorize(order: &str, customer: &str) -> TestEvent {
        TestEvent::json(
            "payment.authorize.requested",
            &json!({"order_id": order, "customer": customer, "amount_cents": 100}),
        )
    }

    #[test]
    fn a_payment_is_authorized_at_once_late_by_a_timer_or_never() {
        let mut h = Harness::<Payment>::with_config([
            ("silent_customers", "mute@x, quiet@x"),
            ("late_customers", "slow@x"),
            ("late_ms", "3000"),
        ])
        .expect("init");
        let now = h.deliver(authorize("o-1", "a@x"));
        assert_eq!(now.published[0].topic, "payment.authorized");
        assert_eq!(
            now.published[0].json::<serde_json::Value>().expect("json")["order_id"],
            "o-1"
        );
        assert!(h.deliver(authorize("o-2", "quiet@x")).published.is_empty());
        assert!(h.deliver(authorize("o-3", "slow@x")).published.is_empty());
        assert!(h.advance(Duration::from_millis(2_999)).is_empty());
        let late = h.advance(Duration::from_millis(1));
        assert_eq!(late.len(), 1);
        assert_eq!(late[0].topic, "payment.authorized");
    }

    #[test]
    fn a_refund_is_made_once_however_often_it_is_asked() {
        let mut h = Harness::<Payment>::new().expect("init");
        let ask = || {
            TestEvent::json(
                "payment.refund.requested",
                &json!({"order_id": "o-1", "refund_id": "refund-o-1"}),
            )
        };
        assert_eq!(h.deliver(ask()).published[0].topic, "payment.refunded");
        assert!(h.deliver(ask()).published.is_empty());
        assert_eq!(h.state().counter("refunds"), 1);
    }
}
