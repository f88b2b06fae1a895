//! The event: CloudEvents 1.0 attributes plus what the host adds, and the
//! parsing of events from the wire formats the ingress accepts.
//!
//! This module owns validation: an [`Event`] that exists is valid (its topic
//! is a topic, its id is non-empty, its data is within bounds). It knows
//! nothing of HTTP, the bus or plugins: ingress hands it bytes and headers,
//! and gets back events or an [`EventError`] that names the attribute and
//! the fix.

use std::time::SystemTime;

mod trace;
mod wire;

pub use trace::{TRACEPARENT, TRACESTATE};

use base64::Engine as _;
use serde::de::IgnoredAny;
use serde_json::{Map, Value};
use wire::{Text, Wire};

use plugbus_contract::topic::{validate_topic, TopicError};

/// The CloudEvents spec version accepted.
pub const SPEC_VERSION: &str = "1.0";
/// The `source` the host gives events published without one.
pub const DEFAULT_SOURCE: &str = "plugbus";
pub use plugbus_contract::ATTRIBUTE_BYTES_MAX;

/// Shown every accepted event once it is committed (the console's
/// observer, `crate::observe`). The layer that owns an event (the log's
/// committer, the in-memory bus) calls it and never waits for it; it
/// does not call back.
pub trait Watcher: Send + Sync {
    /// Whether it wants events now: the publish path's one check.
    fn active(&self) -> bool;
    /// Events just committed, in order, each with its sequence.
    fn accepted(&self, events: &[std::sync::Arc<Event>]);
}

/// `events` stamped with the time this host accepted them (for delivery
/// latency), where they have none yet.
pub fn stamped(mut events: Vec<Event>) -> Vec<Event> {
    let now = std::time::Instant::now();
    for e in &mut events {
        e.accepted_at.get_or_insert(now);
    }
    events
}

