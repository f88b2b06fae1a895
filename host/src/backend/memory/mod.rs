//! Memory mode (`--memory`) as a backend: events fan out to each plugin's
//! bounded queues on the in-memory bus (`crate::bus`), plugins' state is a
//! map per plugin, and a settlement writes the state (if the values it was
//! computed from are still there) and its timer changes, then publishes
//! the follow-ups. Timers (`timers`) fire onto the bus when due.
//!
//! What it does not keep, as [`Capabilities`] and the conformance suite
//! declare it: nothing survives the process; no log to read back, replay,
//! trace or audit; no dead letters (given-up events are counted, not
//! kept); no duplicate window; a settlement's follow-ups are published
//! after its state is written, not atomically with it, and those a full
//! queue has no room for are dropped and counted. Its consumers are this
//! host's (`backend::local`), with retries and strict ordering as on the
//! embedded store.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use super::local::{Commit, LocalConsumer, LocalOptions};
use super::{Appended, Backend, BackendError, Capabilities, Consumer, ConsumerOptions, Start};
use crate::bus::{Bus, SubscribeOptions};
use crate::event::Event;
use crate::metrics::{DropReason, Metrics};
use crate::store::dead::{DeadLetter, Selection};
use crate::store::progress::{Cursor, Progress};
use prometheus_client::metrics::counter::Counter;

mod timers;

/// One plugin's state.
type Bucket = Arc<Mutex<BTreeMap<String, Vec<u8>>>>;

/// Memory mode's backend. See the module docs.
pub struct MemoryBackend {
    bus: Arc<Bus>,
    buckets: Mutex<HashMap<String, Bucket>>,
    metrics: Arc<Metrics>,
    timers: Arc<timers::Timers>,
}

impl MemoryBackend {
    /// A backend on `bus`, counting drops in `metrics`.
    pub fn new(bus: Arc<Bus>, metrics: Arc<Metrics>) -> MemoryBackend {
        MemoryBackend {
            timers: Arc::new(timers::Timers::new(bus.clone(), &metrics)),
            bus,
            buckets: Mutex::default(),
            metrics,
        }
    }

    /// A backend with a bus of its own (tests, `plugbus test`).
    pub fn standalone() -> MemoryBackend {
        let metrics = Arc::new(Metrics::new());
        MemoryBackend::new(
            Arc::new(Bus::new(Duration::from_secs(2), metrics.clone())),
            metrics,
        )
    }

    /// The bus events fan out on.
    pub fn bus(&self) -> &Arc<Bus> {
        &self.bus
    }

    fn bucket(&self, plugin: &str) -> Bucket {
        self.buckets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(plugin.to_string())
            .or_default()
            .clone()
    }

    /// What commits a settlement of `plugin`.
    fn commit_for(&self, plugin: &str) -> Settle {
        Settle {
            plugin: plugin.to_string(),
            bus: self.bus.clone(),
            bucket: self.bucket(plugin),
            timers: self.timers.clone(),
            dropped: self
                .metrics
                .drop_counter(plugin, DropReason::FollowUpQueueFull),
        }
    }

    fn not_kept(&self, what: &str) -> BackendError {
        BackendError::NotOffered {
            backend: self.describe(),
            what: what.to_string(),
            fix: "run on the embedded store (--data, the default) or a broker to keep it".into(),
        }
    }
}

/// A memory-mode settlement: its state writes, if every value they were
/// computed from is still the bucket's (checked and written under the
/// bucket's lock), then its follow-ups published (those that find no room
/// are counted as dropped). Dead letters and the cursor are not kept.
struct Settle {
    plugin: String,
    bus: Arc<Bus>,
    bucket: Bucket,
    timers: Arc<timers::Timers>,
    dropped: Counter,
}

impl Commit for Settle {
    fn write(
        &mut self,
        progress: Progress,
        follow_ups: Vec<Event>,
        expected: &[(String, Option<Vec<u8>>)],
    ) -> Result<(), BackendError> {
        {
            let mut map = self.bucket.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((key, _)) = expected.iter().find(|(k, v)| map.get(k) != v.as_ref()) {
                return Err(BackendError::Conflict {
                    plugin: self.plugin.clone(),
                    key: key.clone(),
                });
            }
            apply(&mut map, progress.kv);
        }
        self.timers.apply(&self.plugin, progress.timers);
        if !follow_ups.is_empty() {
            let n = follow_ups.len();
            if let Err(e) = self.bus.publish(crate::event::stamped(follow_ups)) {
                let crate::bus::PublishError::QueueFull { accepted, .. } = &e;
                self.dropped.inc_by((n - accepted) as u64);
                tracing::error!(plugin = %self.plugin, "follow-up events lost: {e}");
            }
        }
        Ok(())
    }
}

fn apply(map: &mut BTreeMap<String, Vec<u8>>, writes: Vec<(String, Option<Vec<u8>>)>) {
    for (k, v) in writes {
        match v {
            Some(v) => map.insert(k, v),
            None => map.remove(&k),
        };
    }
}

