//! A plugin's log reader: reads the log from the plugin's cursors, keeps
//! the events the plugin subscribes to, and queues them for its consumers
//! (one queue per consumer, that is per worker; an event goes to the worker its
//! ordering key hashes to, and only if that worker's cursor is before it)
//! in deliveries of up to `CHUNK_EVENTS_MAX`. When a worker's queue is full
//! the reader waits: a slow plugin delays its own reader and loses nothing.
//! Under `overflow.policy = "drop"` it drops (and counts) what a full queue
//! has no room for instead, so a lossy plugin never falls behind. Each
//! delivery says how far the reader has looked, so each worker's cursor also
//! moves past events the plugin does not want.
//!
//! A plugin with one worker that waits for room (the default) has no
//! reader thread: its consumer runs the reader itself when it needs more
//! events ([`Inline`]), which saves a thread hand-off per delivery.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, TryRecvError};
use prometheus_client::metrics::counter::Counter;

use crate::backend::local::Source;
use crate::bus::{Delivery, OrderingKey, QueueSender, CHUNK_EVENTS_MAX};
use crate::event::{Chunk, Event};
use crate::store::log::Log;
use plugbus_contract::topic::Pattern;

/// One worker's queue and where its cursor is.
pub(super) struct Outlet {
    pub queue: QueueSender,
    /// Events up to this sequence are done for this worker.
    pub through: u64,
    /// Events dropped for want of room and not yet told to the consumer:
    /// how many, and the highest sequence among them.
    pub dropped: (u64, u64),
}

/// What a reader does, besides reading.
pub(super) struct Routing {
    pub patterns: Vec<Pattern>,
    pub key: OrderingKey,
    /// Drop (counted here) rather than wait for room.
    pub dropped: Option<Counter>,
}

/// Events read from the log at a time.
const READ_EVENTS_MAX: usize = 4096;

/// Read from the lowest outlet's cursor on until `stopped()` or a worker is
/// gone.
pub(super) fn run(
    log: &Log,
    plugin: &str,
    routing: &Routing,
    outlets: &mut [Outlet],
    stopped: &dyn Fn() -> bool,
) {
    let bell = log.doorbell();
    let mut next = outlets.iter().map(|o| o.through).min().unwrap_or(0) + 1;
    let parts = outlets.len().max(1);
    while !stopped() {
        let events = match log.read_from(next, READ_EVENTS_MAX) {
            Ok(events) => events,
            Err(e) => {
                tracing::error!(plugin, "delivery paused: cannot read the log: {e}");
                std::thread::sleep(Duration::from_secs(1));
                continue;
            }
        };
        let Some(last) = events.last().map(|e| e.sequence) else {
            // Caught up: wait for the next commit (or look again soon).
            let _ = bell.recv_timeout(Duration::from_millis(100));
            continue;
        };
        next = last + 1;
        let mut wanted: Vec<Vec<Arc<Event>>> = vec![Vec::new(); parts];
        for e in events {
            if !wants(&routing.patterns, &e) {
                continue;
            }
            let i = routing.key.part(&e, parts);
            if outlets.get(i).is_some_and(|o| e.sequence > o.through) {
                wanted[i].push(e);
            }
        }
        for (outlet, wanted) in outlets.iter_mut().zip(wanted) {
            if last <= outlet.through {
                continue;
            }
            if !send(routing, outlet, &wanted, last) {
                return;
            }
        }
    }
}

/// Queue `wanted` (events up to `last` looked at) in deliveries of up to
/// `CHUNK_EVENTS_MAX`; false when the worker is gone. Events dropped for
/// want of room are told to the consumer with the next delivery that goes,
/// for its count (`store::progress::Counts`).
fn send(routing: &Routing, outlet: &mut Outlet, wanted: &[Arc<Event>], last: u64) -> bool {
    let queue = &outlet.queue;
    for (events, through) in deliveries(wanted, last) {
        let delivery = Delivery {
            events,
            through,
            dropped: std::mem::take(&mut outlet.dropped),
        };
        let sent = if let Some(counter) = &routing.dropped {
            match queue.try_send(delivery) {
                Ok(()) => Ok(()),
                Err(Some(dropped)) => {
                    // Dropped: the next delivery's `through` moves the
                    // cursor past these, and tells their count.
                    let n = dropped.events.len() as u64;
                    counter.inc_by(n);
                    let highest = dropped.events.last().map_or(0, |e| e.sequence);
                    outlet.dropped = (dropped.dropped.0 + n, dropped.dropped.1.max(highest));
                    Ok(())
                }
                Err(None) => Err(()),
            }
        } else {
            queue.send(delivery).map_err(|_| ())
        };
        if sent.is_err() {
            return false;
        }
    }
    true
}

