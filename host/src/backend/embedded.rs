//! The embedded backend: the fjall store and its log (`store`), the
//! default. One host, so one consumer per plugin (a second is refused) and
//! nothing to fence; a settlement is one atomic write of the plugin's
//! cursor (with its pending retries), state, dead letters and follow-up
//! events, so state-only plugins are exactly-once across a kill.
//!
//! The consumer keeps what a broker would: retries waiting for their time
//! (in memory, and in the cursor so that they survive a restart), the
//! events handed out, and how far through the log it is.

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{
    Appended, Backend, BackendError, Capabilities, Consumer, ConsumerOptions, Delivered,
    Settlement, Start, Verdict,
};
use crate::event::Event;
use crate::store::dead::{DeadLetter, Selection};
use crate::store::log::Log;
use crate::store::progress::{Cursor, GaveUp, Progress};

/// How often re-driven dead letters are looked for.
const REDRIVE_POLL: Duration = Duration::from_millis(100);

/// The embedded store as a backend.
pub struct EmbeddedBackend {
    log: Arc<Log>,
    /// The log's duplicate window.
    dedup_window: Duration,
    /// Plugins with an open consumer.
    open: Arc<Mutex<HashSet<String>>>,
}

impl EmbeddedBackend {
    /// The backend on a started log, whose duplicate window is
    /// `dedup_window`.
    pub fn new(log: Arc<Log>, dedup_window: Duration) -> EmbeddedBackend {
        EmbeddedBackend {
            log,
            dedup_window,
            open: Arc::default(),
        }
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
        }
    }

    fn append(&self, events: Vec<Event>) -> Result<Appended, BackendError> {
        let a = self.log.append(crate::dispatch::stamped(events))?;
        Ok(Appended {
            sequences: a.sequences,
            duplicates: a.duplicates,
        })
    }

    fn consumer(
        &self,
        plugin: &str,
        options: ConsumerOptions,
    ) -> Result<Box<dyn Consumer>, BackendError> {
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
        let consumer = EmbeddedConsumer::open(self.log.clone(), plugin, options, self.open.clone());
        Ok(Box::new(consumer?))
    }

    fn read(&self, from: u64, max: usize) -> Result<Vec<Event>, BackendError> {
        Ok(self.log.store().read(from, max)?)
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

    fn dead_letters(&self, plugin: &str) -> Result<Vec<DeadLetter>, BackendError> {
        Ok(self.log.store().dead_letters(plugin)?)
    }

    fn redrive(&self, plugin: &str, which: &Selection) -> Result<usize, BackendError> {
        Ok(self.log.store().redrive(plugin, which)?)
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

/// Where a handed-out event came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    /// The log, for the first time: the cursor waits for it.
    New,
    /// A retry: in the cursor's pending list until settled.
    Retry,
    /// A re-driven dead letter: in the store's re-drive list until settled.
    Redrive,
}

/// A retry waiting for its time.
struct Waiting {
    due: Instant,
    attempt: u32,
    origin: Origin,
    event: Arc<Event>,
}

impl PartialEq for Waiting {
    fn eq(&self, other: &Self) -> bool {
        (self.due, self.event.sequence) == (other.due, other.event.sequence)
    }
}
impl Eq for Waiting {}
impl PartialOrd for Waiting {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Waiting {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.due, self.event.sequence).cmp(&(other.due, other.event.sequence))
    }
}

struct EmbeddedConsumer {
    log: Arc<Log>,
    plugin: String,
    options: ConsumerOptions,
    open: Arc<Mutex<HashSet<String>>>,
    /// The highest sequence read from the log.
    read_to: u64,
    /// New events handed out and not settled: the cursor stays before the
    /// lowest.
    new_held: BTreeSet<u64>,
    /// Everything handed out and not settled: attempt and origin.
    held: HashMap<u64, (u32, Origin, Arc<Event>)>,
    waiting: BinaryHeap<Reverse<Waiting>>,
    /// Re-driven letters handed out or waiting.
    redriving: HashSet<u64>,
    next_redrive_poll: Instant,
    bell: crossbeam_channel::Receiver<()>,
}

