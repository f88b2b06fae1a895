//! `inventory` 2.0.0 that renames `customer` to `customer_id` in what it
//! publishes (and declares so): email, which requires `customer`, cannot
//! read it, so the host refuses to swap it in.

#[path = "inventory_next/mod.rs"]
mod next;

struct Renamed;

impl next::Shape for Renamed {
    const CUSTOMER: &'static str = "customer_id";
    const WAREHOUSE: bool = false;
}

plugbus_sdk::export_plugin!(next::InventoryNext<Renamed>);
plugbus_sdk::contracts!(include_bytes!("inventory_next/renamed.json"));
