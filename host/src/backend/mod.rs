//! The delivery boundary: what the embedded store and the brokers each
//! implement, so that workers, the runtime, manifests and hot swap never
//! know which one they run on.
//!
//! Its verbs are few. [`Backend::append`] stores events (the event id is
//! the dedup key) and says their sequences. [`Backend::consumer`] opens a
//! plugin's delivery: a [`Consumer`] hands out its next batch, each event
//! with its attempt number, and [`Consumer::settle`] commits one batch's
//! outcome: per event ack, retry after a delay, or dead letter, together
//! with the plugin's key-value writes and its follow-up events. A backend
//! commits a settlement atomically where it can, and refuses one from a
//! consumer that lost its lease ([`BackendError::Fenced`]): the events are
//! then someone else's, and nothing of the settlement is kept. What each
//! backend guarantees is declared in [`Capabilities`], and the conformance
//! suite (`backend::conformance`, tests only) holds each to its declaration.
//!
//! Beside delivery: reading the log, replay from a sequence or a time,
//! dead letters (list, re-drive keeping the event's id, purge) and the
//! plugins' key-value state, for the CLI and the HTTP API.
//!
//! Rooms: `embedded` (the fjall store, the default), `local` (delivery
//! from this host's own queues: the embedded store's consumer, and memory
//! mode's), `redis` (Redis Streams, `--broker redis://…`), `nats` (NATS
//! JetStream, `--broker nats://…`).
//!
//! This module knows nothing of wasm, plugins' instances or HTTP.

pub mod clock;
pub mod embedded;
pub mod local;
pub mod memory;
pub mod nats;
pub mod redis;

#[cfg(test)]
mod conformance;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::bus::OrderingKey;
use crate::event::Event;
use crate::store::dead::{DeadLetter, Selection};
use crate::store::StoreError;
use plugbus_contract::topic::Pattern;

/// How to reach a broker, besides its address.
#[derive(Debug, Clone, Default)]
pub struct Access {
    /// A CA certificate (PEM) the broker's certificate must chain to
    /// (`rediss://`, `tls://`); NATS requires TLS when it is given.
    pub ca: Option<std::path::PathBuf>,
    /// A NATS credentials file (JWT and NKey seed).
    pub creds: Option<std::path::PathBuf>,
}

/// The broker at `url`, by its scheme: NATS JetStream (`nats://`,
/// `tls://`) or Redis Streams (`redis://`, `rediss://`, `redis+unix://`),
/// its streams or keys named by `prefix`, remembering appended ids for
/// `dedup`. Connects lazily.
pub fn open_broker(
    url: &str,
    prefix: &str,
    dedup: Duration,
    access: Access,
) -> Result<Arc<dyn Backend>, BackendError> {
    let refused = |reason: String| BackendError::Refused {
        broker: without_credentials(url),
        reason,
    };
    let scheme = url.split_once("://").map_or("", |(scheme, _)| scheme);
    match scheme {
        "nats" | "tls" => Ok(Arc::new(nats::NatsBackend::open(url, prefix, dedup, access)?)),
        "redis" | "rediss" | "redis+unix" | "unix" => {
            if let Some(creds) = &access.creds {
                return Err(refused(format!(
                    "--broker-creds {} is for a NATS broker (nats://…); a Redis broker takes its password in the URL",
                    creds.display()
                )));
            }
            Ok(Arc::new(redis::RedisBackend::open(
                url,
                prefix,
                dedup,
                access.ca.as_deref(),
            )?))
        }
        _ => Err(refused(
            "not a broker address: use nats://HOST:PORT or tls://HOST:PORT (NATS JetStream), or redis://HOST:PORT[/DB], rediss://… or redis+unix:///PATH (Redis Streams)".into(),
        )),
    }
}

/// `url` with any password replaced, for messages.
pub(crate) fn without_credentials(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://***@{}", &url[..scheme], &url[at + 1..])
        }
        _ => url.to_string(),
    }
}

