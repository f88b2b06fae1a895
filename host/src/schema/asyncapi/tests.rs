//! The generated document validates against the official AsyncAPI 3.0.0
//! JSON Schema (vendored with its sum in tests/fixtures/asyncapi).

use super::*;
use sha2::Digest;

const OFFICIAL: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../tests/fixtures/asyncapi/asyncapi-3.0.0.json"
));
const LOCK: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../tests/fixtures/asyncapi/vendor.lock"
));

/// The errors of `doc` against the official schema (none: valid).
pub(crate) fn official_errors(doc: &Value) -> Vec<String> {
    let schema: Value = serde_json::from_str(OFFICIAL).expect("the vendored schema is JSON");
    let validator = jsonschema::options()
        .with_draft(jsonschema::Draft::Draft7)
        .build(&schema)
        .expect("the vendored schema compiles");
    validator
        .iter_errors(doc)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect()
}

#[test]
fn the_vendored_schema_is_the_one_its_lock_names() {
    let sum: String = sha2::Sha256::digest(OFFICIAL.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let locked = LOCK
        .lines()
        .find_map(|l| l.strip_prefix("sha256 = "))
        .map(|s| s.trim_matches('"'))
        .expect("a sum in the lock");
    assert_eq!(sum, locked);
}

fn reference_flow() -> Vec<Channel> {
    let order = json!({"type": "object", "required": ["order_id"],
                       "properties": {"order_id": {"type": "string"}}});
    vec![
        Channel {
            topic: "order.placed".into(),
            schemas: vec![(1, order.clone(), "the topic".into())],
            receivers: vec!["email".into(), "inventory".into(), "analytics".into()],
            from_outside: true,
            ..Channel::default()
        },
        Channel {
            topic: "inventory.insufficient".into(),
            schemas: vec![(1, order, "inventory".into())],
            senders: vec!["inventory".into()],
            receivers: vec!["email".into()],
            ..Channel::default()
        },
        Channel {
            topic: "inventory.reserved".into(),
            inferred: Some(json!({"type": "object"})),
            senders: vec!["inventory".into()],
            ..Channel::default()
        },
    ]
}

#[test]
fn the_reference_flow_validates_with_its_channels_and_operations() {
    let doc = document("0.1.0", "127.0.0.1:8080", "http", &reference_flow());
    assert_eq!(official_errors(&doc), Vec::<String>::new());
    assert_eq!(doc["channels"].as_object().map(Map::len), Some(3));
    let ops = doc["operations"].as_object().expect("operations");
    let count = |action: &str| ops.values().filter(|o| o["action"] == action).count();
    assert_eq!((count("receive"), count("send")), (4, 2));
    assert_eq!(
        doc["channels"]["order.placed"]["address"], "order.placed",
        "{doc}"
    );
}

#[test]
fn a_broken_document_is_caught_by_the_official_schema() {
    let mut doc = document("0.1.0", "127.0.0.1:8080", "http", &reference_flow());
    doc["operations"]["email.receive.order.placed"]["action"] = json!("listen");
    assert!(!official_errors(&doc).is_empty(), "the check can fail");
}
