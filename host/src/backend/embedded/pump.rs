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

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;

use crate::bus::{Delivery, OrderingKey, QueueSender, CHUNK_EVENTS_MAX};
use crate::event::Event;
use crate::store::log::Log;
use crate::topic::Pattern;

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
            if !routing.patterns.iter().any(|p| p.matches(&e.topic)) {
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
    let n = wanted.len().div_ceil(CHUNK_EVENTS_MAX).max(1);
    let mut chunks = wanted.chunks(CHUNK_EVENTS_MAX);
    for i in 0..n {
        let part = chunks.next().unwrap_or_default();
        let through = match part.last() {
            Some(e) if i + 1 < n => e.sequence,
            _ => last,
        };
        let delivery = Delivery {
            events: Arc::from(part),
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
