//! The event: CloudEvents 1.0 attributes plus what the host adds, and the
//! parsing of events from the wire formats the ingress accepts.
//!
//! This module owns validation: an [`Event`] that exists is valid (its topic
//! is a topic, its id is non-empty, its data is within bounds). It knows
//! nothing of HTTP, the bus or plugins: ingress hands it bytes and headers,
//! and gets back events or an [`EventError`] that names the attribute and
//! the fix.

use std::time::SystemTime;

use base64::Engine as _;
use serde_json::{Map, Value};

use crate::topic::{validate_topic, TopicError};

/// The CloudEvents spec version accepted.
pub const SPEC_VERSION: &str = "1.0";
/// The `source` the host gives events published without one.
pub const DEFAULT_SOURCE: &str = "plugbus";
/// The longest accepted id, source or subject, in bytes.
pub const ATTRIBUTE_BYTES_MAX: usize = 1024;

/// Events travelling together (through a queue, into a plugin call), each
/// shared as `Arc<Event>`.
pub type Chunk = std::sync::Arc<[std::sync::Arc<Event>]>;

/// One event. Shared between subscribers as `Arc<Event>`; immutable once
/// published.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// Unique id: given by the publisher, or a UUIDv7 (time-ordered).
    pub id: String,
    /// CloudEvents `source`.
    pub source: String,
    /// CloudEvents `type`: the topic.
    pub topic: String,
    /// CloudEvents `subject`.
    pub subject: Option<String>,
    /// RFC 3339 time.
    pub time: String,
    /// Media type of `data`.
    pub datacontenttype: Option<String>,
    /// The payload.
    pub data: Vec<u8>,
    /// Position in publish order, set by the bus (0 until published).
    pub sequence: u64,
    /// The id of the first event of the chain this one belongs to.
    pub correlationid: Option<String>,
    /// The id of the event whose handler published this one.
    pub causationid: Option<String>,
    /// How many handlers this chain has passed through (0 for an event from
    /// outside).
    pub hops: u32,
    /// Other extension attributes, in the order given.
    pub extensions: Vec<(String, String)>,
}

/// Why an event was refused. Each names the attribute and what to do.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EventError {
    /// A required CloudEvents attribute is absent.
    #[error("required CloudEvents attribute `{0}` is missing; add it (required: specversion, id, source, type)")]
    Missing(&'static str),
    /// An attribute has the wrong JSON type or an empty value.
    #[error("attribute `{name}` {problem}")]
    BadAttribute {
        /// Attribute name.
        name: String,
        /// What is wrong, e.g. "must be a string".
        problem: String,
    },
    /// A specversion other than 1.0.
    #[error(
        "specversion `{0}` is not supported; send CloudEvents 1.0 (`\"specversion\": \"1.0\"`)"
    )]
    SpecVersion(String),
    /// The topic (`type`) is not valid.
    #[error("attribute `type`: {0}")]
    Topic(#[from] TopicError),
    /// The body or an event is not the JSON expected.
    #[error("{0}")]
    Json(String),
}

fn bad(name: &str, problem: &str) -> EventError {
    EventError::BadAttribute {
        name: name.to_string(),
        problem: problem.to_string(),
    }
}

/// A new time-ordered id.
pub fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// The current time in RFC 3339.
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_micros(SystemTime::now()).to_string()
}

fn check_text(name: &str, value: &str) -> Result<(), EventError> {
    if value.is_empty() {
        return Err(bad(name, "must not be empty"));
    }
    if value.len() > ATTRIBUTE_BYTES_MAX {
        return Err(bad(
            name,
            &format!("is longer than {ATTRIBUTE_BYTES_MAX} bytes; shorten it"),
        ));
    }
    Ok(())
}

/// Extension names are lower-case letters and digits (CloudEvents 1.0).
fn check_extension_name(name: &str) -> Result<(), EventError> {
    if name.is_empty()
        || name.len() > 20
        || !name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
    {
        return Err(bad(
            name,
            "is not a valid extension name; CloudEvents extension names are 1-20 lower-case letters or digits",
        ));
    }
    Ok(())
}

fn is_json_type(content_type: Option<&str>) -> bool {
    match content_type {
        None => true,
        Some(ct) => {
            let base = ct.split(';').next().unwrap_or("").trim();
            base == "application/json" || base.ends_with("+json") || base == "text/json"
        }
    }
}

impl Event {
    /// An event for `topic` with `data`, every other attribute filled by the
    /// host (id, time, source).
    pub fn new(
        topic: &str,
        datacontenttype: Option<String>,
        data: Vec<u8>,
    ) -> Result<Event, EventError> {
        validate_topic(topic)?;
        Ok(Event {
            id: new_id(),
            source: DEFAULT_SOURCE.to_string(),
            topic: topic.to_string(),
            subject: None,
            time: now_rfc3339(),
            datacontenttype,
            data,
            sequence: 0,
            correlationid: None,
            causationid: None,
            hops: 0,
            extensions: Vec::new(),
        })
    }

