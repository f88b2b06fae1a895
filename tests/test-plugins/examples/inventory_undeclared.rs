//! `inventory` 2.0.0 that renames `customer` to `customer_id` in what it
//! publishes and declares nothing: there is nothing to compare before it
//! runs, but its shadow run publishes shortages email cannot read, so the
//! host refuses to swap it in.

#[path = "inventory_next/mod.rs"]
mod next;

plugbus_sdk::export_plugin!(next::InventoryNext<next::Renamed>);