/// What a backend guarantees, as the conformance suite checks it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    /// The plugin's state writes, its follow-up events, dead letters and the
    /// acks of a settlement commit as one unit: all or none.
    pub atomic_settle: bool,
    /// A consumer that lost its lease (stalled past it while another took
    /// its events) cannot commit: its settlement is refused whole.
    pub fenced: bool,
    /// Several hosts may share one plugin's consumer, each event going to
    /// one of them.
    pub shared: bool,
    /// How long an appended id is remembered: an event appended again
    /// within it is not stored twice.
    pub dedup_window: Duration,
    /// Events, state, cursors and dead letters survive the process (all
    /// but memory mode).
    pub durable: bool,
    /// Plugins may set timers ([`Settlement::timers`]), kept with their
    /// state and published once when due.
    pub timers: bool,
}

/// Where a replay starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// At this sequence (inclusive).
    Sequence(u64),
    /// At the first event appended at or after this time.
    Time(SystemTime),
}

impl Start {
    /// The sequence this start names on `backend`.
    pub fn sequence(self, backend: &dyn Backend) -> Result<u64, BackendError> {
        match self {
            Start::Sequence(seq) => Ok(seq.max(1)),
            Start::Time(t) => backend.first_since(t),
        }
    }
}

/// How a plugin's consumer behaves.
#[derive(Debug, Clone)]
pub struct ConsumerOptions {
    /// The topics it wants; other events are passed over.
    pub patterns: Vec<Pattern>,
    /// This host's name among the consumers sharing the plugin.
    pub host: String,
    /// How long an event handed out stays this consumer's without a
    /// settlement or an [`Consumer::extend`]; past it another host may
    /// take it (brokers), and this one's settlement is refused.
    pub lease: Duration,
    /// A new plugin (no position yet) starts after the events already in
    /// the log (`true`) or at the beginning.
    pub start_latest: bool,
    /// How many consumers share the plugin on this host
    /// ([`Backend::consumers`]), each taking the events whose ordering key
    /// hashes to it. A broker takes one per host.
    pub parts: usize,
    /// What decides an event's part, and what strict ordering holds back.
    pub key: OrderingKey,
    /// Strict ordering under retry: an event waiting for its retry holds
    /// back the later events of its key.
    pub strict: bool,
    /// Events a consumer's queue holds (the embedded store's reader waits
    /// for room).
    pub queue_events_max: usize,
    /// Drop what a full queue has no room for, counting it here, rather
    /// than wait (`overflow.policy = "drop"`).
    pub drop_when_full: Option<prometheus_client::metrics::counter::Counter>,
    /// What a full queue does to a publisher, where publishers wait for a
    /// consumer's queue (memory mode's bus).
    pub overflow: crate::bus::Overflow,
}

impl ConsumerOptions {
    /// Options with one part, no strict ordering and waiting for room.
    pub fn new(patterns: Vec<Pattern>, host: &str, lease: Duration) -> ConsumerOptions {
        ConsumerOptions {
            patterns,
            host: host.to_string(),
            lease,
            start_latest: false,
            parts: 1,
            key: OrderingKey::default(),
            strict: false,
            queue_events_max: 10_000,
            drop_when_full: None,
            overflow: crate::bus::Overflow::default(),
        }
    }
}

/// An event handed out for handling.
#[derive(Debug, Clone)]
pub struct Delivered {
    /// The event, with its sequence.
    pub event: Arc<Event>,
    /// 1 on the first delivery, counting up with each redelivery.
    pub attempt: u32,
}

/// What became of one handed-out event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Done.
    Ack,
    /// Deliver again (with the next attempt) after this long.
    Retry(Duration),
    /// Given up on: keep it as a dead letter with this last error.
    Dead(String),
}

