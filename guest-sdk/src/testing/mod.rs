//! Unit-test a plugin natively, without WebAssembly: build events, run the
//! handler, and look at what it did (only on native targets, for a plugin's
//! `cargo test`).
//!
//! A [`Harness`] plays the host for one plugin and keeps the host's rules,
//! by calling the code the host calls (`plugbus_contract`): a handler's
//! state writes and follow-up events count only if its event is acked
//! (the ack rule: a batch with a failure and state writes is handled again
//! one event at a time, so only acked events' writes are kept), follow-ups
//! carry the cause's correlation id and the cause's id as their causation
//! id, the batch is laid out as the host lays it out, and publishes and
//! state writes are checked with the host's limits and words.
//!
//! ```
//! use plugbus_sdk::testing::{Harness, TestEvent};
//! use plugbus_sdk::{Config, Context, Event, Info, Outcome, Plugin, State};
//!
//! struct Counter { state: State }
//!
//! impl Plugin for Counter {
//!     fn init(_: &Config) -> Result<Self, String> {
//!         Ok(Counter { state: State::open().map_err(|e| e.to_string())? })
//!     }
//!     fn info(&self) -> Info {
//!         Info::new("counter", "0.1.0", ["order.placed"])
//!     }
//!     fn handle(&mut self, event: &Event<'_>, ctx: &mut Context) -> Outcome {
//!         if event.data().is_empty() {
//!             return Outcome::reject("no data");
//!         }
//!         let n = self.state.increment("orders", 1).expect("a counter");
//!         ctx.publish("order.counted", &serde_json::json!({ "n": n })).expect("published");
//!         Outcome::Ack
//!     }
//! }
//!
//! let mut h = Harness::<Counter>::new().expect("init");
//! let first = h.deliver(TestEvent::json("order.placed", &serde_json::json!({"id": 1})));
//! assert_eq!(first.outcome, Outcome::Ack);
//! assert_eq!(first.published[0].topic, "order.counted");
//! assert_eq!(first.published[0].causation_id, first.event_id);
//!
//! // A rejected event keeps nothing it wrote or published.
//! let bad = h.deliver(TestEvent::new("order.placed", Vec::new()));
//! assert!(matches!(bad.outcome, Outcome::Reject(_)));
//! assert_eq!(h.state().counter("orders"), 1);
//! assert_eq!(h.published().len(), 1);
//! ```

pub(crate) mod sandbox;

use std::sync::atomic::{AtomicU64, Ordering};

pub use sandbox::LogLine;

use crate::bindings::plugbus::plugin::types::Batch;
use crate::{Config, Info, Outcome, Outgoing, Plugin};
use plugbus_contract::{ack, batch};
use sandbox::Sandbox;

/// An event to deliver, with the attributes the host would give it. Build
/// it with [`TestEvent::json`] or [`TestEvent::new`] and the setters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestEvent {
    /// Unique id (a fresh one unless set).
    pub id: String,
    /// CloudEvents `source` (`plugbus` unless set, as on the host).
    pub source: String,
    /// The topic (CloudEvents `type`).
    pub topic: String,
    /// CloudEvents `subject`.
    pub subject: Option<String>,
    /// RFC 3339 time (now unless set).
    pub time: String,
    /// Media type of `data`.
    pub datacontenttype: Option<String>,
    /// The payload.
    pub data: Vec<u8>,
    /// The chain's first event (none: this event starts a chain).
    pub correlation_id: Option<String>,
    /// The event whose handler published this one.
    pub causation_id: Option<String>,
    /// Position in the log (the harness numbers events from 1 unless set).
    pub sequence: Option<u64>,
    /// Which delivery this is: 1 unless set.
    pub attempt: u32,
    /// CloudEvents extension attributes.
    pub extensions: Vec<(String, String)>,
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

