//! What the host shows of its flow while anyone looks: every accepted
//! event passes [`Observer::accepted`] once it is committed (the log's
//! committer, the in-memory bus, or a broker's log read back), which,
//! while the observer is active,
//!
//! - counts it for the flow graph and the catalog ([`stats`]): events per
//!   topic, who published them, follow-ups per plugin → topic edge with
//!   the time from their cause, a few sampled payloads per topic;
//! - offers it to the live tail clients ([`tail`]): each client's filter
//!   runs before its bounded queue, and what a full queue or a rate cap
//!   leaves out is counted, never waited for.
//!
//! It is active while a tail client is connected or someone asked for the
//! flow, the catalog or rates within [`LOOK_LASTS`]; inactive, the
//! publish path pays one atomic load and nothing is counted. When it
//! becomes active it reads the last [`HISTORY_EVENTS`] events back from
//! the log (embedded store) and counts them in the totals (not the
//! rates), so a first look shows the recent flow; on a broker the log is
//! followed from as far back ([`follow`]), so it covers every host's
//! events. Nothing here is durable.

pub mod follow;
pub mod shape;
pub mod stats;
pub mod tail;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::event::{Event, Watcher};
use crate::metrics::Metrics;

/// How long a look at the flow, the catalog or rates keeps counting on.
pub const LOOK_LASTS: Duration = Duration::from_secs(300);
/// Events read back from the log when counting starts.
pub const HISTORY_EVENTS: usize = 1000;

/// A log the observer reads back from: the embedded store's, or a
/// broker's (which it follows, [`follow`]). The server gives it one.
pub trait History: Send + Sync {
    /// The last sequence in the log.
    fn head(&self) -> Result<u64, String>;
    /// Up to `max` events from sequence `from` on, in order.
    fn read(&self, from: u64, max: usize) -> Result<Vec<Event>, String>;
}

/// The observer of one host.
pub struct Observer {
    stats: Mutex<stats::Stats>,
    tail: Arc<tail::Tail>,
    /// True once the host is stopping: open streams end.
    closing: tokio::sync::watch::Sender<bool>,
    /// When the flow, the catalog or rates were last asked for.
    looked: Mutex<Option<Instant>>,
    /// Counting and tailing: the publish path's one check.
    active: AtomicBool,
    /// Where earlier events are read back from (the embedded store).
    history: OnceLock<Arc<dyn History>>,
}

impl Observer {
    /// An observer counting its tail clients and drops in `metrics`.
    pub fn new(metrics: &Metrics) -> Observer {
        Observer {
            stats: Mutex::new(stats::Stats::default()),
            tail: Arc::new(tail::Tail::new(metrics)),
            closing: tokio::sync::watch::Sender::new(false),
            looked: Mutex::new(None),
            active: AtomicBool::new(false),
            history: OnceLock::new(),
        }
    }

    /// Read the recent flow back from `log` when counting starts.
    pub fn history_from(&self, log: Arc<dyn History>) {
        let _ = self.history.set(log);
    }

    /// Whether events are being counted and offered.
    pub fn active(&self) -> bool {
        self.active.load(Ordering::Relaxed)
    }

    /// Events just committed (each with its sequence), in order.
    pub fn accepted(&self, events: &[Arc<Event>]) {
        if !self.active() || events.is_empty() {
            return;
        }
        self.live(events);
        self.tail.offer(events);
    }

    /// [`Observer::accepted`] for events not shared (a broker's log read
    /// back): copied only when a tail client is connected.
    pub fn accepted_owned(&self, events: &[Event]) {
        if !self.active() || events.is_empty() {
            return;
        }
        self.live(events);
        self.offer_owned(events);
    }

    /// Offer events not shared to the tails, copied only if one is
    /// connected.
    fn offer_owned(&self, events: &[Event]) {
        if self.tailing() && !events.is_empty() {
            let shared: Vec<Arc<Event>> = events.iter().cloned().map(Arc::new).collect();
            self.tail.offer(&shared);
        }
    }

    /// Count events seen live.
    fn live<E: std::borrow::Borrow<Event>>(&self, events: &[E]) {
        self.stats
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .count(events, false);
    }

    /// Someone looks at the flow, the catalog or rates: count from now on
    /// (for [`LOOK_LASTS`]), and read the recent flow back if counting
    /// was off. Blocks on the read: call it where a thread may block.
    pub fn look(&self) {
        *self.looked.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
        self.activate();
    }

    fn activate(&self) {
        if self.active() {
            return;
        }
        // The counts stay locked while the recent past is read back, so a
        // live event is counted once: the history marks how far it read.
        let mut stats = self.stats.lock().unwrap_or_else(|p| p.into_inner());
        if self.active.swap(true, Ordering::AcqRel) {
            return;
        }
        let Some(history) = self.history.get() else {
            return;
        };
        let read = history.head().and_then(|head| {
            let from = head.saturating_sub(HISTORY_EVENTS as u64 - 1).max(1);
            history.read(from, HISTORY_EVENTS)
        });
        let mut events = match read {
            Ok(events) => events,
            Err(e) => {
                tracing::debug!("reading the recent flow back: {e}");
                return;
            }
        };
        let mut causes = follow::Causes::default();
        for e in &mut events {
            causes.time(e);
        }
        stats.count(&events, true);
    }

    /// Count events read back from a log, from before anyone looked (in
    /// the totals, not the rates); `offer`: to the tails too (a broker's,
    /// whose tail clients skip what came before they connected).
    pub fn history(&self, events: &[Event], offer: bool) {
        self.stats
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .count(events, true);
        if offer {
            self.offer_owned(events);
        }
    }

    /// Stop counting if nobody tails and nobody looked within
    /// [`LOOK_LASTS`] (the server calls this every second).
    pub fn expire(&self) {
        if self.active() && !self.looked_at_within(LOOK_LASTS) {
            self.active.store(false, Ordering::Release);
        }
    }

    /// Whether anyone is tailing: a caller that must copy events to offer
    /// them skips the copy when not.
    pub fn tailing(&self) -> bool {
        self.tail.connected() > 0
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

    /// Connect a live tail client (counting starts, like a look).
    pub fn subscribe(&self, filter: tail::Filter, rate: u32) -> tail::Subscription {
        let sub = self.tail.subscribe(filter, rate);
        self.activate();
        sub
    }
}

impl Watcher for Observer {
    fn active(&self) -> bool {
        Observer::active(self)
    }

    fn accepted(&self, events: &[Arc<Event>]) {
        Observer::accepted(self, events)
    }
}
