//! A plugin's log reader (durable mode): reads the log from the plugin's
//! cursor, keeps the events the plugin subscribes to, and queues them for
//! its worker in deliveries of up to `CHUNK_EVENTS_MAX`. When the worker's
//! queue is full the reader waits: a slow plugin delays its own reader and
//! loses nothing. Each delivery says how far the reader has looked, so the
//! worker's cursor also moves past events the plugin does not want.

use std::sync::Arc;
use std::time::Duration;

use crate::bus::{Delivery, QueueSender, CHUNK_EVENTS_MAX};
use crate::event::Event;
use crate::store::log::Log;
use crate::topic::Pattern;

/// Events read from the log at a time.
const READ_EVENTS_MAX: usize = 4096;

/// Read from sequence `next` on until `stopped()` or the worker is gone.
pub(super) fn run(
    log: &Log,
    plugin: &str,
    patterns: &[Pattern],
    queue: &QueueSender,
    mut next: u64,
    stopped: &dyn Fn() -> bool,
) {
    let bell = log.doorbell();
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
        let wanted: Vec<Arc<Event>> = events
            .into_iter()
            .filter(|e| patterns.iter().any(|p| p.matches(&e.topic)))
            .collect();
        let parts = wanted.len().div_ceil(CHUNK_EVENTS_MAX).max(1);
        let mut chunks = wanted.chunks(CHUNK_EVENTS_MAX);
        for i in 0..parts {
            let part = chunks.next().unwrap_or_default();
            let through = match part.last() {
                Some(e) if i + 1 < parts => e.sequence,
                _ => last,
            };
            let delivery = Delivery {
                events: Arc::from(part),
                through,
            };
            if queue.send(delivery).is_err() {
                return;
            }
        }
    }
}
