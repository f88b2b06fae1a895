//! The Redis Streams backend (`--broker redis://HOST:PORT[/DB]`,
//! `redis+unix:///PATH`): the log is one stream whose entry ids are the
//! plugbus sequences (`0-SEQ`); each plugin is one consumer group on it,
//! shared by every host that runs the plugin (one consumer per host), plus
//! a redo stream of its own for retries whose time came, events handed back
//! and re-driven dead letters. Retries wait in a sorted set by due time and
//! are moved onto the redo stream by whichever host looks first, atomically.
//! Attempt numbers come from the entries' delivery counts.
//!
//! Keys (PREFIX defaults to `plugbus`): `PREFIX:release` (the plugbus
//! release every host on it runs), `PREFIX:log`, `PREFIX:seq`,
//! `PREFIX:times` (first sequence of each second, for replay by time),
//! `PREFIX:lastsec`, `PREFIX:id:ID` (dedup, expiring), and per plugin
//! `PREFIX:redo:P`, `PREFIX:retry:P`, `PREFIX:dead:P` (a hash by
//! sequence), `PREFIX:kv:P` (a hash: the plugin's state),
//! `PREFIX:kvversion:P` (moved by every write to it, so that each host's
//! copy of the state, `backend::state_cache`, knows when another host
//! wrote), `PREFIX:settled:P`
//! (each host's last settlement), `PREFIX:fence:P` (each host's fence
//! token, deleted when its entries are claimed) and `PREFIX:accounts:P`
//! (where the plugin's accounts start, and how many of its events were
//! handled and given up on since, counted in the settlement: the books of
//! the audit, see `audit`).
//!
//! Guarantees: a settlement (acks, retries, dead letters, state writes,
//! follow-ups) is one Lua script that first checks that this host still
//! holds every entry at the delivery count it saw (XACK alone does not
//! check ownership), so a host that stalled past its lease commits
//! nothing. The check is one look at the host's fence token while no entry
//! of it was claimed since its last settlement checked one by one (claims
//! delete the token), and an XPENDING otherwise. On one primary with `appendfsync always` that keeps the
//! embedded store's effectively-once state. Replication is asynchronous: a
//! failover may lose what was acknowledged.
//!
//! Timers (`timers`): `PREFIX:timer:OWNER` (a hash of records by key),
//! `PREFIX:timers` (every owner's by due time), `PREFIX:timerdue:OWNER`
//! (the owner's by due time) and `PREFIX:timerbytes:OWNER`,
//! set by the settlement that sets them and fired by any host's clock.
//!
//! Rooms: `scripts` (the Lua), `consumer` (delivery), `timers`, `reply`
//! (reading Redis's answers), `audit` (the books of the audit).

mod audit;
mod consumer;
mod reply;
mod scripts;
mod timers;

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use super::{
    Appended, Backend, BackendError, Capabilities, Consumer, ConsumerOptions, Position, Start,
};
use crate::event::{now_rfc3339, Event};
use crate::store::codec;
use crate::store::dead::{self, DeadLetter, Selection};
use reply::{entries, int, text};
use scripts::Scripts;

use crate::store::state_cache::{StateCache, StateCaches, STATE_CACHE_LOAD_ENTRIES_MAX};

/// How long connecting may take before the broker counts as unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// The longest a command may go unanswered before the connection counts
/// as lost (a blocking read adds its own block time).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);
/// The most events one append script carries.
const APPEND_EVENTS_MAX: usize = 512;

/// What the backend and its consumers share: the client, the keys' prefix
/// and the scripts.
pub(super) struct Shared {
    client: redis::Client,
    /// The address, without credentials.
    broker: String,
    prefix: String,
    dedup: Duration,
    scripts: Scripts,
    /// This host's copies of the plugins' state.
    caches: StateCaches,
    /// Whether the last call went through.
    connected: std::sync::atomic::AtomicBool,
    /// Wakes this host's timer clock once it runs.
    clock: std::sync::OnceLock<crate::backend::clock::Ringer>,
}

