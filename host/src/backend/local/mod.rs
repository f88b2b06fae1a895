//! Delivery from this host's own queues: the [`Consumer`] of the embedded
//! store (fed by the plugin's log reader, `embedded::pump`: on a thread of
//! its own, or run by the consumer itself, see [`Source`]) and of memory
//! mode (fed by the bus). It keeps what a broker keeps for its consumers:
//!
//! - the events handed out and not yet settled, and how far through its
//!   queue the consumer is done (its cursor, saved in the store: at once
//!   with anything else a settlement writes, and at most every
//!   [`CURSOR_SAVE_EVERY`] when only the position moved);
//! - retries waiting for their time (in memory, and in the cursor so that
//!   they survive a restart), delivered before new events;
//! - events re-driven from dead letters, looked for when the backend says
//!   there are some;
//! - strict ordering under retry: an event holds its ordering key from the
//!   moment it is handed out until it is acked or given up on, and later
//!   events of that key wait behind it, in order, and are handed out one
//!   by one. So a batch never holds two events of one key.
//!
//! A settlement is committed in one atomic write (durable: the cursor, the
//! state writes, dead letters and follow-up events; memory: the state
//! map, then the follow-ups published), before any of it takes effect here.
//! A write that fails keeps nothing, and the batch's events come again
//! after [`COMMIT_RETRY`], at the same attempt, as they would after a
//! broker's lease.
//!
//! Rooms: this file keeps the consumer's state and hands events out;
//! `consumer` has the [`Consumer`] verbs (next batch, settle, release).

mod consumer;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{RecvTimeoutError, TryRecvError};

use super::{BackendError, Consumer, Delivered, Settlement, Verdict};
use crate::bus::{Delivery, OrderingKey, Queue};
use crate::event::{Chunk, Event};
use crate::store::progress::{Counts, Cursor, GaveUp, Progress};

/// A cursor that only moves past events (nothing else changed) is saved at
/// most this often while busy, and at once when idle: losing it only means
/// reading those events again.
pub const CURSOR_SAVE_EVERY: Duration = Duration::from_millis(200);

/// How long a batch waits to be delivered again after its settlement could
/// not be written.
pub const COMMIT_RETRY: Duration = Duration::from_secs(1);

/// Where a local consumer's settlements are kept: the embedded store
/// (`embedded::settle`), or memory mode's map and bus (`memory`), where
/// nothing outlives the process.
pub trait Commit: Send {
    /// Commit `progress` (its state writes, and where the store keeps them
    /// its cursor, dead letters and re-drives) with `follow_ups`, in one
    /// write, if the values in `expected` are still the plugin's bucket's
    /// (else [`BackendError::Conflict`]).
    fn write(
        &mut self,
        progress: Progress,
        follow_ups: Vec<Event>,
        expected: &[(String, Option<Vec<u8>>)],
    ) -> Result<(), BackendError>;

    /// A batch was handed out: what the bucket holds now is what its
    /// writes are computed from.
    fn handed_out(&mut self) {}

    /// Save `progress`'s cursor alone (the position moved, nothing else).
    fn save_cursor(&mut self, progress: Progress) -> Result<(), BackendError> {
        let _ = progress;
        Ok(())
    }

    /// The event at `sequence`, read back for a retry the cursor kept;
    /// none where no log is kept.
    fn read_back(&self, sequence: u64) -> Result<Option<Event>, BackendError> {
        let _ = sequence;
        Ok(None)
    }

    /// The plugin's dead letters re-driven and not yet delivered.
    fn redrives(&self, plugin: &str) -> Result<Vec<Event>, BackendError> {
        let _ = plugin;
        Ok(Vec::new())
    }

    /// Why deliveries wait now (the store's disk inside its reserve).
    fn held_back(&self) -> Option<String> {
        None
    }
}

/// Live views of a local consumer, for status reports.
#[derive(Clone, Default)]
pub struct Gauges {
    /// Every event up to here is done (what the cursor's `low` says).
    pub done_through: Arc<AtomicU64>,
    /// Events waiting in its queue.
    pub queued: Arc<AtomicUsize>,
}