/// One batch's outcome, committed by [`Consumer::settle`].
#[derive(Debug, Clone, Default)]
pub struct Settlement {
    /// Per handed-out event (by sequence): what became of it.
    pub verdicts: Vec<(u64, Verdict)>,
    /// Key-value writes to the plugin's bucket: a value, or none to delete.
    pub writes: Vec<(String, Option<Vec<u8>>)>,
    /// The values (none: absent) the writes were computed from, which must
    /// still be the bucket's for the settlement to commit: another host of
    /// a shared plugin may have written them since
    /// ([`BackendError::Conflict`]). A backend with one consumer per
    /// plugin has nobody else writing, and may skip the check.
    pub expected: Vec<(String, Option<Vec<u8>>)>,
    /// Events the handlers published, appended with the settlement.
    pub follow_ups: Vec<Event>,
    /// Changes to the plugin's timers, in order, committed with it
    /// ([`Capabilities::timers`]).
    pub timers: Vec<crate::timer::TimerChange>,
}

/// What an append got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appended {
    /// The sequence of each event, in order: a new one, or for a duplicate
    /// id the original's.
    pub sequences: Vec<u64>,
    /// How many were duplicates (not stored again).
    pub duplicates: usize,
}

/// Where a plugin is in the log, as the backend reports it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Position {
    /// The last sequence handed out to any of its consumers.
    pub delivered: u64,
    /// Events in the log not yet handed out to it.
    pub lag: u64,
    /// Events handed out and not yet settled, on every host.
    pub pending: u64,
    /// Retries waiting for their time.
    pub waiting: u64,
}

/// Why a backend refused or failed. Each names the backend and the fix.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BackendError {
    /// The embedded store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A plugin's queue stayed full (memory mode): the events from
    /// `accepted` on were not published.
    #[error(transparent)]
    Busy(#[from] crate::bus::PublishError),
    /// The broker cannot be reached (or the connection dropped mid-call):
    /// nothing of the call is known to have taken effect unless it is
    /// retried with the same ids.
    #[error("broker {broker} is unreachable: {reason}; plugbus reconnects by itself with backoff; check that the broker runs and --broker names it")]
    Unavailable {
        /// The broker's address (without credentials).
        broker: String,
        /// What failed.
        reason: String,
    },
    /// The broker refused what plugbus asked (credentials, a command it
    /// lacks, a full memory).
    #[error("broker {broker} refused: {reason}")]
    Refused {
        /// The broker's address (without credentials).
        broker: String,
        /// What it said.
        reason: String,
    },
    /// The settlement came from a consumer that no longer holds the event:
    /// nothing of it was committed.
    #[error("plugin `{plugin}`: event {sequence} is no longer this host's ({why}): another host took it after the lease ran out, so this host's outcome for the batch was not committed")]
    Fenced {
        /// The plugin.
        plugin: String,
        /// The first event found taken.
        sequence: u64,
        /// Who holds it now, as the broker says.
        why: String,
    },
    /// A value the settlement's writes were computed from changed since it
    /// was read (another host wrote it): nothing was committed, and the
    /// events are still this consumer's, to hand back and handle again.
    #[error("plugin `{plugin}`: key `{key}` of its state changed while the batch was handled (another host wrote it), so the batch was not committed and is handled again")]
    Conflict {
        /// The plugin.
        plugin: String,
        /// The first key found changed.
        key: String,
    },
    /// Something stored in the broker does not decode.
    #[error("broker {broker}: {what} does not decode ({reason}); it was not written by this version of plugbus")]
    Corrupt {
        /// The broker's address.
        broker: String,
        /// What was read.
        what: String,
        /// Why it does not decode.
        reason: String,
    },
    /// A plugin's delivery is already open on this host, and the backend
    /// does not share one.
    #[error("plugin `{plugin}` already has a consumer: the embedded store delivers each plugin to one consumer (run it on a broker to share it between hosts)")]
    InUse {
        /// The plugin.
        plugin: String,
    },
    /// A thread could not be started.
    #[error("cannot start {what}: {reason}; the system is out of threads or memory")]
    Thread {
        /// What the thread was for.
        what: String,
        /// Why it did not start.
        reason: String,
    },
    /// The consumer's source closed (the host is stopping): nothing more
    /// comes.
    #[error("the delivery of this plugin was closed (the host is stopping)")]
    Closed,
    /// The backend does not offer this yet.
    #[error("{backend} does not keep {what} yet; {fix}")]
    NotOffered {
        /// The backend, as [`Backend::describe`] says.
        backend: String,
        /// What it does not keep.
        what: String,
        /// What to do instead.
        fix: String,
    },
    /// The backend cannot deliver a plugin the way its manifest asks.
    #[error("{backend} cannot run plugin `{plugin}` as its manifest asks: {reason}")]
    Unsupported {
        /// The backend, as [`Backend::describe`] says.
        backend: String,
        /// The plugin.
        plugin: String,
        /// What it cannot do, and the fix.
        reason: String,
    },
    /// A settlement named an event this consumer did not hand out.
    #[error("plugin `{plugin}`: event {sequence} was not handed out by this consumer")]
    NotHeld {
        /// The plugin.
        plugin: String,
        /// The sequence.
        sequence: u64,
    },
}

