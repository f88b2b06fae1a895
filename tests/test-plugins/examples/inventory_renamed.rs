//! `inventory` 2.0.0 that renames `customer` to `customer_id` in what it
//! publishes (and declares so): email, which requires `customer`, cannot
//! read it, so the host refuses to swap it in.

#[path = "inventory_next/mod.rs"]
mod next;

plugbus_sdk::export_plugin!(next::InventoryNext<next::Renamed>);
plugbus_sdk::contracts!(include_bytes!("inventory_next/renamed.json"));
