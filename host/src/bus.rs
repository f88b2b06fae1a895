//! The dispatcher core: routing, per-subscription queues, fan-out and
//! backpressure.
//!
//! The routing table is an immutable snapshot ([`Routes`]) behind an
//! `ArcSwap`: publishing reads it without a lock, and a plugin coming or
//! going swaps in a new one. Each subscription owns a bounded crossbeam
//! channel of [`Chunk`]s: a publish call's events, as `Arc<Event>`s, in
//! chunks of up to [`CHUNK_EVENTS_MAX`]. Fan-out copies pointers, never
//! events, and a subscriber that wants every event of a chunk shares the
//! chunk itself, so a worker wakes once per chunk, not once per event.
//!
//! A queue's bound is in events (`queue_events_max`), kept exactly by a
//! counter beside the channel. Behaviour under load: when a subscription
//! has no room, the publisher waits, up to `publish_timeout`, for the worker
//! to drain it. If no room comes, publishing stops at that chunk with
//! [`PublishError::QueueFull`] naming the plugin: the subscribers that had
//! room got the chunk, the full one did not, and its miss is counted in
//! `plugbus_events_dropped_total{reason="queue_full"}`. Later chunks of the
//! same call are not published, and the error says how many events were.
//! (With the durable log, a full queue will instead make the worker catch
//! up from the log; the worker already tracks the sequence it has reached.)
//!
//! The bus knows nothing of HTTP or wasmtime.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use crossbeam_channel::{
    Receiver, RecvError, RecvTimeoutError, Sender, TryRecvError, TrySendError,
};
use prometheus_client::metrics::counter::Counter;

use crate::event::Event;
use crate::metrics::{DropReason, Metrics};
use plugbus_contract::topic::Pattern;

/// The most events one chunk carries (and so one queue message).
pub const CHUNK_EVENTS_MAX: usize = 64;

pub use crate::event::Chunk;

/// What travels through a queue: events for one plugin, and how far the
/// sender had looked when it sent them: every event up to `through` that the
/// plugin wants is in this delivery or an earlier one. A worker that has
/// handled a delivery whole is done with everything up to `through` (its
/// cursor), including events it does not subscribe to.
#[derive(Clone)]
pub struct Delivery {
    /// The events, in sequence order (may be empty).
    pub events: Chunk,
    /// The highest sequence this delivery accounts for.
    pub through: u64,
    /// Events of the plugin dropped before this delivery for want of room
    /// in its queue (`overflow.policy = "drop"`, embedded store): how many,
    /// and the highest sequence among them (0: none).
    pub dropped: (u64, u64),
}

/// What decides which of a plugin's workers an event goes to, and what a
/// strict ordering under retry holds back: events with the same key go to
/// one worker, in order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum OrderingKey {
    /// The CloudEvents `subject` (events without one share a key).
    #[default]
    Subject,
    /// The topic (`type`).
    Topic,
    /// The CloudEvents `source`.
    Source,
    /// A CloudEvents extension attribute (events without it share a key).
    Extension(String),
    /// The chain: the `correlationid`, or the event's own id for one that
    /// starts a chain (a saga's events of one order).
    Correlation,
}

impl OrderingKey {
    /// `subject`, `topic` (or `type`), `source` or `extension:NAME`.
    pub fn parse(s: &str) -> Option<OrderingKey> {
        match s {
            "subject" => Some(OrderingKey::Subject),
            "topic" | "type" => Some(OrderingKey::Topic),
            "source" => Some(OrderingKey::Source),
            "correlationid" | "extension:correlationid" => Some(OrderingKey::Correlation),
            _ => s
                .strip_prefix("extension:")
                .filter(|n| !n.is_empty())
                .map(|n| OrderingKey::Extension(n.to_string())),
        }
    }

    /// The key of `event`.
    pub fn of<'e>(&self, event: &'e Event) -> &'e str {
        match self {
            OrderingKey::Subject => event.subject.as_deref().unwrap_or(""),
            OrderingKey::Topic => &event.topic,
            OrderingKey::Source => &event.source,
            OrderingKey::Extension(name) => event
                .extensions
                .iter()
                .find(|(k, _)| k == name)
                .map_or("", |(_, v)| v.as_str()),
            OrderingKey::Correlation => event.chain_id(),
        }
    }

    /// Which of `parts` workers `event` goes to: a stable hash (FNV-1a) of
    /// its key, the same in every run, so a restart keeps each key with
    /// the worker whose cursor knows it.
    pub fn part(&self, event: &Event, parts: usize) -> usize {
        if parts <= 1 {
            return 0;
        }
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for &b in self.of(event).as_bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        (h % parts as u64) as usize
    }
}