impl Shared {
    fn key(&self, what: &str) -> String {
        format!("{}:{what}", self.prefix)
    }

    fn plugin_key(&self, what: &str, plugin: &str) -> String {
        format!("{}:{what}:{plugin}", self.prefix)
    }

    /// `plugin`'s state version key: moved by every write to its bucket.
    fn kv_version_key(&self, plugin: &str) -> String {
        self.plugin_key("kvversion", plugin)
    }

    fn connect(&self) -> Result<redis::Connection, BackendError> {
        let con = self
            .client
            .get_connection_with_timeout(CONNECT_TIMEOUT)
            .map_err(|e| self.error(e))?;
        con.set_read_timeout(Some(COMMAND_TIMEOUT))
            .and_then(|()| con.set_write_timeout(Some(COMMAND_TIMEOUT)))
            .map_err(|e| self.error(e))?;
        Ok(con)
    }

    /// A Redis error as ours: a lost connection, or a server not ready yet
    /// (loading its data after a restart), is [`BackendError::Unavailable`];
    /// anything else the server answered is [`BackendError::Refused`].
    fn error(&self, e: redis::RedisError) -> BackendError {
        use redis::{ErrorKind, ServerErrorKind};
        // A server still loading its data after a restart, or between
        // roles, answers again soon: it is as unreachable as a closed port.
        let not_ready = matches!(
            e.kind(),
            ErrorKind::Server(
                ServerErrorKind::BusyLoading
                    | ServerErrorKind::TryAgain
                    | ServerErrorKind::MasterDown
                    | ServerErrorKind::ClusterDown
            )
        );
        if e.is_io_error() || e.is_connection_dropped() || e.is_timeout() || not_ready {
            BackendError::Unavailable {
                broker: self.broker.clone(),
                reason: e.to_string(),
            }
        } else {
            BackendError::Refused {
                broker: self.broker.clone(),
                reason: e.to_string(),
            }
        }
    }

    fn corrupt(&self, what: impl Into<String>, reason: impl Into<String>) -> BackendError {
        BackendError::Corrupt {
            broker: self.broker.clone(),
            what: what.into(),
            reason: reason.into(),
        }
    }

    /// Run `f` on `slot`'s connection, connecting first if there is none;
    /// a connection that failed is dropped, to be made again next time.
    fn with<T>(
        &self,
        slot: &mut Option<redis::Connection>,
        f: impl FnOnce(&mut redis::Connection) -> redis::RedisResult<T>,
    ) -> Result<T, BackendError> {
        let mut con = match slot.take() {
            Some(con) => con,
            None => self.connect().inspect_err(|_| {
                self.connected.store(false, Ordering::Relaxed);
            })?,
        };
        match f(&mut con) {
            Ok(v) => {
                *slot = Some(con);
                self.connected.store(true, Ordering::Relaxed);
                Ok(v)
            }
            Err(e) => {
                let e = self.error(e);
                self.connected.store(
                    !matches!(e, BackendError::Unavailable { .. }),
                    Ordering::Relaxed,
                );
                if matches!(e, BackendError::Refused { .. }) {
                    *slot = Some(con);
                }
                Err(e)
            }
        }
    }

    /// Decode a log entry's event bytes.
    fn event(&self, sequence: u64, bytes: &[u8]) -> Result<Event, BackendError> {
        codec::decode(sequence, bytes)
            .map_err(|e| self.corrupt(format!("log event {sequence}"), e.0))
    }
}

/// The Redis Streams backend. See the module docs.
pub struct RedisBackend {
    shared: Arc<Shared>,
    /// Idle connections: a call takes one (or makes one) and puts it back,
    /// so that publishes from several requests run at once (and share
    /// Redis's fsyncs) instead of queueing for one connection.
    idle: Mutex<Vec<redis::Connection>>,
    /// Fires due timers: started with the first consumer or scheduled
    /// event (a host that runs no plugin, or a CLI command, needs none).
    clock: crate::backend::clock::LazyClock,
}

