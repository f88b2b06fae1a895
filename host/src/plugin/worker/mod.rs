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
//! Ordering under retry (`RetryOrdering`): with `none` later events go on
//! while one waits for its retry. With `strict` an event waiting for a retry
//! holds back the later events with its ordering key (the `subject`): they
//! are not handed to the plugin (or, handled in the same batch after it,
//! their outcomes are set aside) but wait in order, and are released one by
//! one once the retried event is acked or given up on.
//!
//! Quarantine: a worker whose batches keep failing (a trap, a deadline, a
//! memory fault or `retry` for every event, [`QUARANTINE_AFTER_BATCHES`]
//! batches in a row without an ack) stops delivering for a pause that
//! starts at [`QUARANTINE_PAUSE_MIN`] and doubles, up to
//! [`QUARANTINE_PAUSE_MAX`], each time the batch tried after it fails too.
//! Its events wait (in the log, or in its queue) and the failed ones go
//! through retries and dead letters as usual. An ack ends the quarantine,
//! and so does a new version of the plugin's file. `reject` is a plugin
//! working as meant and never counts.
//!
//! CPU: a call starts in the foreground; one cut there for turning heavy
//! (`runtime::call`) runs again from the start in the background, where it
//! yields to the host's foreground calls, and so do the plugin's calls for
//! [`BACKGROUND_FOR`] after its last heavy one. A plugin that misbehaves (a trap, a deadline,
//! a refused publish, a cut message) is held to a tenth of a core for
//! [`LOW_PRIORITY_FOR`]: its calls are throttled, and after an offending
//! call delivery rests nine times the call's busy time.
//!
//! Retries wait in a bounded in-memory heap (`max_attempts` bounds their
//! number per event; the heap is capped at the queue capacity, beyond which
//! new failures are given up on). The worker's cursor (`store::progress`)
//! says how far it is through the log and which events behind that are
//! still to be retried.
//!
//! State: the key-value writes of a batch whose events were all acked are
//! committed; a batch with writes and any other outcome is handled again
//! one event at a time, so that only acked events' writes are kept. In
//! durable mode the writes, the follow-up events, dead letters and the new
//! cursor of each batch are one atomic write; only once it is written do
//! the outcomes take effect (counters, retries). A write that fails takes
//! nothing: the batch's events are delivered again later at the same
//! attempt, to a fresh instance. A restart resumes at the saved cursor, so a
//! plugin's state counts each acked event exactly once, and its other
//! effects happen at least once.
//!
//! On a broker (`broker`), batches come from the plugin's consumer and are
//! settled through it; retries and dead letters live in the broker.
//!
//! Rooms: `broker` (pulling and settling through a backend consumer),
//! `retry` (the retry heap, strict ordering, re-drives, giving up),
//! `health` (quarantine, rest after an offence, reset, hot swap), `cursor`
//! (how far the worker is done, and saving it), `settle` (a batch's
//! outcomes into effects, and applying them).

mod broker;
mod cursor;
mod health;
mod retry;
mod settle;

use retry::{GiveUp, Pending};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::ops::Range;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::RecvTimeoutError;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::Histogram;

use super::{DeliverySettings, Quarantine, RetryOrdering, RunningPlugin};
use crate::bus::{Delivery, Queue};
use crate::dispatch::Dispatch;
use crate::event::{Chunk, Event};
use crate::metrics::{self, DropReason, Metrics};
use crate::runtime::kv;
use crate::runtime::{self, BatchResult, CallError, CallMode, Outcome, PluginInstance};
use crate::store::progress::{Cursor, GaveUp, Progress};
use crate::store::Store;

/// How long an idle worker waits before looking for re-driven events
/// (durable mode) and a new version again.
const IDLE_POLL: Duration = Duration::from_millis(100);

/// Batches in a row that failed (none acked) before a worker is
/// quarantined.
pub const QUARANTINE_AFTER_BATCHES: u32 = 5;
/// The first quarantine's pause.
pub const QUARANTINE_PAUSE_MIN: Duration = Duration::from_secs(1);
/// The longest quarantine pause.
pub const QUARANTINE_PAUSE_MAX: Duration = Duration::from_secs(60);

