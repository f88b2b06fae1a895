//! The dispatcher core: routing, per-subscription queues, fan-out and
//! backpressure.
//!
//! The routing table is an immutable snapshot ([`Routes`]) behind an
//! `ArcSwap`: publishing reads it without a lock, and a plugin coming or
//! going swaps in a new one. Each subscription owns a bounded crossbeam
//! channel of `Arc<Event>`: fan-out to N subscribers copies a pointer N
//! times, never the event.
//!
//! Behaviour under load: when a subscription's queue is full the publisher
//! blocks, up to `publish_timeout`, for room. If none comes, publishing
//! stops at that event with [`PublishError::QueueFull`] naming the plugin;
//! the subscribers that had room got the event, the full one did not, and
//! that miss is counted in `plugbus_events_dropped_total{reason="queue_full"}`.
//! Events of the same call after it are not published at all, and the error
//! says how many were. (With the durable log, a full queue will instead make
//! the worker catch up from the log; the worker already tracks the sequence
//! it has reached for that.)
//!
//! The bus knows nothing of HTTP or wasmtime.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use crossbeam_channel::{Receiver, SendTimeoutError, Sender, TrySendError};
use prometheus_client::metrics::counter::Counter;

use crate::event::Event;
use crate::metrics::{DropReason, Metrics};
use crate::topic::Pattern;

/// One plugin's subscription: its patterns and the sending half of its queue.
#[derive(Clone)]
pub struct Subscription {
    plugin: Arc<str>,
    patterns: Vec<Pattern>,
    queue: Sender<Arc<Event>>,
    dropped_full: Counter,
}

impl Subscription {
    /// Does this subscription want events of `topic`?
    pub fn wants(&self, topic: &str) -> bool {
        self.patterns.iter().any(|p| p.matches(topic))
    }
}

/// An immutable routing table.
#[derive(Default)]
pub struct Routes {
    subscriptions: Vec<Subscription>,
}

/// Why a publish did not go through completely.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PublishError {
    /// A subscriber's queue stayed full past the timeout.
    #[error("the queue of plugin `{plugin}` is full ({capacity} events) and did not drain within {timeout_ms} ms; {accepted} of the events were published; retry later, or raise the plugin's queue size or its speed")]
    QueueFull {
        /// The slow plugin.
        plugin: String,
        /// Its queue capacity.
        capacity: usize,
        /// How long the publisher waited.
        timeout_ms: u64,
        /// How many events of this call were published before it.
        accepted: usize,
    },
}

/// What a successful publish returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Published {
    /// Sequence of the first event.
    pub first_sequence: u64,
    /// Number of events published.
    pub count: usize,
}

/// The dispatcher.
pub struct Bus {
    routes: ArcSwap<Routes>,
    next_sequence: AtomicU64,
    publish_timeout: Duration,
    metrics: Arc<Metrics>,
}

impl Bus {
    /// A bus with no subscriptions. `publish_timeout` bounds how long a
    /// publisher waits for room in a full queue.
    pub fn new(publish_timeout: Duration, metrics: Arc<Metrics>) -> Bus {
        Bus {
            routes: ArcSwap::from_pointee(Routes::default()),
            next_sequence: AtomicU64::new(1),
            publish_timeout,
            metrics,
        }
    }

    /// Add (or replace) `plugin`'s subscription and return the receiving
    /// half of its new queue, of `capacity` events.
    pub fn subscribe(
        &self,
        plugin: &str,
        patterns: Vec<Pattern>,
        capacity: usize,
    ) -> Receiver<Arc<Event>> {
        let (tx, rx) = crossbeam_channel::bounded(capacity.max(1));
        let sub = Subscription {
            plugin: Arc::from(plugin),
            patterns,
            queue: tx,
            dropped_full: self.metrics.drop_counter(plugin, DropReason::QueueFull),
        };
        self.routes.rcu(|routes| {
            let mut subscriptions: Vec<Subscription> = routes
                .subscriptions
                .iter()
                .filter(|s| &*s.plugin != plugin)
                .cloned()
                .collect();
            subscriptions.push(sub.clone());
            Routes { subscriptions }
        });
        rx
    }

    /// Remove `plugin`'s subscription. Its queue closes once the last
    /// publisher holding the old snapshot lets go; the worker drains what
    /// is queued and then sees the channel disconnected.
    pub fn unsubscribe(&self, plugin: &str) {
        self.routes.rcu(|routes| Routes {
            subscriptions: routes
                .subscriptions
                .iter()
                .filter(|s| &*s.plugin != plugin)
                .cloned()
                .collect(),
        });
    }

    /// Remove every subscription (shutdown).
    pub fn close(&self) {
        self.routes.store(Arc::new(Routes::default()));
    }

    /// Events waiting per plugin.
    pub fn queue_depths(&self) -> Vec<(Arc<str>, usize)> {
        self.routes
            .load()
            .subscriptions
            .iter()
            .map(|s| (s.plugin.clone(), s.queue.len()))
            .collect()
    }

    /// Publish one event.
    pub fn publish_one(&self, event: Event) -> Result<u64, PublishError> {
        self.publish(vec![event]).map(|p| p.first_sequence)
    }

