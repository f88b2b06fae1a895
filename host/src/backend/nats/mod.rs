//! The NATS JetStream backend (`--broker nats://HOST:PORT`, `tls://…`):
//! the log is one stream (`PLUGBUS`, subjects `plugbus.ev.TOPIC`) whose
//! stream sequences are the plugbus sequences; each plugin is one durable
//! pull consumer on it, filtered to its topics and shared by every host
//! that runs the plugin. Retries are naks with a delay; re-driven dead
//! letters come back on the plugin's own subject `plugbus.redo.PLUGIN` in
//! the same stream. Dead letters are kept in the stream `PLUGBUS_DLQ`
//! (`plugbus.dlq.PLUGIN`), and each plugin's state in a key-value bucket
//! `plugbus_PLUGIN` (the stream `KV_plugbus_PLUGIN`).
//!
//! Guarantees: an ack cannot fence a host that stalled past its lease (the
//! server takes a late ack), so the state commit does. A settlement is
//! one atomic batch (2.12+) into the plugin's bucket: the state writes,
//! an applied-marker per settled event guarded by the revision this host
//! saw (a host that takes over a redelivered event writes a claim there
//! first, so the stalled host's guard fails), and the settlement's
//! follow-ups and dead letters as an outbox. Then the outbox is published
//! (follow-ups with their ids as `Nats-Msg-Id`, so publishing it twice
//! stores it once within the duplicate window) and the events acked. An
//! event redelivered after its commit (a lost ack, a crash before the
//! outbox went out) is not handled again: its outbox is published again
//! and it is acked. Markers and outboxes expire after
//! [`MARKER_TTL`]. So state is effectively-once, but not one unit with
//! the acks and the follow-ups as on Redis and the embedded store.
//!
//! A handler's read is answered by this host's copy of the plugin's state
//! (`store::state_cache`) when it holds the key, else from the bucket (a
//! round trip, then kept): the copy takes this host's committed writes and
//! is forgotten on any refused or unknown settlement. The bucket keeps no
//! version of the state as a whole, so a value another host wrote since
//! is caught where every read is: the settlement checks each value its
//! batch read, guarded by the key's sequence, and refuses it as a
//! conflict.
//!
//! Timers (`timers`) are records in their owner's bucket, set and called
//! off in the settlement's batch, fired by the clock of a host that runs
//! the plugin: a firing record guarded by the timer's sequence, the event,
//! the delete.
//!
//! Rooms: `connect` (the connection, streams and buckets, the bridge to
//! the client's runtime), `commit` (key names, markers and the atomic
//! batch), `consumer` (delivery), `timers`, `letters` (dead letters),
//! `accounts` (the books of the audit).

mod accounts;
mod commit;
mod connect;
mod consumer;
mod letters;
mod timers;

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_nats::jetstream::{self, consumer::pull, consumer::DeliverPolicy, stream};
use futures_util::StreamExt;

use super::{
    Access, Appended, Backend, BackendError, Capabilities, Consumer, ConsumerOptions, Position,
    Start,
};
use crate::event::Event;
use crate::store::codec;
use crate::store::dead::{DeadLetter, Selection};
use crate::store::state_cache::StateCaches;
use connect::Bridge;

/// How long connecting may take before the broker counts as unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// The longest one call may go unanswered (a batch read adds its wait).
const CALL_TIMEOUT: Duration = Duration::from_secs(15);
/// How long applied-markers, claims and outboxes are kept: a host stalled
/// longer than this past its lease is no longer fenced.
pub const MARKER_TTL: Duration = Duration::from_secs(3600);
/// The oldest server with what this backend builds on (atomic batches).
const SERVER_MIN: (u64, u64) = (2, 12);

/// The connection, made on first use; the client reconnects by itself.
struct Conn {
    client: async_nats::Client,
    js: jetstream::Context,
    /// The log's stream, the dead letters' and the accounts'.
    events: stream::Stream,
    dlq: stream::Stream,
    accounts: stream::Stream,
}

