//! The backend conformance suite: the same cases, unchanged, against the
//! embedded store and each broker (a real server started on loopback for
//! the test, in a directory of its own, stopped by its pid). A backend
//! that lacks a guarantee declares it in [`Capabilities`], and the case
//! checks the declaration (and that the backend behaves as declared)
//! instead of being skipped.
//!
//! Nothing here waits on a clock to decide: a retry delay is checked by
//! asking for a long one (not due within the test) and a short one (waited
//! for, with a generous bound that only a hung backend reaches).

use std::any::Any;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::embedded::EmbeddedBackend;
use super::nats::NatsBackend;
use super::redis::RedisBackend;
use super::*;
use crate::store::log::{Log, DEDUP_WINDOW_DEFAULT};
use crate::store::{Fsync, Store};

/// Longer than any case should take: only a hung backend reaches it.
const HUNG: Duration = Duration::from_secs(60);

/// A backend under test, a second host on the same backend (the same one
/// for the embedded store), and what keeps them alive.
struct Harness {
    backend: Arc<dyn Backend>,
    other: Arc<dyn Backend>,
    /// Another host on the same broker, on shared backends.
    another: Option<Box<dyn Fn() -> Arc<dyn Backend>>>,
    _keep: Box<dyn Any>,
}

impl Harness {
    fn embedded() -> Harness {
        let dir = plugbus_e2e::TestDir::new("conformance-embedded");
        let store = Store::open(&dir.0, Fsync::Always).expect("store");
        let log = Log::start(store, Fsync::Always, Default::default()).expect("log");
        let backend: Arc<dyn Backend> =
            Arc::new(EmbeddedBackend::new(log.clone(), DEDUP_WINDOW_DEFAULT));
        Harness {
            other: backend.clone(),
            backend,
            another: None,
            _keep: Box::new((dir, Closing(log))),
        }
    }

    fn memory() -> Harness {
        let backend: Arc<dyn Backend> = Arc::new(super::memory::MemoryBackend::standalone());
        Harness {
            other: backend.clone(),
            backend,
            another: None,
            _keep: Box::new(()),
        }
    }

    fn redis() -> Harness {
        let server = plugbus_e2e::brokers::Redis::start().unwrap_or_else(|e| panic!("{e}"));
        let url = server.url.clone();
        let open = move || -> Arc<dyn Backend> {
            Arc::new(RedisBackend::open(&url, "pb", Duration::from_secs(120), None).expect("url"))
        };
        Harness {
            backend: open(),
            other: open(),
            another: Some(Box::new(open)),
            _keep: Box::new(server),
        }
    }

    fn nats() -> Harness {
        let server = plugbus_e2e::brokers::Nats::start().unwrap_or_else(|e| panic!("{e}"));
        let url = server.url.clone();
        let open = move || -> Arc<dyn Backend> {
            Arc::new(
                NatsBackend::open(&url, "pb", Duration::from_secs(120), Access::default())
                    .expect("url"),
            )
        };
        Harness {
            backend: open(),
            other: open(),
            another: Some(Box::new(open)),
            _keep: Box::new(server),
        }
    }

    fn consumer(&self, plugin: &str, topics: &[&str], lease: Duration) -> Box<dyn Consumer> {
        open(&self.backend, "host-a", plugin, topics, lease)
    }
}

/// Closes the log when the test ends.
struct Closing(Arc<Log>);

impl Drop for Closing {
    fn drop(&mut self) {
        self.0.close();
    }
}

fn options(host: &str, topics: &[&str], lease: Duration) -> ConsumerOptions {
    ConsumerOptions::new(
        topics
            .iter()
            .map(|t| Pattern::parse(t).expect("pattern"))
            .collect(),
        host,
        lease,
    )
}

fn open(
    backend: &Arc<dyn Backend>,
    host: &str,
    plugin: &str,
    topics: &[&str],
    lease: Duration,
) -> Box<dyn Consumer> {
    backend
        .consumer(plugin, options(host, topics, lease))
        .expect("consumer")
}

fn event(topic: &str, i: usize) -> Event {
    Event::new(topic, None, format!("{{\"i\":{i}}}").into_bytes()).expect("event")
}

/// Batches until `n` events came (or the backend hangs).
fn take(c: &mut dyn Consumer, n: usize) -> Vec<Delivered> {
    let until = std::time::Instant::now() + HUNG;
    let mut got = Vec::new();
    while got.len() < n {
        assert!(
            std::time::Instant::now() < until,
            "only {} of {n} events came",
            got.len()
        );
        got.extend(
            c.next_batch(n - got.len(), Duration::from_millis(200))
                .expect("batch"),
        );
    }
    got
}

/// Nothing more comes to `c` within half a second.
fn nothing_more(c: &mut dyn Consumer, why: &str) {
    let more = c.next_batch(10, Duration::from_millis(500)).expect("batch");
    assert!(more.is_empty(), "{why}: {more:?}");
}

fn seqs(d: &[Delivered]) -> Vec<u64> {
    d.iter().map(|d| d.event.sequence).collect()
}

fn acks(d: &[Delivered]) -> Settlement {
    Settlement {
        verdicts: d.iter().map(|d| (d.event.sequence, Verdict::Ack)).collect(),
        ..Settlement::default()
    }
}

/// Settle `verdicts` and nothing else.
fn settle(c: &mut dyn Consumer, verdicts: Vec<(u64, Verdict)>) {
    c.settle(Settlement {
        verdicts,
        ..Settlement::default()
    })
    .expect("settle");
}