/// Where a handed-out event came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    /// The queue, for the first time: the cursor waits for it.
    New,
    /// A retry, or an event that waited behind another of its key: in the
    /// cursor's pending list until settled.
    Retry,
    /// A re-driven dead letter: in the store's re-drive list until settled.
    Redrive,
}

/// An event waiting for its time (a retry) or for its turn.
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

/// An event handed out.
struct Handed {
    seq: u64,
    attempt: u32,
    origin: Origin,
    settled: bool,
    /// The event; `None` only for an event of a delivery handed out whole,
    /// which is found in `LocalConsumer::chunks`, so that handing out a
    /// whole delivery costs no reference count per event.
    event: Option<Arc<Event>>,
}

/// A batch being put together.
#[derive(Default)]
struct Out {
    events: Vec<Arc<Event>>,
    attempts: Vec<u32>,
}

/// How a local consumer is set up, besides its queue and commit.
pub struct LocalOptions {
    /// Strict ordering under retry, by this key.
    pub strict: Option<OrderingKey>,
    /// Where it starts: how far it was done, and the retries pending then.
    pub start: Cursor,
    /// Set when re-driven dead letters are waiting (the plugin's first
    /// consumer only, durable mode).
    pub redrives: Option<Arc<AtomicBool>>,
    /// Wait for the retries still pending once the queue closes, rather
    /// than leave them (memory mode: nothing keeps them).
    pub drain_on_close: bool,
}

/// Where a consumer's deliveries come from: a [`Queue`] another thread
/// fills, or a log reader the consumer runs on its own thread when it
/// needs more (one thread hand-off less per delivery).
pub trait Source: Send {
    /// The next delivery, if there is one now.
    fn try_recv(&mut self) -> Result<Delivery, TryRecvError>;
    /// The next delivery, waiting at most `timeout` for it.
    fn recv_timeout(&mut self, timeout: Duration) -> Result<Delivery, RecvTimeoutError>;
    /// A live count of the events it holds for the consumer.
    fn depth_handle(&self) -> Arc<AtomicUsize>;
}

impl Source for Queue {
    fn try_recv(&mut self) -> Result<Delivery, TryRecvError> {
        Queue::try_recv(self)
    }

    fn recv_timeout(&mut self, timeout: Duration) -> Result<Delivery, RecvTimeoutError> {
        Queue::recv_timeout(self, timeout)
    }

    fn depth_handle(&self) -> Arc<AtomicUsize> {
        Queue::depth_handle(self)
    }
}

/// A consumer on this host's queue. See the module docs.
pub struct LocalConsumer {
    plugin: String,
    queue: Box<dyn Source>,
    commit: Box<dyn Commit>,
    strict: Option<OrderingKey>,
    redrives: Option<Arc<AtomicBool>>,
    drain_on_close: bool,
    closed: bool,
    /// The delivery being taken from, and how far.
    current: Option<Delivery>,
    pos: usize,
    /// Everything the queue accounted for up to here is handed out (or
    /// not the plugin's).
    taken_to: u64,
    handed: VecDeque<Handed>,
    /// The deliveries handed out whole whose events are in `handed`.
    chunks: Vec<Chunk>,
    /// Where the next settlement's first event likely is in `handed`.
    hint: usize,
    waiting: BinaryHeap<Reverse<Waiting>>,
    /// Strict ordering: per key, the event that holds it, and those
    /// waiting behind it in order.
    owners: HashMap<String, u64>,
    behind: HashMap<String, VecDeque<Waiting>>,
    /// Re-driven letters handed out or waiting.
    redriving: HashSet<u64>,
    saved: Cursor,
    saved_at: Instant,
    /// What became of its events, as of the settlements taken effect
    /// (saved with the cursor).
    counts: Counts,
    /// Events dropped by the log reader (overflow `drop`), counted once the
    /// cursor is past them: (the highest sequence among them, how many).
    drops: VecDeque<(u64, u64)>,
    gauges: Gauges,
    /// Dropped last: whatever must outlive the queue (the log reader).
    _guard: Option<Box<dyn Send>>,
}

