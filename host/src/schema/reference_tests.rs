//! The reference plugins' declared contracts fit one another: for every
//! topic one of them declares it publishes, each that declares it reads
//! the topic can read what it declares (the check a swap makes, here for
//! the whole reference flow at once), and each compiles.

use super::compat::fits;
use super::{Declarations, Declared};

const PLUGINS: [&str; 5] = ["email", "inventory", "analytics", "payment", "order-saga"];

fn declared(plugin: &str) -> Declared {
    let file = format!(
        "{}/../plugins/{plugin}/contracts.json",
        env!("CARGO_MANIFEST_DIR")
    );
    let bytes = std::fs::read(&file).unwrap_or_else(|e| panic!("{file}: {e}"));
    Declared::build(
        plugin,
        Some(&bytes),
        &Declarations::default(),
        std::path::Path::new("."),
    )
    .unwrap_or_else(|e| panic!("{file}: {e}"))
}

#[test]
fn the_reference_plugins_contracts_fit_one_another() {
    let all: Vec<(&str, Declared)> = PLUGINS.iter().map(|p| (*p, declared(p))).collect();
    let mut pairs = Vec::new();
    for (writer, w) in &all {
        for (topic, wrote) in &w.publishes {
            for (reader, r) in &all {
                let Some(reads) = r.consumes.get(topic) else {
                    continue;
                };
                if let Err(at) = fits(&wrote.schema, &reads.schema) {
                    panic!("{writer} publishes `{topic}` that {reader} cannot read: {at}");
                }
                pairs.push(format!("{writer} → {topic} → {reader}"));
            }
        }
    }
    // inventory → email and the saga (3), payment → the saga (2), the
    // saga → payment, inventory and email (5).
    assert_eq!(pairs.len(), 10, "{pairs:#?}");
}
