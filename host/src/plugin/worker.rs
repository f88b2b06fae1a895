//! One plugin's delivery worker: a thread that drains the plugin's queue in
//! batches of up to `batch_events_max` events and `batch_bytes_max` bytes
//! (one larger event goes alone), calls `handle` once per batch, and acts on
//! the outcomes.
//!
//! - `ack`: done; the plugin's follow-up events for it are published.
//! - `retry`: re-delivered after the plugin's delay, or exponential backoff
//!   with jitter, with `attempt` counting up; after `max_attempts` the event
//!   is dropped and counted (`retries_exhausted`).
//! - `reject`: given up on at once. In durable mode the event becomes a
//!   dead letter (`store::dead`); in memory mode it is dropped and counted
//!   (`rejected`). Running out of attempts does the same.
//! - events re-driven from dead letters come back through the retry heap
//!   with `attempt` 1, and leave the re-drive list when acked.
//! - a trap (panic, deadline, memory cap) or a wrong number of outcomes
//!   fails every event of the batch as one failed attempt; the store is
//!   dropped and a fresh instance made before the next batch.
//!
//! Retries wait in a bounded in-memory heap (`max_attempts` bounds their
//! number per event; the heap is capped at the queue capacity, beyond which
//! new failures are dropped as `retries_exhausted`). The worker's cursor is
//! the highest sequence up to which every event is dealt with (each
//! delivery says how far it accounts for), held back before any event still
//! waiting for a retry. In durable mode it is saved after every batch, so a
//! restart resumes there: at-least-once, never past an unhandled event.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::ops::Range;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::RecvTimeoutError;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::Histogram;

use super::{DeliverySettings, RunningPlugin};
use crate::bus::{Delivery, Queue};
use crate::dispatch::Dispatch;
use crate::event::{Chunk, Event};
use crate::metrics::{self, DropReason, Metrics};
use crate::runtime::{self, Outcome, PluginInstance};
use crate::store::Store;

/// How long an idle durable worker waits before looking for re-driven
/// events again.
const REDRIVE_POLL: Duration = Duration::from_millis(250);

/// The longest retry delay a plugin may ask for, in ms (one hour).
const RETRY_DELAY_MS_MAX: u64 = 3_600_000;

/// An event waiting for its next attempt.
struct Pending {
    due: Instant,
    attempt: u32,
    event: Arc<Event>,
}

impl PartialEq for Pending {
    fn eq(&self, other: &Self) -> bool {
        self.due == other.due && self.event.sequence == other.event.sequence
    }
}
impl Eq for Pending {}
impl PartialOrd for Pending {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Pending {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.due, self.event.sequence).cmp(&(other.due, other.event.sequence))
    }
}

/// Where a worker's events come from: its queue, and in durable mode the
/// store that keeps its cursor and the cursor it starts from.
pub(super) struct Source {
    pub queue: Queue,
    pub cursor_store: Option<Arc<Store>>,
    pub start: u64,
}

pub(super) struct Worker {
    instance: PluginInstance,
    needs_reset: bool,
    queue: Queue,
    /// The delivery being worked through, and how far.
    current: Option<Delivery>,
    pos: usize,
    /// Every event up to this sequence is handled, given up on, or not
    /// this plugin's; what the cursor may say, but for pending retries.
    done_through: u64,
    /// Where the durable cursor is kept (durable mode).
    cursor_store: Option<Arc<Store>>,
    committed: u64,
    dispatch: Dispatch,
    plugin: Arc<RunningPlugin>,
    settings: DeliverySettings,
    retries: BinaryHeap<Reverse<Pending>>,
    /// `attempt` 1, for each event of a fresh batch.
    first_attempts: Vec<u32>,
    jitter: u64,
    handle_seconds: Histogram,
    batch_events: Histogram,
    delivery_seconds: Histogram,
    traps: Counter,
    dropped_rejected: Counter,
    dropped_exhausted: Counter,
    dropped_follow_up: Counter,
    dead_lettered: Counter,
    /// Sequences of events re-driven from dead letters, in flight.
    redriven: std::collections::HashSet<u64>,
}