impl TestEvent {
    /// An event on `topic` with `data` as its payload.
    pub fn new(topic: &str, data: impl Into<Vec<u8>>) -> TestEvent {
        TestEvent {
            id: format!("test-{}", NEXT_ID.fetch_add(1, Ordering::Relaxed)),
            source: "plugbus".to_string(),
            topic: topic.to_string(),
            subject: None,
            time: now_rfc3339(),
            datacontenttype: None,
            data: data.into(),
            correlation_id: None,
            causation_id: None,
            sequence: None,
            attempt: 1,
            extensions: Vec::new(),
        }
    }

    /// An event on `topic` whose payload is `data` as JSON.
    pub fn json<T: serde::Serialize + ?Sized>(topic: &str, data: &T) -> TestEvent {
        let mut e = TestEvent::new(topic, serde_json::to_vec(data).unwrap_or_default());
        e.datacontenttype = Some("application/json".to_string());
        e
    }

    /// An event from its CloudEvents JSON (structured mode, the form
    /// `events/*.json` fixtures and `POST /v1/events` take): `type` is
    /// required; `data` (JSON) or `data_base64`, and the other attributes,
    /// are optional.
    pub fn from_cloudevent(json: &serde_json::Value) -> Result<TestEvent, String> {
        let obj = json
            .as_object()
            .ok_or("a CloudEvent is a JSON object with at least `type`")?;
        let text = |k: &str| obj.get(k).and_then(|v| v.as_str()).map(str::to_string);
        let topic = text("type").ok_or("the CloudEvent has no `type` (its topic)")?;
        let mut e = match (obj.get("data"), text("data_base64")) {
            (_, Some(b64)) => TestEvent::new(&topic, decode_base64(&b64)?),
            (Some(serde_json::Value::String(s)), None)
                if text("datacontenttype").is_some_and(|t| !t.contains("json")) =>
            {
                TestEvent::new(&topic, s.as_bytes().to_vec())
            }
            (Some(data), None) => TestEvent::json(&topic, data),
            (None, None) => TestEvent::new(&topic, Vec::new()),
        };
        const KNOWN: [&str; 12] = [
            "specversion",
            "id",
            "source",
            "type",
            "subject",
            "time",
            "datacontenttype",
            "data",
            "data_base64",
            "correlationid",
            "causationid",
            "dataschema",
        ];
        if let Some(v) = text("id") {
            e.id = v;
        }
        if let Some(v) = text("source") {
            e.source = v;
        }
        if let Some(v) = text("time") {
            e.time = v;
        }
        if let Some(v) = text("datacontenttype") {
            e.datacontenttype = Some(v);
        }
        e.subject = text("subject");
        e.correlation_id = text("correlationid");
        e.causation_id = text("causationid");
        for (k, v) in obj.iter().filter(|(k, _)| !KNOWN.contains(&k.as_str())) {
            let value = match v {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            e.extensions.push((k.clone(), value));
        }
        Ok(e)
    }

    /// Set the id.
    pub fn id(mut self, id: &str) -> TestEvent {
        self.id = id.to_string();
        self
    }

    /// Set the subject.
    pub fn subject(mut self, subject: &str) -> TestEvent {
        self.subject = Some(subject.to_string());
        self
    }

    /// Set the source.
    pub fn source(mut self, source: &str) -> TestEvent {
        self.source = source.to_string();
        self
    }

    /// Make it part of the chain started by `id`.
    pub fn correlation_id(mut self, id: &str) -> TestEvent {
        self.correlation_id = Some(id.to_string());
        self
    }

    /// Say which event's handler published it.
    pub fn causation_id(mut self, id: &str) -> TestEvent {
        self.causation_id = Some(id.to_string());
        self
    }

    /// Add an extension attribute.
    pub fn extension(mut self, name: &str, value: &str) -> TestEvent {
        self.extensions.push((name.to_string(), value.to_string()));
        self
    }

    /// Deliver it as attempt `n` (a retry when `n` > 1).
    pub fn attempt(mut self, n: u32) -> TestEvent {
        self.attempt = n.max(1);
        self
    }

    /// Put it at `sequence` in the log.
    pub fn sequence(mut self, sequence: u64) -> TestEvent {
        self.sequence = Some(sequence);
        self
    }
}

/// A follow-up event a handler published and the harness kept (its cause
/// was acked).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    /// The topic.
    pub topic: String,
    /// CloudEvents `subject`.
    pub subject: Option<String>,
    /// Media type of `data` (the host reads none as `application/json`).
    pub datacontenttype: Option<String>,
    /// The payload.
    pub data: Vec<u8>,
    /// The id of the event whose handler published it.
    pub causation_id: String,
    /// The chain's first event: the cause's correlation id, or the cause's
    /// id if it started the chain.
    pub correlation_id: String,
}

