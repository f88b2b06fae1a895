//! One plugin's delivery worker: a thread that takes batches of up to
//! `batch_events_max` events from its consumer (`backend::Consumer`: the
//! embedded store's, a broker's or memory mode's, the worker does not know
//! which), calls `handle` once per `batch_bytes_max` bytes of them (one
//! larger event goes alone), and settles the outcomes through the consumer.
//!
//! - `ack`: done; the plugin's follow-up events for it are published.
//! - `retry`: re-delivered after the plugin's delay, or exponential backoff
//!   with jitter, with `attempt` counting up; after `max_attempts` the event
//!   is dropped and counted (`retries_exhausted`).
//! - `reject`: given up on at once. In durable mode the event becomes a
//!   dead letter (`store::dead`); in memory mode it is dropped and counted
//!   (`rejected`). Running out of attempts does the same.
//! - events re-driven from dead letters come back with `attempt` 1.
//! - a trap (panic, deadline, memory cap) or a wrong number of outcomes
//!   fails every event of the batch as one failed attempt; the store is
//!   dropped and a fresh instance made before the next batch. A deadline
//!   on a batch of more than one event is not an attempt: the batch is
//!   handled again in halves (`batches`), and so is a batch of more than
//!   one event cut for turning heavy (below).
//!
//! Ordering under retry (`RetryOrdering`) is the consumer's: with `strict`
//! it holds later events of a key back while one waits for its retry.
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
//! CPU: a call starts in the foreground; a batch of several events cut
//! there for turning heavy (`runtime::call`) is handled again in halves,
//! as the host chose its size; a single event cut so runs again from the
//! start in the background, where it
//! yields to the host's foreground calls, and so do the plugin's calls for
//! [`BACKGROUND_FOR`] after its last heavy one. A plugin that misbehaves (a trap, a deadline,
//! a refused publish, a cut message) is held to a tenth of a core for
//! [`LOW_PRIORITY_FOR`]: its calls are throttled, and after an offending
//! call delivery rests nine times the call's busy time.
//!
//! Retries wait in the consumer (`max_attempts` bounds their number per
//! event; on this host the backlog is capped at the queue capacity, beyond
//! which new failures are given up on).
//!
//! State, by the ack rule (`plugbus_contract::ack`): the key-value writes
//! of a batch whose events were all acked are committed; a batch with
//! writes and any other outcome is handled again one event at a time, so
//! that only acked events' writes are kept. Each
//! batch's outcomes, writes and follow-up events are one settlement; only
//! once it is committed do the outcomes take effect here (counters). A
//! settlement that fails keeps nothing: the batch's events are delivered
//! again later at the same attempt, to a fresh instance.
//!
//! Rooms: `pull` (taking batches and settling them through the consumer),
//! `retry` (backoff and giving up), `health` (quarantine, rest after an
//! offence, the hold for a publish rate, reset, hot swap), `settle` (a
//! batch's outcomes into effects, and applying them), `batches` (the batch
//! size after deadline overruns), `supervise` (a panic caught, test-only
//! faults).

mod batches;
mod health;
mod pull;
mod retry;
mod settle;
mod supervise;

use retry::GiveUp;
use settle::Kept;
use std::ops::Range;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::Histogram;

use super::{DeliverySettings, RunningPlugin};
use crate::backend::Consumer;
use crate::event::{Chunk, Event};
use crate::metrics::{self, DropReason, Metrics};
use crate::runtime::kv;
use crate::runtime::{self, BatchResult, CallError, CallMode, Outcome, PluginInstance};
use crate::telemetry::Handled;
use plugbus_contract::ack;

/// How long an idle worker waits for events before looking for a new
/// version again.
const IDLE_POLL: Duration = Duration::from_millis(100);

/// What a call of the plugin gave, and the mark of a foreground batch
/// under way (held until the batch is settled).
type Called = (
    Result<BatchResult, CallError>,
    Option<runtime::call::ForegroundCall>,
);

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

