//! The embedded backend: the fjall store and its log (`store`), the
//! default. One host, so one set of consumers per plugin (a second is
//! refused) and nothing to fence; a settlement is one atomic write of the
//! consumer's cursor (with its pending retries), state, dead letters and
//! follow-up events, so state-only plugins are exactly-once across a kill.
//!
//! A plugin's consumers (one per worker, `ConsumerOptions::parts`) are
//! [`LocalConsumer`]s fed by one log reader (`pump`) that routes each
//! event the plugin wants to the part its ordering key hashes to; a plugin
//! with one worker that waits for room has its worker run the reader
//! itself (`pump::Inline`), reading at most `queue_events_max` ahead. Each part
//! keeps its own cursor; where a new part starts sticks across restarts.

mod pump;
mod settle;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use super::clock::{self, TimerMeters};
use super::local::{LocalConsumer, LocalOptions, Source};
use super::{Appended, Backend, BackendError, Capabilities, Consumer, ConsumerOptions, Start};
use crate::bus::{Queue, CHUNK_EVENTS_MAX};
use crate::event::Event;
use crate::store::dead::{DeadLetter, Selection};
use crate::store::log::Log;
use crate::store::progress::{self, Cursor, Progress};

impl clock::Fire for Log {
    fn fire_due(&self, max: usize) -> Result<clock::Fired, BackendError> {
        let now = crate::timer::now_ms();
        let fired = Log::fire_due(self, now, max)?;
        let next_in = self
            .store()
            .next_due()?
            .map(|due| Duration::from_millis(due.saturating_sub(crate::timer::now_ms())));
        Ok(clock::Fired {
            late_ms: fired
                .iter()
                .map(|f| (f.owner.clone(), now.saturating_sub(f.timer.due_ms)))
                .collect(),
            next_in,
        })
    }
}

/// The embedded store as a backend.
pub struct EmbeddedBackend {
    log: Arc<Log>,
    /// The log's duplicate window.
    dedup_window: Duration,
    /// Plugins with open consumers.
    open: Arc<Mutex<HashSet<String>>>,
    /// Per plugin: set when dead letters were re-driven to it.
    redrives: Mutex<HashMap<String, Arc<AtomicBool>>>,
    /// Fires the timers.
    clock: clock::Clock,
}

impl EmbeddedBackend {
    /// The backend on a started log, whose duplicate window is
    /// `dedup_window`.
    pub fn new(log: Arc<Log>, dedup_window: Duration) -> EmbeddedBackend {
        EmbeddedBackend {
            clock: clock::Clock::start(log.clone()),
            log,
            dedup_window,
            open: Arc::default(),
            redrives: Mutex::default(),
        }
    }

    /// The flag that tells `plugin`'s first consumer to look for re-driven
    /// events.
    fn redrive_flag(&self, plugin: &str) -> Arc<AtomicBool> {
        self.redrives
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(plugin.to_string())
            .or_insert_with(|| Arc::new(AtomicBool::new(true)))
            .clone()
    }

    /// Where each of `parts` cursors of `plugin` starts: as stored, and a
    /// new one after the lowest stored cursor (a new plugin: after the
    /// log's head when `start_latest`, else at the start), which is saved
    /// so that it sticks. Cursors of another number of parts are removed.
    fn starts(
        &self,
        plugin: &str,
        parts: usize,
        start_latest: bool,
    ) -> Result<Vec<(Option<String>, Cursor)>, BackendError> {
        let store = self.log.store();
        let names: Vec<String> = (0..parts)
            .map(|i| progress::cursor_name(plugin, i, parts))
            .collect();
        let existing = store.cursors_of(plugin)?;
        let seed = match existing.iter().map(|(_, c)| c.low()).min() {
            Some(low) => low,
            None => {
                let start = if start_latest { self.log.head() } else { 0 };
                tracing::info!(plugin, "new plugin: starts after sequence {start}");
                start
            }
        };
        let mut starts = Vec::new();
        for n in &names {
            let cursor = match existing.iter().find(|(e, _)| e == n) {
                Some((_, c)) => c.clone(),
                None => {
                    store.set_cursor(n, seed)?;
                    Cursor::at(seed)
                }
            };
            starts.push(((parts > 1).then(|| n.clone()), cursor));
        }
        for (old, _) in existing.iter().filter(|(e, _)| !names.contains(e)) {
            tracing::info!(plugin, cursor = %old, "concurrency changed: the new workers start after sequence {seed}, the lowest of the old cursors (events after it may be delivered again)");
            store.remove_cursor(old)?;
        }
        Ok(starts)
    }