impl LocalConsumer {
    /// A consumer of `plugin` taking deliveries from `queue`, committing
    /// through `commit`; `guard` is dropped after everything else.
    pub fn new(
        plugin: &str,
        queue: impl Source + 'static,
        commit: Box<dyn Commit>,
        options: LocalOptions,
        guard: Option<Box<dyn Send>>,
    ) -> LocalConsumer {
        let gauges = Gauges {
            done_through: Arc::new(AtomicU64::new(options.start.low())),
            queued: queue.depth_handle(),
        };
        let mut consumer = LocalConsumer {
            plugin: plugin.to_string(),
            queue: Box::new(queue),
            commit,
            strict: options.strict,
            redrives: options.redrives,
            drain_on_close: options.drain_on_close,
            closed: false,
            current: None,
            pos: 0,
            taken_to: options.start.through,
            handed: VecDeque::new(),
            chunks: Vec::new(),
            hint: 0,
            waiting: BinaryHeap::new(),
            owners: HashMap::new(),
            behind: HashMap::new(),
            redriving: HashSet::new(),
            saved: options.start.clone(),
            saved_at: Instant::now(),
            counts: options.start.counts,
            drops: VecDeque::new(),
            gauges,
            _guard: guard,
        };
        consumer.pending_from(&options.start);
        consumer
    }

    /// Retries pending when the consumer last stopped, due when they were
    /// (at once if that has passed).
    fn pending_from(&mut self, start: &Cursor) {
        if start.pending.is_empty() {
            return;
        }
        let (now, wall) = (Instant::now(), crate::timer::now_ms());
        for &(seq, attempt) in &start.pending {
            let wait = start.due_of(seq).map_or(0, |due| due.saturating_sub(wall));
            let due = now.checked_add(Duration::from_millis(wait)).unwrap_or(now);
            match self.commit.read_back(seq) {
                Ok(found) => match found {
                    Some(event) if event.sequence == seq => self.waiting.push(Reverse(Waiting {
                        due,
                        attempt,
                        origin: Origin::Retry,
                        event: Arc::new(event),
                    })),
                    _ => {
                        tracing::error!(plugin = %self.plugin, sequence = seq, "an event waiting for a retry is no longer in the log")
                    }
                },
                Err(e) => {
                    tracing::error!(plugin = %self.plugin, sequence = seq, "cannot read an event waiting for a retry: {e}")
                }
            }
        }
        tracing::info!(plugin = %self.plugin, pending = self.waiting.len(), "retries pending from before the restart");
    }

    /// Whether `event` may be handed out now (strict ordering: nobody
    /// else holds its key; it then holds it).
    fn may_take(&mut self, event: &Event) -> bool {
        let Some(key) = &self.strict else {
            return true;
        };
        let k = key.of(event);
        match self.owners.get(k) {
            Some(&owner) => owner == event.sequence,
            None => {
                self.owners.insert(k.to_string(), event.sequence);
                true
            }
        }
    }

    /// Have `w` wait behind the event holding its key.
    fn wait_behind(&mut self, w: Waiting) {
        let Some(key) = &self.strict else {
            return;
        };
        let origin = match w.origin {
            Origin::New => Origin::Retry,
            other => other,
        };
        self.behind
            .entry(key.of(&w.event).to_string())
            .or_default()
            .push_back(Waiting { origin, ..w });
    }

    /// Hand `w` (a retry, a re-drive, or an event whose turn came) out
    /// into `out`, unless it must wait behind another of its key.
    fn take(&mut self, w: Waiting, out: &mut Out) {
        if !self.may_take(&w.event) {
            self.wait_behind(w);
            return;
        }
        out.events.push(w.event.clone());
        out.attempts.push(w.attempt);
        self.handed.push_back(Handed {
            seq: w.event.sequence,
            attempt: w.attempt,
            origin: w.origin,
            settled: false,
            event: Some(w.event),
        });
    }

    /// A delivery came: it is the one taken from next, and the events
    /// dropped before it wait to be counted.
    fn arrived(&mut self, d: Delivery) {
        let (n, highest) = d.dropped;
        if n > 0 {
            self.drops.push_back((highest, n));
        }
        self.current = Some(d);
        self.pos = 0;
    }