impl Published {
    /// Decode the payload as JSON.
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_slice(&self.data)
    }
}

/// What the plugin did with one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// The event's id.
    pub event_id: String,
    /// Its outcome.
    pub outcome: Outcome,
    /// The follow-ups kept (none unless acked).
    pub published: Vec<Published>,
}

/// The plugin's committed state, as the host would keep it.
pub struct StateView<'a> {
    sandbox: &'a Sandbox,
}

impl StateView<'_> {
    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<Vec<u8>> {
        self.sandbox.committed.get(key).cloned()
    }

    /// The value of `key` decoded from JSON (`None` if missing or not that
    /// JSON).
    pub fn get_json<T: serde::de::DeserializeOwned>(&self, key: &str) -> Option<T> {
        serde_json::from_slice(self.sandbox.committed.get(key)?).ok()
    }

    /// The counter at `key` ([`State::increment`](crate::State::increment)),
    /// 0 when missing.
    pub fn counter(&self, key: &str) -> i64 {
        self.get_json(key).unwrap_or(0)
    }

    /// Every key, in order.
    pub fn keys(&self) -> Vec<String> {
        self.sandbox.committed.keys().cloned().collect()
    }
}

/// Runs one plugin of type `P` the way the host does, natively.
pub struct Harness<P: Plugin> {
    plugin: P,
    info: Info,
    sandbox: Sandbox,
    published: Vec<Published>,
    next_sequence: u64,
}

impl<P: Plugin> Harness<P> {
    /// Start the plugin with an empty config (runs [`Plugin::init`]).
    pub fn new() -> Result<Harness<P>, String> {
        Harness::with_config(std::iter::empty::<(String, String)>())
    }

    /// Start the plugin with `config` (its manifest's `[config]`).
    pub fn with_config<K: Into<String>, V: Into<String>>(
        config: impl IntoIterator<Item = (K, V)>,
    ) -> Result<Harness<P>, String> {
        let mut config: Vec<(String, String)> = config
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .collect();
        config.sort();
        Harness::start(Sandbox {
            config,
            now_ms: sandbox::EPOCH_MS,
            ..Sandbox::default()
        })
    }

    fn start(mut sandbox: Sandbox) -> Result<Harness<P>, String> {
        let cfg = Config {
            values: sandbox.config.iter().cloned().collect(),
        };
        let (plugin, info) = sandbox::lend(&mut sandbox, || {
            let plugin = P::init(&cfg)?;
            let info = plugin.info();
            Ok::<_, String>((plugin, info))
        })?;
        // What init writes is kept, as on the host.
        sandbox.commit();
        Ok(Harness {
            plugin,
            info,
            sandbox,
            published: Vec::new(),
            next_sequence: 1,
        })
    }

    /// What the plugin said about itself in `init`.
    pub fn info(&self) -> &Info {
        &self.info
    }

    /// The plugin value.
    pub fn plugin(&mut self) -> &mut P {
        &mut self.plugin
    }

    /// Put `value` at `key` in the plugin's state, as if kept earlier.
    pub fn seed(&mut self, key: &str, value: &[u8]) -> &mut Self {
        self.sandbox
            .committed
            .insert(key.to_string(), value.to_vec());
        self
    }