/// [`Backend::consumer`] for a backend whose [`Backend::consumers`]
/// opens them: its one consumer, of one part.
pub(crate) fn first_of_consumers(
    backend: &dyn Backend,
    plugin: &str,
    options: ConsumerOptions,
) -> Result<Box<dyn Consumer>, BackendError> {
    let mut one = backend.consumers(
        plugin,
        ConsumerOptions {
            parts: 1,
            ..options
        },
    )?;
    one.pop().ok_or(BackendError::Closed)
}

/// When a wait of `wait` from now ends (a wait too long to add ends in a
/// year: as good as never).
pub(crate) fn deadline(wait: Duration) -> std::time::Instant {
    let now = std::time::Instant::now();
    now.checked_add(wait)
        .or_else(|| now.checked_add(Duration::from_secs(365 * 24 * 3600)))
        .unwrap_or(now)
}

/// A plugin's delivery on one host. Not shared between threads: each of a
/// plugin's workers opens its own.
pub trait Consumer: Send {
    /// Up to `max_events` events to handle: due redeliveries first, then new
    /// ones. Waits up to `wait` when there are none, and returns empty then.
    fn next_batch(
        &mut self,
        max_events: usize,
        wait: Duration,
    ) -> Result<Vec<Delivered>, BackendError>;

    /// [`Consumer::next_batch`] as the events and their attempts: local
    /// delivery hands out a queued delivery as it is, without a reference
    /// count per event.
    fn next_chunk(
        &mut self,
        max_events: usize,
        wait: Duration,
    ) -> Result<(crate::event::Chunk, Vec<u32>), BackendError> {
        let (events, attempts): (Vec<_>, Vec<_>) = self
            .next_batch(max_events, wait)?
            .into_iter()
            .map(|d| (d.event, d.attempt))
            .unzip();
        Ok((events.into(), attempts))
    }

    /// Commit what became of handed-out events, with the plugin's writes
    /// and follow-ups. On an error nothing was committed (for
    /// [`BackendError::Unavailable`]: as far as is known) and the events
    /// stay handed out.
    fn settle(&mut self, settlement: Settlement) -> Result<(), BackendError>;

    /// Renew the lease on everything handed out and not yet settled.
    fn extend(&mut self) -> Result<(), BackendError>;

    /// Hand back everything handed out and not yet settled, to be delivered
    /// again at once (on this host or another) at the same attempt.
    fn release(&mut self) -> Result<(), BackendError>;

    /// Retries waiting in this consumer for their time (0 where the broker
    /// keeps them).
    fn waiting(&self) -> usize {
        0
    }

    /// Why a settlement would be refused now (the embedded store's disk
    /// inside its reserve), so that delivery waits instead of handling
    /// events it cannot commit; none on a broker, whose own limits answer
    /// the settlement.
    fn held_back(&self) -> Option<String> {
        None
    }

