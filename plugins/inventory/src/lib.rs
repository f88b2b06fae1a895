//! The `inventory` reference plugin: reserves stock for each `order.placed`
//! and publishes what happened, `inventory.reserved` or
//! `inventory.insufficient`: the next link of the choreography chain. The
//! follow-up keeps the order's correlation id and names the order event as
//! its cause (the host does both).
//!
//! An order without items cannot be understood and never will be: it is
//! rejected (permanently), not retried.
//!
//! Where `order-saga` runs, it may ask for a reservation back
//! (`inventory.release.requested {order_id, items}`, when the payment did
//! not come): the units are returned once per order (`released.<order>`),
//! however often it is asked.
//!
//! Stock lives in the plugin's state, one key per SKU (`stock.<sku>`, units
//! left); a SKU not seen yet starts at `default_stock` (config, default 100)
//! units, or at a per-SKU `stock.<sku>` config value (in a manifest the
//! key is quoted, `"stock.widget" = "5"`: a bare dotted key is a TOML
//! table). The reservation is kept only if the order is acked, together
//! with the follow-up event: a crash never reserves an order twice or loses
//! a reservation.

use std::collections::HashMap;

use plugbus_sdk::{export_plugin, Config, Context, Event, Info, Outcome, Plugin, State};
use serde::{Deserialize, Serialize};

#[derive(Deserialize)]
struct Order {
    order_id: String,
    customer: String,
    #[serde(default)]
    items: Vec<Item>,
}

#[derive(Deserialize, Serialize, Clone)]
struct Item {
    sku: String,
    qty: u64,
}

#[derive(Serialize)]
struct Reserved<'a> {
    order_id: &'a str,
    customer: &'a str,
    items: &'a [Item],
}

#[derive(Serialize)]
struct Insufficient<'a> {
    order_id: &'a str,
    customer: &'a str,
    sku: &'a str,
    wanted: u64,
    available: u64,
}

struct Inventory {
    default_stock: u64,
    /// Starting stock from config, per SKU.
    initial: HashMap<String, u64>,
    state: State,
}

#[derive(Deserialize)]
struct Release {
    order_id: String,
    #[serde(default)]
    items: Vec<Item>,
}

impl Inventory {
    fn available(&self, sku: &str) -> Result<u64, plugbus_sdk::StateError> {
        let kept = self.state.get_json::<u64>(&format!("stock.{sku}"))?;
        Ok(kept.unwrap_or_else(|| self.initial.get(sku).copied().unwrap_or(self.default_stock)))
    }

    /// Return an order's reserved units, once per order.
    fn release(&mut self, event: &Event<'_>) -> Outcome {
        let r: Release = match event.json() {
            Ok(r) => r,
            Err(e) => return Outcome::reject(e.to_string()),
        };
        let done = format!("released.{}", r.order_id);
        let returned = || -> Result<bool, plugbus_sdk::StateError> {
            if self.state.get(&done)?.is_some() {
                return Ok(false);
            }
            for item in &r.items {
                let units = self.available(&item.sku)? + item.qty;
                self.state
                    .set_json(&format!("stock.{}", item.sku), &units)?;
            }
            self.state.set(&done, b"1")?;
            Ok(true)
        };
        match returned() {
            Ok(true) => {
                plugbus_sdk::info!("order {}: reservation released", r.order_id);
                Outcome::Ack
            }
            Ok(false) => Outcome::Ack,
            Err(e) => Outcome::retry(format!("cannot release: {e}")),
        }
    }
}

impl Plugin for Inventory {
    fn init(config: &Config) -> Result<Self, String> {
        let default_stock = match config.get("default_stock") {
            Some(v) => v
                .parse()
                .map_err(|_| format!("config `default_stock` = `{v}` is not a whole number"))?,
            None => 100,
        };
        let mut initial = HashMap::new();
        for (key, value) in config.iter() {
            if let Some(sku) = key.strip_prefix("stock.") {
                let units = value
                    .parse()
                    .map_err(|_| format!("config `{key}` = `{value}` is not a whole number"))?;
                initial.insert(sku.to_string(), units);
            }
        }
        Ok(Inventory {
            default_stock,
            initial,
            state: State::open().map_err(|e| format!("cannot open the state bucket: {e}"))?,
        })
    }

    fn info(&self) -> Info {
        Info::new(
            "inventory",
            env!("CARGO_PKG_VERSION"),
            ["order.placed", "inventory.release.requested"],
        )
    }

