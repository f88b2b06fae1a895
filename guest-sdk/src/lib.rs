//! # plugbus-sdk: write plugbus plugins in Rust
//!
//! A plugbus plugin is a WebAssembly component that consumes events. This
//! crate owns the guest side of the `plugbus:plugin@0.1.1` contract (the WIT
//! in the repository's `wit/` folder): you write a per-event handler, and the
//! SDK takes the batches the host hands over, calls your handler once per
//! event in order, and returns one [`Outcome`] per event.
//!
//! Build with `cargo build --target wasm32-wasip1 --release` as a `cdylib`
//! and drop the `.wasm` into the host's plugin directory; the host turns the
//! core module into a component when it loads it.
//!
//! ```
//! use plugbus_sdk::{export_plugin, Config, Context, Event, Info, Outcome, Plugin};
//! use serde::Deserialize;
//!
//! #[derive(Deserialize)]
//! struct Order { order_id: String, total_cents: u64 }
//!
//! struct Auditor { seen: u64 }
//!
//! impl Plugin for Auditor {
//!     fn init(_config: &Config) -> Result<Self, String> {
//!         Ok(Auditor { seen: 0 })
//!     }
//!
//!     fn info(&self) -> Info {
//!         Info::new("auditor", "0.1.0", ["order.placed"])
//!     }
//!
//!     fn handle(&mut self, event: &Event<'_>, ctx: &mut Context) -> Outcome {
//!         let order: Order = match event.json() {
//!             Ok(order) => order,
//!             // Bad data will not get better by retrying it.
//!             Err(e) => return Outcome::reject(e.to_string()),
//!         };
//!         self.seen += 1;
//!         plugbus_sdk::info!("order {} for {} cents", order.order_id, order.total_cents);
//!         match ctx.publish("audit.recorded", &serde_json::json!({ "order_id": order.order_id })) {
//!             Ok(()) => Outcome::Ack,
//!             Err(e) => Outcome::retry(e.to_string()),
//!         }
//!     }
//! }
//!
//! export_plugin!(Auditor);
//!
//! // In the plugin's tests: run it natively with the test harness.
//! # fn main() {
//! use plugbus_sdk::testing::{Harness, TestEvent};
//!
//! let mut h = Harness::<Auditor>::new().expect("init succeeds");
//! let order = serde_json::json!({ "order_id": "o-1", "total_cents": 990 });
//! let done = h.deliver(TestEvent::json("order.placed", &order));
//! assert_eq!(done.outcome, Outcome::Ack);
//! assert_eq!(done.published[0].topic, "audit.recorded");
//! assert_eq!(h.logs()[0].message, "order o-1 for 990 cents");
//! let bad = h.deliver(TestEvent::json("order.placed", "not an order"));
//! assert!(matches!(bad.outcome, Outcome::Reject(_)));
//! assert_eq!(h.published().len(), 1, "a rejected event publishes nothing");
//! # }
//! ```
//!
//! [`testing`] (native targets only) runs a plugin the way the host does,
//! so a plugin's `cargo test` needs no WebAssembly.
//!
//! Publishes made while handling an event are sent only if that event's
//! outcome is [`Outcome::Ack`]; the host keeps the event's correlation id on
//! them and sets their causation id to the event's id.
//!
//! A plugin keeps what it must remember in its [`State`], a key-value
//! bucket the host commits together with the plugin's progress: writes made
//! for an event count only if it is acked, so a plugin whose only effect is
//! its state counts every event exactly once, even across a crash.

// The generated bindings name this crate by its path, from inside it too.
extern crate self as plugbus_sdk;

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fmt;

/// Bindings generated from the WIT contract. Plugin authors rarely need them
/// directly; the types worth knowing are re-exported at the crate root.
#[allow(missing_docs, clippy::all)]
pub mod bindings {
    wit_bindgen::generate!({
        world: "plugin",
        path: "../wit",
        pub_export_macro: true,
        default_bindings_module: "plugbus_sdk::bindings",
        runtime_path: "plugbus_sdk::__private::wit_bindgen::rt",
        generate_all,
    });
}

mod host;
mod state;
#[cfg(not(target_arch = "wasm32"))]
pub mod testing;

pub use state::{State, StateError};

use bindings::plugbus::plugin::types;
use bindings::wasi::logging::logging;

pub use bindings::plugbus::plugin::scheduler::When;
pub use types::{Info, Outcome, Outgoing, PublishError, Retry};

/// The version of the contract this SDK builds plugins against.
pub const CONTRACT_VERSION: &str = "0.1.1";

