//! Upcasting: an event of an older major of its topic, read for a
//! consumer that declares a newer one, is brought up one major at a time
//! by the topic's upcasters as it is delivered; the log keeps its bytes.
//! An upcaster from major M to M+1 is a list of declarative rules
//! (`DIR/TOPIC/upcast-M.json`, `PUT /v1/schemas/{topic}/upcasters/{M}`):
//!
//! ```json
//! {"rules": [
//!   {"move": {"from": "/total_cents", "to": "/total/amount_cents"}},
//!   {"default": {"at": "/total/currency", "value": "EUR"}},
//!   {"drop": {"at": "/coupon"}}
//! ]}
//! ```
//!
//! A rule applies where its path is (a `move` of nothing moves nothing, a
//! `default` sets only what is missing), so an upcaster never fails. An
//! event's major is the one its `dataschema` names
//! (`/v1/schemas/TOPIC/MAJOR`), else 1 (published before any schema). The
//! upcast event keeps its id and sequence, names the new major in
//! `dataschema` and the old one in the extension `upcastfrom`.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::event::Event;

/// One rule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum Rule {
    /// Move the value at `from` to `to` (a rename within one object).
    Move {
        /// JSON pointer of the value.
        from: String,
        /// JSON pointer of its new place (objects on the way are made).
        to: String,
    },
    /// Set `at` to `value` where nothing is.
    Default {
        /// JSON pointer.
        at: String,
        /// The value.
        value: Value,
    },
    /// Remove what is at `at`.
    Drop {
        /// JSON pointer.
        at: String,
    },
}

/// The rules that bring a topic's data from major `from` to `from + 1`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Upcaster {
    /// In order.
    pub rules: Vec<Rule>,
}

/// Why an upcaster is refused.
#[derive(Debug, thiserror::Error)]
#[error("the upcaster is not one ({0}); send {{\"rules\": [{{\"move\": {{\"from\": \"/a\", \"to\": \"/b\"}}}}, {{\"default\": {{\"at\": \"/c\", \"value\": 1}}}}, {{\"drop\": {{\"at\": \"/d\"}}}}]}} with JSON pointers")]
pub struct UpcasterError(pub String);

impl Upcaster {
    /// Parse and check `bytes`.
    pub fn parse(bytes: &[u8]) -> Result<Upcaster, UpcasterError> {
        let u: Upcaster =
            serde_json::from_slice(bytes).map_err(|e| UpcasterError(e.to_string()))?;
        for rule in &u.rules {
            let pointers: Vec<&str> = match rule {
                Rule::Move { from, to } => vec![from, to],
                Rule::Default { at, .. } | Rule::Drop { at } => vec![at],
            };
            if let Some(p) = pointers.iter().find(|p| !p.starts_with('/')) {
                return Err(UpcasterError(format!(
                    "`{p}` is not a JSON pointer to a field (it starts with /)"
                )));
            }
        }
        Ok(u)
    }

    /// Apply the rules to `data`.
    pub fn apply(&self, data: &mut Value) {
        for rule in &self.rules {
            match rule {
                Rule::Move { from, to } => {
                    if let Some(v) = take(data, from) {
                        set(data, to, v);
                    }
                }
                Rule::Default { at, value } => {
                    if data.pointer(at).is_none() {
                        set(data, at, value.clone());
                    }
                }
                Rule::Drop { at } => {
                    take(data, at);
                }
            }
        }
    }
}

/// The segments of a JSON pointer, unescaped.
fn segments(pointer: &str) -> Vec<String> {
    pointer
        .split('/')
        .skip(1)
        .map(|s| s.replace("~1", "/").replace("~0", "~"))
        .collect()
}

/// Remove and return what is at `pointer` (in an object).
fn take(data: &mut Value, pointer: &str) -> Option<Value> {
    let mut segs = segments(pointer);
    let last = segs.pop()?;
    let mut at = data;
    for s in &segs {
        at = at.as_object_mut()?.get_mut(s)?;
    }
    at.as_object_mut()?.remove(&last)
}

/// Put `value` at `pointer`, making objects on the way; a non-object on
/// the way is left alone (nothing is put).
fn set(data: &mut Value, pointer: &str, value: Value) {
    let mut segs = segments(pointer);
    let Some(last) = segs.pop() else {
        return;
    };
    let mut at = data;
    for s in &segs {
        let Some(object) = at.as_object_mut() else {
            return;
        };
        at = object
            .entry(s.clone())
            .or_insert_with(|| Value::Object(Map::new()));
    }
    if let Some(object) = at.as_object_mut() {
        object.insert(last, value);
    }
}