/// How long a worker's calls run at low CPU priority after the plugin
/// misbehaved (trapped, ran past its deadline, had a publish refused by
/// its policy, or an outcome message cut); each offence starts it again.
/// Output lines dropped by the rate limit are no offence: a plugin that
/// logs each event would be throttled under load for being busy.
pub const LOW_PRIORITY_FOR: Duration = Duration::from_secs(10);

/// How long a worker's calls run in the background (yielding to the
/// host's foreground calls, [`CallMode::Background`]) after a heavy call: one
/// that ran past [`runtime::call::PREEMPT_AFTER`] or grew its memory by
/// [`runtime::call::PREEMPT_GROWTH_BYTES`]. Each heavy call starts it
/// again, so a plugin whose every batch is heavy stays there.
pub const BACKGROUND_FOR: Duration = Duration::from_secs(10);

/// The longest retry delay a plugin may ask for, in ms (one hour).
const RETRY_DELAY_MS_MAX: u64 = 3_600_000;

/// How long a batch waits to be delivered again after its progress could
/// not be written.
const STORE_RETRY: Duration = Duration::from_secs(1);

/// A cursor that only moves past events (nothing else changed) is saved at
/// most this often while busy, and at once when idle: losing it only means
/// reading those events again.
const CURSOR_SAVE_EVERY: Duration = Duration::from_millis(200);

/// Where a worker's events come from: its queue, and in durable mode the
/// store that keeps its cursor and the cursor it starts from.
pub(super) struct Source {
    pub queue: Queue,
    pub cursor_store: Option<Arc<Store>>,
    pub start: Cursor,
    pub kv: kv::Backend,
    /// Which of the plugin's workers this is.
    pub index: usize,
    /// The name of its cursor, when the plugin has several workers.
    pub cursor_name: Option<String>,
    /// Set when the host shuts down.
    pub stopping: Arc<std::sync::atomic::AtomicBool>,
    /// On a broker: the plugin's consumer (the queue is then unused), and
    /// its lease.
    pub consumer: Option<(Box<dyn crate::backend::Consumer>, Duration)>,
}

/// What a batch's outcomes do, applied once its progress is written.
#[derive(Default)]
struct Effects {
    /// How many were acked.
    acked: u64,
    /// Of those, the events re-driven from dead letters.
    acked_redriven: Vec<u64>,
    retries: Vec<Pending>,
    /// Held events whose turn came (strict ordering): due now, not retries.
    released: Vec<Pending>,
    gave_up: Vec<(Arc<Event>, u32, String, GiveUp)>,
    /// On a broker: the committed values the writes were made from.
    reads: kv::Writes,
}