    /// New events from the queue into `out`, up to `max` in all, without
    /// waiting. A whole delivery into an empty batch goes as it is.
    fn take_new(&mut self, max: usize, out: &mut Out) -> Option<Chunk> {
        while out.events.len() < max {
            let Some(delivery) = self.current.clone() else {
                match self.queue.try_recv() {
                    Ok(d) => {
                        self.arrived(d);
                        continue;
                    }
                    Err(TryRecvError::Empty) => return None,
                    Err(TryRecvError::Disconnected) => {
                        self.closed = true;
                        return None;
                    }
                }
            };
            let events = &delivery.events;
            if events.is_empty() {
                // Nothing of the plugin's: the position moves, saved with
                // the next save (at most CURSOR_SAVE_EVERY, or when idle),
                // so that its lag does not count events it does not take.
                self.taken_to = self.taken_to.max(delivery.through);
                self.current = None;
                continue;
            }
            if out.events.is_empty()
                && self.pos == 0
                && events.len() <= max
                && self.strict.is_none()
            {
                // The common case: the delivery is the batch.
                for e in events.iter() {
                    self.handed.push_back(Handed {
                        seq: e.sequence,
                        attempt: 1,
                        origin: Origin::New,
                        settled: false,
                        event: None,
                    });
                }
                self.chunks.push(events.clone());
                self.taken_to = self.taken_to.max(delivery.through);
                self.current = None;
                out.attempts.resize(events.len(), 1);
                return Some(events.clone());
            }
            while self.pos < events.len() && out.events.len() < max {
                let event = &events[self.pos];
                self.pos += 1;
                self.taken_to = self.taken_to.max(event.sequence);
                if !self.may_take(event) {
                    self.wait_behind(Waiting {
                        due: Instant::now(),
                        attempt: 1,
                        origin: Origin::New,
                        event: event.clone(),
                    });
                    continue;
                }
                out.events.push(event.clone());
                out.attempts.push(1);
                // A delivery cut into batches may outlive `chunks` (emptied
                // whenever nothing is in hand): the event is kept here.
                self.handed.push_back(Handed {
                    seq: event.sequence,
                    attempt: 1,
                    origin: Origin::New,
                    settled: false,
                    event: Some(event.clone()),
                });
            }
            if self.pos >= events.len() {
                self.taken_to = self.taken_to.max(delivery.through);
                self.current = None;
            }
        }
        None
    }

    /// The event handed out at `i`.
    fn event_at(&self, i: usize) -> Option<Arc<Event>> {
        let h = &self.handed[i];
        if let Some(e) = &h.event {
            return Some(e.clone());
        }
        // Deliveries are in sequence order; a linear look is the fallback.
        let found = self.chunks.iter().find_map(|c| {
            c.binary_search_by_key(&h.seq, |e| e.sequence)
                .ok()
                .map(|at| c[at].clone())
                .or_else(|| c.iter().find(|e| e.sequence == h.seq).cloned())
        });
        // Every event in hand can be found: a retry or a dead letter of one
        // that cannot would be lost.
        debug_assert!(found.is_some(), "event {} in hand is not kept", h.seq);
        if found.is_none() {
            tracing::error!(plugin = %self.plugin, sequence = h.seq, "an event in hand is no longer kept by its consumer (a bug): its retry or dead letter is lost");
        }
        found
    }

    /// Re-driven dead letters, when there are new ones, as due retries.
    fn look_for_redrives(&mut self) -> Result<(), BackendError> {
        let Some(flag) = &self.redrives else {
            return Ok(());
        };
        if !flag.swap(false, Ordering::AcqRel) {
            return Ok(());
        }
        let events = match self.commit.redrives(&self.plugin) {
            Ok(events) => events,
            Err(e) => {
                flag.store(true, Ordering::Release);
                return Err(e);
            }
        };
        let now = Instant::now();
        for event in events {
            if self.redriving.insert(event.sequence) {
                self.waiting.push(Reverse(Waiting {
                    due: now,
                    attempt: 1,
                    origin: Origin::Redrive,
                    event: Arc::new(event),
                }));
            }
        }
        Ok(())
    }

    /// Where `seq` is among the events handed out and not settled.
    fn find(&mut self, seq: u64) -> Option<usize> {
        let n = self.handed.len();
        let at = (0..n)
            .map(|i| (self.hint + i) % n)
            .find(|&i| self.handed[i].seq == seq && !self.handed[i].settled)?;
        self.hint = at + 1;
        Some(at)
    }