    /// Live views of how far it is and what waits in its queue, where the
    /// host keeps them (local delivery; a broker reports
    /// [`Backend::position`]).
    fn gauges(&self) -> Option<local::Gauges> {
        None
    }
}

/// The plugbus release of this build, as brokers record it.
pub const RELEASE: &str = env!("CARGO_PKG_VERSION");

/// Claim `backend` for this release: refused, naming both, when it is used
/// by another release and `take_over` is not asked; returns the release
/// it was used by when that was another (a take-over).
pub fn check_release(
    backend: &dyn Backend,
    take_over: bool,
) -> Result<Option<String>, BackendError> {
    match backend.claim_release(RELEASE, take_over)? {
        Some(theirs) if theirs != RELEASE && !take_over => Err(BackendError::Refused {
            broker: backend.describe(),
            reason: format!(
                "it is used by plugbus {theirs} and this host is plugbus {RELEASE}: every host on one broker runs the same release. To upgrade, start one host of {RELEASE} with --take-over-broker (the hosts of {theirs} then stop taking work and exit with status 75 within {}s, for their supervisors to restart them on the new binary), or stop every host of {theirs} first",
                RELEASE_LOOK_EVERY.as_secs()
            ),
        }),
        Some(theirs) if theirs != RELEASE => Ok(Some(theirs)),
        _ => Ok(None),
    }
}

/// How often a host on a broker looks whether another release took it
/// over.
pub const RELEASE_LOOK_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// An append under way, for async code: answers once the events are stored.
pub type AppendFuture =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<Appended, BackendError>> + Send>>;