pub(super) struct Worker {
    /// Which of the plugin's workers this is.
    index: usize,
    cursor_name: Option<String>,
    stopping: Arc<std::sync::atomic::AtomicBool>,
    /// Batches in a row that failed without an ack.
    fail_streak: u32,
    /// The next quarantine's pause.
    quarantine_pause: Duration,
    /// Delivery is paused until then.
    quarantined_until: Option<Instant>,
    /// Calls run at low CPU priority, throttled, until then.
    low_priority_until: Option<Instant>,
    /// Calls run in the background until then.
    background_until: Option<Instant>,
    /// Delivery pauses this long at the next batch boundary (after a
    /// misbehaving call).
    rest_due: Duration,
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
    /// The cursor last saved, and when.
    saved: Cursor,
    saved_at: Instant,
    /// Where committed state goes in memory mode.
    kv: kv::Backend,
    /// The outcomes of the batch in hand.
    fx: Effects,
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
    swaps: Counter,
    swap_pause_seconds: Histogram,
    /// Set by a swap: when it started, moved on by any time spent waiting
    /// for events before the new version's first call.
    pause_from: Option<Instant>,
    /// Sequences of events re-driven from dead letters, in flight.
    redriven: std::collections::HashSet<u64>,
    /// Strict ordering under retry.
    strict: bool,
    /// Per ordering key: the event waiting for a retry that holds it.
    blockers: HashMap<String, u64>,
    /// Per ordering key: the events held back behind it, in order, with
    /// their attempts.
    held: HashMap<String, VecDeque<(Arc<Event>, u32)>>,
    /// On a broker: where batches come from and are settled.
    consumer: Option<Box<dyn crate::backend::Consumer>>,
    lease: Duration,
    lease_renewed: Instant,
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
        let settings_strict = settings.ordering_of(&plugin.name) == RetryOrdering::Strict;
        let mut retries = BinaryHeap::new();
        if let (Some(store), false) = (&source.cursor_store, source.start.pending.is_empty()) {
            let now = Instant::now();
            for &(seq, attempt) in &source.start.pending {
                match store.read(seq, 1) {
                    Ok(found) => match found.into_iter().next() {
                        Some(event) if event.sequence == seq => retries.push(Reverse(Pending {
                            due: now,
                            attempt,
                            event: Arc::new(event),
                        })),
                        _ => {
                            tracing::error!(plugin = %plugin.name, sequence = seq, "an event waiting for a retry is no longer in the log")
                        }
                    },
                    Err(e) => {
                        tracing::error!(plugin = %plugin.name, sequence = seq, "cannot read an event waiting for a retry: {e}")
                    }
                }
            }
            tracing::info!(plugin = %plugin.name, pending = retries.len(), "retries pending from before the restart");
        }
        Worker {
            index: source.index,
            cursor_name: source.cursor_name,
            stopping: source.stopping,
            fail_streak: 0,
            quarantine_pause: QUARANTINE_PAUSE_MIN,
            low_priority_until: None,
            background_until: None,
            rest_due: Duration::ZERO,
            quarantined_until: None,
            instance,
            needs_reset: false,
            queue: source.queue,
            current: None,
            pos: 0,
            done_through: source.start.through,
            cursor_store: source.cursor_store,
            saved: source.start,
            saved_at: Instant::now(),
            kv: source.kv,
            fx: Effects::default(),
            dispatch,
            first_attempts: vec![1; settings.batch_events_max.max(1)],
            settings,
            retries,
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
            swaps: m.swaps.get_or_create(&labels).clone(),
            swap_pause_seconds: m.swap_pause_seconds.get_or_create(&labels).clone(),
            pause_from: None,
            redriven: std::collections::HashSet::new(),
            strict: settings_strict,
            blockers: HashMap::new(),
            held: HashMap::new(),
            lease: source.consumer.as_ref().map_or(Duration::MAX, |c| c.1),
            consumer: source.consumer.map(|c| c.0),
            lease_renewed: Instant::now(),
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
            // A batch boundary: the place to rest after a misbehaving call,
            // and to take a new version, with the queue, the cursor and
            // pending retries as they are.
            self.rest();
            self.take_swap();
            if let Some(until) = self.quarantined_until {
                let left = until.saturating_duration_since(Instant::now());
                if !left.is_zero() {
                    if self.stopping.load(Ordering::Acquire) {
                        // Shutting down: what waits is in the log (durable)
                        // or lost with the process (memory, by design).
                        break;
                    }
                    std::thread::sleep(left.min(IDLE_POLL));
                    continue;
                }
                // The pause is over: the next batch tries again.
                self.quarantined_until = None;
            }
            if self.index == 0 {
                // Events re-driven from dead letters go to the first worker.
                self.pick_up_redrives();
            }
            if self.consumer.is_some() {
                if self.stopping.load(Ordering::Acquire) {
                    break;
                }
                self.pull();
                continue;
            }
            // Retries that are due go first, as a batch of their own.
            if let Some((chunk, attempts)) = self.due_retries() {
                self.deliver(&chunk, 0..chunk.len(), &attempts, false);
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
                        // Durable: pending retries are in the cursor, and
                        // are delivered after a restart.
                        Some(_) if self.cursor_store.is_some() => break,
                        // Retries still pending after the queue closed: wait
                        // for them (bounded by max_attempts and backoff_ms_max).
                        Some(r) => {
                            std::thread::sleep(r.0.due.saturating_duration_since(Instant::now()));
                            continue;
                        }
                        None => break,
                    }
                }
                let waiting = Instant::now();
                let next = match self.retries.peek() {
                    Some(r) => self
                        .queue
                        .recv_timeout(r.0.due.saturating_duration_since(Instant::now())),
                    // Look up now and then for re-driven events (durable)
                    // and for a new version.
                    None => self.queue.recv_timeout(IDLE_POLL),
                };
                // Time spent waiting for events is not a pause of delivery.
                if let Some(from) = self.pause_from.as_mut() {
                    *from += waiting.elapsed();
                }
                match next {
                    Ok(delivery) => {
                        self.current = Some(delivery);
                        self.pos = 0;
                    }
                    Err(RecvTimeoutError::Timeout) => self.save_cursor(true),
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
                    self.deliver(&merged, 0..merged.len(), &attempts, true);
                    self.done(through);
                    continue;
                }
            }
            let attempts = std::mem::take(&mut self.first_attempts);
            self.deliver(&chunk, start..end, &attempts[..end - start], true);
            self.first_attempts = attempts;
        }
        self.save_cursor(true);
        self.hand_back();
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

    /// Handle `chunk[range]`; `stream` when the events are the next ones
    /// from the queue (not retries), so that the cursor moves past them.
    fn deliver(&mut self, chunk: &Chunk, range: Range<usize>, attempts: &[u32], stream: bool) {
        let batch = &chunk[range.clone()];
        let advance = if stream {
            batch.last().map(|e| e.sequence)
        } else {
            None
        };
        if self.strict && !self.blockers.is_empty() && batch.iter().any(|e| self.is_held_back(e)) {
            // Strict ordering: events behind a retry wait; the rest go on.
            let mut pass = Vec::with_capacity(batch.len());
            let mut pass_attempts = Vec::with_capacity(batch.len());
            for (event, &attempt) in batch.iter().zip(attempts) {
                if self.is_held_back(event) {
                    self.hold(event, attempt);
                } else {
                    pass.push(event.clone());
                    pass_attempts.push(attempt);
                }
            }
            let pass: Chunk = Arc::from(pass);
            self.deliver_now(&pass, 0..pass.len(), &pass_attempts, advance);
            return;
        }
        self.deliver_now(chunk, range, attempts, advance);
    }

    fn deliver_now(
        &mut self,
        chunk: &Chunk,
        range: Range<usize>,
        attempts: &[u32],
        advance: Option<u64>,
    ) {
        let batch = &chunk[range.clone()];
        if batch.is_empty() {
            self.finish(batch, attempts, advance, kv::Writes::new(), 0, Vec::new());
            return;
        }
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
            self.finish(batch, attempts, advance, kv::Writes::new(), 0, Vec::new());
            return;
        }
        self.keep_lease();
        let started = Instant::now();
        if let Some(from) = self.pause_from.take() {
            let pause = started.saturating_duration_since(from);
            self.swap_pause_seconds.observe(pause.as_secs_f64());
            self.plugin
                .last_swap_pause_us
                .store(pause.as_micros() as u64, Ordering::Release);
        }
        let budget = Duration::from_millis(self.plugin.settings.limits.deadline_ms);
        let low = self.low_priority_until.is_some_and(|t| started < t);
        let mode = if low {
            self.plugin.low_priority_batches.inc();
            CallMode::Throttled
        } else if self.background_until.is_some_and(|t| started < t) {
            CallMode::Background
        } else {
            CallMode::Foreground
        };
        // A batch in the foreground is under way until it is committed:
        // background calls yield to it.
        let mut foreground =
            (mode == CallMode::Foreground).then(runtime::call::ForegroundCall::enter);
        let mut result = self.call(chunk, range.clone(), attempts, mode, budget);
        let mut heavy = matches!(&result, Ok(r) if r.heavy);
        // CPU time the batch's calls used (the throttle's pauses excluded).
        let mut busy = self.instance.cpu_used();
        if let Err(CallError::Preempted { why, .. }) = &result {
            // Nothing it did was kept: the batch runs again from the start,
            // in the background, with what is left of its deadline.
            tracing::info!(plugin = %self.plugin.name, worker = self.index, "a call {why}: it runs again, and the plugin's calls for the next {} s, in the background (yielding to the other plugins)", BACKGROUND_FOR.as_secs());
            heavy = true;
            drop(foreground.take());
            let left = budget.saturating_sub(busy);
            result = self.instance.reset().and_then(|_| {
                self.call(chunk, range.clone(), attempts, CallMode::Background, left)
            });
            busy += self.instance.cpu_used();
        }
        if heavy {
            let until = Instant::now() + BACKGROUND_FOR;
            self.background_until = Some(until);
            self.plugin.background_until.extend(until);
        }
        let handled_at = Instant::now();
        let offended = !matches!(&result, Ok(r) if r.refused == 0);
        if low || offended {
            // Its share while misbehaving: a tenth of a core, host time in
            // the call included (its first offence too, which ran at full
            // speed until it was cut or failed). The rest comes after the
            // batch's outcomes are committed.
            self.rest_due += busy * runtime::THROTTLE_PAUSE_TICKS as u32;
        }
        if offended {
            self.misbehaved();
        }
        self.handle_seconds
            .observe(handled_at.duration_since(started).as_secs_f64());
        self.batch_events.observe(batch.len() as f64);
        match result {
            Ok(result) => {
                let mut acked = 0;
                let mut failed = None;
                for o in &result.outcomes {
                    match o {
                        Outcome::Ack => acked += 1,
                        Outcome::Retry(r) => {
                            failed.get_or_insert(r.message.as_str());
                        }
                        Outcome::Reject(_) => {}
                    }
                }
                self.note_batch(acked > 0, failed);
                let all_acked = acked == result.outcomes.len();
                if !all_acked && !result.writes.is_empty() && batch.len() > 1 {
                    // Writes cannot be told apart by event: handle the
                    // events one by one so that only acked ones' are kept.
                    for (i, &attempt) in range.zip(attempts) {
                        self.deliver(chunk, i..i + 1, &[attempt], advance.is_some());
                    }
                    if let Some(through) = advance {
                        self.finish(&[], &[], Some(through), kv::Writes::new(), 0, Vec::new());
                    }
                    return;
                }
                // Strict ordering: an event after a retried one with its key
                // in this batch is set aside, as if it had not been handled.
                let mut set_aside = vec![false; batch.len()];
                for (i, ((event, &attempt), outcome)) in
                    batch.iter().zip(attempts).zip(&result.outcomes).enumerate()
                {
                    if self.strict && self.is_held_back(event) {
                        set_aside[i] = true;
                        self.hold(event, attempt);
                        continue;
                    }
                    match outcome {
                        Outcome::Ack => {
                            if let Some(at) = event.accepted_at {
                                let waited = handled_at.saturating_duration_since(at);
                                self.delivery_seconds.observe(waited.as_secs_f64());
                            }
                            self.fx.acked += 1;
                            if self.redriven.contains(&event.sequence) {
                                self.fx.acked_redriven.push(event.sequence);
                            }
                            if self.strict {
                                self.unblock(event);
                            }
                        }
                        Outcome::Retry(r) => self.fail(event, attempt, r.delay_ms, &r.message),
                        Outcome::Reject(msg) => {
                            self.plugin.failed.inc();
                            self.give_up(event, attempt, msg, GiveUp::Rejected);
                        }
                    }
                }
                let follow_ups: Vec<Event> = result
                    .published
                    .into_iter()
                    .filter(|(cause, _)| {
                        matches!(result.outcomes.get(*cause), Some(Outcome::Ack))
                            && !set_aside.get(*cause).copied().unwrap_or(true)
                    })
                    .map(|(_, e)| e)
                    .collect();
                let (writes, state_delta) = if all_acked && !set_aside.contains(&true) {
                    if !result.writes.is_empty() {
                        self.fx.reads = result.reads;
                    }
                    (result.writes, result.state_delta)
                } else {
                    (kv::Writes::new(), 0)
                };
                self.finish(batch, attempts, advance, writes, state_delta, follow_ups);
            }
            Err(e) => {
                self.traps.inc();
                tracing::error!(plugin = %self.plugin.name, batch_events = batch.len(), "{e}; the batch counts as a failed attempt and the instance is re-made");
                let message = e.to_string();
                self.note_batch(false, Some(&message));
                for (event, &attempt) in batch.iter().zip(attempts) {
                    if self.strict && self.is_held_back(event) {
                        self.hold(event, attempt);
                    } else {
                        self.fail(event, attempt, None, &message);
                    }
                }
                self.needs_reset = true;
                self.finish(batch, attempts, advance, kv::Writes::new(), 0, Vec::new());
            }
        }
    }

    /// Call the plugin in `mode` (on this thread, whose stack has room for
    /// the plugin's wasm stack), counting the batches not in the
    /// foreground.
    fn call(
        &mut self,
        chunk: &Chunk,
        range: Range<usize>,
        attempts: &[u32],
        mode: CallMode,
        budget: Duration,
    ) -> Result<BatchResult, CallError> {
        if mode != CallMode::Foreground {
            self.plugin.background_batches.inc();
        }
        self.instance.handle(chunk, range, attempts, mode, budget)
    }
}
