//! The live tail: clients that receive events as they are committed.
//!
//! Publishers never wait for a client. With none connected, an offer is
//! one atomic load. With clients, each client's [`Filter`] runs first; an
//! event it wants then passes the client's rate cap (a token bucket of
//! `rate` events per second; the rest are counted as `rate_cap`, i.e.
//! sampled) and is put in the client's bounded queue of [`QUEUE_EVENTS`]
//! with `try_send` (a full queue counts `queue_full`). Both counts are the
//! client's (it is told them) and the process's (`/metrics`).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;

use crate::event::Event;
use crate::metrics::{Metrics, ReasonLabels};
use plugbus_contract::topic::Pattern;

/// Events waiting for one client, at most.
pub const QUEUE_EVENTS: usize = 256;
/// The rate a client gets when it asks for none, per second.
pub const RATE_DEFAULT: u32 = 200;
/// The highest rate a client may ask for, per second.
pub const RATE_MAX: u32 = 5000;

/// Which events a client wants; every given part must match.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Topic patterns, any of which matches (none: every topic).
    pub topics: Vec<Pattern>,
    /// The chain: the event's correlation id, or its own id for the event
    /// that started the chain.
    pub correlationid: Option<String>,
    /// The CloudEvents `subject`.
    pub subject: Option<String>,
    /// An extension attribute's name and value.
    pub extension: Option<(String, String)>,
    /// A plugin: events it consumes (its patterns, in `topics`) or
    /// published.
    pub plugin: Option<String>,
}

impl Filter {
    /// Whether `event` passes.
    pub fn wants(&self, event: &Event) -> bool {
        let by_plugin = self
            .plugin
            .as_deref()
            .is_some_and(|p| event.published_by() == Some(p));
        (by_plugin || self.topics.is_empty() || self.topics.iter().any(|p| p.matches(&event.topic)))
            && self
                .correlationid
                .as_deref()
                .is_none_or(|c| event.chain_id() == c)
            && self
                .subject
                .as_deref()
                .is_none_or(|s| event.subject.as_deref() == Some(s))
            && self
                .extension
                .as_ref()
                .is_none_or(|(k, v)| event.extension(k) == Some(v.as_str()))
    }
}

/// What a client was not sent.
#[derive(Debug, Default)]
pub struct Missed {
    /// Its queue was full: it read too slowly.
    pub queue_full: AtomicU64,
    /// Past its rate: sampled out.
    pub rate_cap: AtomicU64,
}

struct Client {
    filter: Filter,
    queue: tokio::sync::mpsc::Sender<Arc<Event>>,
    bucket: Mutex<Bucket>,
    missed: Arc<Missed>,
}

/// A token bucket: `rate` tokens a second, holding at most `rate`.
struct Bucket {
    rate: f64,
    tokens: f64,
    at: Instant,
}

impl Bucket {
    /// Refill up to `now`; the whole tokens there are.
    fn refill(&mut self, now: Instant) -> u64 {
        let refill = now.duration_since(self.at).as_secs_f64() * self.rate;
        self.tokens = (self.tokens + refill).min(self.rate);
        self.at = now;
        self.tokens as u64
    }

    /// `n` tokens were used.
    fn spend(&mut self, n: u64) {
        self.tokens = (self.tokens - n as f64).max(0.0);
    }
}

/// The clients.
pub struct Tail {
    connected: AtomicUsize,
    clients: RwLock<Vec<(u64, Arc<Client>)>>,
    next_id: AtomicU64,
    gauge: Gauge,
    queue_full: Counter,
    rate_cap: Counter,
}

/// A connected client: its queue's receiving end and what it missed.
/// Dropping it disconnects the client.
pub struct Subscription {
    /// Events for the client, in commit order.
    pub events: tokio::sync::mpsc::Receiver<Arc<Event>>,
    /// What it was not sent, so far.
    pub missed: Arc<Missed>,
    id: u64,
    tail: std::sync::Weak<Tail>,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if let Some(tail) = self.tail.upgrade() {
            tail.remove(self.id);
        }
    }
}

impl Tail {
    /// No clients; counted in `metrics`.
    pub fn new(metrics: &Metrics) -> Tail {
        let reason = |r: &str| {
            metrics
                .tail_dropped
                .get_or_create(&ReasonLabels {
                    reason: r.to_string(),
                })
                .clone()
        };
        Tail {
            connected: AtomicUsize::new(0),
            clients: RwLock::new(Vec::new()),
            next_id: AtomicU64::new(0),
            gauge: metrics.tail_clients.clone(),
            queue_full: reason("queue_full"),
            rate_cap: reason("rate_cap"),
        }
    }

    /// Clients connected.
    pub fn connected(&self) -> usize {
        self.connected.load(Ordering::Relaxed)
    }