/// Idle connections kept for publishing and the API.
const IDLE_CONNECTIONS_MAX: usize = 8;

impl RedisBackend {
    /// A backend on the server at `url` (`redis://[USER:PASSWORD@]HOST:PORT[/DB]`,
    /// `rediss://…` for TLS, or `redis+unix:///PATH`), its keys under
    /// `prefix`, remembering appended ids for `dedup`. With TLS the server's
    /// certificate must chain to the system's roots, or to `ca` (a PEM
    /// file) when given. Connects lazily: an unreachable server is an error
    /// of the first call, not of this.
    pub fn open(
        url: &str,
        prefix: &str,
        dedup: Duration,
        ca: Option<&std::path::Path>,
    ) -> Result<RedisBackend, BackendError> {
        let broker = super::without_credentials(url);
        let refused = |reason: String| BackendError::Refused {
            broker: broker.clone(),
            reason,
        };
        let how =
            "use redis://[USER:PASSWORD@]HOST:PORT[/DB], rediss://… (TLS) or redis+unix:///PATH";
        let client = match ca {
            None => redis::Client::open(url)
                .map_err(|e| refused(format!("not a Redis address ({e}); {how}")))?,
            Some(file) => {
                if !url.starts_with("rediss://") {
                    return Err(refused(format!(
                        "--broker-ca {} is for TLS: use a rediss:// address",
                        file.display()
                    )));
                }
                let root = std::fs::read(file).map_err(|e| {
                    refused(format!(
                        "cannot read the CA certificate {} ({e}); pass a readable PEM file to --broker-ca",
                        file.display()
                    ))
                })?;
                let certs = redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(root),
                };
                redis::Client::build_with_tls(url, certs).map_err(|e| {
                    refused(format!(
                        "{e}; {how}, with a PEM certificate in --broker-ca {}",
                        file.display()
                    ))
                })?
            }
        };
        Ok(RedisBackend {
            shared: Arc::new(Shared {
                client,
                broker,
                prefix: prefix.to_string(),
                dedup,
                scripts: Scripts::new(),
                caches: StateCaches::default(),
                connected: std::sync::atomic::AtomicBool::new(false),
                clock: std::sync::OnceLock::new(),
            }),
            idle: Mutex::default(),
            clock: crate::backend::clock::LazyClock::default(),
        })
    }

    fn with<T>(
        &self,
        f: impl FnOnce(&mut redis::Connection) -> redis::RedisResult<T>,
    ) -> Result<T, BackendError> {
        self.with_slot(|shared, slot| shared.with(slot, f))
    }

    /// Start the timer clock, if it does not run yet.
    fn start_clock(&self) {
        let ringer = self.clock.start(|| {
            Arc::new(timers::RedisFire {
                shared: self.shared.clone(),
                con: Mutex::default(),
            })
        });
        let _ = self.shared.clock.set(ringer);
    }

    /// Run `f` with an idle connection slot (filled by `f` if empty), put
    /// back after.
    fn with_slot<T>(
        &self,
        f: impl FnOnce(&Shared, &mut Option<redis::Connection>) -> Result<T, BackendError>,
    ) -> Result<T, BackendError> {
        let mut slot = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let result = f(&self.shared, &mut slot);
        if let Some(con) = slot {
            let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
            if idle.len() < IDLE_CONNECTIONS_MAX {
                idle.push(con);
            }
        }
        result
    }

    fn letters(&self, plugin: &str) -> Result<Vec<DeadLetter>, BackendError> {
        let key = self.shared.plugin_key("dead", plugin);
        let all: Vec<(String, Vec<u8>)> =
            self.with(|c| redis::cmd("HGETALL").arg(&key).query(c))?;
        let mut out = Vec::with_capacity(all.len());
        for (seq, bytes) in all {
            let corrupt = || {
                self.shared.corrupt(
                    format!("dead letter {seq} of plugin `{plugin}`"),
                    "bad record",
                )
            };
            let sequence = seq.parse::<u64>().map_err(|_| corrupt())?;
            let letter = dead::decode(plugin, sequence, &bytes).ok_or_else(corrupt)?;
            out.push(letter);
        }
        out.sort_by_key(|l| l.event.sequence);
        Ok(out)
    }
}

