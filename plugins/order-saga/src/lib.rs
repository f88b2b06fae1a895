//! The `order-saga` reference plugin: drives each order through payment
//! and stock to exactly one end, `order.confirmed` or `order.cancelled`
//! (`reason`: `out_of_stock`, `payment_timeout`), undoing what was done when
//! a later step fails (compensation) and giving up on a payment that does
//! not answer in time (a timer).
//!
//! Inventory keeps its choreography role: it reserves stock when it sees
//! `order.placed`. The saga asks `payment` to authorize the amount
//! (`payment.authorize.requested`) and sets the timer `timeout.<order>`
//! (`payment_timeout_ms`, config). Then, as the answers come, in any order:
//!
//! | stock | payment | the saga |
//! |---|---|---|
//! | reserved | authorized | `order.confirmed` |
//! | short | authorized | compensates: `payment.refund.requested`, then on `payment.refunded` `order.cancelled {out_of_stock}` |
//! | short | none by the timeout | `order.cancelled {out_of_stock}` |
//! | reserved or unknown | none by the timeout | `order.cancelled {payment_timeout}`, and a reservation is released (`inventory.release.requested`) |
//!
//! After the end, a late authorization is refunded and a late reservation
//! released, once each. Any event may come in any state, and events for an
//! order that ended are acked and change nothing else.
//!
//! Each order's saga is one state key (`saga.<order>`), read and written
//! with the events' outcomes, follow-ups and timers in one commit: a crash
//! never sends an order to two ends. At its end the state shrinks to a
//! tombstone, deleted by the timer `gc.<order>` after `gc_after_ms`
//! (config, default a day), so that the saga's state stays bounded.
//! Events of one order are handled one at a time in log order (one
//! worker; with more, `ordering_key = "correlationid"`).

use plugbus_sdk::{export_plugin, Config, Context, Event, Info, Outcome, Plugin, State, When};
use serde::{Deserialize, Serialize};
use serde_json::json;

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq)]
struct Item {
    sku: String,
    qty: u64,
}

/// What an event about an order says (the fields the saga reads).
#[derive(Deserialize, Default)]
struct About {
    order_id: String,
    #[serde(default)]
    customer: String,
    #[serde(default)]
    total_cents: u64,
    #[serde(default)]
    items: Vec<Item>,
    #[serde(default)]
    authorization_id: String,
}

/// One order's saga, as kept in its state.
#[derive(Serialize, Deserialize, Default, Debug, PartialEq)]
struct Saga {
    placed: bool,
    customer: String,
    total_cents: u64,
    items: Vec<Item>,
    /// Stock: none yet, reserved (true) or short (false).
    stock: Option<bool>,
    /// The payment's authorization, once it answered.
    authorization: Option<String>,
    /// The payment did not answer in time.
    timed_out: bool,
    /// Waiting for the refund before cancelling for this reason.
    refunding: Option<String>,
    refund_asked: bool,
    released: bool,
    /// `confirmed`, or the reason it was cancelled.
    end: Option<String>,
}

struct OrderSaga {
    payment_timeout_ms: u64,
    gc_after_ms: u64,
    state: State,
}

type Step = Result<(), String>;

fn ms(config: &Config, key: &str, default: u64) -> Result<u64, String> {
    match config.get(key) {
        Some(v) => v
            .parse()
            .map_err(|_| format!("config `{key}` = `{v}` is not a whole number of ms")),
        None => Ok(default),
    }
}

impl OrderSaga {
    /// Take in what `event` says about the order.
    fn note(&self, saga: &mut Saga, event: &Event<'_>, about: About, ctx: &mut Context) -> Step {
        match event.topic() {
            "order.placed" if !saga.placed && saga.end.is_none() => {
                saga.placed = true;
                saga.customer = about.customer;
                saga.total_cents = about.total_cents;
                saga.items = about.items;
                if saga.authorization.is_some() {
                    // The payment answered first (any order is possible).
                    return Ok(());
                }
                ctx.publish(
                    "payment.authorize.requested",
                    &json!({"order_id": about.order_id, "customer": saga.customer,
                            "amount_cents": saga.total_cents}),
                )
                .map_err(|e| e.to_string())?;
                ctx.schedule(
                    &format!("timeout.{}", about.order_id),
                    When::AfterMs(self.payment_timeout_ms),
                    "saga.payment-timeout",
                    &json!({"order_id": about.order_id}),
                )
                .map_err(|e| e.to_string())
            }
            "payment.authorized" if saga.authorization.is_none() => {
                saga.authorization = Some(about.authorization_id);
                if saga.end.is_none() {
                    // Answered in time: the timeout is called off.
                    ctx.cancel(&format!("timeout.{}", about.order_id))
                        .map_err(|e| e.to_string())?;
                }
                Ok(())
            }
            "inventory.reserved" => {
                saga.stock = Some(true);
                if saga.items.is_empty() {
                    saga.items = about.items;
                }
                Ok(())
            }
            "inventory.insufficient" => {
                saga.stock = Some(false);
                Ok(())
            }
            "saga.payment-timeout" if saga.authorization.is_none() => {
                saga.timed_out = true;
                Ok(())
            }
            "payment.refunded" => match saga.refunding.take() {
                Some(reason) => self.end(saga, &about.order_id, &reason, ctx),
                None => Ok(()),
            },
            _ => {
                plugbus_sdk::info!(
                    "order {}: {} changes nothing",
                    about.order_id,
                    event.topic()
                );
                Ok(())
            }
        }
    }