/// A plugin: one value of this type lives in the plugin's sandbox from
/// `init` until the host drops the instance (on a trap, or when the plugin is
/// unloaded). Register it with [`export_plugin!`].
pub trait Plugin: Sized + 'static {
    /// Build the plugin from its configuration (the `[config]` table of its
    /// manifest). An error stops the plugin from loading and is shown to the
    /// operator, so say what to change.
    fn init(config: &Config) -> Result<Self, String>;

    /// Name, version and the topic patterns this plugin consumes.
    fn info(&self) -> Info;

    /// Handle one event. Called in delivery order.
    fn handle(&mut self, event: &Event<'_>, ctx: &mut Context) -> Outcome;
}

/// The plugin's configuration: string keys and values from its manifest.
#[derive(Debug, Clone, Default)]
pub struct Config {
    values: BTreeMap<String, String>,
}

impl Config {
    /// The value of `key`, if set.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.values.get(key).map(String::as_str)
    }

    /// All keys and values, sorted by key.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.values.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }
}

/// What a handler can do besides returning an outcome.
pub struct Context {
    cause: u32,
}

impl Context {
    /// Publish a follow-up event with a JSON body, caused by the event being
    /// handled.
    pub fn publish<T: serde::Serialize + ?Sized>(
        &mut self,
        topic: &str,
        data: &T,
    ) -> Result<(), PublishError> {
        let data = serde_json::to_vec(data).map_err(|e| {
            PublishError::Invalid(format!("event data for `{topic}` is not JSON: {e}"))
        })?;
        self.publish_event(&Outgoing {
            type_: topic.to_string(),
            subject: None,
            datacontenttype: Some("application/json".to_string()),
            data,
        })
    }

    /// Publish a fully described follow-up event.
    pub fn publish_event(&mut self, event: &Outgoing) -> Result<(), PublishError> {
        host::publish(self.cause, event)
    }

    /// Set timer `key`: publish `data` (as JSON) to `topic` when `due`
    /// (`When::AfterMs(2_000)`, `When::AtMs(unix_ms)`), as a follow-up of
    /// the event being handled. Setting a key that is set replaces its
    /// timer. Like a state write, it is kept only if the event is acked,
    /// and commits with the plugin's state; the timer's event is published
    /// once, not before it is due, and delivered like any event (it says
    /// when it was due in its `scheduledat` extension).
    pub fn schedule<T: serde::Serialize + ?Sized>(
        &mut self,
        key: &str,
        due: When,
        topic: &str,
        data: &T,
    ) -> Result<(), PublishError> {
        let data = serde_json::to_vec(data).map_err(|e| {
            PublishError::Invalid(format!("timer data for `{topic}` is not JSON: {e}"))
        })?;
        self.schedule_event(
            key,
            due,
            &Outgoing {
                type_: topic.to_string(),
                subject: None,
                datacontenttype: Some("application/json".to_string()),
                data,
            },
        )
    }

    /// [`Context::schedule`] with a fully described event.
    pub fn schedule_event(
        &mut self,
        key: &str,
        due: When,
        event: &Outgoing,
    ) -> Result<(), PublishError> {
        host::schedule(self.cause, key, due, event)
    }

    /// Call off timer `key` if it has not fired (nothing if none is set),
    /// once the event being handled is acked. A cancel committed before the
    /// timer fires always wins; after, the timer's event arrives anyway, so
    /// its handler checks the state.
    pub fn cancel(&mut self, key: &str) -> Result<(), PublishError> {
        host::cancel(self.cause, key)
    }
}

/// The event's `data` could not be decoded as the type asked for.
#[derive(Debug)]
pub struct DataError {
    event_id: String,
    topic: String,
    source: serde_json::Error,
}

impl fmt::Display for DataError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "event {} ({}) has data that does not decode: {}",
            self.event_id, self.topic, self.source
        )
    }
}

impl std::error::Error for DataError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

use plugbus_contract::batch::{word, Header};

/// One delivered event: a borrowed view of the batch the host handed over,
/// so reading it copies nothing (the layout is `plugbus_contract::batch`).
#[derive(Clone, Copy)]
pub struct Event<'a> {
    header: Header<'a>,
}

