//! The next versions of the `inventory` reference plugin the contract
//! tests swap in: each publishes `inventory.insufficient` for every order
//! (no stock kept), in the shape its `Shape` says, and declares that shape
//! in its embedded contracts.

use std::marker::PhantomData;

use plugbus_sdk::{Config, Context, Event, Info, Outcome, Plugin};
use serde_json::{json, Value};

/// What a version publishes.
pub trait Shape: 'static {
    /// The name of the customer field.
    const CUSTOMER: &'static str;
    /// Whether it adds `warehouse`.
    const WAREHOUSE: bool;
}

/// `customer` renamed to `customer_id` (the builds that rename it).
#[allow(dead_code)]
pub struct Renamed;

impl Shape for Renamed {
    const CUSTOMER: &'static str = "customer_id";
    const WAREHOUSE: bool = false;
}

pub struct InventoryNext<S: Shape>(PhantomData<S>);

impl<S: Shape> Plugin for InventoryNext<S> {
    fn init(_config: &Config) -> Result<Self, String> {
        Ok(InventoryNext(PhantomData))
    }

    fn info(&self) -> Info {
        Info::new(
            "inventory",
            "2.0.0",
            ["order.placed", "inventory.release.requested"],
        )
    }

    fn handle(&mut self, event: &Event<'_>, ctx: &mut Context) -> Outcome {
        if event.topic() != "order.placed" {
            return Outcome::Ack;
        }
        let order: Value = match event.json() {
            Ok(v) => v,
            Err(e) => return Outcome::reject(e.to_string()),
        };
        let item = &order["items"][0];
        let mut out = json!({
            "order_id": order["order_id"],
            "sku": item["sku"],
            "wanted": item["qty"],
            "available": 0,
        });
        out[S::CUSTOMER] = order["customer"].clone();
        if S::WAREHOUSE {
            out["warehouse"] = json!("north");
        }
        match ctx.publish("inventory.insufficient", &out) {
            Ok(()) => Outcome::Ack,
            Err(e) => Outcome::retry(e.to_string()),
        }
    }
}