/// What the backend and its consumers share.
pub(super) struct Inner {
    url: String,
    /// The address, without credentials.
    broker: String,
    access: Access,
    conn: tokio::sync::OnceCell<Conn>,
    /// Subjects' first token (`plugbus`); the streams are named by it.
    prefix: String,
    dedup: Duration,
    connected: AtomicBool,
    /// Plugins whose bucket is known to exist.
    buckets: Mutex<HashMap<String, stream::Stream>>,
    /// This host's copies of the plugins' state (unversioned: the broker
    /// keeps no version; each settlement checks what its batch read).
    caches: StateCaches,
    /// The timers this host looks after.
    timers: timers::Index,
    /// Wakes this host's timer clock once it runs.
    clock: std::sync::OnceLock<crate::backend::clock::Ringer>,
}

impl Inner {
    fn stream(&self) -> String {
        self.prefix.to_uppercase()
    }

    fn dlq_stream(&self) -> String {
        format!("{}_DLQ", self.stream())
    }

    fn accounts_stream(&self) -> String {
        format!("{}_ACCOUNTS", self.stream())
    }

    fn event_subject(&self, topic: &str) -> String {
        format!("{}.ev.{topic}", self.prefix)
    }

    fn redo_subject(&self, plugin: &str) -> String {
        format!("{}.redo.{plugin}", self.prefix)
    }

    fn dlq_subject(&self, plugin: &str) -> String {
        format!("{}.dlq.{plugin}", self.prefix)
    }

    fn bucket(&self, plugin: &str) -> String {
        format!("{}_{plugin}", self.prefix)
    }

    fn unavailable(&self, reason: impl std::fmt::Display) -> BackendError {
        self.connected.store(false, Ordering::Relaxed);
        BackendError::Unavailable {
            broker: self.broker.clone(),
            reason: reason.to_string(),
        }
    }

    fn refused(&self, reason: impl std::fmt::Display) -> BackendError {
        BackendError::Refused {
            broker: self.broker.clone(),
            reason: reason.to_string(),
        }
    }

    fn corrupt(&self, what: impl Into<String>, reason: impl Into<String>) -> BackendError {
        BackendError::Corrupt {
            broker: self.broker.clone(),
            what: what.into(),
            reason: reason.into(),
        }
    }

    /// A client error as ours: while the connection is down, or when the
    /// server did not answer in time, [`BackendError::Unavailable`];
    /// anything the server answered, [`BackendError::Refused`].
    fn error(&self, e: impl std::fmt::Display) -> BackendError {
        let text = e.to_string();
        let down = self.conn.get().is_none_or(|c| {
            c.client.connection_state() != async_nats::connection::State::Connected
        });
        let lower = text.to_lowercase();
        if down
            || lower.contains("timed out")
            || lower.contains("no responders")
            || lower.contains("disconnect")
            || lower.contains("broken pipe")
        {
            self.unavailable(text)
        } else {
            self.refused(text)
        }
    }

    /// Up to `max` messages of `stream` on `filter` from sequence `from`
    /// on, with their stream sequences, read through a consumer of its
    /// own that is deleted after.
    async fn scan(
        &self,
        stream: &stream::Stream,
        filter: String,
        deliver: DeliverPolicy,
        max: usize,
    ) -> Result<Vec<(u64, async_nats::Message)>, BackendError> {
        let consumer = stream
            .create_consumer(pull::Config {
                deliver_policy: deliver,
                ack_policy: jetstream::consumer::AckPolicy::None,
                filter_subject: filter,
                inactive_threshold: Duration::from_secs(30),
                memory_storage: true,
                ..Default::default()
            })
            .await
            .map_err(|e| self.error(e))?;
        let name = consumer.cached_info().name.clone();
        let mut out = Vec::new();
        let result: Result<(), BackendError> = async {
            while out.len() < max {
                let want = (max - out.len()).min(1024);
                let mut batch = consumer
                    .fetch()
                    .max_messages(want)
                    .messages()
                    .await
                    .map_err(|e| self.error(e))?;
                let mut got = 0;
                while let Some(m) = batch.next().await {
                    let m = m.map_err(|e| self.error(e))?;
                    let seq = m
                        .info()
                        .map_err(|e| self.corrupt("a message's info", e.to_string()))?
                        .stream_sequence;
                    out.push((seq, m.message));
                    got += 1;
                }
                if got < want {
                    break;
                }
            }
            Ok(())
        }
        .await;
        let _ = stream.delete_consumer(&name).await;
        result.map(|()| out)
    }