impl<'a> Event<'a> {
    fn text_at(&self, i: usize) -> &'a str {
        self.header.text(i)
    }

    fn optional_at(&self, i: usize) -> Option<&'a str> {
        self.header.optional(i)
    }

    /// The event's unique id (the idempotency key).
    pub fn id(&self) -> &'a str {
        self.text_at(word::ID)
    }

    /// CloudEvents `source`.
    pub fn source(&self) -> &'a str {
        self.text_at(word::SOURCE)
    }

    /// The topic (CloudEvents `type`).
    pub fn topic(&self) -> &'a str {
        self.text_at(word::TOPIC)
    }

    /// CloudEvents `subject`.
    pub fn subject(&self) -> Option<&'a str> {
        self.optional_at(word::SUBJECT)
    }

    /// RFC 3339 time.
    pub fn time(&self) -> &'a str {
        self.text_at(word::TIME)
    }

    /// The media type of the data.
    pub fn datacontenttype(&self) -> Option<&'a str> {
        self.optional_at(word::DATACONTENTTYPE)
    }

    /// The payload.
    pub fn data(&self) -> &'a [u8] {
        self.header.span(word::DATA)
    }

    /// The id of the first event of this event's chain.
    pub fn correlation_id(&self) -> Option<&'a str> {
        self.optional_at(word::CORRELATION_ID)
    }

    /// The id of the event whose handler published this one.
    pub fn causation_id(&self) -> Option<&'a str> {
        self.optional_at(word::CAUSATION_ID)
    }

    /// Position in the host's log.
    pub fn sequence(&self) -> u64 {
        self.header.sequence()
    }

    /// Which delivery attempt this is: 1 on the first.
    pub fn attempt(&self) -> u32 {
        self.header.attempt()
    }

    /// The extension attributes, as (name, value).
    pub fn extensions(&self) -> impl Iterator<Item = (&'a str, &'a str)> + 'a {
        self.header.extensions()
    }

    /// The value of one extension attribute.
    pub fn extension(&self, name: &str) -> Option<&'a str> {
        self.extensions().find(|(k, _)| *k == name).map(|(_, v)| v)
    }

    /// Decode the data as JSON into `T` (which may borrow from it).
    pub fn json<T: serde::Deserialize<'a>>(&self) -> Result<T, DataError> {
        serde_json::from_slice(self.data()).map_err(|source| DataError {
            event_id: self.id().to_string(),
            topic: self.topic().to_string(),
            source,
        })
    }
}

impl fmt::Debug for Event<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Event")
            .field("id", &self.id())
            .field("type", &self.topic())
            .field("sequence", &self.sequence())
            .field("attempt", &self.attempt())
            .field("data_bytes", &self.data().len())
            .finish()
    }
}

impl PartialEq for Retry {
    fn eq(&self, other: &Retry) -> bool {
        self.delay_ms == other.delay_ms && self.message == other.message
    }
}

impl Eq for Retry {}

impl PartialEq for Outcome {
    fn eq(&self, other: &Outcome) -> bool {
        match (self, other) {
            (Outcome::Ack, Outcome::Ack) => true,
            (Outcome::Retry(a), Outcome::Retry(b)) => a == b,
            (Outcome::Reject(a), Outcome::Reject(b)) => a == b,
            _ => false,
        }
    }
}

impl Eq for Outcome {}

impl Outcome {
    /// Whether this is [`Outcome::Ack`].
    pub fn is_ack(&self) -> bool {
        matches!(self, Outcome::Ack)
    }

    /// A transient failure: the host retries with its backoff.
    pub fn retry(message: impl Into<String>) -> Outcome {
        Outcome::Retry(Retry {
            delay_ms: None,
            message: message.into(),
        })
    }

    /// A transient failure: retry no sooner than `delay_ms` from now.
    pub fn retry_after(delay_ms: u64, message: impl Into<String>) -> Outcome {
        Outcome::Retry(Retry {
            delay_ms: Some(delay_ms),
            message: message.into(),
        })
    }

    /// A permanent failure: never retried; the event goes to dead letters.
    pub fn reject(message: impl Into<String>) -> Outcome {
        Outcome::Reject(message.into())
    }
}

impl Info {
    /// Describe a plugin: its name, version and subscriptions.
    pub fn new<S: Into<String>>(
        name: &str,
        version: &str,
        subscriptions: impl IntoIterator<Item = S>,
    ) -> Info {
        Info {
            name: name.to_string(),
            version: version.to_string(),
            subscriptions: subscriptions.into_iter().map(Into::into).collect(),
        }
    }
}

/// Log levels, for [`log`].
pub use logging::Level;

/// Send a message to the host's log, tagged with this plugin's name.
pub fn log(level: Level, message: &str) {
    host::log(level, message);
}

/// Log at info level with `format!` arguments.
#[macro_export]
macro_rules! info {
    ($($arg:tt)*) => { $crate::log($crate::Level::Info, &format!($($arg)*)) };
}