impl Drop for EmbeddedConsumer {
    fn drop(&mut self) {
        self.open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.plugin);
    }
}

impl EmbeddedConsumer {
    fn open(
        log: Arc<Log>,
        plugin: &str,
        options: ConsumerOptions,
        open: Arc<Mutex<HashSet<String>>>,
    ) -> Result<EmbeddedConsumer, BackendError> {
        let bell = log.doorbell();
        let mut consumer = EmbeddedConsumer {
            log,
            plugin: plugin.to_string(),
            options,
            open,
            read_to: 0,
            new_held: BTreeSet::new(),
            held: HashMap::new(),
            waiting: BinaryHeap::new(),
            redriving: HashSet::new(),
            next_redrive_poll: Instant::now(),
            bell,
        };
        let store = consumer.log.store().clone();
        let cursor = match store.cursor_state(plugin)? {
            Some(c) => c,
            None => {
                let start = if consumer.options.start_latest {
                    consumer.log.head()
                } else {
                    0
                };
                store.set_cursor(plugin, start)?;
                Cursor::at(start)
            }
        };
        consumer.read_to = cursor.through;
        let now = Instant::now();
        for (seq, attempt) in cursor.pending {
            if let Some(event) = store.read(seq, 1)?.into_iter().find(|e| e.sequence == seq) {
                consumer.waiting.push(Reverse(Waiting {
                    due: now,
                    attempt,
                    origin: Origin::Retry,
                    event: Arc::new(event),
                }));
            }
        }
        Ok(consumer)
    }

    /// The cursor once `settled` are no longer held, with `retried`
    /// (sequence, next attempt) waiting besides those already waiting.
    fn cursor_after(&self, settled: &HashSet<u64>, retried: &[(u64, u32)]) -> Cursor {
        let through = self
            .new_held
            .iter()
            .find(|s| !settled.contains(s))
            .map_or(self.read_to, |s| s - 1);
        let mut pending: Vec<(u64, u32)> = self
            .waiting
            .iter()
            .filter(|w| w.0.origin != Origin::Redrive)
            .map(|w| (w.0.event.sequence, w.0.attempt))
            .chain(
                self.held
                    .iter()
                    .filter(|(s, (_, o, _))| *o == Origin::Retry && !settled.contains(s))
                    .map(|(s, (a, _, _))| (*s, *a)),
            )
            .chain(retried.iter().copied())
            .collect();
        pending.sort_unstable();
        pending.dedup_by_key(|p| p.0);
        Cursor { through, pending }
    }

    fn hand_out(&mut self, w: Waiting) -> Delivered {
        self.held
            .insert(w.event.sequence, (w.attempt, w.origin, w.event.clone()));
        Delivered {
            event: w.event,
            attempt: w.attempt,
        }
    }

    /// Up to `max` from the log after `read_to`, the plugin's only.
    fn read_new(&mut self, max: usize) -> Result<Vec<Delivered>, BackendError> {
        let mut out = Vec::new();
        while out.len() < max {
            let events = self.log.read_from(self.read_to + 1, max.max(256))?;
            if events.is_empty() {
                break;
            }
            for event in events {
                if out.len() >= max {
                    break;
                }
                self.read_to = event.sequence;
                if self
                    .options
                    .patterns
                    .iter()
                    .any(|p| p.matches(&event.topic))
                {
                    self.new_held.insert(event.sequence);
                    out.push(self.hand_out(Waiting {
                        due: Instant::now(),
                        attempt: 1,
                        origin: Origin::New,
                        event,
                    }));
                }
            }
        }
        Ok(out)
    }
}