impl RedisBackend {
    /// A handler's read of `key` that this host's copy could not answer:
    /// the value with the version it is true at, and, when the copy may
    /// load (`load_whole`), the whole bucket if it is small enough.
    fn read_state(
        &self,
        cache: &StateCache,
        plugin: &str,
        key: &str,
        load_whole: bool,
    ) -> Result<Option<Vec<u8>>, BackendError> {
        let mut call = self.shared.scripts.read_state.prepare_invoke();
        call.key(self.shared.plugin_key("kv", plugin))
            .key(self.shared.kv_version_key(plugin))
            .arg(key)
            .arg(if load_whole {
                STATE_CACHE_LOAD_ENTRIES_MAX
            } else {
                0
            });
        type Answer = (u64, Option<Vec<u8>>, Option<Vec<Vec<u8>>>);
        let (version, value, all): Answer = self.with(|c| call.invoke(c))?;
        match all {
            Some(flat) => {
                let mut entries = Vec::with_capacity(flat.len() / 2);
                let mut flat = flat.into_iter();
                while let (Some(k), Some(v)) = (flat.next(), flat.next()) {
                    let k = String::from_utf8(k)
                        .map_err(|e| self.shared.corrupt("a state key", e.to_string()))?;
                    entries.push((k, v));
                }
                cache.loaded(entries, version);
            }
            None => cache.read(key, value.clone(), version),
        }
        Ok(value)
    }
}