    /// The cursor with `retried` (sequence, next attempt, when due) waiting besides
    /// what waits already, and `counts`.
    fn cursor_after(&self, retried: &[(u64, u32, Instant)], counts: Counts) -> Cursor {
        let unsettled = |i: usize| !self.handed[i].settled;
        let through = (0..self.handed.len())
            .filter(|&i| self.handed[i].origin == Origin::New && unsettled(i))
            .map(|i| self.handed[i].seq - 1)
            .fold(self.taken_to, u64::min);
        let now = Instant::now();
        let waits = self
            .waiting
            .iter()
            .map(|w| &w.0)
            .chain(self.behind.values().flatten())
            .filter(|w| w.origin != Origin::Redrive)
            .map(|w| (w.event.sequence, w.attempt, w.due))
            .chain(retried.iter().copied());
        let mut pending: Vec<(u64, u32)> = Vec::new();
        // When those that wait are due, as wall-clock time: kept with the
        // cursor, so that a restart does not cut a delay short.
        let mut dues: Vec<(u64, u64)> = Vec::new();
        let wall = crate::timer::now_ms();
        for (seq, attempt, due) in waits {
            pending.push((seq, attempt));
            if due > now {
                dues.push((seq, wall + due.duration_since(now).as_millis() as u64));
            }
        }
        pending.extend(
            (0..self.handed.len())
                .filter(|&i| self.handed[i].origin == Origin::Retry && unsettled(i))
                .map(|i| (self.handed[i].seq, self.handed[i].attempt)),
        );
        pending.sort_unstable();
        pending.dedup_by_key(|p| p.0);
        dues.sort_unstable();
        dues.dedup_by_key(|d| d.0);
        // A cursor never passes an unsettled event: each one handed out is
        // after `through` or owed as a pending retry (a re-driven dead
        // letter is the dead letters' to keep).
        debug_assert!(
            (0..self.handed.len())
                .filter(|&i| unsettled(i) && self.handed[i].origin != Origin::Redrive)
                .all(|i| {
                    let seq = self.handed[i].seq;
                    seq > through || pending.binary_search_by_key(&seq, |p| p.0).is_ok()
                }),
            "plugin `{}`: the cursor through {through} passes an unsettled event",
            self.plugin
        );
        let mut counts = counts;
        counts.dropped += self
            .drops
            .iter()
            .filter(|(highest, _)| *highest <= through)
            .map(|(_, n)| n)
            .sum::<u64>();
        Cursor {
            through,
            pending,
            counts,
            dues,
        }
    }

    /// Save the cursor if it moved: now when `now`, else at most every
    /// [`CURSOR_SAVE_EVERY`].
    fn save_cursor(&mut self, now: bool) {
        if !now && self.saved_at.elapsed() < CURSOR_SAVE_EVERY {
            return;
        }
        let cursor = self.cursor_after(&[], self.counts);
        if cursor == self.saved {
            return;
        }
        let progress = Progress {
            plugin: self.plugin.clone(),
            cursor: Some(cursor.clone()),
            ..Default::default()
        };
        if let Err(e) = self.commit.save_cursor(progress) {
            // Not moving the cursor only means reading events again
            // after a restart; delivery goes on.
            tracing::error!(plugin = %self.plugin, "cannot save the cursor: {e}");
            return;
        }
        self.saved_cursor(cursor);
    }

    fn saved_cursor(&mut self, cursor: Cursor) {
        // The drops it counted are in its counts now.
        self.drops.retain(|(highest, _)| *highest > cursor.through);
        self.counts = cursor.counts;
        self.gauges
            .done_through
            .store(cursor.low(), Ordering::Relaxed);
        self.saved = cursor;
        self.saved_at = Instant::now();
    }

    /// `event`, which held its key, is done with: the next event waiting
    /// behind it (if any) is due now and holds the key in turn.
    fn unblock(&mut self, event: &Event) {
        let Some(key) = &self.strict else {
            return;
        };
        let k = key.of(event);
        if self.owners.get(k) != Some(&event.sequence) {
            return;
        }
        match self.behind.get_mut(k).and_then(VecDeque::pop_front) {
            Some(mut next) => {
                self.owners.insert(k.to_string(), next.event.sequence);
                next.due = Instant::now();
                self.waiting.push(Reverse(next));
            }
            None => {
                self.owners.remove(k);
                self.behind.remove(k);
            }
        }
    }