impl Consumer for EmbeddedConsumer {
    fn next_batch(
        &mut self,
        max_events: usize,
        wait: Duration,
    ) -> Result<Vec<Delivered>, BackendError> {
        let max = max_events.max(1);
        let until = crate::backend::deadline(wait);
        loop {
            let now = Instant::now();
            let mut out = Vec::new();
            while out.len() < max && self.waiting.peek().is_some_and(|w| w.0.due <= now) {
                if let Some(Reverse(w)) = self.waiting.pop() {
                    out.push(self.hand_out(w));
                }
            }
            if now >= self.next_redrive_poll && out.len() < max {
                self.next_redrive_poll = now + REDRIVE_POLL;
                for event in self.log.store().redrives(&self.plugin)? {
                    if out.len() >= max {
                        break;
                    }
                    if self.redriving.insert(event.sequence) {
                        out.push(self.hand_out(Waiting {
                            due: now,
                            attempt: 1,
                            origin: Origin::Redrive,
                            event: Arc::new(event),
                        }));
                    }
                }
            }
            if out.len() < max {
                let more = self.read_new(max - out.len())?;
                out.extend(more);
            }
            if !out.is_empty() || now >= until {
                return Ok(out);
            }
            let next = self
                .waiting
                .peek()
                .map_or(until, |w| w.0.due.min(until))
                .min(self.next_redrive_poll);
            let _ = self
                .bell
                .recv_timeout(next.saturating_duration_since(Instant::now()));
        }
    }

    fn settle(&mut self, s: Settlement) -> Result<(), BackendError> {
        // One consumer per plugin: only an outside write (init, an
        // operator) can have changed what the batch read.
        for (key, value) in &s.expected {
            if self.log.store().kv_get(&self.plugin, key)? != *value {
                return Err(BackendError::Conflict {
                    plugin: self.plugin.clone(),
                    key: key.clone(),
                });
            }
        }
        let mut settled = HashSet::new();
        let mut retried = Vec::new();
        let mut dead = Vec::new();
        let mut redriven = Vec::new();
        for (seq, verdict) in &s.verdicts {
            let (attempt, origin, event) =
                self.held.get(seq).ok_or_else(|| BackendError::NotHeld {
                    plugin: self.plugin.clone(),
                    sequence: *seq,
                })?;
            settled.insert(*seq);
            if *origin == Origin::Redrive {
                redriven.push(*seq);
            }
            match verdict {
                Verdict::Ack => {}
                Verdict::Retry(_) => retried.push((*seq, attempt + 1)),
                Verdict::Dead(error) => dead.push(GaveUp {
                    event: event.clone(),
                    attempts: *attempt,
                    error: error.clone(),
                }),
            }
        }
        let progress = Progress {
            plugin: self.plugin.clone(),
            cursor_name: None,
            cursor: Some(self.cursor_after(&settled, &retried)),
            kv: s.writes,
            dead,
            redriven,
        };
        if s.follow_ups.is_empty() {
            self.log.store().commit_progress(&progress)?;
        } else {
            self.log
                .submit_with(crate::dispatch::stamped(s.follow_ups), Some(progress))?
                .wait()?;
        }
        let now = Instant::now();
        for (seq, verdict) in s.verdicts {
            self.new_held.remove(&seq);
            let Some((attempt, origin, event)) = self.held.remove(&seq) else {
                continue;
            };
            if origin == Origin::Redrive {
                self.redriving.remove(&seq);
            }
            if let Verdict::Retry(delay) = verdict {
                self.waiting.push(Reverse(Waiting {
                    due: now.checked_add(delay).unwrap_or(now),
                    attempt: attempt + 1,
                    origin: Origin::Retry,
                    event,
                }));
            }
        }
        Ok(())
    }

    fn extend(&mut self) -> Result<(), BackendError> {
        // One host: nobody else can take what this consumer holds.
        Ok(())
    }

    fn release(&mut self) -> Result<(), BackendError> {
        let now = Instant::now();
        for (seq, (attempt, origin, event)) in std::mem::take(&mut self.held) {
            let origin = match origin {
                Origin::New => {
                    self.new_held.remove(&seq);
                    Origin::Retry
                }
                other => other,
            };
            self.waiting.push(Reverse(Waiting {
                due: now,
                attempt,
                origin,
                event,
            }));
        }
        Ok(())
    }
}