/// Whether a plugin subscribed to `patterns` wants `event`.
fn wants(patterns: &[Pattern], event: &Event) -> bool {
    patterns.iter().any(|p| p.matches(&event.topic))
}

/// `wanted` (the plugin's events among those up to `last` looked at) in
/// deliveries of up to `CHUNK_EVENTS_MAX` events, each with the highest
/// sequence it accounts for (the last one: `last`). At least one, so that
/// the cursor moves past events the plugin does not want.
fn deliveries(wanted: &[Arc<Event>], last: u64) -> impl Iterator<Item = (Chunk, u64)> + '_ {
    let n = wanted.len().div_ceil(CHUNK_EVENTS_MAX).max(1);
    let mut chunks = wanted.chunks(CHUNK_EVENTS_MAX);
    (0..n).map(move |i| {
        let part = chunks.next().unwrap_or_default();
        let through = match part.last() {
            Some(e) if i + 1 < n => e.sequence,
            _ => last,
        };
        (Arc::from(part), through)
    })
}

/// A plugin's log reader run by its only consumer, on the consumer's
/// thread, when the consumer has taken everything read so far: as [`run`]
/// for one outlet that waits for room (a slow plugin reads more slowly and
/// loses nothing). It holds at most one read: `read_max` events (the
/// plugin's `queue_events_max`, at most `READ_EVENTS_MAX`).
pub(super) struct Inline {
    log: Arc<Log>,
    plugin: String,
    patterns: Vec<Pattern>,
    read_max: usize,
    bell: Receiver<()>,
    /// The next sequence to look at.
    next: u64,
    /// Read and not yet taken.
    ready: VecDeque<Delivery>,
    /// Events in `ready`.
    depth: Arc<AtomicUsize>,
    /// When a failed read was last logged.
    failed_at: Option<Instant>,
}

impl Inline {
    /// The reader of `plugin`'s events matching `patterns` after sequence
    /// `through`, holding at most `queue_events_max` of them read ahead.
    pub(super) fn new(
        log: Arc<Log>,
        plugin: &str,
        patterns: Vec<Pattern>,
        through: u64,
        queue_events_max: usize,
    ) -> Inline {
        // The bell first, so that no commit after the first read is missed.
        let bell = log.doorbell();
        Inline {
            log,
            plugin: plugin.to_string(),
            patterns,
            read_max: queue_events_max.clamp(1, READ_EVENTS_MAX),
            bell,
            next: through + 1,
            ready: VecDeque::new(),
            depth: Arc::default(),
            failed_at: None,
        }
    }

    /// Read what follows into `ready`.
    fn fill(&mut self) {
        let events = match self.log.read_from(self.next, self.read_max) {
            Ok(events) => events,
            Err(e) => {
                // Looked at again at the consumer's next wait; said once a
                // second.
                if self
                    .failed_at
                    .is_none_or(|t| t.elapsed() >= Duration::from_secs(1))
                {
                    tracing::error!(plugin = %self.plugin, "delivery paused: cannot read the log: {e}");
                    self.failed_at = Some(Instant::now());
                }
                return;
            }
        };
        let Some(last) = events.last().map(|e| e.sequence) else {
            return;
        };
        debug_assert!(events[0].sequence >= self.next, "the log reads forward");
        self.next = last + 1;
        let wanted: Vec<Arc<Event>> = events
            .into_iter()
            .filter(|e| wants(&self.patterns, e))
            .collect();
        for (events, through) in deliveries(&wanted, last) {
            self.depth.fetch_add(events.len(), Ordering::Relaxed);
            self.ready.push_back(Delivery {
                events,
                through,
                dropped: (0, 0),
            });
        }
    }
}

impl Source for Inline {
    fn try_recv(&mut self) -> Result<Delivery, TryRecvError> {
        if self.ready.is_empty() {
            self.fill();
        }
        let delivery = self.ready.pop_front().ok_or(TryRecvError::Empty)?;
        self.depth
            .fetch_sub(delivery.events.len(), Ordering::Relaxed);
        Ok(delivery)
    }

    fn recv_timeout(&mut self, timeout: Duration) -> Result<Delivery, RecvTimeoutError> {
        let now = Instant::now();
        let until = now.checked_add(timeout).unwrap_or(now);
        loop {
            if let Ok(delivery) = self.try_recv() {
                return Ok(delivery);
            }
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(RecvTimeoutError::Timeout);
            }
            // Rung at each commit; a bell gone (the log closed) is waited
            // out as a timeout.
            if let Err(RecvTimeoutError::Disconnected) = self.bell.recv_timeout(left) {
                std::thread::sleep(left);
            }
        }
    }

    fn depth_handle(&self) -> Arc<AtomicUsize> {
        self.depth.clone()
    }
}
