use super::*;

/// The research scenario's `order.placed/1`: closed (shared with the e2e
/// tests and the benchmark).
pub(crate) const ORDER: &str = include_str!("../../../tests/fixtures/schemas/order.placed.json");

fn order(extra: &str) -> Vec<u8> {
    format!(r#"{{"order_id":"o-1","customer":"c","total_cents":100,"items":[{{"sku":"a","qty":1}}]{extra}}}"#).into_bytes()
}

fn schemas() -> Schemas {
    let s = Schemas::default();
    s.put("order.placed", ORDER.as_bytes(), None, None)
        .expect("schema");
    s
}

#[test]
fn a_fitting_event_passes_and_each_break_names_the_place_and_the_rule() {
    let s = schemas();
    assert_eq!(s.check("order.placed", &order(""), "ingress"), Ok(()));
    assert_eq!(
        s.check("other.topic", b"42", "ingress"),
        Ok(()),
        "no schema"
    );
    let no_items = br#"{"order_id":"o-1","customer":"c","total_cents":1}"#;
    let v = s
        .check("order.placed", no_items, "ingress")
        .expect_err("no items");
    assert_eq!((v.pointer.as_str(), v.keyword.as_str()), ("", "required"));
    assert!(v.message.contains("items"), "{v}");
    let qty0 =
        br#"{"order_id":"o-1","customer":"c","total_cents":1,"items":[{"sku":"a","qty":0}]}"#;
    let v = s.check("order.placed", qty0, "ingress").expect_err("qty 0");
    assert_eq!(
        (v.pointer.as_str(), v.keyword.as_str()),
        ("/items/0/qty", "minimum")
    );
    let v = s
        .check("order.placed", &order(r#","coupon":"X""#), "ingress")
        .expect_err("a coupon");
    assert_eq!(v.keyword, "additionalProperties");
    assert!(v.to_string().contains("coupon"), "{v}");
    let v = s
        .check("order.placed", b"not json", "ingress")
        .expect_err("not JSON");
    assert!(v.message.contains("not JSON"), "{v}");
}

#[test]
fn warn_accepts_and_counts_off_does_not_look() {
    let checks: Family<CheckLabels, Counter> = Family::default();
    let s = Schemas::open(None, checks.clone()).expect("open");
    s.put("order.placed", ORDER.as_bytes(), None, Some(Mode::Warn))
        .expect("schema");
    for _ in 0..3 {
        assert_eq!(s.check("order.placed", b"{}", "ingress"), Ok(()));
    }
    let count = |outcome: &str| {
        checks
            .get_or_create(&CheckLabels {
                topic: "order.placed".into(),
                outcome: outcome.into(),
            })
            .get()
    };
    assert_eq!(count("warned"), 3);
    s.put("order.placed", ORDER.as_bytes(), None, Some(Mode::Off))
        .expect("off");
    assert_eq!(s.check("order.placed", b"{}", "ingress"), Ok(()));
    assert_eq!(count("warned"), 3, "off: not looked at");
}

#[test]
fn kept_in_the_directory_with_the_highest_major_and_its_mode() {
    let dir = plugbus_e2e::TestDir::new("schemas");
    {
        let s = Schemas::open(Some(&dir.0), Family::default()).expect("open");
        s.put("order.placed", ORDER.as_bytes(), None, Some(Mode::Warn))
            .expect("v1");
        s.put("order.placed", br#"{"type":"object"}"#, Some(2), None)
            .expect("v2");
        let back = s.put("order.placed", ORDER.as_bytes(), Some(1), None);
        assert!(
            matches!(back, Err(SchemaError::OlderMajor { current: 2, .. })),
            "{back:?}"
        );
    }
    let s = Schemas::open(Some(&dir.0), Family::default()).expect("reopen");
    let c = s.get("order.placed").expect("kept");
    assert_eq!((c.major, c.mode), (2, Mode::Warn));
    assert_eq!(c.uri(), "/v1/schemas/order.placed/2");
}

#[test]
fn a_schema_that_is_not_one_or_reaches_outside_is_refused_with_the_reason() {
    let s = Schemas::default();
    for (bad, words) in [
        (&b"{"[..], "not JSON"),
        (&b"[1]"[..], "is an object"),
        (&br#"{"type": 12}"#[..], "not a usable JSON Schema"),
        (
            &br#"{"$ref": "https://example.com/order.json"}"#[..],
            "not a usable JSON Schema",
        ),
    ] {
        let e = s.put("order.placed", bad, None, None).expect_err(words);
        assert!(e.to_string().contains(words), "{e}");
    }
    assert!(s.get("order.placed").is_none(), "nothing kept");
    assert!(matches!(
        s.put("Not A Topic!", b"{}", None, None),
        Err(SchemaError::Topic(..))
    ));
}