/// Where a worker's events come from.
pub(super) struct Source {
    /// The plugin's consumer for this worker.
    pub consumer: Box<dyn Consumer>,
    /// How long an event handed out stays this worker's without renewal.
    pub lease: Duration,
    /// Whether given-up events are kept as dead letters (and events not yet
    /// taken survive a restart), rather than dropped (memory mode).
    pub durable: bool,
    /// Which of the plugin's workers this is.
    pub index: usize,
    /// Set when the host shuts down.
    pub stopping: Arc<std::sync::atomic::AtomicBool>,
}

/// What a batch's outcomes do, applied once its progress is written.
#[derive(Default)]
struct Effects {
    /// How many were acked.
    acked: u64,
    /// Events to deliver again after a delay.
    retries: Vec<(u64, Duration)>,
    gave_up: Vec<(Arc<Event>, u32, String, GiveUp)>,
    /// The committed values the writes were made from.
    reads: kv::Writes,
}

/// The batch handed to the plugin and not yet settled, if any (`chunk`);
/// its buffer of attempts is kept from batch to batch.
#[derive(Default)]
struct InHand {
    chunk: Option<Chunk>,
    range: Range<usize>,
    attempts: Vec<u32>,
}

pub(super) struct Worker {
    /// Which of the plugin's workers this is.
    index: usize,
    stopping: Arc<std::sync::atomic::AtomicBool>,
    plugin: Arc<RunningPlugin>,
    settings: DeliverySettings,
    instance: PluginInstance,
    needs_reset: bool,
    /// Where batches come from and are settled.
    feed: Feed,
    /// The batch being handled, until it is settled: what a panic of the
    /// worker counts a failed attempt for (`supervise`).
    in_hand: InHand,
    /// The outcomes of the batch in hand.
    fx: Effects,
    /// How many events a call takes now (`batches`).
    cap: batches::Cap,
    /// Quarantine and the CPU holds (`health`).
    health: health::Health,
    /// The seed of the retries' jitter (`retry`).
    jitter: u64,
    /// Set by a swap: when it started, moved on by any time spent waiting
    /// for events before the new version's first call.
    pause_from: Option<Instant>,
    meters: Meters,
}

/// The worker's consumer, and its lease on the events in hand.
struct Feed {
    consumer: Box<dyn Consumer>,
    /// Given-up events are dead letters (not dropped).
    durable: bool,
    lease: Duration,
    lease_renewed: Instant,
}

/// The plugin's metrics a worker records.
struct Meters {
    handle_seconds: Histogram,
    batch_events: Histogram,
    delivery_seconds: Histogram,
    traps: Counter,
    dropped_rejected: Counter,
    dropped_exhausted: Counter,
    dead_lettered: Counter,
    swaps: Counter,
    swap_pause_seconds: Histogram,
    timers_cancelled: Counter,
}

impl Meters {
    fn of(plugin: &str, m: &Metrics) -> Meters {
        let labels = metrics::plugin(plugin);
        Meters {
            handle_seconds: m.handle_seconds.get_or_create(&labels).clone(),
            batch_events: m.batch_events.get_or_create(&labels).clone(),
            delivery_seconds: m.delivery_seconds.get_or_create(&labels).clone(),
            traps: m.traps.get_or_create(&labels).clone(),
            dropped_rejected: m.drop_counter(plugin, DropReason::Rejected),
            dropped_exhausted: m.drop_counter(plugin, DropReason::RetriesExhausted),
            dead_lettered: m.dead_lettered.get_or_create(&labels).clone(),
            swaps: m.swaps.get_or_create(&labels).clone(),
            swap_pause_seconds: m.swap_pause_seconds.get_or_create(&labels).clone(),
            timers_cancelled: m.timers_cancelled.get_or_create(&labels).clone(),
        }
    }
}