impl Backend for RedisBackend {
    fn describe(&self) -> String {
        self.shared.broker.clone()
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            atomic_settle: true,
            fenced: true,
            shared: true,
            dedup_window: self.shared.dedup,
            durable: true,
            timers: true,
        }
    }

    fn claim_release(&self, ours: &str, take_over: bool) -> Result<Option<String>, BackendError> {
        let key = self.shared.key("release");
        self.with(|c| {
            let mut set = redis::cmd("SET");
            set.arg(&key).arg(ours);
            if !take_over {
                set.arg("NX");
            }
            set.arg("GET").query::<Option<String>>(c)
        })
    }

    fn connected(&self) -> bool {
        self.shared.connected.load(Ordering::Relaxed)
    }

    fn position(&self, plugin: &str) -> Result<Option<Position>, BackendError> {
        let (log, retry) = (
            self.shared.key("log"),
            self.shared.plugin_key("retry", plugin),
        );
        let redo = self.shared.plugin_key("redo", plugin);
        let seq = self.shared.key("seq");
        let (groups, redo_groups, waiting, head): (redis::Value, redis::Value, u64, Option<u64>) =
            self.with(|c| {
                redis::pipe()
                    .cmd("XINFO")
                    .arg("GROUPS")
                    .arg(&log)
                    .cmd("XINFO")
                    .arg("GROUPS")
                    .arg(&redo)
                    .cmd("ZCARD")
                    .arg(&retry)
                    .cmd("GET")
                    .arg(&seq)
                    .query(c)
            })?;
        let Some(group) = reply::group(&groups, plugin) else {
            return Ok(None);
        };
        let redo_pending = reply::group(&redo_groups, plugin).map_or(0, |g| g.pending);
        // Not the group's own lag (Redis cannot always tell it, and counts
        // it from a counter that explicit ids do not move as it expects):
        // the log's ids are its sequences, so what is left to read is
        // exact.
        Ok(Some(Position {
            delivered: group.delivered,
            lag: head.unwrap_or(0).saturating_sub(group.delivered),
            pending: group.pending + redo_pending,
            waiting,
        }))
    }

    fn append(&self, events: Vec<Event>) -> Result<Appended, BackendError> {
        let mut sequences = Vec::with_capacity(events.len());
        let mut duplicates = 0;
        let keys = [
            self.shared.key("log"),
            self.shared.key("seq"),
            self.shared.key("times"),
            self.shared.key("lastsec"),
        ];
        for part in events.chunks(APPEND_EVENTS_MAX) {
            let mut call = self.shared.scripts.append.prepare_invoke();
            for k in &keys {
                call.key(k);
            }
            call.arg(&self.shared.prefix)
                .arg(self.shared.dedup.as_secs());
            for e in part {
                call.arg(&e.id).arg(codec::encode(e));
            }
            let out: Vec<u64> = self.with(|c| call.invoke(c))?;
            for pair in out.chunks(2) {
                sequences.push(pair[0]);
                duplicates += usize::from(pair.get(1) == Some(&1));
            }
        }
        Ok(Appended {
            sequences,
            duplicates,
        })
    }

    fn count_timers_into(&self, meters: crate::backend::clock::TimerMeters) {
        self.clock.count_into(meters);
    }

    fn timer(&self, owner: &str, key: &str) -> Result<Option<crate::timer::Timer>, BackendError> {
        self.with_slot(|shared, con| shared.timer(con, owner, key))
    }

    fn timer_usage(&self, owner: &str) -> Result<crate::timer::Usage, BackendError> {
        self.with_slot(|shared, con| shared.timer_usage(con, owner))
    }

    fn next_timer_due(&self, owner: &str) -> Result<Option<u64>, BackendError> {
        self.with_slot(|shared, con| shared.next_timer_due(con, owner))
    }

    fn timers_of(&self, owner: &str, max: usize) -> Result<Vec<crate::timer::Timer>, BackendError> {
        self.with_slot(|shared, con| shared.timers_of(con, owner, max))
    }

    fn schedule(&self, timers: Vec<crate::timer::Timer>) -> Result<(), BackendError> {
        self.start_clock();
        self.with_slot(|shared, con| shared.schedule(con, timers))?;
        if let Some(r) = self.shared.clock.get() {
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
        Ok(Box::new(consumer::RedisConsumer::open(
            self.shared.clone(),
            plugin,
            options,
        )?))
    }

    fn read(&self, from: u64, max: usize) -> Result<Vec<Event>, BackendError> {
        let log = self.shared.key("log");
        let reply: redis::Value = self.with(|c| {
            redis::cmd("XRANGE")
                .arg(&log)
                .arg(format!("0-{}", from.max(1)))
                .arg("+")
                .arg("COUNT")
                .arg(max)
                .query(c)
        })?;
        let mut out = Vec::new();
        for (id, fields) in entries(&reply).map_err(|e| self.shared.corrupt("the log", e))? {
            let seq = reply::sequence_of(&id).map_err(|e| self.shared.corrupt("the log", e))?;
            let bytes = reply::field(&fields, "e")
                .ok_or_else(|| self.shared.corrupt(format!("log entry {id}"), "no event"))?;
            out.push(self.shared.event(seq, bytes)?);
        }
        Ok(out)
    }

    fn head(&self) -> Result<u64, BackendError> {
        let key = self.shared.key("seq");
        let v: Option<u64> = self.with(|c| redis::cmd("GET").arg(&key).query(c))?;
        Ok(v.unwrap_or(0))
    }

    /// The first sequence whose event's time is at or after `t`, looking
    /// from the first event appended in the second before it.
    fn first_since(&self, t: std::time::SystemTime) -> Result<u64, BackendError> {
        let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let times = self.shared.key("times");
        let hint: Vec<(String, f64)> = self.with(|c| {
            redis::cmd("ZREVRANGEBYSCORE")
                .arg(&times)
                .arg(secs.saturating_sub(1))
                .arg("-inf")
                .arg("WITHSCORES")
                .arg("LIMIT")
                .arg(0)
                .arg(1)
                .query(c)
        })?;
        let mut from = hint
            .first()
            .and_then(|(seq, _)| seq.parse::<u64>().ok())
            .unwrap_or(1);
        loop {
            let events = self.read(from, 1024)?;
            let Some(last) = events.last().map(|e| e.sequence) else {
                return Ok(from);
            };
            if let Some(e) = events
                .iter()
                .find(|e| humantime::parse_rfc3339_weak(&e.time).is_ok_and(|et| et >= t))
            {
                return Ok(e.sequence);
            }
            from = last + 1;
        }
    }

    fn replay(&self, plugin: &str, start: Start, reset_state: bool) -> Result<(), BackendError> {
        let from = start.sequence(self)?;
        let keys = [
            self.shared.key("log"),
            self.shared.plugin_key("redo", plugin),
            self.shared.plugin_key("retry", plugin),
            self.shared.plugin_key("kv", plugin),
            self.shared.plugin_key("fence", plugin),
            self.shared.plugin_key("accounts", plugin),
            self.shared.kv_version_key(plugin),
        ];
        let mut call = self.shared.scripts.replay.prepare_invoke();
        for k in &keys {
            call.key(k);
        }
        call.arg(plugin)
            .arg(from - 1)
            .arg(if reset_state { "1" } else { "0" });
        let replayed: Result<String, _> = self.with(|c| call.invoke(c));
        if reset_state {
            self.shared.caches.of(plugin).forget();
        }
        replayed.map(|_| ())
    }

    fn audit(
        &self,
        scopes: &[crate::audit::Scope],
    ) -> Result<Vec<crate::audit::Audit>, BackendError> {
        let (books, head) = self.books(scopes)?;
        crate::audit::count(scopes, books, head, |from, max| self.read(from, max))
    }

    fn dead_letters(&self, plugin: &str) -> Result<Vec<DeadLetter>, BackendError> {
        self.letters(plugin)
    }

    fn redrive(&self, plugin: &str, which: &Selection) -> Result<usize, BackendError> {
        let chosen: Vec<DeadLetter> = self
            .letters(plugin)?
            .into_iter()
            .filter(|l| which.wants(l))
            .collect();
        if chosen.is_empty() {
            return Ok(0);
        }
        let mut call = self.shared.scripts.redrive.prepare_invoke();
        call.key(self.shared.plugin_key("dead", plugin))
            .key(self.shared.plugin_key("redo", plugin))
            .key(self.shared.plugin_key("accounts", plugin));
        for l in &chosen {
            call.arg(l.event.sequence).arg(codec::encode(&l.event));
        }
        self.with(|c| call.invoke(c))
    }

    fn purge(&self, plugin: &str, which: &Selection) -> Result<usize, BackendError> {
        let seqs: Vec<u64> = self
            .letters(plugin)?
            .into_iter()
            .filter(|l| which.wants(l))
            .map(|l| l.event.sequence)
            .collect();
        if seqs.is_empty() {
            return Ok(0);
        }
        let key = self.shared.plugin_key("dead", plugin);
        self.with(|c| redis::cmd("HDEL").arg(&key).arg(&seqs).query(c))
    }

    fn put_state(
        &self,
        plugin: &str,
        writes: Vec<(String, Option<Vec<u8>>)>,
    ) -> Result<(), BackendError> {
        let bucket = self.shared.plugin_key("kv", plugin);
        let mut pipe = redis::pipe();
        pipe.atomic();
        for (key, value) in &writes {
            match value {
                Some(v) => pipe.cmd("HSET").arg(&bucket).arg(key).arg(v.as_slice()),
                None => pipe.cmd("HDEL").arg(&bucket).arg(key),
            };
        }
        pipe.cmd("INCR")
            .arg(self.shared.kv_version_key(plugin))
            .ignore();
        let result = self.with(|c| pipe.query::<()>(c));
        // The next read learns the new version; a value read before this
        // write and kept after it is refused at its settlement (conflict).
        self.shared.caches.of(plugin).forget();
        result
    }

    fn kv_get(&self, plugin: &str, key: &str) -> Result<Option<Vec<u8>>, BackendError> {
        let bucket = self.shared.plugin_key("kv", plugin);
        self.with(|c| redis::cmd("HGET").arg(&bucket).arg(key).query(c))
    }

    /// From this host's copy when it knows the key, else from Redis (the
    /// value with the version it is true at, in one transaction).
    fn kv_read(&self, plugin: &str, key: &str) -> Result<Option<Vec<u8>>, BackendError> {
        let cache = self.shared.caches.of(plugin);
        if let Some(value) = cache.get(key) {
            return Ok(value);
        }
        self.read_state(&cache, plugin, key, cache.load_now())
    }

    fn kv_list(
        &self,
        plugin: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, Vec<u8>)>, BackendError> {
        let bucket = self.shared.plugin_key("kv", plugin);
        let mut keys: Vec<String> = self.with(|c| redis::cmd("HKEYS").arg(&bucket).query(c))?;
        keys.sort_unstable();
        keys.retain(|k| after.is_none_or(|a| k.as_str() > a));
        keys.truncate(limit);
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let values: Vec<Option<Vec<u8>>> =
            self.with(|c| redis::cmd("HMGET").arg(&bucket).arg(&keys).query(c))?;
        Ok(keys
            .into_iter()
            .zip(values)
            .filter_map(|(k, v)| Some((k, v?)))
            .collect())
    }
}