/// Log at warn level with `format!` arguments.
#[macro_export]
macro_rules! warn {
    ($($arg:tt)*) => { $crate::log($crate::Level::Warn, &format!($($arg)*)) };
}

/// Log at error level with `format!` arguments.
#[macro_export]
macro_rules! error {
    ($($arg:tt)*) => { $crate::log($crate::Level::Error, &format!($($arg)*)) };
}

/// Export `$ty` (which implements [`Plugin`]) as this component's handler.
/// Use it once, in the plugin crate's root. It exports only when compiled
/// to WebAssembly; a native build (the plugin's tests, with [`testing`])
/// has nothing to export.
#[macro_export]
macro_rules! export_plugin {
    ($ty:ty) => {
        #[cfg(target_arch = "wasm32")]
        struct __PlugbusExport;

        #[cfg(target_arch = "wasm32")]
        impl $crate::bindings::exports::plugbus::plugin::handler::Guest for __PlugbusExport {
            fn init() -> ::core::result::Result<$crate::Info, ::std::string::String> {
                $crate::__private::init::<$ty>()
            }

            fn handle(
                batch: $crate::bindings::plugbus::plugin::types::Batch,
            ) -> ::std::vec::Vec<$crate::Outcome> {
                $crate::__private::handle::<$ty>(batch)
            }
        }

        #[cfg(target_arch = "wasm32")]
        $crate::bindings::export!(__PlugbusExport);

        // Natively the plugin is used by its tests, if at all.
        #[cfg(not(target_arch = "wasm32"))]
        const _: fn() -> ::core::result::Result<$crate::Info, ::std::string::String> =
            $crate::__private::init::<$ty>;
    };
}

/// Embed the schemas this plugin declares (a JSON document:
/// `{"consumes": {TOPIC: {"major": N, "schema": {...}}}, "publishes":
/// {...}}`) in its wasm file, as the custom section `plugbus:contracts`
/// the host reads: what it publishes is checked against its writer
/// schemas, and a new version is swapped in only if its schemas fit the
/// running plugins'. Use it once, in the crate's root:
/// `plugbus_sdk::contracts!(include_bytes!("../contracts.json"));`. A
/// native build (the plugin's tests) checks that the document parses.
#[macro_export]
macro_rules! contracts {
    ($bytes:expr) => {
        #[cfg(target_arch = "wasm32")]
        #[used]
        #[link_section = "plugbus:contracts"]
        static __PLUGBUS_CONTRACTS: [u8; $bytes.len()] = *$bytes;

        #[cfg(test)]
        #[test]
        fn declared_contracts_are_json() {
            let doc: $crate::__private::serde_json::Value =
                $crate::__private::serde_json::from_slice($bytes).expect("contracts: not JSON");
            for side in ["consumes", "publishes"] {
                assert!(
                    doc.get(side).is_none_or(|v| v.is_object()),
                    "contracts: `{side}` is not an object of topics"
                );
            }
        }
    };
}

/// Call `plugin`'s handler for each event of `batch`, in order.
fn handle_each<P: Plugin>(plugin: &mut P, batch: &types::Batch) -> Vec<Outcome> {
    Header::all(&batch.bytes, &batch.headers, &batch.extensions)
        .enumerate()
        .map(|(i, header)| {
            let event = Event { header };
            let mut ctx = Context { cause: i as u32 };
            plugin.handle(&event, &mut ctx)
        })
        .collect()
}

thread_local! {
    // The plugin value for this instance. WebAssembly instances are
    // single-threaded, so a thread-local is the instance's global.
    static INSTANCE: RefCell<Option<Box<dyn std::any::Any>>> = const { RefCell::new(None) };
}

#[doc(hidden)]
pub mod __private {
    use super::*;

    pub use serde_json;
    pub use wit_bindgen;

    pub fn init<P: Plugin>() -> Result<Info, String> {
        let config = Config {
            values: host::config().into_iter().collect(),
        };
        let plugin = P::init(&config)?;
        let info = plugin.info();
        INSTANCE.with(|slot| *slot.borrow_mut() = Some(Box::new(plugin)));
        Ok(info)
    }

    pub fn handle<P: Plugin>(batch: types::Batch) -> Vec<Outcome> {
        INSTANCE.with(|slot| {
            let mut slot = slot.borrow_mut();
            match slot.as_mut().and_then(|b| b.downcast_mut::<P>()) {
                Some(plugin) => handle_each(plugin, &batch),
                None => (0..plugbus_contract::batch::events(&batch.headers))
                    .map(|_| Outcome::retry("plugin handled an event before init succeeded"))
                    .collect(),
            }
        })
    }
}
