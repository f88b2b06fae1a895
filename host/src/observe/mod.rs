//! What the host shows of its flow while it runs: every accepted event
//! passes [`Observer::accepted`] once it is committed (the log's committer,
//! the in-memory bus, or a broker append), which
//!
//! - counts it for the flow graph and the catalog ([`stats`]): events per
//!   topic, who published them, follow-ups per plugin → topic edge with
//!   the time from their cause, a few sampled payloads per topic;
//! - offers it to the live tail clients ([`tail`]): nothing at all when
//!   none is connected (one atomic load), else each client's filter runs
//!   before its bounded queue, and what a full queue or a rate cap leaves
//!   out is counted, never waited for.
//!
//! On a broker the events are read back from its log while anyone looks
//! ([`follow`]), so they include every host's.
//!
//! The counting takes one lock per committed group and one map lookup per
//! run of events of one topic. Nothing here is durable: the flow and the
//! catalog describe what this process saw since it started.

pub mod follow;
pub mod shape;
pub mod stats;
pub mod tail;

use std::sync::{Arc, Mutex};

use crate::event::Event;
use crate::metrics::Metrics;

/// The observer of one host.
pub struct Observer {
    stats: Mutex<stats::Stats>,
    tail: Arc<tail::Tail>,
    /// True once the host is stopping: open streams end.
    closing: tokio::sync::watch::Sender<bool>,
    /// When the flow or the catalog was last asked for.
    looked: Mutex<Option<std::time::Instant>>,
}

impl Observer {
    /// An observer counting its tail clients and drops in `metrics`.
    pub fn new(metrics: &Metrics) -> Observer {
        Observer {
            stats: Mutex::new(stats::Stats::default()),
            tail: Arc::new(tail::Tail::new(metrics)),
            closing: tokio::sync::watch::Sender::new(false),
            looked: Mutex::new(None),
        }
    }

    /// Events just committed (each with its sequence), in order.
    pub fn accepted(&self, events: &[Arc<Event>]) {
        if !events.is_empty() {
            self.count(events);
            self.tail.offer(events);
        }
    }

    fn count<E: std::borrow::Borrow<Event>>(&self, events: &[E]) {
        self.stats
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .count(events);
    }

    /// [`Observer::accepted`] for events not shared (a broker append):
    /// copied only when a tail client is connected.
    pub fn accepted_owned(&self, events: &[Event]) {
        if events.is_empty() {
            return;
        }
        self.count(events);
        if self.tailing() {
            let shared: Vec<Arc<Event>> = events.iter().cloned().map(Arc::new).collect();
            self.tail.offer(&shared);
        }
    }

    /// Whether anyone is tailing: a caller that must copy events to offer
    /// them skips the copy when not.
    pub fn tailing(&self) -> bool {
        self.tail.connected() > 0
    }

    /// Someone looked at the flow or the catalog (a broker's log is
    /// followed for a while: [`follow`]).
    pub fn look(&self) {
        *self.looked.lock().unwrap_or_else(|p| p.into_inner()) = Some(std::time::Instant::now());
    }

    /// Whether a tail is connected or someone looked within `window`.
    pub fn looked_at_within(&self, window: std::time::Duration) -> bool {
        self.tailing()
            || self
                .looked
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .is_some_and(|at| at.elapsed() < window)
    }

    /// A snapshot of the counts, for the flow graph and the catalog.
    pub fn snapshot(&self, window: std::time::Duration) -> stats::Snapshot {
        self.stats
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .snapshot(window)
    }

    /// The host is stopping: every stream ends (so that shutdown does not
    /// wait for clients that never hang up).
    pub fn close(&self) {
        self.closing.send_replace(true);
    }

    /// Resolves once [`Observer::close`] was called.
    pub async fn closed(&self) {
        let mut rx = self.closing.subscribe();
        let _ = rx.wait_for(|closing| *closing).await;
    }

    /// Connect a live tail client.
    pub fn subscribe(&self, filter: tail::Filter, rate: u32) -> tail::Subscription {
        self.tail.subscribe(filter, rate)
    }
}