    fn decode_event(&self, sequence: u64, bytes: &[u8]) -> Result<Event, BackendError> {
        codec::decode(sequence, bytes)
            .map_err(|e| self.corrupt(format!("log event {sequence}"), e.0))
    }

    /// Publish `events` to the log, each with its id as `Nats-Msg-Id`,
    /// and say their sequences and which were duplicates.
    async fn publish(&self, events: &[Event]) -> Result<Vec<(u64, bool)>, BackendError> {
        let messages = events
            .iter()
            .map(|e| (self.event_subject(&e.topic), e.id.clone(), codec::encode(e)))
            .collect();
        self.publish_all(messages).await
    }

    /// Publish each (subject, message id, payload), pipelined, waiting for
    /// the server's answers: (sequence, duplicate) each.
    pub(super) async fn publish_all(
        &self,
        messages: Vec<(String, String, Vec<u8>)>,
    ) -> Result<Vec<(u64, bool)>, BackendError> {
        let conn = self.conn().await?;
        let mut acks = Vec::with_capacity(messages.len());
        for (subject, id, payload) in messages {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert(async_nats::header::NATS_MESSAGE_ID, id.as_str());
            acks.push(
                conn.js
                    .publish_with_headers(subject, headers, payload.into())
                    .await
                    .map_err(|e| self.error(e))?,
            );
        }
        let mut out = Vec::with_capacity(acks.len());
        for ack in acks {
            let ack = ack.await.map_err(|e| self.error(e))?;
            out.push((ack.sequence, ack.duplicate));
        }
        Ok(out)
    }

    /// `plugin`'s durable consumer as the server has it, if there is one.
    pub(super) async fn consumer_info(
        &self,
        plugin: &str,
    ) -> Result<Option<jetstream::consumer::Info>, BackendError> {
        use jetstream::context::ConsumerInfoErrorKind;
        match self.events().await?.consumer_info(plugin).await {
            Ok(info) => Ok(Some(info)),
            Err(e) if e.kind() == ConsumerInfoErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.error(e)),
        }
    }
}

/// The NATS JetStream backend. See the module docs.
pub struct NatsBackend {
    /// Fires due timers: started with the first consumer or scheduled
    /// event. Stopped first when dropped (it runs on the bridge).
    clock: crate::backend::clock::LazyClock,
    inner: Arc<Inner>,
    bridge: Arc<Bridge>,
}

impl NatsBackend {
    /// A backend on the server at `url` (`nats://[USER:PASSWORD@]HOST:PORT`,
    /// `nats://TOKEN@HOST:PORT`, `tls://…`), its streams named by `prefix`,
    /// remembering appended ids for `dedup`. Connects lazily: an
    /// unreachable server is an error of the first call, not of this.
    pub fn open(
        url: &str,
        prefix: &str,
        dedup: Duration,
        access: Access,
    ) -> Result<NatsBackend, BackendError> {
        let broker = super::without_credentials(url);
        if !(url.starts_with("nats://") || url.starts_with("tls://")) {
            return Err(BackendError::Refused {
                broker,
                reason:
                    "not a NATS address: use nats://[USER:PASSWORD@]HOST:PORT or tls://HOST:PORT"
                        .into(),
            });
        }
        if let Some(ca) = &access.ca {
            if !ca.is_file() {
                return Err(BackendError::Refused {
                    broker,
                    reason: format!(
                        "cannot read the CA certificate {}; pass a readable PEM file to --broker-ca",
                        ca.display()
                    ),
                });
            }
        }
        let bridge = Bridge::new().map_err(|reason| BackendError::Refused {
            broker: broker.clone(),
            reason,
        })?;
        Ok(NatsBackend {
            inner: Arc::new(Inner {
                url: url.to_string(),
                broker,
                access,
                conn: tokio::sync::OnceCell::new(),
                prefix: prefix.to_string(),
                dedup,
                connected: AtomicBool::new(false),
                buckets: Mutex::default(),
                caches: StateCaches::default(),
                timers: timers::Index::default(),
                clock: std::sync::OnceLock::new(),
            }),
            bridge: Arc::new(bridge),
            clock: crate::backend::clock::LazyClock::default(),
        })
    }