fn appends_with_dedup(h: Harness) {
    let a = event("order.placed", 1);
    let b = event("order.placed", 2);
    let first = h.backend.append(vec![a.clone(), b]).expect("append");
    assert_eq!((first.sequences.clone(), first.duplicates), (vec![1, 2], 0));
    let again = h
        .backend
        .append(vec![a, event("order.placed", 3)])
        .expect("append");
    assert_eq!(
        again.sequences,
        [1, 3],
        "a duplicate id gets the original's sequence"
    );
    assert_eq!(again.duplicates, 1);
    // An id twice in one append is stored once.
    let d = event("order.placed", 4);
    let twice = h.backend.append(vec![d.clone(), d]).expect("append");
    assert_eq!((twice.sequences, twice.duplicates), (vec![4, 4], 1));
    let log = h.backend.read(1, 10).expect("read");
    assert_eq!(
        log.iter().map(|e| e.sequence).collect::<Vec<_>>(),
        [1, 2, 3, 4]
    );
    assert_eq!(log[2].data, br#"{"i":3}"#);
    assert_eq!(h.backend.head().expect("head"), 4);
    let window = h.backend.capabilities().dedup_window;
    assert!(
        window >= Duration::from_secs(1),
        "a window that holds: {window:?}"
    );
}

fn reads_batches_of_the_plugins_topics_in_order(h: Harness) {
    let events: Vec<Event> = (0..10)
        .map(|i| {
            event(
                if i % 2 == 0 {
                    "order.placed"
                } else {
                    "user.signed_up"
                },
                i,
            )
        })
        .collect();
    // Subscribed first: memory mode keeps no log to read from.
    let mut c = h.consumer("email", &["order.*"], HUNG);
    h.backend.append(events).expect("append");
    let first = c.next_batch(3, HUNG).expect("batch");
    assert_eq!(
        seqs(&first),
        [1, 3, 5],
        "its topics, in log order, at most 3"
    );
    assert!(first.iter().all(|d| d.attempt == 1));
    let rest = take(c.as_mut(), 2);
    assert_eq!(seqs(&rest), [7, 9]);
    let none = c.next_batch(10, Duration::from_millis(50)).expect("batch");
    assert!(none.is_empty(), "nothing more: {:?}", seqs(&none));
}

fn settles_state_and_follow_ups_with_the_ack(h: Harness) {
    let mut next = h.consumer("shipping", &["inventory.*"], HUNG);
    {
        let mut c = h.consumer("inventory", &["order.placed"], HUNG);
        h.backend
            .append(vec![event("order.placed", 1)])
            .expect("append");
        let got = take(c.as_mut(), 1);
        let mut s = acks(&got);
        s.writes = vec![
            ("stock:w".into(), Some(b"9".to_vec())),
            ("gone".into(), None),
        ];
        s.follow_ups = vec![event("inventory.reserved", 2)];
        c.settle(s).expect("settle");
    }
    assert_eq!(
        h.backend.kv_get("inventory", "stock:w").expect("kv"),
        Some(b"9".to_vec())
    );
    let listed = h.backend.kv_list("inventory", None, 10).expect("list");
    assert_eq!(listed, [("stock:w".to_string(), b"9".to_vec())]);
    if h.backend.capabilities().durable {
        let log = h.backend.read(1, 10).expect("read");
        assert_eq!(log.len(), 2, "the follow-up is in the log");
        assert_eq!(log[1].topic, "inventory.reserved");
    } else {
        assert!(matches!(
            h.backend.read(1, 10),
            Err(BackendError::NotOffered { .. })
        ));
    }
    // Acked: a consumer opened again does not get it again, and another
    // plugin gets the follow-up.
    let mut again = h.consumer("inventory", &["order.placed"], HUNG);
    assert!(again
        .next_batch(10, Duration::from_millis(50))
        .expect("batch")
        .is_empty());
    assert_eq!(seqs(&take(next.as_mut(), 1)), [2]);
}

fn retries_after_the_delay_with_the_next_attempt(h: Harness) {
    let mut c = h.consumer("email", &["order.placed"], HUNG);
    h.backend
        .append(vec![event("order.placed", 1), event("order.placed", 2)])
        .expect("append");
    let got = take(c.as_mut(), 2);
    c.settle(Settlement {
        verdicts: vec![
            (1, Verdict::Retry(Duration::from_secs(3600))),
            (2, Verdict::Retry(Duration::from_millis(20))),
        ],
        ..Settlement::default()
    })
    .expect("settle");
    assert_eq!(got.len(), 2);
    let back = take(c.as_mut(), 1);
    assert_eq!(
        seqs(&back),
        [2],
        "the short delay came back; the hour did not"
    );
    assert_eq!(back[0].attempt, 2);
    c.settle(Settlement {
        verdicts: vec![(2, Verdict::Retry(Duration::from_millis(20)))],
        ..Settlement::default()
    })
    .expect("settle");
    let third = take(c.as_mut(), 1);
    assert_eq!((third[0].event.sequence, third[0].attempt), (2, 3));
    c.settle(acks(&third)).expect("ack");
    assert!(c
        .next_batch(10, Duration::from_millis(50))
        .expect("batch")
        .is_empty());
}

fn dead_letters_list_redrive_with_the_id_and_purge(h: Harness) {
    h.backend
        .append(vec![event("order.placed", 1), event("order.placed", 2)])
        .expect("append");
    let mut c = h.consumer("email", &["order.placed"], HUNG);
    let got = take(c.as_mut(), 2);
    let ids: Vec<String> = got.iter().map(|d| d.event.id.clone()).collect();
    c.settle(Settlement {
        verdicts: vec![
            (1, Verdict::Dead("no such customer".into())),
            (2, Verdict::Dead("bad".into())),
        ],
        ..Settlement::default()
    })
    .expect("settle");
    let dead = h.backend.dead_letters("email").expect("dead");
    assert_eq!(dead.len(), 2);
    assert_eq!((dead[0].event.sequence, dead[0].attempts), (1, 1));
    assert_eq!(dead[0].error, "no such customer");
    assert_eq!(dead[0].event.id, ids[0]);
    assert_eq!(
        h.backend
            .redrive("email", &Selection::Sequences(vec![1]))
            .expect("redrive"),
        1
    );
    assert_eq!(h.backend.dead_letters("email").expect("dead").len(), 1);
    let back = take(c.as_mut(), 1);
    assert_eq!(
        (back[0].event.id.as_str(), back[0].attempt),
        (ids[0].as_str(), 1),
        "same id, attempt 1"
    );
    c.settle(acks(&back)).expect("ack");
    assert_eq!(h.backend.purge("email", &Selection::All).expect("purge"), 1);
    assert!(h.backend.dead_letters("email").expect("dead").is_empty());
    assert!(c
        .next_batch(10, Duration::from_millis(50))
        .expect("batch")
        .is_empty());
}

fn replays_from_a_sequence_and_a_time_resetting_state(h: Harness) {
    h.backend
        .append(vec![event("order.placed", 1), event("order.placed", 2)])
        .expect("append");
    let middle = SystemTime::now();
    std::thread::sleep(Duration::from_millis(5));
    h.backend
        .append(vec![event("order.placed", 3), event("order.placed", 4)])
        .expect("append");
    {
        let mut c = h.consumer("analytics", &["order.placed"], HUNG);
        let got = take(c.as_mut(), 4);
        let mut s = acks(&got);
        s.writes = vec![("orders".into(), Some(b"4".to_vec()))];
        c.settle(s).expect("settle");
    }
    h.backend
        .replay("analytics", Start::Sequence(2), true)
        .expect("replay");
    assert_eq!(
        h.backend.kv_get("analytics", "orders").expect("kv"),
        None,
        "state reset"
    );
    {
        let mut c = h.consumer("analytics", &["order.placed"], HUNG);
        let got = take(c.as_mut(), 3);
        assert_eq!(seqs(&got), [2, 3, 4]);
        c.settle(acks(&got)).expect("settle");
    }
    h.backend
        .replay("analytics", Start::Time(middle), false)
        .expect("replay");
    let mut c = h.consumer("analytics", &["order.placed"], HUNG);
    let got = take(c.as_mut(), 2);
    assert_eq!(
        seqs(&got),
        [3, 4],
        "from the first event at or after the time"
    );
}

fn commits_nothing_for_a_host_that_lost_its_lease(h: Harness) {
    let caps = h.backend.capabilities();
    h.backend
        .append(vec![event("order.placed", 1), event("order.placed", 2)])
        .expect("append");
    let lease = Duration::from_millis(100);
    let mut a = open(&h.backend, "host-a", "analytics", &["order.placed"], lease);
    // A first batch settled in time: a backend may trust what it checked
    // then (Redis keeps a fence token) until an entry is taken over.
    let first = take(a.as_mut(), 1);
    assert_eq!(first[0].event.sequence, 1);
    a.settle(acks(&first)).expect("settled within the lease");
    let got = take(a.as_mut(), 1);
    assert_eq!(got[0].event.sequence, 2);
    let other = h
        .other
        .consumer("analytics", options("host-b", &["order.placed"], lease));
    if !caps.shared {
        // One consumer per plugin: no one to take the events over, so
        // nothing to fence, and a second consumer is refused.
        assert!(
            !caps.fenced,
            "a backend that is not shared has nothing to fence"
        );
        assert!(matches!(other, Err(BackendError::InUse { .. })), "refused");
        return;
    }
    let mut b = other.expect("second host");
    // Host a stalls past its lease; host b takes the event over.
    let taken = take(b.as_mut(), 1);
    assert_eq!(taken[0].event.sequence, 2);
    assert_eq!(taken[0].attempt, 2, "a redelivery");
    let mut late = acks(&got);
    late.writes = vec![("orders".into(), Some(b"1".to_vec()))];
    late.follow_ups = vec![event("analytics.counted", 9)];
    if caps.timers {
        late.timers = vec![crate::timer::TimerChange::Set(Box::new(
            crate::timer::Timer {
                key: "late".into(),
                due_ms: crate::timer::now_ms(),
                event: event("analytics.late", 10),
            },
        ))];
    }
    let refused = a.settle(late);
    assert!(caps.fenced, "a shared backend must fence");
    assert!(
        matches!(refused, Err(BackendError::Fenced { sequence: 2, .. })),
        "{refused:?}"
    );
    assert_eq!(
        h.backend.kv_get("analytics", "orders").expect("kv"),
        None,
        "nothing of it kept"
    );
    assert_eq!(h.backend.head().expect("head"), 2, "no follow-up appended");
    assert_eq!(
        h.backend.timer_usage("analytics").expect("usage").count,
        0,
        "no timer set"
    );
    let mut s = acks(&taken);
    s.writes = vec![("orders".into(), Some(b"1".to_vec()))];
    b.settle(s).expect("the holder commits");
    assert_eq!(
        h.backend.kv_get("analytics", "orders").expect("kv"),
        Some(b"1".to_vec())
    );
}

fn hands_back_at_once_on_release(h: Harness) {
    h.backend
        .append(vec![event("order.placed", 1), event("order.placed", 2)])
        .expect("append");
    let mut a = h.consumer("email", &["order.placed"], HUNG);
    let got = take(a.as_mut(), 2);
    a.settle(Settlement {
        verdicts: vec![(
            got[0].event.sequence,
            Verdict::Retry(Duration::from_millis(1)),
        )],
        ..Settlement::default()
    })
    .expect("settle");
    let again = take(a.as_mut(), 1);
    assert_eq!(again[0].attempt, 2);
    a.extend().expect("extend");
    a.release().expect("release");
    drop(a);
    // Another host (or this one, on one host) gets both at once, at the
    // attempts they had: the lease (an hour) is not waited for.
    let mut b = open(&h.other, "host-b", "email", &["order.placed"], HUNG);
    let mut back = take(b.as_mut(), 2);
    back.sort_by_key(|d| d.event.sequence);
    let seen: Vec<(u64, u32)> = back.iter().map(|d| (d.event.sequence, d.attempt)).collect();
    assert_eq!(seen, [(1, 2), (2, 1)]);
}

fn refuses_writes_made_from_values_that_changed(h: Harness) {
    let mut c = h.consumer("analytics", &["order.placed"], HUNG);
    h.backend
        .append(vec![event("order.placed", 1)])
        .expect("append");
    let orders = |v: &str| vec![("orders".to_string(), Some(v.as_bytes().to_vec()))];
    h.backend
        .put_state("analytics", orders("1"))
        .expect("state");
    let got = take(c.as_mut(), 1);
    // The batch read orders = 1 and wrote 2; meanwhile another writer
    // (another host of the plugin) made it 5.
    h.other.put_state("analytics", orders("5")).expect("state");
    let mut stale = acks(&got);
    stale.expected = orders("1");
    stale.writes = orders("2");
    let refused = c.settle(stale);
    assert!(
        matches!(refused, Err(BackendError::Conflict { ref key, .. }) if key == "orders"),
        "{refused:?}"
    );
    assert_eq!(
        h.backend.kv_get("analytics", "orders").expect("kv"),
        Some(b"5".to_vec())
    );
    // Still this consumer's: handed back and handled again from 5.
    c.release().expect("release");
    let again = take(c.as_mut(), 1);
    assert_eq!(again[0].event.sequence, 1);
    let mut fresh = acks(&again);
    fresh.expected = orders("5");
    fresh.writes = orders("6");
    c.settle(fresh).expect("settle");
    assert_eq!(
        h.backend.kv_get("analytics", "orders").expect("kv"),
        Some(b"6".to_vec())
    );
    // An absent key expected absent, found written, conflicts too.
    h.backend
        .append(vec![event("order.placed", 2)])
        .expect("append");
    let got = take(c.as_mut(), 1);
    h.other
        .put_state("analytics", vec![("new".into(), Some(b"x".to_vec()))])
        .expect("state");
    let mut stale = acks(&got);
    stale.expected = vec![("new".into(), None)];
    stale.writes = vec![("new".into(), Some(b"y".to_vec()))];
    assert!(matches!(
        c.settle(stale),
        Err(BackendError::Conflict { .. })
    ));
}

/// A handler's read may come from this host's copy of the state; one that
/// another host has changed since is refused at settlement like any stale
/// read, and the batch handled again reads the new value.
fn a_read_another_host_made_stale_is_refused_and_read_again(h: Harness) {
    h.backend
        .append(vec![event("order.placed", 1), event("order.placed", 2)])
        .expect("append");
    let orders = |v: &[u8]| vec![("orders".to_string(), Some(v.to_vec()))];
    let mut c = h.consumer("analytics", &["order.placed"], HUNG);
    let got = take(c.as_mut(), 1);
    assert_eq!(h.backend.kv_read("analytics", "orders").expect("kv"), None);
    let mut first = acks(&got);
    first.expected = vec![("orders".into(), None)];
    first.writes = orders(b"1");
    c.settle(first).expect("settle");
    assert_eq!(
        h.backend.kv_read("analytics", "orders").expect("kv"),
        Some(b"1".to_vec()),
        "a host reads its own write"
    );
    // Another host of the plugin makes it 5.
    h.other.put_state("analytics", orders(b"5")).expect("state");
    let mut refused = 0;
    loop {
        let got = take(c.as_mut(), 1);
        assert_eq!(got[0].event.sequence, 2);
        let read = h.backend.kv_read("analytics", "orders").expect("kv");
        let mut s = acks(&got);
        s.expected = vec![("orders".into(), read.clone())];
        s.writes = orders(&[read.as_deref().unwrap_or_default(), b"+"].concat());
        match c.settle(s) {
            Ok(()) => {
                assert_eq!(read, Some(b"5".to_vec()), "settled from the current value");
                break;
            }
            Err(BackendError::Conflict { key, .. }) => {
                assert_eq!(key, "orders");
                assert_eq!(read, Some(b"1".to_vec()), "refused only a stale read");
                refused += 1;
                assert!(refused < 2, "read stale again after a conflict");
                c.release().expect("release");
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(
        h.backend.kv_get("analytics", "orders").expect("kv"),
        Some(b"5+".to_vec())
    );
}

/// The plugin's accounts at a moment it is at rest (on NATS the audit
/// checks only then: it is read again until it does).
fn audit_at_rest(h: &Harness, scope: &crate::audit::Scope) -> crate::audit::Audit {
    let until = std::time::Instant::now() + HUNG;
    loop {
        let a = h
            .backend
            .audit(std::slice::from_ref(scope))
            .expect("audit")
            .remove(0);
        if a.checked {
            return a;
        }
        assert!(std::time::Instant::now() < until, "never checked: {a:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The audit's identity (`matching = handled + dead + pending`) holds
/// through acks, retries, dead letters, a re-drive and a purge, counts
/// only the plugin's topics after where it started, and (where the books
/// can be read at one moment) while a batch is in hand.
fn the_audit_holds_through_every_verdict(h: Harness) {
    use crate::audit::Scope;
    let scope = |plugin: &str| Scope {
        plugin: plugin.into(),
        patterns: vec![Pattern::parse("order.placed").expect("pattern")],
        key: crate::bus::OrderingKey::default(),
        parts: 1,
    };
    let inventory = scope("inventory");
    // Twelve events, eight of them orders.
    h.backend
        .append(
            (0..12)
                .map(|i| {
                    event(
                        if i % 3 == 2 {
                            "user.signed"
                        } else {
                            "order.placed"
                        },
                        i,
                    )
                })
                .collect(),
        )
        .expect("append");
    let mut c = h.consumer("inventory", &["order.placed"], HUNG);
    let got = seqs(&take(c.as_mut(), 8));
    let verdicts: Vec<(u64, Verdict)> = got[..6]
        .iter()
        .enumerate()
        .map(|(i, &seq)| {
            let v = match i {
                0 | 1 => Verdict::Ack,
                2 | 3 => Verdict::Dead("out of stock".into()),
                _ => Verdict::Retry(Duration::from_millis(1)),
            };
            (seq, v)
        })
        .collect();
    settle(c.as_mut(), verdicts);
    // Two in hand, two retrying.
    let a = h
        .backend
        .audit(std::slice::from_ref(&inventory))
        .expect("audit");
    if a[0].checked {
        assert_eq!((a[0].matching, a[0].handled, a[0].dead), (8, 2, 2), "{a:?}");
        assert_eq!((a[0].pending, a[0].unaccounted), (4, 0), "{a:?}");
    }
    settle(
        c.as_mut(),
        got[6..].iter().map(|&s| (s, Verdict::Ack)).collect(),
    );
    let retried = take(c.as_mut(), 2);
    assert!(retried.iter().all(|d| d.attempt == 2));
    c.settle(acks(&retried)).expect("settle");
    let a = audit_at_rest(&h, &inventory);
    assert_eq!(
        (a.since, a.matching, a.handled, a.dead),
        (0, 8, 6, 2),
        "{a:?}"
    );
    assert_eq!((a.pending, a.unaccounted), (0, 0), "{a:?}");
    // A re-drive makes a dead letter pending again, then handled; a purge
    // keeps it counted as given up on.
    h.backend
        .redrive("inventory", &Selection::Sequences(vec![got[2]]))
        .expect("redrive");
    let a = audit_at_rest(&h, &inventory);
    assert_eq!(
        (a.handled + a.dead + a.pending, a.unaccounted),
        (8, 0),
        "{a:?}"
    );
    let again = take(c.as_mut(), 1);
    c.settle(acks(&again)).expect("settle");
    assert_eq!(
        h.backend
            .purge("inventory", &Selection::All)
            .expect("purge"),
        1
    );
    let a = audit_at_rest(&h, &inventory);
    assert_eq!(
        (a.handled, a.dead, a.pending, a.unaccounted),
        (7, 1, 0, 0),
        "{a:?}"
    );
    // Orders not delivered yet are pending.
    h.backend
        .append((20..23).map(|i| event("order.placed", i)).collect())
        .expect("append");
    let a = audit_at_rest(&h, &inventory);
    assert_eq!((a.matching, a.pending, a.unaccounted), (11, 3, 0), "{a:?}");
    // A plugin that starts at the log's end counts from there.
    let mut options = options("host-a", &["order.placed"], HUNG);
    options.start_latest = true;
    let mut late = h.backend.consumer("analytics", options).expect("consumer");
    assert!(late
        .next_batch(10, Duration::from_millis(50))
        .expect("batch")
        .is_empty());
    let a = audit_at_rest(&h, &scope("analytics"));
    assert_eq!(
        (a.since, a.matching, a.unaccounted),
        (a.head, 0, 0),
        "{a:?}"
    );
    assert!(a.head >= 15, "{a:?}");
}

/// Small batches out of one large append, in which some events ask to be
/// retried and some are given up on, mixed with new ones: every event ends
/// acked or a dead letter, none skipped. (The embedded consumer once lost
/// the retries and dead letters of a batch cut from the middle of a
/// delivery, once an earlier batch had emptied its hands.)
fn accounts_for_every_event_when_retries_mix_with_new_ones(h: Harness) {
    const N: u64 = 40;
    h.backend
        .append((0..N as usize).map(|i| event("order.placed", i)).collect())
        .expect("append");
    let mut c = h.consumer("inventory", &["order.placed"], HUNG);
    let until = std::time::Instant::now() + HUNG;
    let (mut acked, mut dead) = (Vec::new(), Vec::new());
    while (acked.len() + dead.len()) < N as usize {
        assert!(
            std::time::Instant::now() < until,
            "{} acked and {} dead of {N}: acked {acked:?}, dead {dead:?}",
            acked.len(),
            dead.len()
        );
        let got = c.next_batch(3, Duration::from_millis(200)).expect("batch");
        if got.is_empty() {
            continue;
        }
        let verdicts = got
            .iter()
            .map(|d| {
                let seq = d.event.sequence;
                let v = match (seq % 5, seq % 2, d.attempt) {
                    (0, _, _) => Verdict::Dead("not ours".into()),
                    (_, 1, 1) => Verdict::Retry(Duration::from_millis(1)),
                    _ => Verdict::Ack,
                };
                match v {
                    Verdict::Ack => acked.push(seq),
                    Verdict::Dead(_) => dead.push(seq),
                    Verdict::Retry(_) => {}
                }
                (seq, v)
            })
            .collect();
        settle(c.as_mut(), verdicts);
    }
    acked.sort_unstable();
    dead.sort_unstable();
    assert_eq!(dead, (1..=N).filter(|s| s % 5 == 0).collect::<Vec<_>>());
    assert_eq!(acked, (1..=N).filter(|s| s % 5 != 0).collect::<Vec<_>>());
    let letters = h.backend.dead_letters("inventory").expect("dead");
    assert_eq!(letters.len(), dead.len(), "every give-up is a dead letter");
    assert!(c
        .next_batch(10, Duration::from_millis(50))
        .expect("batch")
        .is_empty());
}

/// Every host on one shared backend runs one release: the first records
/// it, another release is refused naming both unless it takes the backend
/// over, and then the first sees it was taken. The embedded store has one
/// host and records nothing.
fn one_release_per_broker_and_a_take_over_is_seen(h: Harness) {
    let ours = RELEASE;
    if !h.backend.capabilities().shared {
        assert_eq!(h.backend.claim_release(ours, false).expect("claim"), None);
        assert_eq!(check_release(&*h.backend, false).expect("ours"), None);
        return;
    }
    assert_eq!(check_release(&*h.backend, false).expect("first"), None);
    assert_eq!(
        h.other.claim_release(ours, false).expect("claim"),
        Some(ours.to_string()),
        "recorded for every host"
    );
    // A host of another release is refused, naming both, and changes nothing.
    assert_eq!(
        h.other.claim_release("9.9.9", false).expect("claim"),
        Some(ours.to_string())
    );
    assert_eq!(
        h.backend.claim_release(ours, false).expect("claim"),
        Some(ours.to_string()),
        "not taken by a refused host"
    );
    // Taken over by it: the first host sees the other release, and a host
    // of the first release is refused now.
    assert_eq!(
        h.other.claim_release("9.9.9", true).expect("take over"),
        Some(ours.to_string())
    );
    assert_eq!(
        h.backend.claim_release(ours, false).expect("claim"),
        Some("9.9.9".to_string())
    );
    let err = check_release(&*h.backend, false).expect_err("another release's");
    let text = err.to_string();
    assert!(
        text.contains("plugbus 9.9.9")
            && text.contains(&format!("plugbus {ours}"))
            && text.contains("--take-over-broker"),
        "{text}"
    );
    assert_eq!(
        check_release(&*h.backend, true).expect("taken back"),
        Some("9.9.9".to_string())
    );
}

/// Timers: where a backend keeps them, a plugin's set with its settlement
/// fires once, not before it is due, under the id it was given; one called
/// off by a settlement committed before it is due never fires; a
/// publisher's (`deliverat`) fires the same way. Where it keeps none, it
/// says so.
fn timers_fire_once_not_early_and_a_cancel_before_wins(h: Harness) {
    let now = crate::timer::now_ms();
    let timer = |key: &str, due_ms: u64| {
        let mut event = event("saga.timeout", 0);
        event.id = format!("timer-{key}");
        crate::timer::Timer {
            key: key.into(),
            due_ms,
            event,
        }
    };
    if !h.backend.capabilities().timers {
        assert!(matches!(
            h.backend.schedule(vec![timer("x", now)]),
            Err(BackendError::NotOffered { .. })
        ));
        return;
    }
    let mut fired = h.consumer("watcher", &["saga.*"], HUNG);
    let mut c = h.consumer("saga", &["order.placed"], HUNG);
    h.backend
        .append(vec![event("order.placed", 1), event("order.placed", 2)])
        .expect("append");
    let got = take(c.as_mut(), 2);
    let set = |t: crate::timer::Timer| crate::timer::TimerChange::Set(Box::new(t));
    let due = now + 300;
    let mut first = acks(&got[..1]);
    // b is called off long before it is due: a slow machine cannot make
    // the cancel late.
    first.timers = vec![
        set(timer("a", due)),
        set(timer("b", now + 60_000)),
        set(timer("far", now + 3_600_000)),
    ];
    c.settle(first).expect("settle the first");
    let mut second = acks(&got[1..]);
    second.timers = vec![crate::timer::TimerChange::Cancel("b".into())];
    c.settle(second).expect("settle the second");
    h.backend
        .schedule(vec![timer("outside", due)])
        .expect("schedule");
    let mut ids: Vec<String> = take(fired.as_mut(), 2)
        .iter()
        .map(|d| {
            assert!(crate::timer::now_ms() >= due, "never before it is due");
            d.event.id.clone()
        })
        .collect();
    ids.sort();
    assert_eq!(ids, ["timer-a", "timer-outside"], "b was called off first");
    nothing_more(fired.as_mut(), "each once");
    assert_eq!(
        h.backend.timer_usage("saga").expect("usage").count,
        1,
        "far is set"
    );
    assert_eq!(
        h.backend
            .timer_usage(crate::timer::OUTSIDE)
            .expect("usage")
            .count,
        0
    );
}

/// A timer outlives the host that set it: set by a host that is gone
/// before it is due, it fires (once, not early) from another host that runs
/// the plugin. On shared backends (the embedded store's restart is the
/// store's model test and the kill -9 end-to-end test).
fn a_timer_outlives_the_host_that_set_it(h: Harness) {
    let Some(another) = &h.another else {
        return;
    };
    let gone = another();
    let mut c = open(&gone, "host-x", "saga", &["order.placed"], HUNG);
    gone.append(vec![event("order.placed", 1)]).expect("append");
    let got = take(c.as_mut(), 1);
    let due = crate::timer::now_ms() + 300;
    let mut event = event("saga.timeout", 0);
    event.id = "timer-gone".into();
    let mut s = acks(&got);
    s.timers = vec![crate::timer::TimerChange::Set(Box::new(
        crate::timer::Timer {
            key: "t".into(),
            due_ms: due,
            event,
        },
    ))];
    c.settle(s).expect("settle");
    drop(c);
    drop(gone);
    // The host that takes over runs the plugin (so it looks after its
    // timers) and a watcher of what fires.
    let _saga = open(&h.other, "host-b", "saga", &["order.placed"], HUNG);
    let mut fired = open(&h.other, "host-b", "watcher", &["saga.*"], HUNG);
    let got = take(fired.as_mut(), 1);
    assert!(crate::timer::now_ms() >= due, "never before it is due");
    assert_eq!(got[0].event.id, "timer-gone");
    nothing_more(fired.as_mut(), "once");
}

macro_rules! conformance {
    ($backend:ident) => {
        mod $backend {
            use super::*;

            #[test]
            fn appends_with_dedup() {
                super::appends_with_dedup(Harness::$backend());
            }
            #[test]
            fn reads_batches_of_the_plugins_topics_in_order() {
                super::reads_batches_of_the_plugins_topics_in_order(Harness::$backend());
            }
            #[test]
            fn settles_state_and_follow_ups_with_the_ack() {
                super::settles_state_and_follow_ups_with_the_ack(Harness::$backend());
            }
            #[test]
            fn retries_after_the_delay_with_the_next_attempt() {
                super::retries_after_the_delay_with_the_next_attempt(Harness::$backend());
            }
            #[test]
            fn dead_letters_list_redrive_with_the_id_and_purge() {
                super::dead_letters_list_redrive_with_the_id_and_purge(Harness::$backend());
            }
            #[test]
            fn replays_from_a_sequence_and_a_time_resetting_state() {
                super::replays_from_a_sequence_and_a_time_resetting_state(Harness::$backend());
            }
            #[test]
            fn commits_nothing_for_a_host_that_lost_its_lease() {
                super::commits_nothing_for_a_host_that_lost_its_lease(Harness::$backend());
            }
            #[test]
            fn refuses_writes_made_from_values_that_changed() {
                super::refuses_writes_made_from_values_that_changed(Harness::$backend());
            }
            #[test]
            fn a_read_another_host_made_stale_is_refused_and_read_again() {
                super::a_read_another_host_made_stale_is_refused_and_read_again(Harness::$backend());
            }
            #[test]
            fn accounts_for_every_event_when_retries_mix_with_new_ones() {
                super::accounts_for_every_event_when_retries_mix_with_new_ones(Harness::$backend());
            }
            #[test]
            fn the_audit_holds_through_every_verdict() {
                super::the_audit_holds_through_every_verdict(Harness::$backend());
            }
            #[test]
            fn hands_back_at_once_on_release() {
                super::hands_back_at_once_on_release(Harness::$backend());
            }
            #[test]
            fn one_release_per_broker_and_a_take_over_is_seen() {
                super::one_release_per_broker_and_a_take_over_is_seen(Harness::$backend());
            }
            #[test]
            fn a_timer_outlives_the_host_that_set_it() {
                super::a_timer_outlives_the_host_that_set_it(Harness::$backend());
            }
            #[test]
            fn timers_fire_once_not_early_and_a_cancel_before_wins() {
                super::timers_fire_once_not_early_and_a_cancel_before_wins(Harness::$backend());
            }
        }
    };
}

/// What memory mode declares it does not keep, and that it answers so:
/// nothing durable, no duplicate window, no atomic settlement (state, then
/// follow-ups), one host; no log to read back or replay, no dead letters.
/// The cases that need them run on the other backends only.
fn declares_what_it_does_not_keep(h: Harness) {
    let caps = h.backend.capabilities();
    assert!(!caps.durable && !caps.atomic_settle && !caps.fenced && !caps.shared);
    assert_eq!(caps.dedup_window, Duration::ZERO);
    let mut c = h.consumer("email", &["order.placed"], HUNG);
    let a = event("order.placed", 1);
    let first = h.backend.append(vec![a.clone()]).expect("append");
    let again = h.backend.append(vec![a]).expect("append");
    assert_eq!(
        (first.sequences, again.sequences, again.duplicates),
        (vec![1], vec![2], 0),
        "no duplicate window: the same id is a second event"
    );
    assert_eq!(h.backend.head().expect("head"), 2);
    let got = take(c.as_mut(), 2);
    c.settle(Settlement {
        verdicts: vec![
            (got[0].event.sequence, Verdict::Dead("gone".into())),
            (got[1].event.sequence, Verdict::Ack),
        ],
        ..Settlement::default()
    })
    .expect("settle");
    let not_kept = |r: Result<(), BackendError>, what: &str| {
        assert!(
            matches!(r, Err(BackendError::NotOffered { .. })),
            "{what}: {r:?}"
        );
    };
    not_kept(h.backend.read(1, 10).map(drop), "read");
    not_kept(h.backend.dead_letters("email").map(drop), "dead letters");
    not_kept(
        h.backend.redrive("email", &Selection::All).map(drop),
        "redrive",
    );
    not_kept(h.backend.purge("email", &Selection::All).map(drop), "purge");
    not_kept(
        h.backend.replay("email", Start::Sequence(1), true),
        "replay",
    );
    not_kept(
        h.backend.first_since(SystemTime::now()).map(drop),
        "first since",
    );
    // An event published before a plugin subscribed is not kept for it.
    h.backend
        .append(vec![event("user.signed_up", 3)])
        .expect("append");
    let mut late = h.consumer("welcome", &["user.*"], HUNG);
    assert!(late
        .next_batch(10, Duration::from_millis(50))
        .expect("batch")
        .is_empty());
}

/// Memory mode: the cases of what it keeps, and its declaration.
mod memory {
    use super::*;

    #[test]
    fn timers_fire_once_not_early_and_a_cancel_before_wins() {
        super::timers_fire_once_not_early_and_a_cancel_before_wins(Harness::memory());
    }

    #[test]
    fn declares_what_it_does_not_keep() {
        super::declares_what_it_does_not_keep(Harness::memory());
    }
    #[test]
    fn reads_batches_of_the_plugins_topics_in_order() {
        super::reads_batches_of_the_plugins_topics_in_order(Harness::memory());
    }
    #[test]
    fn settles_state_and_follow_ups_with_the_ack() {
        super::settles_state_and_follow_ups_with_the_ack(Harness::memory());
    }
    #[test]
    fn retries_after_the_delay_with_the_next_attempt() {
        super::retries_after_the_delay_with_the_next_attempt(Harness::memory());
    }
    #[test]
    fn refuses_writes_made_from_values_that_changed() {
        super::refuses_writes_made_from_values_that_changed(Harness::memory());
    }
}

conformance!(embedded);
conformance!(redis);
conformance!(nats);

/// Redis: a replay remakes the plugin's group, so a batch handed out before
/// it must not commit after it, even from a consumer whose earlier
/// settlement left it a fence token (the replay deletes the tokens).
#[test]
fn redis_replay_fences_a_batch_held_across_it() {
    let h = Harness::redis();
    h.backend
        .append(vec![event("order.placed", 1), event("order.placed", 2)])
        .expect("append");
    let mut c = h.consumer("analytics", &["order.placed"], HUNG);
    let first = take(c.as_mut(), 1);
    c.settle(acks(&first)).expect("settle");
    let held = take(c.as_mut(), 1);
    h.backend
        .replay("analytics", Start::Sequence(1), false)
        .expect("replay");
    let mut late = acks(&held);
    late.writes = vec![("orders".into(), Some(b"2".to_vec()))];
    let refused = c.settle(late);
    assert!(
        matches!(refused, Err(BackendError::Fenced { sequence: 2, .. })),
        "{refused:?}"
    );
    assert_eq!(h.backend.kv_get("analytics", "orders").expect("kv"), None);
}

/// Redis: while batches come full, settling one reads the next in the same
/// round trip; what was read ahead is handed out in order at its first
/// attempt, and what waited past half the lease is not handed out late (it
/// is handed back, here after another host took it over).
#[test]
fn redis_reads_ahead_and_never_hands_out_what_another_took_over() {
    let h = Harness::redis();
    // Events of another topic between the plugin's are passed over, and
    // acknowledged with the settlements, read ahead or not.
    let topics = [
        "order.placed",
        "email.sent",
        "order.placed",
        "email.sent",
        "order.placed",
        "email.sent",
        "order.placed",
        "order.placed",
        "order.placed",
    ];
    let events: Vec<Event> = topics
        .iter()
        .enumerate()
        .map(|(i, t)| event(t, i))
        .collect();
    h.backend.append(events).expect("append");
    let lease = Duration::from_millis(300);
    let mut a = open(&h.backend, "host-a", "analytics", &["order.placed"], lease);
    let mut b = open(&h.other, "host-b", "analytics", &["order.placed"], lease);
    let pending = || {
        h.backend
            .position("analytics")
            .expect("position")
            .map(|p| p.pending)
    };
    let got = take(a.as_mut(), 2);
    assert_eq!(seqs(&got), [1, 3]);
    // A full batch: settling it reads 4 (passed over) and 5 ahead.
    a.settle(acks(&got)).expect("settle");
    let got = a.next_batch(2, Duration::ZERO).expect("read ahead");
    assert_eq!((seqs(&got), got[0].attempt), (vec![5], 1));
    a.settle(acks(&got)).expect("settle");
    assert_eq!(
        pending(),
        Some(0),
        "4, read ahead and passed over, acknowledged"
    );
    let got = take(a.as_mut(), 1);
    assert_eq!(seqs(&got), [7]);
    a.settle(acks(&got)).expect("settle");
    // Event 8 was read ahead by host a, which now stalls past the lease.
    std::thread::sleep(lease + Duration::from_millis(50));
    let taken = take(b.as_mut(), 1);
    assert_eq!((taken[0].event.sequence, taken[0].attempt), (8, 2));
    b.settle(acks(&taken)).expect("the holder commits");
    let late = take(a.as_mut(), 1);
    assert_eq!(seqs(&late), [9], "not 8, which host b settled");
    a.settle(acks(&late)).expect("settle");
    assert_eq!(pending(), Some(0));
}