    /// Publish events in order: each gets the next sequence number and is
    /// fanned out to every matching subscription.
    pub fn publish(&self, events: Vec<Event>) -> Result<Published, PublishError> {
        let count = events.len();
        let first_sequence = self
            .next_sequence
            .fetch_add(count as u64, Ordering::Relaxed);
        let routes = self.routes.load();
        let deadline = Instant::now() + self.publish_timeout;
        let mut unrouted = 0;
        for (i, mut event) in events.into_iter().enumerate() {
            event.sequence = first_sequence + i as u64;
            let event = Arc::new(event);
            let mut routed = false;
            let mut full: Option<&Subscription> = None;
            for sub in routes
                .subscriptions
                .iter()
                .filter(|s| s.wants(&event.topic))
            {
                routed = true;
                if !send(sub, &event, deadline) {
                    sub.dropped_full.inc();
                    full.get_or_insert(sub);
                }
            }
            if !routed {
                unrouted += 1;
            }
            if let Some(sub) = full {
                self.metrics.published.inc_by(i as u64);
                self.metrics.unrouted.inc_by(unrouted);
                return Err(PublishError::QueueFull {
                    plugin: sub.plugin.to_string(),
                    capacity: sub.queue.capacity().unwrap_or(0),
                    timeout_ms: self.publish_timeout.as_millis() as u64,
                    accepted: i,
                });
            }
        }
        self.metrics.published.inc_by(count as u64);
        self.metrics.unrouted.inc_by(unrouted);
        Ok(Published {
            first_sequence,
            count,
        })
    }
}

/// Queue `event` for `sub`, waiting until `deadline` for room.
fn send(sub: &Subscription, event: &Arc<Event>, deadline: Instant) -> bool {
    match sub.queue.try_send(event.clone()) {
        Ok(()) => true,
        // A closed queue belongs to a plugin being replaced or removed:
        // its successor subscribed already, or it is gone on purpose.
        Err(TrySendError::Disconnected(_)) => true,
        Err(TrySendError::Full(ev)) => {
            let wait = deadline.saturating_duration_since(Instant::now());
            !matches!(
                sub.queue.send_timeout(ev, wait),
                Err(SendTimeoutError::Timeout(_))
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bus(timeout_ms: u64) -> Bus {
        Bus::new(Duration::from_millis(timeout_ms), Arc::new(Metrics::new()))
    }

    fn pats(p: &[&str]) -> Vec<Pattern> {
        p.iter()
            .map(|s| Pattern::parse(s).expect("pattern"))
            .collect()
    }

    fn ev(topic: &str) -> Event {
        Event::new(topic, None, b"{}".to_vec()).expect("event")
    }

    #[test]
    fn fans_out_one_shared_event_to_each_matching_subscription() {
        let bus = bus(10);
        let a = bus.subscribe("a", pats(&["order.placed"]), 8);
        let b = bus.subscribe("b", pats(&["order.*"]), 8);
        let c = bus.subscribe("c", pats(&["inventory.>"]), 8);
        bus.publish_one(ev("order.placed")).expect("published");
        let (ea, eb) = (a.try_recv().expect("a"), b.try_recv().expect("b"));
        assert!(Arc::ptr_eq(&ea, &eb), "fan-out must share, not copy");
        assert!(c.try_recv().is_err());
    }

    #[test]
    fn sequences_are_consecutive_in_publish_order() {
        let bus = bus(10);
        let a = bus.subscribe("a", pats(&[">"]), 8);
        let p = bus
            .publish(vec![ev("x.a"), ev("x.b"), ev("x.c")])
            .expect("published");
        assert_eq!(p.count, 3);
        let seqs: Vec<u64> = a.try_iter().map(|e| e.sequence).collect();
        assert_eq!(
            seqs,
            vec![p.first_sequence, p.first_sequence + 1, p.first_sequence + 2]
        );
    }

    #[test]
    fn full_queue_times_out_names_the_plugin_and_counts_the_drop() {
        let metrics = Arc::new(Metrics::new());
        let bus = Bus::new(Duration::from_millis(20), metrics.clone());
        let _slow = bus.subscribe("slow", pats(&["order.placed"]), 2);
        let fast = bus.subscribe("fast", pats(&["order.placed"]), 100);
        let err = bus
            .publish(vec![
                ev("order.placed"),
                ev("order.placed"),
                ev("order.placed"),
                ev("order.placed"),
            ])
            .expect_err("third does not fit");
        assert_eq!(
            err,
            PublishError::QueueFull {
                plugin: "slow".into(),
                capacity: 2,
                timeout_ms: 20,
                accepted: 2
            }
        );
        // The subscriber with room got the event the slow one missed; the
        // fourth was never published.
        assert_eq!(fast.try_iter().count(), 3);
        assert_eq!(metrics.drop_counter("slow", DropReason::QueueFull).get(), 1);
        assert!(metrics
            .encode()
            .contains(r#"plugbus_events_dropped_total{plugin="slow",reason="queue_full"} 1"#));
    }

    #[test]
    fn blocked_publisher_proceeds_when_the_consumer_drains() {
        let bus = Arc::new(bus(5_000));
        let rx = bus.subscribe("a", pats(&["t"]), 1);
        let consumer = std::thread::spawn(move || rx.iter().take(50).count());
        for _ in 0..50 {
            bus.publish_one(ev("t")).expect("room comes");
        }
        assert_eq!(consumer.join().expect("consumer"), 50);
    }

    #[test]
    fn resubscribe_replaces_and_unsubscribe_disconnects() {
        let bus = bus(10);
        let old = bus.subscribe("a", pats(&["t"]), 4);
        let new = bus.subscribe("a", pats(&["t"]), 4);
        bus.publish_one(ev("t")).expect("published");
        assert!(old.try_recv().is_err());
        assert!(new.try_recv().is_ok());
        bus.unsubscribe("a");
        assert!(new.recv().is_err(), "queue closes when unsubscribed");
        assert_eq!(bus.queue_depths().len(), 0);
    }
}