    /// A consumer of `plugin`'s part at `start` (the first part looks for
    /// re-driven letters) taking deliveries from `source`, with what its
    /// parts share.
    fn local_consumer(
        &self,
        plugin: &str,
        source: impl Source + 'static,
        first: bool,
        (cursor_name, start): (Option<String>, Cursor),
        options: &ConsumerOptions,
        shared: &Shared,
    ) -> Box<dyn Consumer> {
        Box::new(LocalConsumer::new(
            plugin,
            source,
            Box::new(settle::Settle {
                log: self.log.clone(),
                cursor_name,
                writing: shared.writing.clone(),
                state: self.log.store().state_epoch(plugin),
                seen: 1,
                clock: self.clock.ringer(),
            }),
            LocalOptions {
                strict: options.strict.then(|| options.key.clone()),
                start,
                redrives: first.then(|| self.redrive_flag(plugin)),
                drain_on_close: false,
            },
            Some(Box::new(shared.reader.clone())),
        ))
    }
}

/// What a plugin's parts share: the lock each holds while it checks and
/// commits its writes, and the log reader (each holds it until dropped).
struct Shared {
    writing: Arc<Mutex<()>>,
    reader: Arc<Reader>,
}

fn appended(a: crate::store::log::Appended) -> Appended {
    Appended {
        sequences: a.sequences,
        duplicates: a.duplicates,
    }
}

/// A plugin's log reader and its claim on the plugin, given up when its
/// last consumer is dropped.
struct Reader {
    plugin: String,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    open: Arc<Mutex<HashSet<String>>>,
}

impl Drop for Reader {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::error!(plugin = %self.plugin, "the plugin's log reader panicked");
            }
        }
        self.open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.plugin);
    }
}