impl std::fmt::Display for OrderingKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OrderingKey::Subject => f.write_str("subject"),
            OrderingKey::Topic => f.write_str("topic"),
            OrderingKey::Source => f.write_str("source"),
            OrderingKey::Extension(n) => write!(f, "extension:{n}"),
            OrderingKey::Correlation => f.write_str("correlationid"),
        }
    }
}

/// What a full queue does to a publisher.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overflow {
    /// Wait for room up to this long (`None`: the bus's publish timeout),
    /// then refuse ([`PublishError::QueueFull`], HTTP 503).
    Block(Option<Duration>),
    /// Drop what the queue has no room for, counted in
    /// `plugbus_events_dropped_total{reason="overflow_drop"}`; the
    /// publisher goes on.
    Drop,
}

impl Default for Overflow {
    fn default() -> Self {
        Overflow::Block(None)
    }
}

/// How a plugin subscribes beyond its patterns.
#[derive(Debug, Clone, Default)]
pub struct SubscribeOptions {
    /// Capacity of each worker's queue, in events.
    pub capacity: usize,
    /// Workers (queues); 0 counts as 1.
    pub parts: usize,
    /// Which worker an event goes to.
    pub key: OrderingKey,
    /// What a full queue does.
    pub overflow: Overflow,
}

/// One queue of a subscription (one per worker).
#[derive(Clone)]
struct Part {
    queue: Sender<Delivery>,
    pending: Arc<AtomicUsize>,
}

/// One plugin's subscription: its patterns and the sending halves of its
/// queues.
#[derive(Clone)]
pub struct Subscription {
    plugin: Arc<str>,
    patterns: Vec<Pattern>,
    parts: Vec<Part>,
    key: OrderingKey,
    capacity: usize,
    overflow: Overflow,
    dropped_full: Counter,
    dropped_overflow: Counter,
}

impl Subscription {
    /// Does this subscription want events of `topic`?
    pub fn wants(&self, topic: &str) -> bool {
        self.patterns.iter().any(|p| p.matches(topic))
    }

    /// Queue `chunk`, split over the parts by key, each waiting until
    /// `deadline` for room (or until `deadline` set by this
    /// subscription's own block timeout). False when a part stayed full
    /// (block); under `drop` what had no room is counted and dropped.
    fn offer(&self, chunk: Chunk, deadline: Instant, started: Instant) -> bool {
        let deadline = match self.overflow {
            Overflow::Block(Some(t)) => started + t,
            Overflow::Block(None) => deadline,
            Overflow::Drop => started,
        };
        let mut ok = true;
        if self.parts.len() == 1 {
            ok = self.offer_part(&self.parts[0], chunk, deadline);
        } else {
            let mut split: Vec<Vec<Arc<Event>>> = vec![Vec::new(); self.parts.len()];
            for e in chunk.iter() {
                split[self.key.part(e, self.parts.len())].push(e.clone());
            }
            for (part, events) in self.parts.iter().zip(split) {
                if !events.is_empty() && !self.offer_part(part, Arc::from(events), deadline) {
                    ok = false;
                }
            }
        }
        ok || self.overflow == Overflow::Drop
    }

    /// Queue `chunk` on `part`, waiting until `deadline` for room. False
    /// on timeout (under `drop`, counted here).
    fn offer_part(&self, part: &Part, mut chunk: Chunk, deadline: Instant) -> bool {
        let n = chunk.len();
        let mut pause = Duration::from_micros(20);
        loop {
            // Room for the whole chunk, or an empty queue (a chunk larger
            // than the queue goes alone rather than never).
            let reserved = part
                .pending
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |cur| {
                    (cur == 0 || cur + n <= self.capacity).then_some(cur + n)
                })
                .is_ok();
            if reserved {
                let through = chunk.last().map_or(0, |e| e.sequence);
                match part.queue.try_send(Delivery {
                    events: chunk,
                    through,
                    dropped: (0, 0),
                }) {
                    Ok(()) => return true,
                    // A closed queue belongs to a plugin being replaced or
                    // removed: its successor subscribed already, or it is
                    // gone on purpose.
                    Err(TrySendError::Disconnected(_)) => {
                        part.pending.fetch_sub(n, Ordering::AcqRel);
                        return true;
                    }
                    // Messages never outnumber events, so a channel sized in
                    // events is not full when the count had room; if it
                    // were, wait like for a full queue.
                    Err(TrySendError::Full(back)) => {
                        part.pending.fetch_sub(n, Ordering::AcqRel);
                        chunk = back.events;
                    }
                }
            }
            let now = Instant::now();
            if now >= deadline {
                let counter = match self.overflow {
                    Overflow::Drop => &self.dropped_overflow,
                    Overflow::Block(_) => &self.dropped_full,
                };
                counter.inc_by(n as u64);
                return false;
            }
            std::thread::sleep(pause.min(deadline - now));
            pause = (pause * 2).min(Duration::from_millis(1));
        }
    }
}

