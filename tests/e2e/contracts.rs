//! Declared contracts on the real binary (`../shared/research/schemas.md`,
//! scenarios 4 and 5): the reference plugins embed the schemas they read
//! and write; a new `inventory` that renames `customer` in what it
//! publishes is refused at hot swap, naming `email` and the field, while
//! orders flow and the old version handles every one; one that adds an
//! optional field is swapped in. A manifest's declaration overrides the
//! embedded one, and what a plugin publishes is checked against it.

use super::*;

/// Publish orders `from..to` (one of each SKU's units: the first hundred
/// are reserved, the rest short) in batches of 100.
fn orders(h: &TestHost, from: usize, to: usize) {
    let events: Vec<Value> = (from..to)
        .map(|i| {
            json!({"specversion": "1.0", "id": format!("order-{i}"), "source": "/shop",
                   "type": "order.placed", "data": order(&format!("o-{i}"), "gadget", 1, 100)})
        })
        .collect();
    for chunk in events.chunks(100) {
        h.publish_batch(chunk.to_vec());
    }
}

fn error_of(h: &TestHost, plugin: &str) -> String {
    h.plugin(plugin)
        .and_then(|p| p["error"].as_str().map(String::from))
        .unwrap_or_default()
}

/// 500 orders; then `wasm` deployed as inventory's new version is
/// refused with words that say `says` and each of `words`; then 500 more
/// orders, all handled by the old version.
fn refused_while_the_old_one_serves(h: &TestHost, wasm: &str, says: &str, words: &[&str]) {
    let old = h.plugin("inventory").expect("inventory")["version"].clone();
    orders(h, 0, 500);
    h.wait_until("the first orders handled", WAIT, |h| {
        order_flow_done(h, 500)
    })
    .expect("handled");
    deploy(
        h.plugin_dir(),
        "inventory.wasm",
        &std::fs::read(wasm).expect("built"),
    );
    h.wait_until("the swap is refused", WAIT, |h| {
        error_of(h, "inventory").contains(says)
    })
    .expect("refused");
    let why = error_of(h, "inventory");
    for words in words {
        assert!(why.contains(words), "{words}: {why}");
    }
    orders(h, 500, 1_000);
    h.wait_until("every order handled", WAIT, |h| order_flow_done(h, 1_000))
        .expect("handled");
    let p = h.plugin("inventory").expect("inventory");
    assert_eq!(p["version"], old, "the old version served every order");
    assert!(
        h.metric("plugbus_plugin_load_failures_total{plugin=\"inventory\"}") >= Some(1.0),
        "the refusal is counted"
    );
    assert_eq!(dead_count(h, "/v1/dead/email"), Some(0));
    h.audit_clean();
}

#[test]
fn a_new_inventory_that_renames_a_field_email_reads_is_refused_and_the_old_one_serves() {
    let h = host(&order_flow(), &[]);
    refused_while_the_old_one_serves(
        &h,
        artifacts::INVENTORY_RENAMED,
        "cannot read",
        &["`email`", "inventory.insufficient", "/customer", "required"],
    );
}

/// A new inventory that declares nothing (so nothing can be compared
/// before it runs) but renames `customer`: in its shadow run on the last
/// orders it publishes shortages email cannot read, so it is refused,
/// naming the event, email and the field; nothing it did in the shadow
/// is kept.
#[test]
fn a_new_inventory_that_declares_nothing_is_refused_by_its_shadow_run() {
    let h = host(&order_flow(), &[]);
    refused_while_the_old_one_serves(
        &h,
        artifacts::INVENTORY_UNDECLARED,
        "shadow run",
        &[
            "`email`",
            "inventory.insufficient",
            "required",
            "\"customer\"",
            "handling event",
        ],
    );
    // One follow-up per order, all from the old version: the shadow's
    // were dropped with it.
    let reserved = h.log_events(Some("inventory.reserved"));
    let short = h.log_events(Some("inventory.insufficient"));
    assert_eq!(reserved.len() + short.len(), 1_000);
    assert!(short.iter().all(|e| e["data"]["customer"].is_string()));
}

#[test]
fn a_new_inventory_that_adds_an_optional_field_is_swapped_in() {
    let h = host(&order_flow(), &[]);
    orders(&h, 0, 300);
    let added = std::fs::read(artifacts::INVENTORY_WAREHOUSE).expect("built");
    deploy(h.plugin_dir(), "inventory.wasm", &added);
    h.wait_until("the new version runs", WAIT, |h| {
        h.plugin("inventory")
            .is_some_and(|p| p["version"] == "2.0.0" && p["error"].is_null())
    })
    .expect("swapped");
    orders(&h, 300, 600);
    h.wait_until("every order handled", WAIT, |h| order_flow_done(h, 600))
        .expect("handled");
    // email read the new version's shortages, `warehouse` and all.
    let shortages = h.log_events(Some("inventory.insufficient"));
    let with_warehouse = shortages
        .iter()
        .filter(|e| e["data"]["warehouse"] == "north")
        .count();
    assert!(
        with_warehouse >= 300,
        "each order after the swap: {with_warehouse}"
    );
    assert_eq!(dead_count(&h, "/v1/dead/email"), Some(0));
    h.audit_clean();
}