/// The `source` of the events a plugin publishes: this, then its name.
pub const PLUGIN_SOURCE: &str = "plugbus/plugin/";

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
    /// When this host accepted the event (for delivery latency); not
    /// stored, so `None` for events read back from the store.
    pub accepted_at: Option<std::time::Instant>,
    /// The sequence of the event whose handler published this one, when
    /// this host's plugin did; not stored in the event (the store's chain
    /// index keeps it).
    pub cause_sequence: Option<u64>,
    /// For a follow-up this host's plugin published: the time from its
    /// cause's `time` to its own (the cause's queueing and handling); not
    /// stored.
    pub after_cause: Option<std::time::Duration>,
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
        Event::with_id(new_id(), topic, datacontenttype, data)
    }

    /// [`Event::new`] with the id given (a follow-up's, derived from its
    /// cause: no random id is drawn for it).
    pub fn with_id(
        id: String,
        topic: &str,
        datacontenttype: Option<String>,
        data: Vec<u8>,
    ) -> Result<Event, EventError> {
        validate_topic(topic)?;
        Ok(Event {
            id,
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
            accepted_at: None,
            cause_sequence: None,
            after_cause: None,
        })
    }

    /// The correlation id a follow-up of this event carries: its own
    /// correlation id, or its id when it starts the chain.
    pub fn chain_id(&self) -> &str {
        self.correlationid.as_deref().unwrap_or(&self.id)
    }

    /// The plugin that published this event, if one did.
    pub fn published_by(&self) -> Option<&str> {
        self.source.strip_prefix(PLUGIN_SOURCE)
    }

    /// Build an event from the members of one CloudEvent, checking each;
    /// `now` is the time given to events that carry none.
    fn from_wire(w: Wire<'_>, now: &str) -> Result<Event, EventError> {
        match w.specversion {
            None | Some(Text::Null) => return Err(EventError::Missing("specversion")),
            Some(Text::Str(v)) if v == SPEC_VERSION => {}
            Some(Text::Str(v)) => return Err(EventError::SpecVersion(v.into_owned())),
            Some(Text::Wrong(_)) => return Err(bad("specversion", "must be the string \"1.0\"")),
        }
        let id = required("id", w.id)?;
        let source = required("source", w.source)?;
        let topic = required("type", w.type_)?;
        validate_topic(&topic)?;
        let subject = optional("subject", w.subject)?;
        let time = optional("time", w.time)?;
        if let Some(t) = &time {
            humantime::parse_rfc3339_weak(t).map_err(|_| {
                bad(
                    "time",
                    "must be an RFC 3339 timestamp, e.g. 2026-11-23T10:00:00Z",
                )
            })?;
        }
        let datacontenttype = optional("datacontenttype", w.datacontenttype)?;
        let data = match (w.data, optional("data_base64", w.data_base64)?) {
            (Some(_), Some(_)) => {
                return Err(bad(
                    "data",
                    "and `data_base64` are both present; send only one",
                ))
            }
            (None, Some(b64)) => base64::engine::general_purpose::STANDARD
                .decode(b64.as_bytes())
                .map_err(|e| bad("data_base64", &format!("is not valid base64: {e}")))?,
            // A JSON string as the data of a non-JSON type is that text.
            (Some(raw), None)
                if raw.get().starts_with('"') && !is_json_type(datacontenttype.as_deref()) =>
            {
                serde_json::from_str::<String>(raw.get())
                    .map_err(|e| EventError::Json(format!("attribute `data`: {e}")))?
                    .into_bytes()
            }
            (Some(raw), None) => raw.get().as_bytes().to_vec(),
            (None, None) => Vec::new(),
        };
        let correlationid = optional("correlationid", w.correlationid)?;
        let causationid = optional("causationid", w.causationid)?;
        let mut extensions = Vec::with_capacity(w.extensions.len());
        for (name, value) in w.extensions {
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
            extensions.push((name.into_owned(), text));
        }
        let event = Event {
            id,
            source,
            topic,
            subject,
            time: time.unwrap_or_else(|| now.to_string()),
            datacontenttype,
            data,
            sequence: 0,
            correlationid,
            causationid,
            hops: 0,
            extensions,
            accepted_at: None,
            cause_sequence: None,
            after_cause: None,
        };
        event.check_trace()?;
        Ok(event)
    }

    /// Parse a structured-mode body: one CloudEvent object.
    pub fn parse_structured(body: &[u8]) -> Result<Event, EventError> {
        let wire: Wire<'_> = serde_json::from_slice(body).map_err(|e| json_error(&e))?;
        Event::from_wire(wire, &now_rfc3339())
    }

    /// Parse a batch-mode body: a JSON array of CloudEvents. All or nothing:
    /// the error names the index of the first bad event.
    pub fn parse_batch(body: &[u8]) -> Result<Vec<Event>, EventError> {
        if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'[') {
            return Err(EventError::Json(
                "a batch (application/cloudevents-batch+json) must be a JSON array of CloudEvents"
                    .into(),
            ));
        }
        let now = now_rfc3339();
        let mut failed = None;
        let visitor = wire::Batch {
            build: |w| Event::from_wire(w, &now),
            failed: &mut failed,
        };
        let mut de = serde_json::Deserializer::from_slice(body);
        let parsed = serde::Deserializer::deserialize_seq(&mut de, visitor).and_then(|events| {
            de.end()?;
            Ok(events)
        });
        match (parsed, failed) {
            (Ok(events), _) => Ok(events),
            (Err(_), Some((i, reason))) => Err(EventError::Json(format!("event [{i}]: {reason}"))),
            (Err(e), None) => Err(json_error(&e)),
        }
    }

    /// Build an event in binary mode from its `ce-*` attributes (names
    /// without the prefix, lower-case), the content type and the body.
    pub fn from_binary(
        attributes: Vec<(String, String)>,
        content_type: Option<String>,
        body: Vec<u8>,
    ) -> Result<Event, EventError> {
        let mut w = Wire::default();
        for (name, value) in attributes {
            // The body is the data: a ce-data_base64 header is no attribute
            // (and its name is refused as an extension).
            let slot = match w.slot(&name) {
                Some(slot) if name != "data_base64" => slot,
                _ => {
                    w.extensions.push((name.into(), Value::String(value)));
                    continue;
                }
            };
            *slot = Some(Text::owned(value));
        }
        if let Some(ct) = content_type {
            w.datacontenttype = Some(Text::owned(ct));
        }
        let mut event = Event::from_wire(w, &now_rfc3339())?;
        event.data = body;
        Ok(event)
    }

    /// Parse a plain JSON body published to `topic`: the body becomes the
    /// data, the host fills every attribute.
    pub fn from_plain_json(topic: &str, body: &[u8]) -> Result<Event, EventError> {
        serde_json::from_slice::<IgnoredAny>(body).map_err(|e| json_error(&e))?;
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

fn json_error(e: &serde_json::Error) -> EventError {
    match e.classify() {
        serde_json::error::Category::Data => {
            EventError::Json("a CloudEvent in structured mode must be a JSON object".to_string())
        }
        _ => EventError::Json(format!(
            "the body is not valid JSON: {e} (line {}, column {})",
            e.line(),
            e.column()
        )),
    }
}

fn required(name: &'static str, value: Option<Text<'_>>) -> Result<String, EventError> {
    optional(name, value)?.ok_or(EventError::Missing(name))
}

fn optional(name: &str, value: Option<Text<'_>>) -> Result<Option<String>, EventError> {
    match value {
        None | Some(Text::Null) => Ok(None),
        Some(Text::Str(s)) => {
            check_text(name, &s)?;
            Ok(Some(s.into_owned()))
        }
        Some(Text::Wrong(kind)) => Err(bad(name, &format!("must be a string, not {kind}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: Value) -> Result<Event, EventError> {
        Event::parse_structured(&serde_json::to_vec(&v).expect("json"))
    }

    fn ce() -> Value {
        json!({"specversion":"1.0","id":"e-1","source":"/shop","type":"order.placed",
               "data":{"order_id":"o-1"}, "tenant":"acme"})
    }

    #[test]
    fn structured_event_parses_with_extensions() {
        let e = parse(ce()).expect("valid");
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
            let err = parse(v).expect_err("must fail");
            assert!(err.to_string().contains(&format!("`{attr}`")), "{err}");
        }
    }

    #[test]
    fn wrong_specversion_and_types_are_refused() {
        let mut v = ce();
        v["specversion"] = json!("0.3");
        assert_eq!(parse(v), Err(EventError::SpecVersion("0.3".into())));
        let mut v = ce();
        v["id"] = json!(7);
        assert!(matches!(parse(v), Err(EventError::BadAttribute { .. })));
        let mut v = ce();
        v["type"] = json!("order.*");
        assert!(matches!(parse(v), Err(EventError::Topic(_))));
    }

    #[test]
    fn batch_error_names_the_index() {
        let body = serde_json::to_vec(&json!([ce(), {"specversion":"1.0"}])).expect("json");
        let err = Event::parse_batch(&body).expect_err("second is bad");
        assert!(err.to_string().starts_with("event [1]:"), "{err}");
    }

    #[test]
    fn wrong_types_name_the_attribute_and_what_was_sent() {
        let mut v = ce();
        v["source"] = json!({"nested": [1, 2]});
        let err = parse(v).expect_err("object is not a string");
        assert_eq!(
            err.to_string(),
            "attribute `source` must be a string, not an object"
        );
        let mut v = ce();
        v["tenant"] = json!([1]);
        assert!(parse(v)
            .expect_err("array extension")
            .to_string()
            .contains("`tenant`"));
    }

    #[test]
    fn batches_must_be_arrays_of_objects() {
        let err = Event::parse_batch(br#"{"specversion":"1.0"}"#).expect_err("object");
        assert!(err.to_string().contains("JSON array"), "{err}");
        let err = Event::parse_batch(b"[1]").expect_err("number");
        assert_eq!(
            err.to_string(),
            "event [0]: a CloudEvent in structured mode must be a JSON object"
        );
        let err = Event::parse_batch(b"[{\"id\": ").expect_err("truncated");
        assert!(err.to_string().contains("not valid JSON"), "{err}");
    }

    #[test]
    fn data_is_kept_as_sent_and_time_defaults_to_now() {
        let body =
            br#"{"specversion":"1.0","id":"1","source":"s","type":"a.b","data": {"k": [1, 2]}}"#;
        let e = Event::parse_structured(body).expect("valid");
        assert_eq!(e.data, br#"{"k": [1, 2]}"#);
        assert!(humantime::parse_rfc3339_weak(&e.time).is_ok(), "{}", e.time);
    }

    #[test]
    fn base64_and_text_data() {
        let v =
            json!({"specversion":"1.0","id":"1","source":"s","type":"a.b","data_base64":"aGk="});
        assert_eq!(parse(v).expect("valid").data, b"hi");
        let v = json!({"specversion":"1.0","id":"1","source":"s","type":"a.b",
                       "datacontenttype":"text/plain","data":"hi"});
        assert_eq!(parse(v).expect("valid").data, b"hi");
    }

    #[test]
    fn json_round_trip_keeps_attributes() {
        let mut e = parse(ce()).expect("valid");
        e.correlationid = Some("c".into());
        let back = parse(e.to_json()).expect("round trip");
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