/// The receiving half of a subscription's queue.
pub struct Queue {
    rx: Receiver<Delivery>,
    pending: Arc<AtomicUsize>,
}

/// The sending half of a queue fed by one producer that may wait for room
/// (the durable log's reader); the bus has its own, non-waiting, path.
pub struct QueueSender {
    tx: Sender<Delivery>,
    pending: Arc<AtomicUsize>,
}

impl QueueSender {
    /// Queue `delivery`, waiting for room; gives it back if the receiver is
    /// gone.
    pub fn send(&self, delivery: Delivery) -> Result<(), Delivery> {
        let n = delivery.events.len();
        self.pending.fetch_add(n, Ordering::AcqRel);
        self.tx.send(delivery).map_err(|e| {
            self.pending.fetch_sub(n, Ordering::AcqRel);
            e.into_inner()
        })
    }
}

impl QueueSender {
    /// Queue `delivery` if there is room now: `Err(Some(it))` when full,
    /// `Err(None)` when the receiver is gone.
    pub fn try_send(&self, delivery: Delivery) -> Result<(), Option<Delivery>> {
        let n = delivery.events.len();
        self.pending.fetch_add(n, Ordering::AcqRel);
        self.tx.try_send(delivery).map_err(|e| {
            self.pending.fetch_sub(n, Ordering::AcqRel);
            match e {
                TrySendError::Full(d) => Some(d),
                TrySendError::Disconnected(_) => None,
            }
        })
    }
}

impl Queue {
    /// A queue of `capacity` deliveries, with its sender.
    pub fn channel(capacity: usize) -> (QueueSender, Queue) {
        let (tx, rx) = crossbeam_channel::bounded(capacity.max(1));
        let pending = Arc::new(AtomicUsize::new(0));
        (
            QueueSender {
                tx,
                pending: pending.clone(),
            },
            Queue { rx, pending },
        )
    }

    fn taken(&self, delivery: Delivery) -> Delivery {
        self.pending
            .fetch_sub(delivery.events.len(), Ordering::AcqRel);
        delivery
    }

    /// Wait for the next delivery; an error once the queue is closed and
    /// empty.
    pub fn recv(&self) -> Result<Delivery, RecvError> {
        self.rx.recv().map(|d| self.taken(d))
    }

    /// Wait at most `timeout` for the next delivery.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<Delivery, RecvTimeoutError> {
        self.rx.recv_timeout(timeout).map(|d| self.taken(d))
    }

    /// The next delivery, if one is waiting.
    pub fn try_recv(&self) -> Result<Delivery, TryRecvError> {
        self.rx.try_recv().map(|d| self.taken(d))
    }

    /// Events waiting.
    pub fn depth(&self) -> usize {
        self.pending.load(Ordering::Relaxed)
    }

    /// A live view of [`Queue::depth`] for status reports.
    pub fn depth_handle(&self) -> Arc<AtomicUsize> {
        self.pending.clone()
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
    /// How many of them were already in the log (same id, within the
    /// duplicate window) and were not stored again (durable mode).
    pub duplicates: usize,
}