    /// Connect a client wanting `filter`'s events at up to `rate` a second
    /// (clamped to 1..=[`RATE_MAX`]).
    pub fn subscribe(self: &Arc<Self>, filter: Filter, rate: u32) -> Subscription {
        let (tx, rx) = tokio::sync::mpsc::channel(QUEUE_EVENTS);
        let rate = f64::from(rate.clamp(1, RATE_MAX));
        let missed = Arc::new(Missed::default());
        let client = Arc::new(Client {
            filter,
            queue: tx,
            bucket: Mutex::new(Bucket {
                rate,
                tokens: rate,
                at: Instant::now(),
            }),
            missed: missed.clone(),
        });
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut clients = self.clients.write().unwrap_or_else(|p| p.into_inner());
        clients.push((id, client));
        self.connected.store(clients.len(), Ordering::Relaxed);
        self.gauge.set(clients.len() as i64);
        Subscription {
            events: rx,
            missed,
            id,
            tail: Arc::downgrade(self),
        }
    }

    fn remove(&self, id: u64) {
        let mut clients = self.clients.write().unwrap_or_else(|p| p.into_inner());
        clients.retain(|(i, _)| *i != id);
        self.connected.store(clients.len(), Ordering::Relaxed);
        self.gauge.set(clients.len() as i64);
    }

    /// Offer committed events to every client.
    pub fn offer(&self, events: &[Arc<Event>]) {
        if self.connected() == 0 {
            return;
        }
        let now = Instant::now();
        let clients = self.clients.read().unwrap_or_else(|p| p.into_inner());
        for (_, client) in clients.iter() {
            let mut bucket = client.bucket.lock().unwrap_or_else(|p| p.into_inner());
            let tokens = bucket.refill(now);
            let (mut used, mut full, mut capped) = (0u64, 0u64, 0u64);
            for e in events.iter().filter(|e| client.filter.wants(e)) {
                if used == tokens {
                    capped += 1;
                    continue;
                }
                // A full queue (or a client going) is told; the token is
                // not given back, so a stalled reader costs one attempt
                // per token.
                used += 1;
                if client.queue.try_send(e.clone()).is_err() {
                    full += 1;
                }
            }
            bucket.spend(used);
            if full > 0 {
                client.missed.queue_full.fetch_add(full, Ordering::Relaxed);
                self.queue_full.inc_by(full);
            }
            if capped > 0 {
                client.missed.rate_cap.fetch_add(capped, Ordering::Relaxed);
                self.rate_cap.inc_by(capped);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(topic: &str, n: usize) -> Vec<Arc<Event>> {
        (0..n)
            .map(|i| {
                let mut e = Event::new(topic, None, b"{}".to_vec()).expect("event");
                e.sequence = i as u64 + 1;
                Arc::new(e)
            })
            .collect()
    }

    #[test]
    fn nothing_is_queued_without_clients_and_a_filter_runs_before_the_queue() {
        let metrics = Metrics::new();
        let tail = Arc::new(Tail::new(&metrics));
        tail.offer(&events("order.placed", 10));
        let filter = Filter {
            topics: vec![Pattern::parse("inventory.*").expect("pattern")],
            ..Filter::default()
        };
        let mut sub = tail.subscribe(filter, RATE_MAX);
        assert_eq!(tail.connected(), 1);
        tail.offer(&events("order.placed", 10));
        tail.offer(&events("inventory.reserved", 3));
        let mut got = 0;
        while sub.events.try_recv().is_ok() {
            got += 1;
        }
        assert_eq!(got, 3);
        assert_eq!(sub.missed.queue_full.load(Ordering::Relaxed), 0);
        drop(sub);
        assert_eq!(tail.connected(), 0);
    }

    #[test]
    fn a_slow_client_and_a_rate_cap_are_counted_never_waited_for() {
        let metrics = Metrics::new();
        let tail = Arc::new(Tail::new(&metrics));
        let slow = tail.subscribe(Filter::default(), RATE_MAX);
        let capped = tail.subscribe(Filter::default(), 10);
        tail.offer(&events("order.placed", 1000));
        // The queue holds QUEUE_EVENTS; the rest of the tokens' worth is
        // counted as queue_full, the rest past the bucket as rate_cap.
        let full = slow.missed.queue_full.load(Ordering::Relaxed);
        let sampled = slow.missed.rate_cap.load(Ordering::Relaxed);
        assert_eq!(QUEUE_EVENTS as u64 + full + sampled, 1000);
        assert!(full > 0);
        assert_eq!(capped.missed.rate_cap.load(Ordering::Relaxed), 990);
        assert_eq!(capped.events.len(), 10);
        let text = metrics.encode();
        assert!(text.contains("plugbus_tail_clients 2"), "{text}");
        assert!(
            text.contains(r#"plugbus_tail_dropped_total{reason="rate_cap"}"#),
            "{text}"
        );
    }
}