    /// The correlation id a follow-up of this event carries: its own
    /// correlation id, or its id when it starts the chain.
    pub fn chain_id(&self) -> &str {
        self.correlationid.as_deref().unwrap_or(&self.id)
    }

    /// Parse one CloudEvent in structured JSON mode.
    pub fn from_structured(value: Value) -> Result<Event, EventError> {
        let Value::Object(mut obj) = value else {
            return Err(EventError::Json(
                "a CloudEvent in structured mode must be a JSON object".into(),
            ));
        };
        match obj.remove("specversion") {
            None => return Err(EventError::Missing("specversion")),
            Some(Value::String(v)) if v == SPEC_VERSION => {}
            Some(Value::String(v)) => return Err(EventError::SpecVersion(v)),
            Some(_) => return Err(bad("specversion", "must be the string \"1.0\"")),
        }
        let id = take_required(&mut obj, "id")?;
        let source = take_required(&mut obj, "source")?;
        let topic = take_required(&mut obj, "type")?;
        validate_topic(&topic)?;
        let subject = take_optional(&mut obj, "subject")?;
        let time = take_optional(&mut obj, "time")?;
        if let Some(t) = &time {
            humantime::parse_rfc3339_weak(t).map_err(|_| {
                bad(
                    "time",
                    "must be an RFC 3339 timestamp, e.g. 2026-11-23T10:00:00Z",
                )
            })?;
        }
        let datacontenttype = take_optional(&mut obj, "datacontenttype")?;
        let data = match (obj.remove("data"), obj.remove("data_base64")) {
            (Some(_), Some(_)) => {
                return Err(bad(
                    "data",
                    "and `data_base64` are both present; send only one",
                ))
            }
            (None, Some(Value::String(b64))) => base64::engine::general_purpose::STANDARD
                .decode(b64.as_bytes())
                .map_err(|e| bad("data_base64", &format!("is not valid base64: {e}")))?,
            (None, Some(_)) => return Err(bad("data_base64", "must be a base64 string")),
            (Some(Value::String(s)), None) if !is_json_type(datacontenttype.as_deref()) => {
                s.into_bytes()
            }
            (Some(v), None) => serde_json::to_vec(&v)
                .map_err(|e| EventError::Json(format!("attribute `data`: {e}")))?,
            (None, None) => Vec::new(),
        };
        let correlationid = take_optional(&mut obj, "correlationid")?;
        let causationid = take_optional(&mut obj, "causationid")?;
        let mut extensions = Vec::with_capacity(obj.len());
        for (name, value) in obj {
            check_extension_name(&name)?;
            let text = match value {
                Value::String(s) => s,
                Value::Number(n) => n.to_string(),
                Value::Bool(b) => b.to_string(),
                _ => {
                    return Err(bad(
                        &name,
                        "must be a string, number or boolean (CloudEvents extension)",
                    ))
                }
            };
            extensions.push((name, text));
        }
        Ok(Event {
            id,
            source,
            topic,
            subject,
            time: time.unwrap_or_else(now_rfc3339),
            datacontenttype,
            data,
            sequence: 0,
            correlationid,
            causationid,
            hops: 0,
            extensions,
        })
    }

    /// Parse a structured-mode body: one CloudEvent object.
    pub fn parse_structured(body: &[u8]) -> Result<Event, EventError> {
        Event::from_structured(parse_json(body)?)
    }

    /// Parse a batch-mode body: a JSON array of CloudEvents. All or nothing:
    /// the error names the index of the first bad event.
    pub fn parse_batch(body: &[u8]) -> Result<Vec<Event>, EventError> {
        let Value::Array(items) = parse_json(body)? else {
            return Err(EventError::Json(
                "a batch (application/cloudevents-batch+json) must be a JSON array of CloudEvents"
                    .into(),
            ));
        };
        items
            .into_iter()
            .enumerate()
            .map(|(i, v)| {
                Event::from_structured(v).map_err(|e| EventError::Json(format!("event [{i}]: {e}")))
            })
            .collect()
    }

    /// Build an event in binary mode from its `ce-*` attributes (names
    /// without the prefix, lower-case), the content type and the body.
    pub fn from_binary(
        attributes: Vec<(String, String)>,
        content_type: Option<String>,
        body: Vec<u8>,
    ) -> Result<Event, EventError> {
        let mut obj = Map::new();
        for (name, value) in attributes {
            obj.insert(name, Value::String(value));
        }
        if let Some(ct) = &content_type {
            obj.insert("datacontenttype".into(), Value::String(ct.clone()));
        }
        let mut event = Event::from_structured(Value::Object(obj))?;
        event.data = body;
        Ok(event)
    }

    /// Parse a plain JSON body published to `topic`: the body becomes the
    /// data, the host fills every attribute.
    pub fn from_plain_json(topic: &str, body: &[u8]) -> Result<Event, EventError> {
        parse_json(body)?;
        Event::new(topic, Some("application/json".to_string()), body.to_vec())
    }