    /// Put `value` as JSON at `key` in the plugin's state.
    pub fn seed_json<T: serde::Serialize + ?Sized>(&mut self, key: &str, value: &T) -> &mut Self {
        let bytes = serde_json::to_vec(value).unwrap_or_default();
        self.seed(key, &bytes)
    }

    /// Deliver one event; returns what the plugin did with it.
    pub fn deliver(&mut self, event: TestEvent) -> Delivery {
        self.deliver_batch([event]).remove(0)
    }

    /// Deliver events in one batch, as the host does under load; one
    /// [`Delivery`] per event, in order. If any is not acked and the batch
    /// wrote state, the events are handled again one at a time (the host
    /// cannot tell whose writes were whose), so only acked events' writes
    /// are kept.
    pub fn deliver_batch(&mut self, events: impl IntoIterator<Item = TestEvent>) -> Vec<Delivery> {
        let mut events: Vec<TestEvent> = events.into_iter().collect();
        for e in &mut events {
            if e.sequence.is_none() {
                e.sequence = Some(self.next_sequence);
            }
            self.next_sequence = self.next_sequence.max(e.sequence.unwrap_or(0) + 1);
        }
        let outcomes = self.call(&events);
        let acks: Vec<bool> = outcomes.iter().map(|o| *o == Outcome::Ack).collect();
        let settlement = ack::settle(&acks, !self.sandbox.overlay.is_empty());
        if settlement == ack::Settlement::OneAtATime {
            self.sandbox.discard();
            return events
                .into_iter()
                .map(|e| self.deliver_batch([e]).remove(0))
                .collect();
        }
        if settlement.keeps_writes() {
            self.sandbox.commit();
            self.keep_timer_changes(&events);
        }
        let published = std::mem::take(&mut self.sandbox.published);
        self.sandbox.discard();
        let deliveries: Vec<Delivery> = events
            .iter()
            .zip(outcomes)
            .enumerate()
            .map(|(i, (e, outcome))| {
                let kept = published
                    .iter()
                    .filter(|(cause, _)| *cause as usize == i)
                    .filter(|_| settlement.keeps_follow_up(acks[i]))
                    .map(|(_, out)| follow_up(e, out))
                    .collect();
                Delivery {
                    event_id: e.id.clone(),
                    outcome,
                    published: kept,
                }
            })
            .collect();
        for d in &deliveries {
            self.published.extend(d.published.iter().cloned());
        }
        deliveries
    }

    /// Apply the call's timer changes, in order (their causes: `events`).
    fn keep_timer_changes(&mut self, events: &[TestEvent]) {
        for (cause, key, change) in std::mem::take(&mut self.sandbox.timer_changes) {
            match (change, events.get(cause as usize)) {
                (Some((due, out)), Some(e)) => {
                    self.sandbox.timers.insert(key, (due, follow_up(e, &out)));
                }
                (None, _) => {
                    self.sandbox.timers.remove(&key);
                }
                // Checked when set: the cause is in the batch.
                (Some(_), None) => {}
            }
        }
    }

    /// The harness's clock, Unix ms (it starts at 2026-01-01T00:00:00Z and
    /// moves only by [`Harness::advance`]).
    pub fn now_ms(&self) -> u64 {
        self.sandbox.now_ms
    }

    /// The timers set, by key, with when each is due (Unix ms).
    pub fn timers(&self) -> Vec<(String, u64)> {
        self.sandbox
            .timers
            .iter()
            .map(|(k, (due, _))| (k.clone(), *due))
            .collect()
    }