/// A place events are stored and delivered from. See the module docs.
pub trait Backend: Send + Sync + 'static {
    /// What it is, for logs, `plugbus plugins` and metrics: `embedded`, or
    /// the broker's address without credentials.
    fn describe(&self) -> String;

    /// What it guarantees.
    fn capabilities(&self) -> Capabilities;

    /// Whether the last call to it went through (always, for the embedded
    /// store).
    fn connected(&self) -> bool {
        true
    }

    /// The plugbus release the broker is used by: recorded as `ours` when
    /// none is (or, with `take_over`, whatever is), and returned as it was
    /// before. Every host on one broker runs the same release
    /// ([`check_release`]). None on the embedded store.
    fn claim_release(&self, _ours: &str, _take_over: bool) -> Result<Option<String>, BackendError> {
        Ok(None)
    }

    /// Where `plugin` is in the log, when the backend keeps it for all
    /// hosts (a broker); `None` otherwise (the host's own cursor says).
    fn position(&self, plugin: &str) -> Result<Option<Position>, BackendError> {
        let _ = plugin;
        Ok(None)
    }

    /// Store `events` in order, durably before returning; an id seen within
    /// the dedup window is not stored again.
    fn append(&self, events: Vec<Event>) -> Result<Appended, BackendError>;

    /// Whether appending `events` events now returns without waiting for
    /// I/O or for room, so that async code may call [`Backend::append`]
    /// in place (memory mode, when no queue is near full).
    fn appends_without_waiting(&self, events: usize) -> bool {
        let _ = events;
        false
    }

    /// [`Backend::append`] from async code, holding no runtime thread
    /// while it waits: in place when it would not wait, else on a blocking
    /// thread (the embedded store awaits its group commit instead).
    fn append_async(self: Arc<Self>, events: Vec<Event>) -> AppendFuture {
        if self.appends_without_waiting(events.len()) {
            let appended = self.append(events);
            return Box::pin(std::future::ready(appended));
        }
        Box::pin(async move {
            tokio::task::spawn_blocking(move || self.append(events))
                .await
                .map_err(|_| BackendError::Store(crate::store::StoreError::Closed))?
        })
    }

    /// The host starts the plugins of its directory: a backend that knows
    /// the owners of timers only as their plugins start (NATS) holds
    /// firing until [`Backend::plugins_started`], so that timers that fell
    /// due while the host was down fire in due order across plugins.
    fn plugins_starting(&self) {}

    /// See [`Backend::plugins_starting`].
    fn plugins_started(&self) {}

    /// Count the timers this host fires, and their lateness, into
    /// `meters` (where the host fires them: not on NATS, whose server does).
    fn count_timers_into(&self, meters: clock::TimerMeters) {
        let _ = meters;
    }

    /// `owner`'s timer `key`, if it is set ([`Capabilities::timers`]).
    fn timer(&self, owner: &str, key: &str) -> Result<Option<crate::timer::Timer>, BackendError> {
        let _ = (owner, key);
        Ok(None)
    }

    /// How many timers `owner` keeps set, and their bytes.
    fn timer_usage(&self, owner: &str) -> Result<crate::timer::Usage, BackendError> {
        let _ = owner;
        Ok(crate::timer::Usage::default())
    }

    /// When `owner`'s next timer is due (Unix ms), if it keeps one.
    fn next_timer_due(&self, owner: &str) -> Result<Option<u64>, BackendError> {
        let _ = owner;
        Ok(None)
    }

    /// Up to `max` of `owner`'s timers, by key.
    fn timers_of(&self, owner: &str, max: usize) -> Result<Vec<crate::timer::Timer>, BackendError> {
        let _ = (owner, max);
        Ok(Vec::new())
    }

    /// Set `timers` for publishers ([`crate::timer::OUTSIDE`]): each
    /// publishes its event, under its own id, when due (`deliverat`).
    fn schedule(&self, timers: Vec<crate::timer::Timer>) -> Result<(), BackendError> {
        let _ = timers;
        Err(BackendError::NotOffered {
            backend: self.describe(),
            what: "events scheduled with `deliverat`".into(),
            fix: "run the host on the embedded store (--data, the default) or in --memory to schedule events, or publish them when they are due".into(),
        })
    }

    /// The embedded store under this backend, for what only it offers
    /// (a backup, the repair records, the disk reserve); none elsewhere.
    fn store(&self) -> Option<&Arc<crate::store::Store>> {
        None
    }

    /// `plugin` stopped on this host: its consumers are gone (memory mode
    /// stops fanning events out to it).
    fn stopped(&self, plugin: &str) {
        let _ = plugin;
    }

    /// The host is stopping: consumers' sources end once drained.
    fn close(&self) {}

    /// The host's workers are gone: finish writing what was accepted and
    /// stop (the embedded log's committer syncs and ends).
    fn finish(&self) {}

    /// Show every event it accepts to `watcher` as it accepts it, where
    /// the backend can (memory mode); false where the host follows the
    /// backend's log instead (a broker's, shared by every host).
    fn observe(&self, watcher: Arc<dyn crate::event::Watcher>) -> bool {
        let _ = watcher;
        false
    }

    /// Open `plugin`'s delivery on this host.
    fn consumer(
        &self,
        plugin: &str,
        options: ConsumerOptions,
    ) -> Result<Box<dyn Consumer>, BackendError>;

    /// Open `plugin`'s delivery on this host as `options.parts` consumers,
    /// one per worker. A broker shares one consumer between hosts and keeps
    /// no per-key order across them: it takes one part without strict
    /// ordering, and refuses the rest.
    fn consumers(
        &self,
        plugin: &str,
        options: ConsumerOptions,
    ) -> Result<Vec<Box<dyn Consumer>>, BackendError> {
        if options.parts > 1 || options.strict {
            return Err(BackendError::Unsupported {
                backend: self.describe(),
                plugin: plugin.to_string(),
                reason: format!("on a broker a plugin runs one worker per host with ordering under retry `none` (it has concurrency {}{}): per-key order across hosts is not kept yet; set concurrency = 1 and ordering = \"none\" in its manifest, or run it on the embedded store", options.parts, if options.strict { " and strict ordering" } else { "" }),
            });
        }
        Ok(vec![self.consumer(plugin, options)?])
    }

    /// Up to `max` events of the log from sequence `from` on.
    fn read(&self, from: u64, max: usize) -> Result<Vec<Event>, BackendError>;

    /// Up to `max` events of the causal chain `correlationid` (the id of
    /// the event that started it) still in the log, in log order.
    fn chain(&self, correlationid: &str, max: usize) -> Result<Vec<Event>, BackendError> {
        let _ = (correlationid, max);
        Err(BackendError::NotOffered {
            backend: self.describe(),
            what: "an index of events by correlation id".into(),
            fix: "run on the embedded store to trace a chain, or read the log (GET /v1/log)".into(),
        })
    }

    /// The sequence of the last event appended (0: none).
    fn head(&self) -> Result<u64, BackendError>;

    /// The first sequence whose event's `time` is at or after `t` (the
    /// next one to come, when there is none).
    fn first_since(&self, t: SystemTime) -> Result<u64, BackendError>;

    /// Deliver the log to `plugin` again from `start`, emptying its
    /// key-value bucket first if `reset_state`. Its consumers must be
    /// closed (the plugin stopped) while this runs.
    fn replay(&self, plugin: &str, start: Start, reset_state: bool) -> Result<(), BackendError>;

    /// `plugin`'s cursors through the log (one per worker): every event up
    /// to a cursor's `through` is done, but the retries pending in it.
    fn cursors(&self, plugin: &str) -> Result<Vec<crate::store::progress::Cursor>, BackendError> {
        let _ = plugin;
        Err(BackendError::NotOffered {
            backend: self.describe(),
            what: "plugins' cursors with their pending retries".into(),
            fix: "read a plugin's position with GET /v1/plugins".into(),
        })
    }

    /// The accounts of the plugins of `scopes`: the events of the log each
    /// subscribes to against what its cursors say became of them
    /// ([`crate::audit`]).
    fn audit(
        &self,
        scopes: &[crate::audit::Scope],
    ) -> Result<Vec<crate::audit::Audit>, BackendError> {
        let _ = scopes;
        Err(BackendError::NotOffered {
            backend: self.describe(),
            what: "the audit of a plugin's events".into(),
            fix: "compare the broker's stream with the plugin's counts in GET /v1/plugins".into(),
        })
    }

    /// `plugin`'s dead letters, in log order.
    fn dead_letters(&self, plugin: &str) -> Result<Vec<DeadLetter>, BackendError>;

    /// Deliver the selected dead letters again (same id, attempt 1);
    /// returns how many.
    fn redrive(&self, plugin: &str, which: &Selection) -> Result<usize, BackendError>;

    /// Delete the selected dead letters; returns how many.
    fn purge(&self, plugin: &str, which: &Selection) -> Result<usize, BackendError>;

    /// Write to `plugin`'s bucket outside delivery (its `init`), at once
    /// and atomically: a value, or none to delete.
    fn put_state(
        &self,
        plugin: &str,
        writes: Vec<(String, Option<Vec<u8>>)>,
    ) -> Result<(), BackendError>;

    /// One value of `plugin`'s key-value bucket.
    fn kv_get(&self, plugin: &str, key: &str) -> Result<Option<Vec<u8>>, BackendError>;

    /// One value of `plugin`'s bucket as its handler reads it, inside a
    /// batch: a backend may answer from this host's copy of the state
    /// (`state_cache`), because the settlement checks every value the batch
    /// read against the bucket's and refuses the batch on a difference
    /// ([`BackendError::Conflict`]). What others read goes to
    /// [`Backend::kv_get`].
    fn kv_read(&self, plugin: &str, key: &str) -> Result<Option<Vec<u8>>, BackendError> {
        self.kv_get(plugin, key)
    }

    /// Up to `limit` keys of `plugin`'s bucket after `after`, in key order,
    /// with their values.
    fn kv_list(
        &self,
        plugin: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, Vec<u8>)>, BackendError>;
}