/// `chunk` as a plugin declaring `declared` reads it: each event of an
/// older major of a topic it declares a newer major of, upcast by the
/// topic's upcasters in `schemas`; the rest as they are.
pub fn as_read(
    chunk: crate::event::Chunk,
    declared: &super::Declared,
    schemas: &super::Schemas,
) -> crate::event::Chunk {
    let wants = |e: &Event| {
        declared
            .consumes
            .get(&e.topic)
            .map(|c| c.major)
            .filter(|m| *m > major_of(e))
    };
    if declared.consumes.values().all(|c| c.major <= 1) || !chunk.iter().any(|e| wants(e).is_some())
    {
        return chunk;
    }
    chunk
        .iter()
        .map(|e| match wants(e) {
            Some(to) => upcast(e, to, |m| schemas.upcaster(&e.topic, m)),
            None => e.clone(),
        })
        .collect::<Vec<_>>()
        .into()
}

/// The major of its topic `event` was published under.
pub fn major_of(event: &Event) -> u32 {
    event
        .extension("dataschema")
        .and_then(|v| v.rsplit('/').next()?.parse().ok())
        .unwrap_or(1)
}

/// `event` brought to major `to` by `upcasters` (`upcasters(m)` is the
/// one from `m` to `m + 1`); itself when it is there already, when an
/// upcaster on the way is missing, or when its data is not JSON.
pub fn upcast(
    event: &Arc<Event>,
    to: u32,
    upcasters: impl Fn(u32) -> Option<Arc<Upcaster>>,
) -> Arc<Event> {
    let from = major_of(event);
    if from >= to {
        return event.clone();
    }
    let Ok(mut data) = serde_json::from_slice::<Value>(&event.data) else {
        return event.clone();
    };
    for m in from..to {
        let Some(u) = upcasters(m) else {
            tracing::warn!(topic = %event.topic, id = %event.id, "no upcaster from major {m} to {}: delivered as published", m + 1);
            return event.clone();
        };
        u.apply(&mut data);
    }
    let mut up = Event::clone(event);
    up.data = serde_json::to_vec(&data).unwrap_or_else(|_| event.data.clone());
    up.extensions
        .retain(|(k, _)| k != "dataschema" && k != "upcastfrom");
    up.extensions.push((
        "dataschema".into(),
        format!("/v1/schemas/{}/{to}", event.topic),
    ));
    up.extensions.push(("upcastfrom".into(), from.to_string()));
    Arc::new(up)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rules() -> Upcaster {
        Upcaster::parse(
            br#"{"rules": [
                {"move": {"from": "/total_cents", "to": "/total/amount_cents"}},
                {"default": {"at": "/total/currency", "value": "EUR"}},
                {"drop": {"at": "/coupon"}}
            ]}"#,
        )
        .expect("rules")
    }

    #[test]
    fn the_research_order_is_brought_to_major_2() {
        let mut data = json!({"order_id": "o-1", "total_cents": 250, "coupon": "X"});
        rules().apply(&mut data);
        assert_eq!(
            data,
            json!({"order_id": "o-1", "total": {"amount_cents": 250, "currency": "EUR"}})
        );
        // What is there already stays; what is missing is not made up.
        let mut data = json!({"order_id": "o-2", "total": {"currency": "USD"}});
        rules().apply(&mut data);
        assert_eq!(
            data,
            json!({"order_id": "o-2", "total": {"currency": "USD"}})
        );
    }

    #[test]
    fn an_event_is_upcast_once_keeping_its_id_and_naming_both_majors() {
        let mut event =
            Event::new("order.placed", None, br#"{"total_cents": 5}"#.to_vec()).expect("event");
        event.id = "e-1".into();
        event.sequence = 7;
        let event = Arc::new(event);
        let u = Arc::new(rules());
        let up = upcast(&event, 2, |m| (m == 1).then(|| u.clone()));
        assert_eq!((up.id.as_str(), up.sequence), ("e-1", 7));
        let data: Value = serde_json::from_slice(&up.data).expect("json");
        assert_eq!(data["total"]["amount_cents"], 5);
        assert_eq!(major_of(&up), 2);
        assert!(up.extensions.contains(&("upcastfrom".into(), "1".into())));
        // At major 2 already: itself.
        assert!(Arc::ptr_eq(&upcast(&up, 2, |_| None), &up));
        // No way from 1 to 3: delivered as published.
        assert!(Arc::ptr_eq(
            &upcast(&event, 3, |m| (m == 1).then(|| u.clone())),
            &event
        ));
    }

    #[test]
    fn a_rule_that_is_not_one_is_refused_with_the_reason() {
        for bad in [
            &br#"{"rules": [{"rename": {"from": "/a", "to": "/b"}}]}"#[..],
            br#"{"rules": [{"drop": {"at": "a"}}]}"#,
            br#"[1]"#,
        ] {
            assert!(Upcaster::parse(bad).is_err());
        }
    }
}