/// Why a worker stops delivering an event.
#[derive(Clone, Copy)]
enum GiveUp {
    Rejected,
    Exhausted,
    BacklogFull,
}

impl GiveUp {
    fn says(self) -> &'static str {
        match self {
            GiveUp::Rejected => "rejected by the plugin",
            GiveUp::Exhausted => "no attempts left",
            GiveUp::BacklogFull => "retry backlog full",
        }
    }
}

impl Worker {
    pub(super) fn new(
        instance: PluginInstance,
        source: Source,
        dispatch: Dispatch,
        plugin: Arc<RunningPlugin>,
        m: &Metrics,
        settings: DeliverySettings,
    ) -> Worker {
        let labels = metrics::plugin(&plugin.name);
        Worker {
            instance,
            needs_reset: false,
            queue: source.queue,
            current: None,
            pos: 0,
            done_through: source.start,
            cursor_store: source.cursor_store,
            committed: source.start,
            dispatch,
            first_attempts: vec![1; settings.batch_events_max.max(1)],
            settings,
            retries: BinaryHeap::new(),
            jitter: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0x9e37_79b9, |d| d.as_nanos() as u64)
                | 1,
            handle_seconds: m.handle_seconds.get_or_create(&labels).clone(),
            batch_events: m.batch_events.get_or_create(&labels).clone(),
            delivery_seconds: m.delivery_seconds.get_or_create(&labels).clone(),
            traps: m.traps.get_or_create(&labels).clone(),
            dropped_rejected: m.drop_counter(&plugin.name, DropReason::Rejected),
            dropped_exhausted: m.drop_counter(&plugin.name, DropReason::RetriesExhausted),
            dropped_follow_up: m.drop_counter(&plugin.name, DropReason::FollowUpQueueFull),
            dead_lettered: m.dead_lettered.get_or_create(&labels).clone(),
            redriven: std::collections::HashSet::new(),
            plugin,
        }
    }

    fn batch_events_max(&self) -> usize {
        self.settings.batch_events_max.max(1)
    }

    fn batch_bytes_max(&self) -> usize {
        self.settings
            .batch_bytes_max
            .min(runtime::BATCH_BYTES_LIMIT)
    }

    pub(super) fn run(mut self) {
        let mut closed = false;
        loop {
            if self.plugin.stop.load(Ordering::Acquire) {
                // Stopped alone (a replay moves the cursor): what is in
                // hand is abandoned, not delivered.
                break;
            }
            self.pick_up_redrives();
            // Retries that are due go first, as a batch of their own.
            if let Some((chunk, attempts)) = self.due_retries() {
                self.deliver(&chunk, 0..chunk.len(), &attempts);
                self.commit_cursor();
                continue;
            }
            let left = self
                .current
                .as_ref()
                .map_or(0, |d| d.events.len() - self.pos);
            if left == 0 {
                if let Some(done) = self.current.take() {
                    self.done(done.through);
                }
                if closed {
                    match self.retries.peek() {
                        // Retries still pending after the queue closed: wait
                        // for them (bounded by max_attempts and backoff_ms_max).
                        Some(r) => {
                            std::thread::sleep(r.0.due.saturating_duration_since(Instant::now()));
                            continue;
                        }
                        None => break,
                    }
                }
                let next = match self.retries.peek() {
                    Some(r) => self
                        .queue
                        .recv_timeout(r.0.due.saturating_duration_since(Instant::now())),
                    // Durable: look up now and then for re-driven events.
                    None if self.cursor_store.is_some() => self.queue.recv_timeout(REDRIVE_POLL),
                    None => self
                        .queue
                        .recv()
                        .map_err(|_| RecvTimeoutError::Disconnected),
                };
                match next {
                    Ok(delivery) => {
                        self.current = Some(delivery);
                        self.pos = 0;
                    }
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => closed = true,
                }
                continue;
            }
            let Some(delivery) = self.current.clone() else {
                continue;
            };
            let chunk = delivery.events;
            let start = self.pos;
            let (end, bytes) = self.run_end(&chunk, start, 0, 0);
            self.pos = end;
            if end == chunk.len() && end - start < self.batch_events_max() {
                // The delivery is used up with room left in the batch: merge
                // in those already waiting rather than make a small call.
                if let Ok(next) = self.queue.try_recv() {
                    self.current = None;
                    let (merged, through) =
                        self.merge(chunk[start..end].to_vec(), bytes, delivery.through, next);
                    let attempts = self.first_attempts[..merged.len()].to_vec();
                    self.deliver(&merged, 0..merged.len(), &attempts);
                    self.done(through);
                    continue;
                }
            }
            let attempts = std::mem::take(&mut self.first_attempts);
            self.deliver(&chunk, start..end, &attempts[..end - start]);
            self.first_attempts = attempts;
        }
        self.commit_cursor();
        tracing::debug!(plugin = %self.plugin.name, "worker stopped");
    }

    /// How far from `start` a batch of `chunk` may reach, given `taken`
    /// events of `bytes` already in the batch: the end index and the bytes.
    fn run_end(
        &self,
        chunk: &Chunk,
        start: usize,
        taken: usize,
        mut bytes: usize,
    ) -> (usize, usize) {
        let mut end = start;
        let room = self.batch_events_max() - taken;
        while end < chunk.len() && end - start < room {
            let size = runtime::batch_bytes(&chunk[end]);
            if taken + (end - start) > 0 && bytes + size > self.batch_bytes_max() {
                break;
            }
            bytes += size;
            end += 1;
        }
        (end, bytes)
    }

    /// A batch made of `batch` (the end of a delivery accounting through
    /// `through`) and events of `next` and any further deliveries already
    /// waiting, within the limits. What is left becomes current. Returns the
    /// batch and how far the deliveries used up whole account for.
    fn merge(
        &mut self,
        mut batch: Vec<Arc<Event>>,
        mut bytes: usize,
        mut through: u64,
        mut next: Delivery,
    ) -> (Chunk, u64) {
        loop {
            let (end, b) = self.run_end(&next.events, 0, batch.len(), bytes);
            bytes = b;
            batch.extend(next.events[..end].iter().cloned());
            if end < next.events.len() {
                self.current = Some(next);
                self.pos = end;
                break;
            }
            through = next.through;
            if batch.len() >= self.batch_events_max() {
                break;
            }
            match self.queue.try_recv() {
                Ok(more) => next = more,
                Err(_) => break,
            }
        }
        (Arc::from(batch), through)
    }

    /// Everything through `through` is dealt with: move the cursor as far
    /// as pending retries allow.
    fn done(&mut self, through: u64) {
        self.done_through = self.done_through.max(through);
        self.commit_cursor();
    }

    fn commit_cursor(&mut self) {
        let oldest_retry = self.retries.iter().map(|r| r.0.event.sequence).min();
        let cursor = match oldest_retry {
            Some(seq) => self.done_through.min(seq.saturating_sub(1)),
            None => self.done_through,
        };
        if cursor <= self.committed {
            return;
        }
        self.plugin.cursor.fetch_max(cursor, Ordering::Relaxed);
        if let Some(store) = &self.cursor_store {
            if let Err(e) = store.set_cursor(&self.plugin.name, cursor) {
                // Not moving the cursor only means re-delivery after a
                // restart; delivery goes on.
                tracing::error!(plugin = %self.plugin.name, "cannot save the cursor: {e}");
                return;
            }
        }
        self.committed = cursor;
    }

    /// The retries that are due, within the batch limits.
    fn due_retries(&mut self) -> Option<(Chunk, Vec<u32>)> {
        let now = Instant::now();
        let mut events = Vec::new();
        let mut attempts = Vec::new();
        let mut bytes = 0;
        while events.len() < self.batch_events_max() {
            let Some(Reverse(next)) = self.retries.peek() else {
                break;
            };
            let size = runtime::batch_bytes(&next.event);
            if next.due > now || (!events.is_empty() && bytes + size > self.batch_bytes_max()) {
                break;
            }
            bytes += size;
            if let Some(Reverse(p)) = self.retries.pop() {
                events.push(p.event);
                attempts.push(p.attempt);
            }
        }
        (!events.is_empty()).then(|| (Arc::from(events), attempts))
    }

    fn deliver(&mut self, chunk: &Chunk, range: Range<usize>, attempts: &[u32]) {
        let batch = &chunk[range.clone()];
        if self.needs_reset && !self.reset() {
            // No working instance: every event counts a failed attempt.
            for (event, &attempt) in batch.iter().zip(attempts) {
                self.fail(
                    event,
                    attempt,
                    None,
                    "the plugin could not be re-instantiated",
                );
            }
            return;
        }
        let started = Instant::now();
        let result = self.instance.handle(chunk, range, attempts);
        let handled_at = Instant::now();
        self.handle_seconds
            .observe(handled_at.duration_since(started).as_secs_f64());
        self.batch_events.observe(batch.len() as f64);
        match result {
            Ok(result) => {
                let mut acked = 0;
                for ((event, &attempt), outcome) in batch.iter().zip(attempts).zip(&result.outcomes)
                {
                    match outcome {
                        Outcome::Ack => {
                            acked += 1;
                            self.acked_redrive(event.sequence);
                            if let Some(at) = event.accepted_at {
                                let waited = handled_at.saturating_duration_since(at);
                                self.delivery_seconds.observe(waited.as_secs_f64());
                            }
                        }
                        Outcome::Retry(r) => self.fail(event, attempt, r.delay_ms, &r.message),
                        Outcome::Reject(msg) => {
                            self.plugin.failed.inc();
                            self.give_up(event, attempt, msg, GiveUp::Rejected);
                        }
                    }
                }
                self.plugin.handled.inc_by(acked);
                let follow_ups: Vec<Event> = result
                    .published
                    .into_iter()
                    .filter(|(cause, _)| matches!(result.outcomes.get(*cause), Some(Outcome::Ack)))
                    .map(|(_, e)| e)
                    .collect();
                if !follow_ups.is_empty() {
                    let n = follow_ups.len();
                    if let Err(e) = self.dispatch.publish(follow_ups) {
                        self.dropped_follow_up.inc_by((n - e.accepted()) as u64);
                        tracing::error!(plugin = %self.plugin.name, "follow-up events lost: {e}");
                    }
                }
            }
            Err(e) => {
                self.traps.inc();
                tracing::error!(plugin = %self.plugin.name, batch_events = batch.len(), "{e}; the batch counts as a failed attempt and the instance is re-made");
                let message = e.to_string();
                for (event, &attempt) in batch.iter().zip(attempts) {
                    self.fail(event, attempt, None, &message);
                }
                self.needs_reset = true;
            }
        }
    }

    /// Make a fresh instance; false (and logged) when that fails too.
    fn reset(&mut self) -> bool {
        match self.instance.reset() {
            Ok(_) => {
                self.needs_reset = false;
                true
            }
            Err(e) => {
                tracing::error!(plugin = %self.plugin.name, "cannot re-instantiate after a trap: {e}");
                false
            }
        }
    }

    /// Count a failed attempt and schedule the next, or drop the event when
    /// its attempts are used up.
    fn fail(&mut self, event: &Arc<Event>, attempt: u32, delay_ms: Option<u64>, message: &str) {
        self.plugin.failed.inc();
        let heap_full = self.retries.len() >= self.settings.queue_events_max;
        if attempt >= self.settings.max_attempts || heap_full {
            let why = if heap_full {
                GiveUp::BacklogFull
            } else {
                GiveUp::Exhausted
            };
            self.give_up(event, attempt, message, why);
            return;
        }
        let delay = match delay_ms {
            Some(ms) => ms.min(RETRY_DELAY_MS_MAX),
            None => self.backoff_ms(attempt),
        };
        self.plugin.retried.inc();
        self.retries.push(Reverse(Pending {
            due: Instant::now() + Duration::from_millis(delay),
            attempt: attempt + 1,
            event: event.clone(),
        }));
    }

    /// Stop delivering `event`: in durable mode it becomes a dead letter (kept,
    /// with its attempts and last error, until re-driven or purged); in
    /// memory mode it is dropped and counted.
    fn give_up(&mut self, event: &Arc<Event>, attempts: u32, error: &str, why: GiveUp) {
        self.redriven.remove(&event.sequence);
        if let Some(store) = &self.cursor_store {
            match store.dead_letter(&self.plugin.name, event, attempts, error) {
                Ok(()) => {
                    self.dead_lettered.inc();
                    tracing::warn!(plugin = %self.plugin.name, id = %event.id, topic = %event.topic, attempts, last_error = %error, "{}; moved to dead letters", why.says());
                    return;
                }
                Err(e) => {
                    tracing::error!(plugin = %self.plugin.name, id = %event.id, "{}, but the dead letter could not be stored: {e}", why.says());
                }
            }
        }
        match why {
            GiveUp::Rejected => self.dropped_rejected.inc(),
            GiveUp::Exhausted | GiveUp::BacklogFull => self.dropped_exhausted.inc(),
        };
        tracing::warn!(plugin = %self.plugin.name, id = %event.id, topic = %event.topic, attempts, last_error = %error, "{}; event dropped", why.says());
    }

    /// A re-driven event was acked: it leaves the re-drive list.
    fn acked_redrive(&mut self, sequence: u64) {
        if self.redriven.remove(&sequence) {
            if let Some(store) = &self.cursor_store {
                if let Err(e) = store.redriven(&self.plugin.name, sequence) {
                    tracing::error!(plugin = %self.plugin.name, "cannot clear a re-driven event (it will come again): {e}");
                }
            }
        }
    }

    /// Take events re-driven from dead letters, when asked to look.
    fn pick_up_redrives(&mut self) {
        if !self.plugin.redrive_wanted.swap(false, Ordering::AcqRel) {
            return;
        }
        let Some(store) = &self.cursor_store else {
            return;
        };
        match store.redrives(&self.plugin.name) {
            Ok(events) => {
                let now = Instant::now();
                for event in events {
                    if self.redriven.insert(event.sequence) {
                        self.retries.push(Reverse(Pending {
                            due: now,
                            attempt: 1,
                            event: Arc::new(event),
                        }));
                    }
                }
            }
            Err(e) => {
                tracing::error!(plugin = %self.plugin.name, "cannot read re-driven events: {e}")
            }
        }
    }

    /// `backoff_ms_min * 2^(attempt-1)`, capped at `backoff_ms_max`, with
    /// ±25 % jitter so that retries of many events do not arrive together.
    fn backoff_ms(&mut self, attempt: u32) -> u64 {
        let base = self
            .settings
            .backoff_ms_min
            .saturating_mul(1u64 << (attempt - 1).min(30))
            .min(self.settings.backoff_ms_max);
        // xorshift64: jitter needs spread, not cryptographic quality.
        self.jitter ^= self.jitter << 13;
        self.jitter ^= self.jitter >> 7;
        self.jitter ^= self.jitter << 17;
        let span = base / 2;
        if span == 0 {
            return base;
        }
        base - span / 2 + self.jitter % span
    }
}
