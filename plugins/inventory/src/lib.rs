//! The `inventory` reference plugin: reserves stock for each `order.placed`
//! and publishes what happened, `inventory.reserved` or
//! `inventory.insufficient`: the next link of the choreography chain. The
//! follow-up keeps the order's correlation id and names the order event as
//! its cause (the host does both).
//!
//! An order without items cannot be understood and never will be: it is
//! rejected (permanently), not retried.
//!
//! Stock lives in the plugin's state, one key per SKU (`stock.<sku>`, units
//! left); a SKU not seen yet starts at `default_stock` (config, default 100)
//! units, or at a per-SKU `stock.<sku>` config value. The reservation is
//! kept only if the order is acked, together with the follow-up event: a
//! crash never reserves an order twice or loses a reservation.

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

impl Inventory {
    fn available(&self, sku: &str) -> Result<u64, plugbus_sdk::StateError> {
        let kept = self.state.get_json::<u64>(&format!("stock.{sku}"))?;
        Ok(kept.unwrap_or_else(|| self.initial.get(sku).copied().unwrap_or(self.default_stock)))
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
        Info::new("inventory", env!("CARGO_PKG_VERSION"), ["order.placed"])
    }

    fn handle(&mut self, event: &Event<'_>, ctx: &mut Context) -> Outcome {
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
