//! The `inventory` reference plugin: reserves stock for each `order.placed`
//! and publishes what happened, `inventory.reserved` or
//! `inventory.insufficient`: the next link of the choreography chain. The
//! follow-up keeps the order's correlation id and names the order event as
//! its cause (the host does both).
//!
//! An order without items cannot be understood and never will be: it is
//! rejected (permanently), not retried.
//!
//! Stock starts at `default_stock` (config, default 100) units per SKU, with
//! per-SKU overrides in `stock.<sku>` config keys. It lives in the instance's
//! memory for now.

use std::collections::HashMap;

use plugbus_sdk::{export_plugin, Config, Context, Event, Info, Outcome, Plugin};
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
    stock: HashMap<String, u64>,
}

impl Inventory {
    fn available(&self, sku: &str) -> u64 {
        self.stock.get(sku).copied().unwrap_or(self.default_stock)
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
        let mut stock = HashMap::new();
        for (key, value) in config.iter() {
            if let Some(sku) = key.strip_prefix("stock.") {
                let units = value
                    .parse()
                    .map_err(|_| format!("config `{key}` = `{value}` is not a whole number"))?;
                stock.insert(sku.to_string(), units);
            }
        }
        Ok(Inventory {
            default_stock,
            stock,
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
        let short = order
            .items
            .iter()
            .find(|item| self.available(&item.sku) < item.qty);
        let published = match short {
            Some(item) => {
                let available = self.available(&item.sku);
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
                for item in &order.items {
                    let left = self.available(&item.sku) - item.qty;
                    self.stock.insert(item.sku.clone(), left);
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