    fn handle(&mut self, event: &Event<'_>, ctx: &mut Context) -> Outcome {
        if event.topic() == "inventory.release.requested" {
            return self.release(event);
        }
        let order: Order = match event.json() {
            Ok(order) => order,
            Err(e) => return Outcome::reject(e.to_string()),
        };
        if order.items.is_empty() {
            return Outcome::reject(format!("order {} has no items", order.order_id));
        }
        let mut levels = Vec::with_capacity(order.items.len());
        for item in &order.items {
            match self.available(&item.sku) {
                Ok(units) => levels.push(units),
                Err(e) => return Outcome::retry(format!("cannot read stock: {e}")),
            }
        }
        let short = order
            .items
            .iter()
            .zip(&levels)
            .find(|(item, &units)| units < item.qty);
        let published = match short {
            Some((item, &available)) => {
                plugbus_sdk::warn!(
                    "order {}: {} x {} wanted, {} in stock",
                    order.order_id,
                    item.qty,
                    item.sku,
                    available
                );
                ctx.publish(
                    "inventory.insufficient",
                    &Insufficient {
                        order_id: &order.order_id,
                        customer: &order.customer,
                        sku: &item.sku,
                        wanted: item.qty,
                        available,
                    },
                )
            }
            None => {
                let mut changes = Vec::new();
                for (item, units) in order.items.iter().zip(&levels) {
                    let left = units - item.qty;
                    if let Err(e) = self.state.set_json(&format!("stock.{}", item.sku), &left) {
                        return Outcome::retry(format!("cannot keep stock: {e}"));
                    }
                    changes.push(format!("{} -{} (left {left})", item.sku, item.qty));
                }
                plugbus_sdk::info!("order {}: reserved {}", order.order_id, changes.join(", "));
                ctx.publish(
                    "inventory.reserved",
                    &Reserved {
                        order_id: &order.order_id,
                        customer: &order.customer,
                        items: &order.items,
                    },
                )
            }
        };
        match published {
            Ok(()) => {
                let topic = if short.is_some() {
                    "inventory.insufficient"
                } else {
                    "inventory.reserved"
                };
                plugbus_sdk::info!(
                    "order {}: published {topic} (caused by {})",
                    order.order_id,
                    event.id()
                );
                Outcome::Ack
            }
            Err(e) => Outcome::retry(e.to_string()),
        }
    }
}

export_plugin!(Inventory);
// The schemas it reads and writes, embedded for the host (docs/plugins/contracts.md).
plugbus_sdk::contracts!(include_bytes!("../contracts.json"));

#[cfg(test)]
mod tests {
    use super::*;
    use plugbus_sdk::testing::{Harness, TestEvent};
    use serde_json::json;

    fn order(id: &str, sku: &str, qty: u64) -> TestEvent {
        TestEvent::json(
            "order.placed",
            &json!({"order_id": id, "customer": "a@b.c", "items": [{"sku": sku, "qty": qty}]}),
        )
    }

    #[test]
    fn an_order_in_stock_is_reserved_and_the_chain_goes_on() {
        let mut h = Harness::<Inventory>::with_config([("stock.widget", "5")]).expect("init");
        let done = h.deliver(order("o-1", "widget", 3));
        assert!(done.outcome.is_ack());
        let follow = &done.published[0];
        assert_eq!(follow.topic, "inventory.reserved");
        assert_eq!(follow.causation_id, done.event_id);
        assert_eq!(
            follow.correlation_id, done.event_id,
            "the order starts the chain"
        );
        assert_eq!(h.state().get_json::<u64>("stock.widget"), Some(2));
        // Not enough left: the follow-up says so and stock is untouched.
        let short = h.deliver(order("o-2", "widget", 3));
        assert_eq!(short.published[0].topic, "inventory.insufficient");
        let body: serde_json::Value = short.published[0].json().expect("json");
        assert_eq!(
            (body["wanted"].as_u64(), body["available"].as_u64()),
            (Some(3), Some(2))
        );
        assert_eq!(h.state().get_json::<u64>("stock.widget"), Some(2));
    }

    #[test]
    fn an_order_without_items_is_rejected_and_reserves_nothing() {
        let mut h = Harness::<Inventory>::with_config([("default_stock", "1")]).expect("init");
        let empty = TestEvent::json(
            "order.placed",
            &json!({"order_id": "o-1", "customer": "c", "items": []}),
        );
        assert_eq!(
            h.deliver(empty).outcome,
            Outcome::reject("order o-1 has no items")
        );
        assert!(h.published().is_empty());
        assert!(h.state().keys().is_empty());
        assert!(h.deliver(order("o-2", "gadget", 1)).outcome.is_ack());
        assert_eq!(h.state().get_json::<u64>("stock.gadget"), Some(0));
    }

    #[test]
    fn a_reservation_is_released_once_however_often_it_is_asked() {
        let mut h = Harness::<Inventory>::with_config([("stock.widget", "5")]).expect("init");
        h.deliver(order("o-1", "widget", 3));
        let release = || {
            TestEvent::json(
                "inventory.release.requested",
                &json!({"order_id": "o-1", "items": [{"sku": "widget", "qty": 3}]}),
            )
        };
        assert!(h.deliver(release()).outcome.is_ack());
        assert!(h.deliver(release()).outcome.is_ack());
        assert_eq!(h.state().get_json::<u64>("stock.widget"), Some(5));
    }

    #[test]
    fn bad_config_is_refused_naming_the_key() {
        let err = Harness::<Inventory>::with_config([("default_stock", "many")]).err();
        assert_eq!(
            err.as_deref(),
            Some("config `default_stock` = `many` is not a whole number")
        );
    }
}