/// The dispatcher.
pub struct Bus {
    routes: ArcSwap<Routes>,
    next_sequence: AtomicU64,
    publish_timeout: Duration,
    metrics: Arc<Metrics>,
    observer: std::sync::OnceLock<Arc<dyn crate::event::Watcher>>,
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
            observer: std::sync::OnceLock::new(),
        }
    }

    /// Show every accepted event to `observer` (the flow, the catalog, the
    /// live tail); once.
    pub fn observe(&self, observer: Arc<dyn crate::event::Watcher>) {
        let _ = self.observer.set(observer);
    }

    /// Add (or replace) `plugin`'s subscription and return the receiving
    /// half of its new queue, of `capacity` events; a full queue blocks
    /// publishers up to the publish timeout.
    pub fn subscribe(&self, plugin: &str, patterns: Vec<Pattern>, capacity: usize) -> Queue {
        let mut queues = self.subscribe_with(
            plugin,
            patterns,
            SubscribeOptions {
                capacity,
                ..SubscribeOptions::default()
            },
        );
        queues.remove(0)
    }

    /// Add (or replace) `plugin`'s subscription with one queue per worker
    /// (`options.parts`), events split over them by `options.key`, and
    /// return the receiving halves, in worker order.
    pub fn subscribe_with(
        &self,
        plugin: &str,
        patterns: Vec<Pattern>,
        options: SubscribeOptions,
    ) -> Vec<Queue> {
        let capacity = options.capacity.max(1);
        let mut parts = Vec::new();
        let mut queues = Vec::new();
        for _ in 0..options.parts.max(1) {
            let (tx, rx) = crossbeam_channel::bounded(capacity);
            let pending = Arc::new(AtomicUsize::new(0));
            parts.push(Part {
                queue: tx,
                pending: pending.clone(),
            });
            queues.push(Queue { rx, pending });
        }
        let sub = Subscription {
            plugin: Arc::from(plugin),
            patterns,
            parts,
            key: options.key,
            capacity,
            overflow: options.overflow,
            dropped_full: self.metrics.drop_counter(plugin, DropReason::QueueFull),
            dropped_overflow: self.metrics.drop_counter(plugin, DropReason::OverflowDrop),
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
        queues
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

    /// The sequence of the last event published (0: none).
    pub fn head(&self) -> u64 {
        self.next_sequence.load(Ordering::Relaxed).saturating_sub(1)
    }

    /// Events waiting per plugin.
    pub fn queue_depths(&self) -> Vec<(Arc<str>, usize)> {
        self.routes
            .load()
            .subscriptions
            .iter()
            .map(|s| {
                let n = s
                    .parts
                    .iter()
                    .map(|p| p.pending.load(Ordering::Relaxed))
                    .sum();
                (s.plugin.clone(), n)
            })
            .collect()
    }

    /// Could publishing `events` events now have to wait for room? True when
    /// any queue lacks room for all of them (whatever their topics): a
    /// cheap, conservative check for callers that must not block casually,
    /// such as async tasks.
    pub fn might_wait(&self, events: usize) -> bool {
        self.routes.load().subscriptions.iter().any(|s| {
            s.overflow != Overflow::Drop
                && s.parts.iter().any(|p| {
                    let pending = p.pending.load(Ordering::Relaxed);
                    pending > 0 && pending + events.min(CHUNK_EVENTS_MAX) > s.capacity
                })
        })
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
        let started = Instant::now();
        let deadline = started + self.publish_timeout;
        let events: Vec<Arc<Event>> = events
            .into_iter()
            .enumerate()
            .map(|(i, mut e)| {
                e.sequence = first_sequence + i as u64;
                Arc::new(e)
            })
            .collect();
        let mut unrouted = 0;
        let mut routed = [false; CHUNK_EVENTS_MAX];
        for (c, chunk) in events.chunks(CHUNK_EVENTS_MAX).enumerate() {
            let mut whole: Option<Chunk> = None;
            let mut full: Option<&Subscription> = None;
            routed.iter_mut().for_each(|r| *r = false);
            for sub in &routes.subscriptions {
                let mut wanted = Vec::new();
                let mut last: Option<(&str, bool)> = None;
                for (i, e) in chunk.iter().enumerate() {
                    let wants = match last {
                        Some((topic, w)) if topic == e.topic => w,
                        _ => sub.wants(&e.topic),
                    };
                    last = Some((&e.topic, wants));
                    if wants {
                        wanted.push(i);
                        routed[i] = true;
                    }
                }
                if wanted.is_empty() {
                    continue;
                }
                let mine: Chunk = if wanted.len() == chunk.len() {
                    whole.get_or_insert_with(|| Arc::from(chunk)).clone()
                } else {
                    wanted.iter().map(|&i| chunk[i].clone()).collect()
                };
                if !sub.offer(mine, deadline, started) {
                    full.get_or_insert(sub);
                }
            }
            unrouted += routed[..chunk.len()].iter().filter(|r| !**r).count() as u64;
            if let Some(sub) = full {
                let accepted = c * CHUNK_EVENTS_MAX;
                if let Some(o) = self.observer.get() {
                    o.accepted(&events[..accepted]);
                }
                self.metrics.published.inc_by(accepted as u64);
                self.metrics.unrouted.inc_by(unrouted);
                let timeout = match sub.overflow {
                    Overflow::Block(Some(t)) => t,
                    _ => self.publish_timeout,
                };
                return Err(PublishError::QueueFull {
                    plugin: sub.plugin.to_string(),
                    capacity: sub.capacity,
                    timeout_ms: timeout.as_millis() as u64,
                    accepted,
                });
            }
        }
        if let Some(o) = self.observer.get() {
            o.accepted(&events);
        }
        self.metrics.published.inc_by(count as u64);
        self.metrics.unrouted.inc_by(unrouted);
        Ok(Published {
            first_sequence,
            count,
            duplicates: 0,
        })
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

    fn drain(q: &Queue) -> Vec<Arc<Event>> {
        let mut out = Vec::new();
        while let Ok(d) = q.try_recv() {
            out.extend(d.events.iter().cloned());
        }
        out
    }

    #[test]
    fn fans_out_one_shared_chunk_to_each_matching_subscription() {
        let bus = bus(10);
        let a = bus.subscribe("a", pats(&["order.placed"]), 8);
        let b = bus.subscribe("b", pats(&["order.*"]), 8);
        let c = bus.subscribe("c", pats(&["inventory.>"]), 8);
        bus.publish_one(ev("order.placed")).expect("published");
        let (ea, eb) = (a.try_recv().expect("a"), b.try_recv().expect("b"));
        assert!(
            Arc::ptr_eq(&ea.events, &eb.events),
            "fan-out must share the chunk, not copy"
        );
        assert_eq!(ea.through, ea.events[0].sequence);
        assert!(c.try_recv().is_err());
    }

    #[test]
    fn a_mixed_chunk_gives_each_subscriber_only_its_topics_in_order() {
        let bus = bus(10);
        let orders = bus.subscribe("orders", pats(&["order.*"]), 64);
        let all = bus.subscribe("all", pats(&[">"]), 64);
        bus.publish(vec![
            ev("order.placed"),
            ev("inventory.reserved"),
            ev("order.paid"),
        ])
        .expect("published");
        let topics: Vec<String> = drain(&orders).iter().map(|e| e.topic.clone()).collect();
        assert_eq!(topics, ["order.placed", "order.paid"]);
        assert_eq!(drain(&all).len(), 3);
        assert_eq!(orders.depth(), 0);
    }

    #[test]
    fn sequences_are_consecutive_across_chunks() {
        let bus = bus(10);
        let a = bus.subscribe("a", pats(&[">"]), 1000);
        let n = CHUNK_EVENTS_MAX * 2 + 5;
        let p = bus
            .publish((0..n).map(|_| ev("x.a")).collect())
            .expect("published");
        assert_eq!(p.count, n);
        assert_eq!(a.depth(), n);
        let seqs: Vec<u64> = drain(&a).iter().map(|e| e.sequence).collect();
        let want: Vec<u64> = (p.first_sequence..p.first_sequence + n as u64).collect();
        assert_eq!(seqs, want);
    }

    #[test]
    fn full_queue_times_out_names_the_plugin_and_counts_the_drop() {
        let metrics = Arc::new(Metrics::new());
        let bus = Bus::new(Duration::from_millis(20), metrics.clone());
        let slow = bus.subscribe("slow", pats(&["order.placed"]), 2);
        let fast = bus.subscribe("fast", pats(&["order.placed"]), 100);
        bus.publish_one(ev("order.placed")).expect("room");
        bus.publish_one(ev("order.placed")).expect("room");
        assert_eq!(slow.depth(), 2, "the bound is in events");
        let err = bus
            .publish(vec![ev("order.placed"), ev("order.placed")])
            .expect_err("no room in slow");
        assert_eq!(
            err,
            PublishError::QueueFull {
                plugin: "slow".into(),
                capacity: 2,
                timeout_ms: 20,
                accepted: 0
            }
        );
        // The subscriber with room got what the slow one missed.
        assert_eq!(drain(&fast).len(), 4);
        assert_eq!(metrics.drop_counter("slow", DropReason::QueueFull).get(), 2);
        assert!(metrics
            .encode()
            .contains(r#"plugbus_events_dropped_total{plugin="slow",reason="queue_full"} 2"#));
    }

    #[test]
    fn blocked_publisher_proceeds_when_the_consumer_drains() {
        let bus = Arc::new(bus(5_000));
        let rx = bus.subscribe("a", pats(&["t"]), 1);
        let consumer = std::thread::spawn(move || {
            let mut n = 0;
            while n < 50 {
                n += rx.recv().map_or(0, |d| d.events.len());
            }
            n
        });
        for _ in 0..50 {
            bus.publish_one(ev("t")).expect("room comes");
        }
        assert_eq!(consumer.join().expect("consumer"), 50);
    }

    #[test]
    fn a_chunk_larger_than_the_queue_goes_alone_into_an_empty_queue() {
        let bus = bus(10);
        let q = bus.subscribe("a", pats(&["t"]), 4);
        bus.publish((0..10).map(|_| ev("t")).collect())
            .expect("an empty queue takes an oversize chunk");
        assert_eq!(drain(&q).len(), 10);
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