impl Backend for EmbeddedBackend {
    fn describe(&self) -> String {
        "embedded".into()
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            atomic_settle: true,
            fenced: false,
            shared: false,
            dedup_window: self.dedup_window,
            durable: true,
            timers: true,
        }
    }

    fn append(&self, events: Vec<Event>) -> Result<Appended, BackendError> {
        Ok(appended(self.log.append(crate::event::stamped(events))?))
    }

    fn append_async(self: Arc<Self>, events: Vec<Event>) -> super::AppendFuture {
        // Awaits the group commit without holding a thread.
        let ticket = self.log.submit(crate::event::stamped(events));
        Box::pin(async move { Ok(appended(ticket?.wait_async().await?)) })
    }

    fn store(&self) -> Option<&Arc<crate::store::Store>> {
        Some(self.log.store())
    }

    fn count_timers_into(&self, meters: TimerMeters) {
        self.clock.count_into(meters);
    }

    fn timer(&self, owner: &str, key: &str) -> Result<Option<crate::timer::Timer>, BackendError> {
        Ok(self.log.store().timer(owner, key)?)
    }

    fn timer_usage(&self, owner: &str) -> Result<crate::timer::Usage, BackendError> {
        Ok(self.log.store().timer_usage(owner))
    }

    fn timers_of(&self, owner: &str, max: usize) -> Result<Vec<crate::timer::Timer>, BackendError> {
        Ok(self.log.store().timers_of(owner, max)?)
    }

    fn next_timer_due(&self, owner: &str) -> Result<Option<u64>, BackendError> {
        Ok(self.log.store().next_timer_due(owner)?)
    }

    fn schedule(&self, timers: Vec<crate::timer::Timer>) -> Result<(), BackendError> {
        let progress = Progress {
            plugin: crate::timer::OUTSIDE.to_string(),
            timers: timers
                .into_iter()
                .map(|t| crate::timer::TimerChange::Set(Box::new(t)))
                .collect(),
            ..Progress::default()
        };
        // Under the writer's lock, where timers fire.
        self.log.submit_with(Vec::new(), Some(progress))?.wait()?;
        // Accepted only once durable, as a publish is: a plugin's commit
        // may be lost to a kill (its events come again), a publisher's
        // scheduled event may not (it would be gone).
        self.log.store().sync()?;
        self.clock.ringer().ring();
        Ok(())
    }

    fn observe(&self, watcher: Arc<dyn crate::event::Watcher>) -> bool {
        self.log.observe(watcher);
        true
    }

    fn finish(&self) {
        self.log.close();
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
        if !self
            .open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(plugin.to_string())
        {
            return Err(BackendError::InUse {
                plugin: plugin.to_string(),
            });
        }
        let stop = Arc::new(AtomicBool::new(false));
        let mut reader = Reader {
            plugin: plugin.to_string(),
            stop: stop.clone(),
            thread: None,
            open: self.open.clone(),
        };
        let parts = options.parts.max(1);
        let starts = self.starts(plugin, parts, options.start_latest)?;
        if parts == 1 && options.drop_when_full.is_none() {
            // One worker that waits for room: it reads the log itself.
            let Some((cursor_name, start)) = starts.into_iter().next() else {
                return Err(BackendError::Closed);
            };
            let source = pump::Inline::new(
                self.log.clone(),
                plugin,
                options.patterns.clone(),
                start.through,
                options.queue_events_max,
            );
            let consumer = self.local_consumer(
                plugin,
                source,
                true,
                (cursor_name, start),
                &options,
                &Shared {
                    writing: Arc::default(),
                    reader: Arc::new(reader),
                },
            );
            return Ok(vec![consumer]);
        }
        let capacity = (options.queue_events_max / CHUNK_EVENTS_MAX).max(2);
        let mut outlets = Vec::new();
        let mut queues = Vec::new();
        for (_, start) in &starts {
            let (tx, queue) = Queue::channel(capacity);
            outlets.push(pump::Outlet {
                queue: tx,
                through: start.through,
                dropped: (0, 0),
            });
            queues.push(queue);
        }
        let routing = pump::Routing {
            patterns: options.patterns.clone(),
            key: options.key.clone(),
            dropped: options.drop_when_full.clone(),
        };
        let (log, name) = (self.log.clone(), plugin.to_string());
        let stopped = move || stop.load(Ordering::Acquire);
        let thread = std::thread::Builder::new()
            .name(format!("pump-{plugin}"))
            .spawn(move || pump::run(&log, &name, &routing, &mut outlets, &stopped))
            .map_err(|e| BackendError::Thread {
                what: format!("the log reader of plugin `{plugin}`"),
                reason: e.to_string(),
            })?;
        reader.thread = Some(thread);
        let shared = Shared {
            writing: Arc::default(),
            reader: Arc::new(reader),
        };
        let consumers = queues
            .into_iter()
            .zip(starts)
            .enumerate()
            .map(|(i, (queue, start))| {
                self.local_consumer(plugin, queue, i == 0, start, &options, &shared)
            })
            .collect();
        Ok(consumers)
    }

    fn read(&self, from: u64, max: usize) -> Result<Vec<Event>, BackendError> {
        Ok(self.log.store().read(from, max)?)
    }

    fn chain(&self, correlationid: &str, max: usize) -> Result<Vec<Event>, BackendError> {
        Ok(self.log.store().chain(correlationid, max)?)
    }

    fn head(&self) -> Result<u64, BackendError> {
        Ok(self.log.head())
    }

    fn first_since(&self, t: std::time::SystemTime) -> Result<u64, BackendError> {
        let found = self.log.store().first_since(t)?;
        Ok(found.unwrap_or(self.log.head() + 1))
    }

    fn replay(&self, plugin: &str, start: Start, reset_state: bool) -> Result<(), BackendError> {
        let from = start.sequence(self)?;
        self.log
            .store()
            .rewind(plugin, Some(from - 1), reset_state)?;
        Ok(())
    }

    fn cursors(&self, plugin: &str) -> Result<Vec<crate::store::progress::Cursor>, BackendError> {
        let cursors = self.log.store().cursors_of(plugin)?;
        Ok(cursors.into_iter().map(|(_, c)| c).collect())
    }

    fn audit(
        &self,
        scopes: &[crate::audit::Scope],
    ) -> Result<Vec<crate::audit::Audit>, BackendError> {
        let log = &self.log;
        Ok(crate::audit::embedded(log.store(), || log.head(), scopes)?)
    }

    fn dead_letters(&self, plugin: &str) -> Result<Vec<DeadLetter>, BackendError> {
        Ok(self.log.store().dead_letters(plugin)?)
    }

    fn redrive(&self, plugin: &str, which: &Selection) -> Result<usize, BackendError> {
        let n = self.log.store().redrive(plugin, which)?;
        self.redrive_flag(plugin).store(true, Ordering::Release);
        Ok(n)
    }

    fn purge(&self, plugin: &str, which: &Selection) -> Result<usize, BackendError> {
        Ok(self.log.store().purge(plugin, which)?)
    }

    fn put_state(
        &self,
        plugin: &str,
        writes: Vec<(String, Option<Vec<u8>>)>,
    ) -> Result<(), BackendError> {
        Ok(self.log.store().commit_progress(&Progress {
            plugin: plugin.to_string(),
            kv: writes,
            ..Progress::default()
        })?)
    }

    fn kv_get(&self, plugin: &str, key: &str) -> Result<Option<Vec<u8>>, BackendError> {
        Ok(self.log.store().kv_get(plugin, key)?)
    }

    fn kv_list(
        &self,
        plugin: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, Vec<u8>)>, BackendError> {
        Ok(self.log.store().kv_list(plugin, after, limit)?)
    }
}
