//! The research scenario's writers and readers, and the cases registries
//! misjudge.

use super::*;
use serde_json::json;

/// inventory's closed writer of `inventory.insufficient`.
fn insufficient(customer: &str, extra: Option<(&str, Value)>) -> Value {
    let mut props = json!({
        "order_id": {"type": "string"},
        customer: {"type": "string"},
        "sku": {"type": "string"},
        "wanted": {"type": "integer", "minimum": 1},
        "available": {"type": "integer", "minimum": 0}
    });
    if let Some((name, schema)) = extra {
        props[name] = schema;
    }
    json!({
        "type": "object", "additionalProperties": false,
        "required": ["order_id", customer, "sku", "wanted", "available"],
        "properties": props
    })
}

/// email's open reader: only what it uses.
fn email_reader() -> Value {
    json!({
        "type": "object",
        "required": ["order_id", "customer", "sku"],
        "properties": {
            "order_id": {"type": "string"},
            "customer": {"type": "string"},
            "sku": {"type": "string"}
        }
    })
}

#[test]
fn a_renamed_field_the_reader_requires_is_named() {
    let e = fits(&insufficient("customer_id", None), &email_reader()).expect_err("renamed");
    assert_eq!(
        (e.pointer.as_str(), e.keyword.as_str()),
        ("/customer", "required")
    );
    assert!(e.why.contains("does not publish"), "{e}");
}

#[test]
fn an_optional_field_added_to_a_closed_writer_fits_an_open_reader() {
    let w = insufficient("customer", Some(("warehouse", json!({"type": "string"}))));
    assert_eq!(fits(&w, &email_reader()), Ok(()));
    assert_eq!(
        fits(&insufficient("customer", None), &email_reader()),
        Ok(())
    );
}

#[test]
fn a_closed_reader_refuses_a_field_it_does_not_list() {
    let mut reader = email_reader();
    reader["additionalProperties"] = json!(false);
    let e = fits(&insufficient("customer", None), &reader).expect_err("extra fields");
    assert_eq!(e.keyword, "additionalProperties", "{e}");
    assert!(
        ["/available", "/wanted"].contains(&e.pointer.as_str()),
        "{e}"
    );
}

#[test]
fn types_and_bounds_must_be_as_tight_as_the_readers() {
    let reader = json!({"properties": {"qty": {"type": "integer", "minimum": 1}}});
    for (writer, keyword) in [
        (
            json!({"properties": {"qty": {"type": "number", "minimum": 1}}}),
            "type",
        ),
        (
            json!({"properties": {"qty": {"type": "integer"}}}),
            "minimum",
        ),
        (
            json!({"properties": {"qty": {"type": "integer", "minimum": 0}}}),
            "minimum",
        ),
        // An open writer that does not list it may send anything there.
        (json!({"properties": {}}), "type"),
    ] {
        let e = fits(&writer, &reader).expect_err(keyword);
        assert_eq!(
            (e.pointer.as_str(), e.keyword.as_str()),
            ("/qty", keyword),
            "{e}"
        );
    }
    let tighter = json!({"additionalProperties": false,
        "properties": {"qty": {"type": "integer", "minimum": 2, "maximum": 9}}});
    assert_eq!(fits(&tighter, &reader), Ok(()));
    // integer is a number
    let number = json!({"properties": {"qty": {"type": "number"}}});
    assert_eq!(fits(&tighter, &number), Ok(()));
}

#[test]
fn items_enums_and_unknown_keywords() {
    let reader = json!({"properties": {"items": {"type": "array", "items": {
        "type": "object", "required": ["sku"], "properties": {"sku": {"type": "string"}}}}}});
    let writer = json!({"additionalProperties": false, "properties": {"items": {"type": "array",
        "items": {"type": "object", "additionalProperties": false,
                  "required": ["code"], "properties": {"code": {"type": "string"}}}}}});
    let e = fits(&writer, &reader).expect_err("sku renamed in items");
    assert_eq!(
        (e.pointer.as_str(), e.keyword.as_str()),
        ("/items/0/sku", "required")
    );

    let reader = json!({"properties": {"currency": {"enum": ["EUR", "USD"]}}});
    let good = json!({"additionalProperties": false, "properties": {"currency": {"const": "EUR"}}});
    let bad = json!({"additionalProperties": false, "properties": {"currency": {"enum": ["EUR", "GBP"]}}});
    assert_eq!(fits(&good, &reader), Ok(()));
    let e = fits(&bad, &reader).expect_err("GBP");
    assert!(e.why.contains("GBP"), "{e}");

    // A keyword it cannot compare fits only where both say the same.
    let reader = json!({"properties": {"sku": {"type": "string", "pattern": "^[A-Z]+$"}}});
    let same = json!({"additionalProperties": false, "properties": {"sku": {"type": "string", "pattern": "^[A-Z]+$"}}});
    let other = json!({"additionalProperties": false, "properties": {"sku": {"type": "string", "pattern": "^[A-Z]{3}$"}}});
    assert_eq!(fits(&same, &reader), Ok(()));
    assert_eq!(
        fits(&other, &reader).expect_err("pattern").keyword,
        "pattern"
    );
    // Annotations constrain nothing.
    let titled = json!({"title": "anything", "description": "goes"});
    assert_eq!(fits(&json!(true), &titled), Ok(()));
    assert_eq!(fits(&json!({"type": "string"}), &json!(true)), Ok(()));
}