/// A dead letter's record as the settle script stores it (and the NATS
/// backend's DLQ stream, after the event's sequence).
pub(in crate::backend) fn dead_record(event: &Event, attempts: u32, error: &str) -> Vec<u8> {
    dead::encode(attempts, error, &now_rfc3339(), event)
}

/// The answer of a fenced script: `Ok` or who holds the entry now.
fn fenced(
    shared: &Shared,
    plugin: &str,
    reply: &redis::Value,
    sequence_of_id: impl Fn(&str) -> u64,
) -> Result<Vec<u64>, BackendError> {
    let items = match reply {
        redis::Value::Array(items) => items,
        other => return Err(shared.corrupt("a script's answer", format!("{other:?}"))),
    };
    match items.first().and_then(text).as_deref() {
        Some("OK") => Ok(items[1..]
            .iter()
            .filter_map(int)
            .map(|n| n as u64)
            .collect()),
        Some("CONFLICT") => Err(BackendError::Conflict {
            plugin: plugin.to_string(),
            key: items.get(1).and_then(text).unwrap_or_default(),
        }),
        Some("FENCED") => {
            let id = items.get(1).and_then(text).unwrap_or_default();
            Err(BackendError::Fenced {
                plugin: plugin.to_string(),
                sequence: sequence_of_id(&id),
                why: items.get(2).and_then(text).unwrap_or_default(),
            })
        }
        _ => Err(shared.corrupt("a script's answer", format!("{items:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use redis::{ErrorKind, ServerErrorKind};

    #[test]
    fn a_server_loading_after_a_restart_is_unavailable_not_a_refusal() {
        let backend = RedisBackend::open("redis://127.0.0.1:1", "t", Duration::ZERO, None)
            .expect("opens lazily");
        let shared = &backend.shared;
        let loading = redis::RedisError::from((
            ErrorKind::Server(ServerErrorKind::BusyLoading),
            "Redis is loading the dataset in memory",
        ));
        assert!(matches!(
            shared.error(loading),
            BackendError::Unavailable { .. }
        ));
        let refused = redis::RedisError::from((
            ErrorKind::Server(ServerErrorKind::ResponseError),
            "ERR wrong number of arguments",
        ));
        assert!(matches!(
            shared.error(refused),
            BackendError::Refused { .. }
        ));
    }
}