/// inventory's manifest says it publishes `customer_id`: refused (email
/// requires `customer`); forced with --accept-incompatible, it applies,
/// and each shortage inventory publishes (with `customer`) is refused at
/// its publish by the schema it now declares: a dead letter, nothing
/// reaches email.
#[test]
fn a_manifest_declaration_overrides_the_embedded_one_and_is_enforced_at_publish() {
    let renamed = r#"
[publishes."inventory.insufficient"]
schema = { type = "object", additionalProperties = false, required = ["order_id", "customer_id"], properties = { order_id = { type = "string" }, customer_id = { type = "string" }, sku = { type = "string" }, wanted = { type = "integer" }, available = { type = "integer" } } }
"#;
    let h = host(&order_flow(), &[]);
    deploy(h.plugin_dir(), "inventory.toml", renamed.as_bytes());
    h.wait_until("the manifest is refused", WAIT, |h| {
        let e = error_of(h, "inventory");
        e.contains("manifest not applied") && e.contains("`email`") && e.contains("/customer")
    })
    .expect("refused");
    drop(h);

    let mut plugins = order_flow();
    plugins.push(PluginFile::Manifest("inventory", renamed));
    let forced = host(
        &plugins,
        &[&["--accept-incompatible"][..], &GIVE_UP_FAST[..]].concat(),
    );
    forced
        .publish("order.placed", &order("o-1", "gadget", 5000, 100))
        .expect("short of stock");
    forced
        .wait_until("the shortage is a dead letter", WAIT, |h| {
            dead_count(h, "/v1/dead/inventory") == Some(1)
        })
        .expect("dead letter");
    let dead = forced.get("/v1/dead/inventory").expect("dead").to_string();
    assert!(
        dead.contains("declares it publishes") && dead.contains("customer_id"),
        "{dead}"
    );
    assert_eq!(
        forced.log_events(Some("inventory.insufficient")),
        Vec::<Value>::new(),
        "nothing invalid entered the log"
    );
    forced.audit_clean();
}

/// The document a user gets from the real binary validates against the
/// official AsyncAPI 3.0.0 JSON Schema (vendored with its sum) and has
/// the reference flow's channels and operations.
#[test]
fn the_asyncapi_document_of_the_reference_flow_validates() {
    let h = host(&order_flow(), &[]);
    h.publish("order.placed", &order("o-1", "gadget", 1, 100))
        .expect("in stock");
    h.publish("order.placed", &order("o-2", "gadget", 5000, 100))
        .expect("short");
    h.wait_until("both orders handled", WAIT, |h| order_flow_done(h, 2))
        .expect("handled");
    let doc = h.get("/v1/asyncapi.json").expect("document");
    let official: Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/fixtures/asyncapi/asyncapi-3.0.0.json"
        ))
        .expect("vendored"),
    )
    .expect("JSON");
    let validator = jsonschema::options()
        .with_draft(jsonschema::Draft::Draft7)
        .build(&official)
        .expect("compiles");
    let errors: Vec<String> = validator.iter_errors(&doc).map(|e| e.to_string()).collect();
    assert_eq!(errors, Vec::<String>::new(), "{doc}");
    let mut channels: Vec<&str> = doc["channels"]
        .as_object()
        .map(|c| c.values().filter_map(|v| v["address"].as_str()).collect())
        .unwrap_or_default();
    channels.sort();
    assert_eq!(
        channels,
        [
            "inventory.insufficient",
            "inventory.reserved",
            "order.placed"
        ]
    );
    let ops = doc["operations"].as_object().expect("operations");
    let mut seen: Vec<String> = ops.keys().cloned().collect();
    seen.sort();
    assert_eq!(
        seen,
        [
            "analytics.receive.order.placed",
            "email.receive.inventory.insufficient",
            "email.receive.order.placed",
            "inventory.receive.order.placed",
            "inventory.send.inventory.insufficient",
            "inventory.send.inventory.reserved",
        ]
    );
    // inventory's declared writer schema is the message of its shortages.
    let messages = doc["channels"]["inventory.insufficient"]["messages"]
        .as_object()
        .expect("messages");
    assert!(
        messages.keys().any(|m| m.contains("v1.inventory")),
        "{messages:?}"
    );
}