    /// The event as a CloudEvents structured-mode JSON object.
    pub fn to_json(&self) -> Value {
        let mut obj = Map::new();
        obj.insert("specversion".into(), SPEC_VERSION.into());
        obj.insert("id".into(), self.id.clone().into());
        obj.insert("source".into(), self.source.clone().into());
        obj.insert("type".into(), self.topic.clone().into());
        if let Some(s) = &self.subject {
            obj.insert("subject".into(), s.clone().into());
        }
        obj.insert("time".into(), self.time.clone().into());
        if let Some(ct) = &self.datacontenttype {
            obj.insert("datacontenttype".into(), ct.clone().into());
        }
        match serde_json::from_slice::<Value>(&self.data) {
            Ok(v) if is_json_type(self.datacontenttype.as_deref()) => {
                obj.insert("data".into(), v);
            }
            _ if self.data.is_empty() => {}
            _ => {
                obj.insert(
                    "data_base64".into(),
                    base64::engine::general_purpose::STANDARD
                        .encode(&self.data)
                        .into(),
                );
            }
        }
        obj.insert("sequence".into(), self.sequence.into());
        if let Some(c) = &self.correlationid {
            obj.insert("correlationid".into(), c.clone().into());
        }
        if let Some(c) = &self.causationid {
            obj.insert("causationid".into(), c.clone().into());
        }
        for (k, v) in &self.extensions {
            obj.insert(k.clone(), v.clone().into());
        }
        Value::Object(obj)
    }
}

fn parse_json(body: &[u8]) -> Result<Value, EventError> {
    serde_json::from_slice(body).map_err(|e| {
        EventError::Json(format!(
            "the body is not valid JSON: {e} (line {}, column {})",
            e.line(),
            e.column()
        ))
    })
}

fn take_required(obj: &mut Map<String, Value>, name: &'static str) -> Result<String, EventError> {
    match take_optional(obj, name)? {
        Some(v) => Ok(v),
        None => Err(EventError::Missing(name)),
    }
}

fn take_optional(obj: &mut Map<String, Value>, name: &str) -> Result<Option<String>, EventError> {
    match obj.remove(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => {
            check_text(name, &s)?;
            Ok(Some(s))
        }
        Some(_) => Err(bad(name, "must be a string")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ce() -> Value {
        json!({"specversion":"1.0","id":"e-1","source":"/shop","type":"order.placed",
               "data":{"order_id":"o-1"}, "tenant":"acme"})
    }

    #[test]
    fn structured_event_parses_with_extensions() {
        let e = Event::from_structured(ce()).expect("valid");
        assert_eq!(e.id, "e-1");
        assert_eq!(e.topic, "order.placed");
        assert_eq!(e.data, br#"{"order_id":"o-1"}"#);
        assert_eq!(e.extensions, vec![("tenant".into(), "acme".into())]);
    }

    #[test]
    fn each_missing_required_attribute_is_named() {
        for attr in ["specversion", "id", "source", "type"] {
            let mut v = ce();
            v.as_object_mut().expect("object").remove(attr);
            let err = Event::from_structured(v).expect_err("must fail");
            assert!(err.to_string().contains(&format!("`{attr}`")), "{err}");
        }
    }

    #[test]
    fn wrong_specversion_and_types_are_refused() {
        let mut v = ce();
        v["specversion"] = json!("0.3");
        assert_eq!(
            Event::from_structured(v),
            Err(EventError::SpecVersion("0.3".into()))
        );
        let mut v = ce();
        v["id"] = json!(7);
        assert!(matches!(
            Event::from_structured(v),
            Err(EventError::BadAttribute { .. })
        ));
        let mut v = ce();
        v["type"] = json!("order.*");
        assert!(matches!(
            Event::from_structured(v),
            Err(EventError::Topic(_))
        ));
    }

    #[test]
    fn batch_error_names_the_index() {
        let body = serde_json::to_vec(&json!([ce(), {"specversion":"1.0"}])).expect("json");
        let err = Event::parse_batch(&body).expect_err("second is bad");
        assert!(err.to_string().starts_with("event [1]:"), "{err}");
    }

    #[test]
    fn base64_and_text_data() {
        let v =
            json!({"specversion":"1.0","id":"1","source":"s","type":"a.b","data_base64":"aGk="});
        assert_eq!(Event::from_structured(v).expect("valid").data, b"hi");
        let v = json!({"specversion":"1.0","id":"1","source":"s","type":"a.b",
                       "datacontenttype":"text/plain","data":"hi"});
        assert_eq!(Event::from_structured(v).expect("valid").data, b"hi");
    }

    #[test]
    fn json_round_trip_keeps_attributes() {
        let mut e = Event::from_structured(ce()).expect("valid");
        e.correlationid = Some("c".into());
        let back = Event::from_structured(e.to_json()).expect("round trip");
        assert_eq!(back.id, e.id);
        assert_eq!(back.data, e.data);
        assert_eq!(back.correlationid, e.correlationid);
    }

    #[test]
    fn malformed_json_names_the_position() {
        let err = Event::parse_structured(b"{\"id\": ").expect_err("bad");
        assert!(err.to_string().contains("line 1"), "{err}");
    }

    #[test]
    fn new_ids_are_time_ordered() {
        let a = new_id();
        let b = new_id();
        assert!(a < b, "{a} {b}");
    }
}