    /// Go as far as what is known allows.
    fn advance(&self, saga: &mut Saga, order_id: &str, ctx: &mut Context) -> Step {
        if saga.end.is_some() {
            return self.undo_late(saga, order_id, ctx);
        }
        if !saga.placed || saga.refunding.is_some() {
            return Ok(());
        }
        let paid = saga.authorization.is_some();
        match (saga.stock, paid, saga.timed_out) {
            (Some(true), true, _) => self.end(saga, order_id, "confirmed", ctx),
            (Some(false), true, _) => {
                // Compensation: the payment is refunded before the order is
                // cancelled.
                self.ask_refund(saga, order_id, ctx)?;
                saga.refunding = Some("out_of_stock".into());
                Ok(())
            }
            (Some(false), false, true) => self.end(saga, order_id, "out_of_stock", ctx),
            (_, false, true) => self.end(saga, order_id, "payment_timeout", ctx),
            _ => Ok(()),
        }
    }

    /// After a cancel: refund a payment and release stock that came late.
    fn undo_late(&self, saga: &mut Saga, order_id: &str, ctx: &mut Context) -> Step {
        if saga.end.as_deref() == Some("confirmed") {
            return Ok(());
        }
        if saga.authorization.is_some() && !saga.refund_asked {
            self.ask_refund(saga, order_id, ctx)?;
        }
        if saga.stock == Some(true) && !saga.released {
            ctx.publish(
                "inventory.release.requested",
                &json!({"order_id": order_id, "items": saga.items}),
            )
            .map_err(|e| e.to_string())?;
            saga.released = true;
            saga.items.clear();
        }
        Ok(())
    }

    fn ask_refund(&self, saga: &mut Saga, order_id: &str, ctx: &mut Context) -> Step {
        saga.refund_asked = true;
        ctx.publish(
            "payment.refund.requested",
            &json!({"order_id": order_id, "refund_id": format!("refund-{order_id}")}),
        )
        .map_err(|e| e.to_string())
    }

    /// The order's one end: its event, the timeout called off, the state a
    /// tombstone until the clean-up timer.
    fn end(&self, saga: &mut Saga, order_id: &str, end: &str, ctx: &mut Context) -> Step {
        let sent = if end == "confirmed" {
            ctx.publish(
                "order.confirmed",
                &json!({"order_id": order_id, "customer": saga.customer}),
            )
        } else {
            ctx.publish(
                "order.cancelled",
                &json!({"order_id": order_id, "customer": saga.customer, "reason": end}),
            )
        };
        sent.map_err(|e| e.to_string())?;
        plugbus_sdk::info!("order {order_id}: {end}");
        saga.end = Some(end.to_string());
        ctx.cancel(&format!("timeout.{order_id}"))
            .map_err(|e| e.to_string())?;
        ctx.schedule(
            &format!("gc.{order_id}"),
            When::AfterMs(self.gc_after_ms),
            "saga.gc",
            &json!({"order_id": order_id}),
        )
        .map_err(|e| e.to_string())?;
        saga.customer.clear();
        if end == "confirmed" {
            saga.items.clear();
        }
        self.undo_late(saga, order_id, ctx)
    }
}

impl Plugin for OrderSaga {
    fn init(config: &Config) -> Result<Self, String> {
        Ok(OrderSaga {
            payment_timeout_ms: ms(config, "payment_timeout_ms", 30_000)?,
            gc_after_ms: ms(config, "gc_after_ms", 24 * 3600 * 1000)?,
            state: State::open().map_err(|e| format!("cannot open the state bucket: {e}"))?,
        })
    }

    fn info(&self) -> Info {
        Info::new(
            "order-saga",
            env!("CARGO_PKG_VERSION"),
            [
                "order.placed",
                "payment.authorized",
                "payment.refunded",
                "inventory.reserved",
                "inventory.insufficient",
                "saga.payment-timeout",
                "saga.gc",
            ],
        )
    }

    fn handle(&mut self, event: &Event<'_>, ctx: &mut Context) -> Outcome {
        let about: About = match event.json() {
            Ok(a) => a,
            Err(e) => return Outcome::reject(e.to_string()),
        };
        if about.order_id.is_empty() {
            return Outcome::reject("no order_id");
        }
        let key = format!("saga.{}", about.order_id);
        if event.topic() == "saga.gc" {
            return match self.state.delete(&key) {
                Ok(()) => Outcome::Ack,
                Err(e) => Outcome::retry(e.to_string()),
            };
        }
        let mut saga: Saga = match self.state.get_json(&key) {
            Ok(s) => s.unwrap_or_default(),
            Err(e) => return Outcome::retry(e.to_string()),
        };
        let order_id = about.order_id.clone();
        let done = self
            .note(&mut saga, event, about, ctx)
            .and_then(|()| self.advance(&mut saga, &order_id, ctx))
            .and_then(|()| self.state.set_json(&key, &saga).map_err(|e| e.to_string()));
        match done {
            Ok(()) => Outcome::Ack,
            Err(e) => Outcome::retry(e),
        }
    }
}

export_plugin!(OrderSaga);
// The schemas it reads and writes, embedded for the host (docs/plugins/contracts.md).
plugbus_sdk::contracts!(include_bytes!("../contracts.json"));

#[cfg(test)]
mod tests;