    /// Drop settled events from the front of `handed`.
    fn trim(&mut self) {
        while self.handed.front().is_some_and(|h| h.settled) {
            self.handed.pop_front();
            self.hint = self.hint.saturating_sub(1);
        }
        if self.handed.is_empty() {
            self.hint = 0;
            self.chunks.clear();
        }
    }

    /// Hand the unsettled events at `at` back, due at `due` (at the same
    /// attempt).
    fn hand_back(&mut self, at: impl Iterator<Item = usize>, due: Instant) {
        for i in at {
            let Some(event) = self.event_at(i) else {
                continue;
            };
            let h = &mut self.handed[i];
            h.settled = true;
            let origin = match h.origin {
                Origin::New => Origin::Retry,
                other => other,
            };
            self.waiting.push(Reverse(Waiting {
                due,
                attempt: h.attempt,
                origin,
                event,
            }));
        }
        self.trim();
    }

    /// The next batch: due retries first, then new events.
    fn next_out(&mut self, max: usize, wait: Duration) -> Result<(Chunk, Vec<u32>), BackendError> {
        let until = super::deadline(wait);
        let mut out = Out::default();
        loop {
            self.look_for_redrives()?;
            let now = Instant::now();
            while out.events.len() < max && self.waiting.peek().is_some_and(|w| w.0.due <= now) {
                if let Some(Reverse(w)) = self.waiting.pop() {
                    self.take(w, &mut out);
                }
            }
            if out.events.len() < max {
                if let Some(whole) = self.take_new(max, &mut out) {
                    return Ok((whole, out.attempts));
                }
            }
            // Deliveries of nothing but the position keep coming while
            // other plugins publish: save it now and then.
            self.save_cursor(false);
            if !out.events.is_empty() {
                return Ok((Arc::from(out.events), out.attempts));
            }
            if self.closed {
                let left = self.waiting.peek().map(|w| w.0.due);
                match left {
                    Some(due) if self.drain_on_close => {
                        std::thread::sleep(due.saturating_duration_since(Instant::now()));
                        continue;
                    }
                    _ => return Err(BackendError::Closed),
                }
            }
            if now >= until {
                // Idle: a good moment to save where it is.
                self.save_cursor(true);
                return Ok((Arc::from(Vec::new()), Vec::new()));
            }
            let next = self.waiting.peek().map_or(until, |w| w.0.due.min(until));
            match self
                .queue
                .recv_timeout(next.saturating_duration_since(Instant::now()))
            {
                Ok(d) => self.arrived(d),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => self.closed = true,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Keeps nothing.
    struct NoCommit;

    impl Commit for NoCommit {
        fn write(
            &mut self,
            _: Progress,
            _: Vec<Event>,
            _: &[(String, Option<Vec<u8>>)],
        ) -> Result<(), BackendError> {
            Ok(())
        }
    }

    fn memory_consumer(queue: Queue) -> LocalConsumer {
        LocalConsumer::new(
            "analytics",
            queue,
            Box::new(NoCommit),
            LocalOptions {
                strict: None,
                start: Cursor::default(),
                redrives: None,
                drain_on_close: false,
            },
            None,
        )
    }

    /// Deliveries of nothing but the position (other plugins' events) move
    /// the cursor the status shows, so its lag counts only events it takes.
    #[test]
    fn deliveries_of_no_events_move_the_position_shown() {
        let (tx, queue) = Queue::channel(8);
        let mut c = memory_consumer(queue);
        for through in [10, 20, 30] {
            tx.send(Delivery {
                events: Arc::from(Vec::new()),
                through,
                dropped: (0, 0),
            })
            .map_err(|_| "queue closed")
            .expect("send");
        }
        let (chunk, _) = c.next_out(64, Duration::from_millis(20)).expect("batch");
        assert!(chunk.is_empty());
        assert_eq!(c.gauges.done_through.load(Ordering::Relaxed), 30);
    }
}