    /// Start the timer clock, if it does not run yet.
    fn start_clock(&self) {
        let ringer = self.clock.start(|| {
            Arc::new(timers::NatsFire {
                inner: self.inner.clone(),
                bridge: self.bridge.clone(),
            })
        });
        let _ = self.inner.clock.set(ringer);
    }

    fn run<T: Send + 'static, F>(&self, f: impl FnOnce(Arc<Inner>) -> F) -> Result<T, BackendError>
    where
        F: Future<Output = Result<T, BackendError>> + Send + 'static,
    {
        self.bridge
            .run(&self.inner, CALL_TIMEOUT, f(self.inner.clone()))
    }
}

impl Backend for NatsBackend {
    fn describe(&self) -> String {
        self.inner.broker.clone()
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            atomic_settle: false,
            fenced: true,
            shared: true,
            dedup_window: self.inner.dedup,
            durable: true,
            timers: true,
        }
    }

    fn connected(&self) -> bool {
        self.inner.connected.load(Ordering::Relaxed)
    }

    fn claim_release(&self, ours: &str, take_over: bool) -> Result<Option<String>, BackendError> {
        let ours = ours.to_string();
        self.run(move |inner| async move {
            let conn = inner.conn().await?;
            // A key-value bucket of its own: `PREFIX_meta`, key `release`;
            // made once (the hosts look at it every few seconds).
            let bucket = format!("{}_meta", inner.prefix);
            let meta = match conn.js.get_key_value(&bucket).await {
                Ok(meta) => meta,
                Err(_) => conn
                    .js
                    .create_or_update_key_value(async_nats::jetstream::kv::Config {
                        bucket,
                        history: 1,
                        ..Default::default()
                    })
                    .await
                    .map_err(|e| inner.error(e))?,
            };
            // Recorded only when nobody has (atomically), unless taken over.
            if !take_over
                && meta
                    .create("release", ours.clone().into_bytes().into())
                    .await
                    .is_ok()
            {
                return Ok(None);
            }
            let before = meta
                .get("release")
                .await
                .map_err(|e| inner.error(e))?
                .map(|v| String::from_utf8_lossy(&v).into_owned());
            if take_over {
                meta.put("release", ours.into_bytes().into())
                    .await
                    .map_err(|e| inner.error(e))?;
            }
            Ok(before)
        })
    }

    fn position(&self, plugin: &str) -> Result<Option<Position>, BackendError> {
        let plugin = plugin.to_string();
        self.run(|inner| async move {
            Ok(inner.consumer_info(&plugin).await?.map(|info| Position {
                delivered: info.delivered.stream_sequence,
                lag: info.num_pending,
                pending: info.num_ack_pending as u64,
                waiting: 0,
            }))
        })
    }

    fn append(&self, events: Vec<Event>) -> Result<Appended, BackendError> {
        let published = self.run(|inner| async move { inner.publish(&events).await })?;
        Ok(Appended {
            duplicates: published.iter().filter(|(_, dup)| *dup).count(),
            sequences: published.into_iter().map(|(seq, _)| seq).collect(),
        })
    }

    fn count_timers_into(&self, meters: crate::backend::clock::TimerMeters) {
        self.clock.count_into(meters);
    }

    fn timer(&self, owner: &str, key: &str) -> Result<Option<crate::timer::Timer>, BackendError> {
        let (owner, key) = (owner.to_string(), key.to_string());
        self.run(|inner| async move { inner.timer(&owner, &key).await })
    }

    fn timer_usage(&self, owner: &str) -> Result<crate::timer::Usage, BackendError> {
        let owner = owner.to_string();
        self.run(|inner| async move {
            timers::ensure_scanned(&inner, &owner).await?;
            Ok(inner.timers.usage(&owner))
        })
    }

    fn next_timer_due(&self, owner: &str) -> Result<Option<u64>, BackendError> {
        let owner = owner.to_string();
        self.run(|inner| async move {
            timers::ensure_scanned(&inner, &owner).await?;
            Ok(inner.timers.next_due(&owner))
        })
    }

    fn timers_of(&self, owner: &str, max: usize) -> Result<Vec<crate::timer::Timer>, BackendError> {
        let owner = owner.to_string();
        self.run(move |inner| async move { inner.timers_of(&owner, max).await })
    }

    fn plugins_starting(&self) {
        self.inner.timers.hold(true);
    }

    fn plugins_started(&self) {
        self.inner.timers.hold(false);
        if let Some(r) = self.inner.clock.get() {
            r.ring();
        }
    }

    fn schedule(&self, timers: Vec<crate::timer::Timer>) -> Result<(), BackendError> {
        self.start_clock();
        let changes: Vec<crate::timer::TimerChange> = timers
            .iter()
            .cloned()
            .map(|t| crate::timer::TimerChange::Set(Box::new(t)))
            .collect();
        self.run(|inner| async move {
            timers::ensure_scanned(&inner, crate::timer::OUTSIDE).await?;
            inner.schedule(&timers).await
        })?;
        self.inner.timers.apply(crate::timer::OUTSIDE, &changes);
        if let Some(r) = self.inner.clock.get() {
            r.ring();
        }
        Ok(())
    }

    fn consumer(
        &self,
        plugin: &str,
        options: ConsumerOptions,
    ) -> Result<Box<dyn Consumer>, BackendError> {
        self.start_clock();
        self.inner.timers.watch(plugin);
        self.inner.timers.watch(crate::timer::OUTSIDE);
        let pull = {
            let plugin = plugin.to_string();
            let options = options.clone();
            self.run(|inner| async move { consumer::durable(&inner, &plugin, &options).await })?
        };
        Ok(Box::new(consumer::NatsConsumer::new(
            self.inner.clone(),
            self.bridge.clone(),
            plugin,
            options,
            pull,
        )))
    }

    fn read(&self, from: u64, max: usize) -> Result<Vec<Event>, BackendError> {
        if max == 0 {
            return Ok(Vec::new());
        }
        self.run(move |inner| async move {
            let stream = inner.events().await?;
            let start = DeliverPolicy::ByStartSequence {
                start_sequence: from.max(1),
            };
            let filter = inner.event_subject(">");
            let found = inner.scan(&stream, filter, start, max).await?;
            found
                .into_iter()
                .map(|(seq, m)| inner.decode_event(seq, &m.payload))
                .collect()
        })
    }

    fn head(&self) -> Result<u64, BackendError> {
        self.run(|inner| async move {
            let mut stream = inner.events().await?;
            let info = stream.info().await.map_err(|e| inner.error(e))?;
            Ok(info.state.last_sequence)
        })
    }

    /// The first sequence the server stored at or after `t`.
    fn first_since(&self, t: SystemTime) -> Result<u64, BackendError> {
        let nanos = t
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as i128);
        let start_time = time::OffsetDateTime::from_unix_timestamp_nanos(nanos)
            .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
        self.run(move |inner| async move {
            let mut stream = inner.events().await?;
            let filter = inner.event_subject(">");
            let found = inner
                .scan(
                    &stream,
                    filter,
                    DeliverPolicy::ByStartTime { start_time },
                    1,
                )
                .await?;
            match found.first() {
                Some((seq, _)) => Ok(*seq),
                None => {
                    let info = stream.info().await.map_err(|e| inner.error(e))?;
                    Ok(info.state.last_sequence + 1)
                }
            }
        })
    }

    fn replay(&self, plugin: &str, start: Start, reset_state: bool) -> Result<(), BackendError> {
        let from = start.sequence(self)?;
        self.inner.caches.of(plugin).forget();
        let plugin = plugin.to_string();
        self.run(
            move |inner| async move { consumer::replay(&inner, &plugin, from, reset_state).await },
        )
    }

    fn audit(
        &self,
        scopes: &[crate::audit::Scope],
    ) -> Result<Vec<crate::audit::Audit>, BackendError> {
        let mut books = Vec::with_capacity(scopes.len());
        for scope in scopes {
            let scope = scope.clone();
            books.push(self.run(|inner| async move { inner.books(&scope).await })?);
        }
        // After the books: a plugin at rest has every event up to here
        // either settled or after its position.
        let head = self.head()?;
        let mut audits =
            crate::audit::count(scopes, books, head, |from, max| self.read(from, max))?;
        audits
            .iter_mut()
            .for_each(crate::audit::Audit::at_least_once);
        Ok(audits)
    }

    fn dead_letters(&self, plugin: &str) -> Result<Vec<DeadLetter>, BackendError> {
        let plugin = plugin.to_string();
        let letters = self.run(|inner| async move { inner.letters(&plugin).await })?;
        Ok(letters.into_iter().map(|(_, l)| l).collect())
    }

    fn redrive(&self, plugin: &str, which: &Selection) -> Result<usize, BackendError> {
        let (plugin, which) = (plugin.to_string(), which.clone());
        self.run(|inner| async move { inner.redrive(&plugin, &which).await })
    }

    fn purge(&self, plugin: &str, which: &Selection) -> Result<usize, BackendError> {
        let (plugin, which) = (plugin.to_string(), which.clone());
        self.run(|inner| async move { inner.purge(&plugin, &which).await })
    }

    fn put_state(
        &self,
        plugin: &str,
        writes: Vec<(String, Option<Vec<u8>>)>,
    ) -> Result<(), BackendError> {
        if writes.is_empty() {
            return Ok(());
        }
        self.inner.caches.of(plugin).forget();
        let plugin = plugin.to_string();
        self.run(|inner| async move {
            inner.ensure_bucket(&plugin).await?;
            let bucket = inner.bucket(&plugin);
            let batch = writes
                .iter()
                .map(|(k, v)| commit::write(&bucket, k, v.as_deref(), None))
                .collect();
            let conn = inner.conn().await?;
            commit::atomic(&conn.client, batch)
                .await
                .map_err(|e| e.into_backend(&inner))?;
            Ok(())
        })
    }

    fn kv_get(&self, plugin: &str, key: &str) -> Result<Option<Vec<u8>>, BackendError> {
        let (plugin, key) = (plugin.to_string(), key.to_string());
        self.run(|inner| async move {
            let stream = inner.ensure_bucket(&plugin).await?;
            let subject = commit::key_subject(&inner.bucket(&plugin), &key);
            let found = commit::last(&inner, &stream, &subject).await?;
            Ok(found.and_then(|(_, v)| v))
        })
    }

    /// From this host's copy when it knows the key, else from the bucket
    /// (and kept in the copy).
    fn kv_read(&self, plugin: &str, key: &str) -> Result<Option<Vec<u8>>, BackendError> {
        let cache = self.inner.caches.of(plugin);
        if let Some(value) = cache.get(key) {
            return Ok(value);
        }
        let value = self.kv_get(plugin, key)?;
        cache.read_here(key, value.clone());
        Ok(value)
    }

    fn kv_list(
        &self,
        plugin: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, Vec<u8>)>, BackendError> {
        let plugin = plugin.to_string();
        let after = after.map(str::to_string);
        self.run(move |inner| async move {
            let stream = inner.ensure_bucket(&plugin).await?;
            let bucket = inner.bucket(&plugin);
            let mut keys = commit::keys(&inner, &stream, &bucket).await?;
            keys.sort_unstable();
            keys.retain(|k| after.as_deref().is_none_or(|a| k.as_str() > a));
            // Values looked up at once, a page at a time: deleted keys
            // (still listed) are passed over and the page filled on.
            let mut out = Vec::with_capacity(limit.min(keys.len()));
            let mut rest = keys.as_slice();
            while out.len() < limit && !rest.is_empty() {
                let (page, after) = rest.split_at((limit - out.len()).min(rest.len()));
                rest = after;
                let values = futures_util::future::join_all(page.iter().map(|key| {
                    let subject = commit::key_subject(&bucket, key);
                    let (inner, stream) = (&inner, &stream);
                    async move { commit::last(inner, stream, &subject).await }
                }))
                .await;
                for (key, value) in page.iter().zip(values) {
                    if let Some((_, Some(v))) = value? {
                        out.push((key.clone(), v));
                    }
                }
            }
            Ok(out)
        })
    }
}
