//! `inventory` 2.0.0 that adds an optional `warehouse` to what it
//! publishes (and declares so): a compatible change every open reader
//! accepts, so the host swaps it in.

#[path = "inventory_next/mod.rs"]
mod next;

struct Warehouse;

impl next::Shape for Warehouse {
    const CUSTOMER: &'static str = "customer";
    const WAREHOUSE: bool = true;
}

plugbus_sdk::export_plugin!(next::InventoryNext<Warehouse>);
plugbus_sdk::contracts!(include_bytes!("inventory_next/warehouse.json"));