    /// Move the clock on by `by`: the timers due by then fire, soonest
    /// first, and are gone. Their events, to deliver to the plugin (or
    /// look at): a follow-up of the event that set each, with
    /// `scheduledat` saying when it was due.
    pub fn advance(&mut self, by: std::time::Duration) -> Vec<TestEvent> {
        self.sandbox.now_ms = self.sandbox.now_ms.saturating_add(by.as_millis() as u64);
        let now = self.sandbox.now_ms;
        let mut due: Vec<(u64, String)> = self
            .sandbox
            .timers
            .iter()
            .filter(|(_, (d, _))| *d <= now)
            .map(|(k, (d, _))| (*d, k.clone()))
            .collect();
        due.sort();
        due.into_iter()
            .filter_map(|(d, k)| self.sandbox.timers.remove(&k).map(|(_, p)| (d, p)))
            .map(|(d, p)| fired(d, now, p))
            .collect()
    }

    /// Call `handle` once for `events`, as the SDK's export does.
    fn call(&mut self, events: &[TestEvent]) -> Vec<Outcome> {
        let batch = pack(events);
        self.sandbox.batch_len = events.len() as u32;
        let plugin = &mut self.plugin;
        sandbox::lend(&mut self.sandbox, || crate::handle_each(plugin, &batch))
    }

    /// Every follow-up kept so far, in order.
    pub fn published(&self) -> &[Published] {
        &self.published
    }

    /// Forget the follow-ups kept so far.
    pub fn take_published(&mut self) -> Vec<Published> {
        std::mem::take(&mut self.published)
    }

    /// The plugin's state as committed.
    pub fn state(&self) -> StateView<'_> {
        StateView {
            sandbox: &self.sandbox,
        }
    }

    /// Every line logged so far (from `init` on), kept whatever the
    /// outcome.
    pub fn logs(&self) -> &[LogLine] {
        &self.sandbox.logs
    }
}

/// The event of a timer due at `due_ms`, fired at `now_ms`.
fn fired(due_ms: u64, now_ms: u64, p: Published) -> TestEvent {
    let at = |ms: u64| {
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
        humantime::format_rfc3339_millis(t).to_string()
    };
    let mut e = TestEvent::new(&p.topic, p.data);
    e.subject = p.subject;
    e.datacontenttype = p.datacontenttype;
    e.correlation_id = Some(p.correlation_id);
    e.causation_id = Some(p.causation_id);
    e.time = at(now_ms);
    e.extension("scheduledat", &at(due_ms))
        .extension("latems", &now_ms.saturating_sub(due_ms).to_string())
}

fn follow_up(cause: &TestEvent, out: &Outgoing) -> Published {
    Published {
        topic: out.type_.clone(),
        subject: out.subject.clone(),
        datacontenttype: out.datacontenttype.clone(),
        data: out.data.clone(),
        causation_id: cause.id.clone(),
        correlation_id: cause
            .correlation_id
            .clone()
            .unwrap_or_else(|| cause.id.clone()),
    }
}

/// Lay `events` out as the host does (`plugbus_contract::batch`).
pub(crate) fn pack(events: &[TestEvent]) -> Batch {
    let mut b = Batch {
        bytes: Vec::new(),
        headers: Vec::new(),
        extensions: Vec::new(),
    };
    let mut w = batch::Writer {
        bytes: &mut b.bytes,
        headers: &mut b.headers,
        extensions: &mut b.extensions,
    };
    for e in events {
        w.push(&batch::Fields {
            id: &e.id,
            source: &e.source,
            topic: &e.topic,
            subject: e.subject.as_deref(),
            time: &e.time,
            datacontenttype: e.datacontenttype.as_deref(),
            data: &e.data,
            correlation_id: e.correlation_id.as_deref(),
            causation_id: e.causation_id.as_deref(),
            sequence: e.sequence.unwrap_or(0),
            attempt: e.attempt,
            extensions: &e.extensions,
        });
    }
    b
}

/// Now as RFC 3339 UTC, to the millisecond.
fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}

fn decode_base64(text: &str) -> Result<Vec<u8>, String> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .map_err(|e| format!("`data_base64` is not base64: {e}"))
}

#[cfg(test)]
mod tests;