impl Backend for MemoryBackend {
    fn describe(&self) -> String {
        "memory".to_string()
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            atomic_settle: false,
            fenced: false,
            shared: false,
            dedup_window: Duration::ZERO,
            durable: false,
            timers: true,
        }
    }

    fn append(&self, events: Vec<Event>) -> Result<Appended, BackendError> {
        let published = self.bus.publish(events)?;
        Ok(Appended {
            sequences: (0..published.count as u64)
                .map(|i| published.first_sequence + i)
                .collect(),
            duplicates: 0,
        })
    }

    fn appends_without_waiting(&self, events: usize) -> bool {
        !self.bus.might_wait(events)
    }

    fn append_async(self: Arc<Self>, events: Vec<Event>) -> super::AppendFuture {
        if !self.bus.might_wait(events.len()) {
            return Box::pin(std::future::ready(self.append(events)));
        }
        // Waiting for room in a queue: on this thread, handing the
        // runtime's other tasks to another.
        Box::pin(async move { tokio::task::block_in_place(|| self.append(events)) })
    }

    fn consumer(
        &self,
        plugin: &str,
        options: ConsumerOptions,
    ) -> Result<Box<dyn Consumer>, BackendError> {
        super::first_of_consumers(self, plugin, options)
    }

    fn consumers(
        &self,
        plugin: &str,
        options: ConsumerOptions,
    ) -> Result<Vec<Box<dyn Consumer>>, BackendError> {
        let queues = self.bus.subscribe_with(
            plugin,
            options.patterns,
            SubscribeOptions {
                capacity: options.queue_events_max,
                parts: options.parts,
                key: options.key.clone(),
                overflow: options.overflow,
            },
        );
        Ok(queues
            .into_iter()
            .map(|queue| {
                let consumer = LocalConsumer::new(
                    plugin,
                    queue,
                    Box::new(self.commit_for(plugin)),
                    LocalOptions {
                        strict: options.strict.then(|| options.key.clone()),
                        start: Cursor::default(),
                        redrives: None,
                        drain_on_close: true,
                    },
                    None,
                );
                Box::new(consumer) as Box<dyn Consumer>
            })
            .collect())
    }

    fn stopped(&self, plugin: &str) {
        self.bus.unsubscribe(plugin);
    }

    fn close(&self) {
        self.bus.close();
    }

    fn timer(&self, owner: &str, key: &str) -> Result<Option<crate::timer::Timer>, BackendError> {
        Ok(self.timers.get(owner, key))
    }

    fn timer_usage(&self, owner: &str) -> Result<crate::timer::Usage, BackendError> {
        Ok(self.timers.usage(owner))
    }

    fn timers_of(&self, owner: &str, max: usize) -> Result<Vec<crate::timer::Timer>, BackendError> {
        Ok(self.timers.of(owner, max))
    }

    fn next_timer_due(&self, owner: &str) -> Result<Option<u64>, BackendError> {
        Ok(self.timers.next_due(owner))
    }

    fn schedule(&self, timers: Vec<crate::timer::Timer>) -> Result<(), BackendError> {
        let changes = timers
            .into_iter()
            .map(|t| crate::timer::TimerChange::Set(Box::new(t)))
            .collect();
        self.timers.apply(crate::timer::OUTSIDE, changes);
        Ok(())
    }

    fn observe(&self, watcher: Arc<dyn crate::event::Watcher>) -> bool {
        self.bus.observe(watcher);
        true
    }

    fn read(&self, _from: u64, _max: usize) -> Result<Vec<Event>, BackendError> {
        Err(self.not_kept("a log to read back"))
    }

    fn head(&self) -> Result<u64, BackendError> {
        Ok(self.bus.head())
    }

    fn first_since(&self, _t: SystemTime) -> Result<u64, BackendError> {
        Err(self.not_kept("the events' times"))
    }

    fn replay(&self, _plugin: &str, _start: Start, _reset: bool) -> Result<(), BackendError> {
        Err(self.not_kept("a log to replay"))
    }

    fn dead_letters(&self, _plugin: &str) -> Result<Vec<DeadLetter>, BackendError> {
        Err(self.not_kept("dead letters (they are counted, not kept)"))
    }

    fn redrive(&self, _plugin: &str, _which: &Selection) -> Result<usize, BackendError> {
        Err(self.not_kept("dead letters to re-drive"))
    }

    fn purge(&self, _plugin: &str, _which: &Selection) -> Result<usize, BackendError> {
        Err(self.not_kept("dead letters to purge"))
    }

    fn put_state(
        &self,
        plugin: &str,
        writes: Vec<(String, Option<Vec<u8>>)>,
    ) -> Result<(), BackendError> {
        let bucket = self.bucket(plugin);
        apply(
            &mut bucket.lock().unwrap_or_else(|p| p.into_inner()),
            writes,
        );
        Ok(())
    }

    fn kv_get(&self, plugin: &str, key: &str) -> Result<Option<Vec<u8>>, BackendError> {
        let bucket = self.bucket(plugin);
        let map = bucket.lock().unwrap_or_else(|p| p.into_inner());
        Ok(map.get(key).cloned())
    }

    fn kv_list(
        &self,
        plugin: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, Vec<u8>)>, BackendError> {
        let bucket = self.bucket(plugin);
        let map = bucket.lock().unwrap_or_else(|p| p.into_inner());
        let from = match after {
            Some(a) => std::ops::Bound::Excluded(a.to_string()),
            None => std::ops::Bound::Unbounded,
        };
        Ok(map
            .range((from, std::ops::Bound::Unbounded))
            .take(limit)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }
}