impl Worker {
    pub(super) fn new(
        instance: PluginInstance,
        source: Source,
        plugin: Arc<RunningPlugin>,
        m: &Metrics,
        settings: DeliverySettings,
    ) -> Worker {
        Worker {
            index: source.index,
            stopping: source.stopping,
            instance,
            needs_reset: false,
            feed: Feed {
                consumer: source.consumer,
                durable: source.durable,
                lease: source.lease,
                lease_renewed: Instant::now(),
            },
            in_hand: InHand::default(),
            fx: Effects::default(),
            cap: batches::Cap::new(settings.batch_events_max),
            health: health::Health::default(),
            jitter: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0x9e37_79b9, |d| d.as_nanos() as u64)
                | 1,
            pause_from: None,
            meters: Meters::of(&plugin.name, m),
            plugin,
            settings,
        }
    }

    fn batch_events_max(&self) -> usize {
        self.cap
            .events
            .clamp(1, self.settings.batch_events_max.max(1))
    }

    fn batch_bytes_max(&self) -> usize {
        self.settings
            .batch_bytes_max
            .min(runtime::BATCH_BYTES_LIMIT)
    }

    pub(super) fn run(mut self) {
        loop {
            match self.step_supervised() {
                Ok(true) => {}
                Ok(false) => break,
                Err(panic) => self.died(&panic),
            }
        }
        self.hand_back();
        tracing::debug!(plugin = %self.plugin.name, "worker stopped");
    }

    /// One turn of the worker: rest, hold, swap, quarantine, then a batch.
    /// False when the worker is to stop.
    fn step(&mut self) -> bool {
        if self.plugin.stop.load(Ordering::Acquire) {
            // Stopped alone (a replay moves the cursor): what is in hand is
            // abandoned, not delivered.
            return false;
        }
        // A batch boundary: the place to rest after a misbehaving call, to
        // pay back a publish rate, and to take a new version, with the
        // consumer as it is.
        self.rest();
        self.hold_for_publish_rate();
        self.take_swap();
        if let Some(until) = self.health.quarantined_until {
            let left = until.saturating_duration_since(Instant::now());
            if !left.is_zero() {
                if self.stopping.load(Ordering::Acquire) {
                    // Shutting down: what waits is in the log (durable) or
                    // lost with the process (memory, by design).
                    return false;
                }
                std::thread::sleep(left.min(IDLE_POLL));
                return true;
            }
            // The pause is over: the next batch tries again.
            self.health.quarantined_until = None;
        }
        // Shutting down: durable delivery stops at the batch boundary (what
        // was not taken comes after a restart); memory mode goes on until
        // its queue, closed, is empty.
        if self.feed.durable && self.stopping.load(Ordering::Acquire) {
            return false;
        }
        self.pull()
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

    /// Handle `chunk[range]`, whose events are at `attempts`, and settle
    /// what became of them: the call (with its retries in halves or in the
    /// background), then the outcomes by the ack rule, or the failure.
    fn deliver(&mut self, chunk: &Chunk, range: Range<usize>, attempts: &[u32]) {
        let batch = &chunk[range.clone()];
        if batch.is_empty() || !self.take_in_hand(chunk, &range, attempts) {
            return;
        }
        self.keep_lease();
        let span = crate::telemetry::batch_span(&self.plugin.name, batch);
        let _in_span = span.enter();
        let started = Instant::now();
        self.note_swap_pause(started);
        // None: the batch was split and handled in halves. A batch in the
        // foreground stays under way until it is settled (`_foreground`):
        // background calls yield to it.
        let Some((result, _foreground)) = self.handle(chunk, range.clone(), attempts, started)
        else {
            return;
        };
        let handled_at = Instant::now();
        self.meters
            .handle_seconds
            .observe(handled_at.duration_since(started).as_secs_f64());
        self.meters.batch_events.observe(batch.len() as f64);
        match result {
            Ok(result) => {
                self.settle_outcomes(chunk, range, attempts, result, (started, handled_at))
            }
            Err(e) => self.settle_failure(batch, attempts, e, (started, handled_at)),
        }
    }

    /// Take the batch in hand; false when it was settled already as failed
    /// (no instance could be made for it).
    fn take_in_hand(&mut self, chunk: &Chunk, range: &Range<usize>, attempts: &[u32]) -> bool {
        let batch = &chunk[range.clone()];
        self.in_hand.chunk = Some(chunk.clone());
        self.in_hand.range = range.clone();
        self.in_hand.attempts.clear();
        self.in_hand.attempts.extend_from_slice(attempts);
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
            self.finish(batch, Kept::default());
            return false;
        }
        true
    }

    /// The first call after a swap ends the swap's pause: measure it.
    fn note_swap_pause(&mut self, started: Instant) {
        if let Some(from) = self.pause_from.take() {
            let pause = started.saturating_duration_since(from);
            self.meters.swap_pause_seconds.observe(pause.as_secs_f64());
            self.plugin
                .last_swap_pause_us
                .store(pause.as_micros() as u64, Ordering::Release);
        }
    }

    /// Call the plugin for the batch in the mode its recent behaviour
    /// earned (with the foreground's mark when in the foreground), retrying a call cut as too heavy in the background and
    /// splitting a batch too heavy or slow as a whole (then none: the
    /// halves were handled); account for the CPU it used.
    fn handle(
        &mut self,
        chunk: &Chunk,
        range: Range<usize>,
        attempts: &[u32],
        started: Instant,
    ) -> Option<Called> {
        let batch = &chunk[range.clone()];
        let budget = Duration::from_millis(self.plugin.settings.limits.deadline_ms);
        let low = self.health.held_low(started);
        let mode = self.health.mode(started);
        if low {
            self.plugin.low_priority_batches.inc();
        }
        // A batch in the foreground is under way until it is committed:
        // background calls yield to it.
        let mut foreground =
            (mode == CallMode::Foreground).then(runtime::call::ForegroundCall::enter);
        let mut result = self.call(chunk, range.clone(), attempts, mode, budget);
        self.fault_trap(&mut result);
        let mut heavy = matches!(&result, Ok(r) if r.heavy);
        // CPU time the batch's calls used (the throttle's pauses excluded).
        let mut busy = self.instance.cpu_used();
        if let Err(CallError::Preempted { why, .. }) = &result {
            if batch.len() > 1 {
                // Heavy as a batch the host chose: handled again in halves,
                // still in the foreground, as a deadline overrun is. Only
                // an event heavy on its own makes the plugin heavy.
                drop(foreground.take());
                let why = why.to_string();
                self.split(chunk, range, attempts, &why);
                return None;
            }
            // Nothing it did was kept: the event runs again from the start,
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
        if let Err(CallError::Deadline { deadline_ms, .. }) = &result {
            if batch.len() > 1 {
                // The host chose the batch size, not the plugin: no attempt
                // is counted; the batch goes again in halves.
                drop(foreground.take());
                let why = format!("ran past its deadline of {deadline_ms} ms");
                self.split(chunk, range, attempts, &why);
                return None;
            }
        }
        if result.is_ok() {
            // What the call could have used before it was cut or stopped
            // (a heavy one: its whole deadline, over both its calls).
            let limit = if heavy {
                budget
            } else {
                runtime::call::CallState::cpu_limit(mode, budget)
            };
            self.within_cap(batch.len(), busy, limit);
        }
        if heavy {
            let until = Instant::now() + BACKGROUND_FOR;
            self.health.background_until = Some(until);
            self.plugin.background_until.extend(until);
        }
        let offended = !matches!(&result, Ok(r) if r.refused == 0);
        if low || offended {
            // Its share while misbehaving: a tenth of a core, host time in
            // the call included (its first offence too, which ran at full
            // speed until it was cut or failed). The rest comes after the
            // batch's outcomes are committed.
            self.health.rest_due += busy * runtime::THROTTLE_PAUSE_TICKS as u32;
        }
        if offended {
            self.misbehaved();
        }
        Some((result, foreground))
    }

    /// Settle a batch the plugin answered: its outcomes, and its writes
    /// and follow-ups by the ack rule (`plugbus_contract::ack`), handling
    /// the events again one at a time when the rule says so.
    fn settle_outcomes(
        &mut self,
        chunk: &Chunk,
        range: Range<usize>,
        attempts: &[u32],
        mut result: BatchResult,
        (started, handled_at): (Instant, Instant),
    ) {
        let batch = &chunk[range.clone()];
        let acks: Vec<bool> = result
            .outcomes
            .iter()
            .map(|o| matches!(o, Outcome::Ack))
            .collect();
        // The first retry's message, for quarantine.
        let failed = result.outcomes.iter().find_map(|o| match o {
            Outcome::Retry(r) => Some(r.message.as_str()),
            _ => None,
        });
        self.note_batch(acks.contains(&true), failed);
        // Timer changes are state: kept as the writes are.
        let wrote = !result.writes.is_empty() || !result.timers.is_empty();
        let settlement = ack::settle(&acks, wrote);
        if settlement == ack::Settlement::OneAtATime {
            // Writes cannot be told apart by event: handle the
            // events one by one so that only acked ones' are kept.
            for (i, &attempt) in range.zip(attempts) {
                self.deliver(chunk, i..i + 1, &[attempt]);
            }
            return;
        }
        for ((event, &attempt), outcome) in batch.iter().zip(attempts).zip(&result.outcomes) {
            match outcome {
                Outcome::Ack => {
                    if let Some(at) = event.accepted_at {
                        let waited = handled_at.saturating_duration_since(at);
                        self.meters.delivery_seconds.observe(waited.as_secs_f64());
                    }
                    self.fx.acked += 1;
                }
                Outcome::Retry(r) => self.fail(event, attempt, r.delay_ms, &r.message),
                Outcome::Reject(msg) => {
                    self.plugin.failed.inc();
                    self.give_up(event, attempt, msg, GiveUp::Rejected);
                }
            }
        }
        if let Some(t) = crate::telemetry::get() {
            let outcomes: Vec<Handled<'_>> = result
                .outcomes
                .iter()
                .map(|o| match o {
                    Outcome::Ack => Handled::Ack,
                    Outcome::Retry(r) => Handled::Retry(&r.message),
                    Outcome::Reject(why) => Handled::Reject(why),
                })
                .collect();
            self.export(
                t,
                batch,
                &outcomes,
                (started, handled_at),
                &mut result.published,
            );
        }
        let follow_ups: Vec<Event> = result
            .published
            .into_iter()
            .filter(|(cause, _)| settlement.keeps_follow_up(acks.get(*cause) == Some(&true)))
            .map(|(_, e)| e)
            .collect();
        let kept = if settlement.keeps_writes() {
            if !result.writes.is_empty() {
                self.fx.reads = result.reads;
            }
            Kept {
                writes: result.writes,
                timers: result.timers,
                state_delta: result.state_delta,
                follow_ups,
            }
        } else {
            Kept {
                follow_ups,
                ..Kept::default()
            }
        };
        self.finish(batch, kept);
    }

    /// Settle a batch whose call failed (a trap, a deadline, the memory
    /// cap): every event counts a failed attempt and the instance is made
    /// again.
    fn settle_failure(
        &mut self,
        batch: &[Arc<Event>],
        attempts: &[u32],
        e: CallError,
        (started, handled_at): (Instant, Instant),
    ) {
        self.meters.traps.inc();
        tracing::error!(plugin = %self.plugin.name, batch_events = batch.len(), "{e}; the batch counts as a failed attempt and the instance is re-made");
        let message = e.to_string();
        if let Some(t) = crate::telemetry::get() {
            let outcomes: Vec<Handled<'_>> =
                batch.iter().map(|_| Handled::Failed(&message)).collect();
            self.export(t, batch, &outcomes, (started, handled_at), &mut []);
        }
        self.note_batch(false, Some(&message));
        for (event, &attempt) in batch.iter().zip(attempts) {
            self.fail(event, attempt, None, &message);
        }
        self.needs_reset = true;
        self.finish(batch, Kept::default());
    }

    /// Export the batch's process spans and its follow-ups' publish spans
    /// (handled over `during`, two instants).
    fn export(
        &self,
        t: &crate::telemetry::Telemetry,
        batch: &[Arc<Event>],
        outcomes: &[Handled<'_>],
        during: (Instant, Instant),
        follow_ups: &mut [(usize, Event)],
    ) {
        let now = std::time::SystemTime::now();
        let ago = |at: Instant| now.checked_sub(at.elapsed()).unwrap_or(now);
        let version = self.plugin.version();
        t.processed(
            &self.plugin.name,
            &version,
            batch,
            outcomes,
            ago(during.0),
            ago(during.1),
            follow_ups,
        );
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
