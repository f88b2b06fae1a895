//! The saga scenario (`../shared/research/saga.md`) on the real binary:
//! 1,000 orders at 200/s through `order-saga`, `payment`, `inventory`,
//! `email` and `analytics` with a payment timeout of 2 s: 800 normal, 100
//! out of stock, 50 whose payment never answers, 50 whose answers come
//! after the timeout. Every order ends once; the right ones are refunded;
//! each out-of-stock order's trace is in causation order. Then again with a
//! kill -9 halfway, and with a hot swap of `order-saga`. On Redis (and
//! NATS) a shorter run, 200 orders, plain and with a kill -9 of the host.

use super::*;

const ORDERS: usize = 1_000;
/// The run on a broker.
const BROKER_ORDERS: usize = 200;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Normal,
    OutOfStock,
    Silent,
    Late,
}

fn kind(i: usize) -> Kind {
    match i % 20 {
        0 | 10 => Kind::OutOfStock,
        5 => Kind::Silent,
        15 => Kind::Late,
        _ => Kind::Normal,
    }
}

fn customer(i: usize) -> String {
    match kind(i) {
        Kind::Silent => format!("silent-{i}@x"),
        Kind::Late => format!("late-{i}@x"),
        _ => format!("c-{i}@x"),
    }
}

fn manifests() -> (String, String) {
    let (mut silent, mut late) = (Vec::new(), Vec::new());
    for i in 0..ORDERS {
        match kind(i) {
            Kind::Silent => silent.push(customer(i)),
            Kind::Late => late.push(customer(i)),
            _ => {}
        }
    }
    let payment = format!(
        "[config]\nsilent_customers = \"{}\"\nlate_customers = \"{}\"\nlate_ms = \"3000\"\n",
        silent.join(","),
        late.join(",")
    );
    let saga = "[config]\npayment_timeout_ms = \"2000\"\ngc_after_ms = \"3600000\"\n".to_string();
    (payment, saga)
}

const INVENTORY: &str = "[config]\ndefault_stock = \"1000000\"\n\"stock.SOLD-OUT\" = \"0\"\n";

fn placed(i: usize) -> Value {
    let sku = if kind(i) == Kind::OutOfStock {
        "SOLD-OUT"
    } else {
        "widget"
    };
    json!({"specversion": "1.0", "id": format!("order-{i}"), "source": "/shop",
           "type": "order.placed", "subject": format!("o-{i}"),
           "data": {"order_id": format!("o-{i}"), "customer": customer(i),
                    "items": [{"sku": sku, "qty": 1}], "total_cents": 100}})
}

fn start(data: &TestDir) -> TestHost {
    start_on(&["--data", &data.arg()])
}

/// On the backend `args` choose.
fn start_on(args: &[&str]) -> TestHost {
    let (payment, saga) = manifests();
    host(
        &[
            PluginFile::Wasm("order-saga", artifacts::ORDER_SAGA),
            PluginFile::Manifest("order-saga", &saga),
            PluginFile::Wasm("payment", artifacts::PAYMENT),
            PluginFile::Manifest("payment", &payment),
            PluginFile::Wasm("inventory", artifacts::INVENTORY),
            PluginFile::Manifest("inventory", INVENTORY),
            PluginFile::Wasm("email", artifacts::EMAIL),
            PluginFile::Wasm("analytics", artifacts::ANALYTICS),
        ],
        args,
    )
}

/// Publish orders `from..to` at 200 per second (batches of 10 every 50 ms;
/// the pace is the publisher's, nothing is asserted about it).
fn publish(h: &TestHost, from: usize, to: usize) {
    let mut i = from;
    while i < to {
        let end = (i + 10).min(to);
        h.publish_batch((i..end).map(placed).collect());
        i = end;
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn ends(events: &[Value]) -> usize {
    events
        .iter()
        .filter(|e| e["type"] == "order.confirmed" || e["type"] == "order.cancelled")
        .count()
}

fn refunds(h: &TestHost) -> u64 {
    h.get("/v1/plugins/payment/kv/refunds")
        .ok()
        .and_then(|v| v["value"].as_u64())
        .unwrap_or(0)
}

/// How many of the first `orders` are of `kind`.
fn count(orders: usize, want: &[Kind]) -> usize {
    (0..orders).filter(|i| want.contains(&kind(*i))).count()
}

/// Wait for every order's end and the refunds (of the out-of-stock and
/// late orders), then check the totals, one end per order, the refunds'
/// orders, the timeouts, the traces of the out-of-stock orders, and the
/// audit. Of 1,000: 800 confirmed, 100 out of stock, 100 timed out, 150
/// refunds.
fn check(h: &TestHost, orders: usize) -> Vec<Value> {
    let refunds_due = count(orders, &[Kind::OutOfStock, Kind::Late]) as u64;
    h.wait_until("every order ended and refunds made", WAIT, |h| {
        refunds(h) >= refunds_due && ends(&h.log_events(None)) >= orders
    })
    .expect("the saga finished");
    // The late answers of the last orders are in by now (their refunds are).
    let events = h.log_events(None);
    let mut end_of: std::collections::HashMap<String, Vec<String>> = Default::default();
    for e in &events {
        let order = e["data"]["order_id"].as_str().unwrap_or("").to_string();
        match e["type"].as_str() {
            Some("order.confirmed") => end_of.entry(order).or_default().push("confirmed".into()),
            Some("order.cancelled") => end_of
                .entry(order)
                .or_default()
                .push(e["data"]["reason"].as_str().unwrap_or("?").to_string()),
            _ => {}
        }
    }
    assert_eq!(end_of.len(), orders, "every order ended");
    let mut tally: std::collections::BTreeMap<String, usize> = Default::default();
    for (order, ends) in &end_of {
        assert_eq!(ends.len(), 1, "order {order} ended {ends:?}");
        let i: usize = order
            .trim_start_matches("o-")
            .parse()
            .expect("order number");
        let want = match kind(i) {
            Kind::Normal => "confirmed",
            Kind::OutOfStock => "out_of_stock",
            Kind::Silent | Kind::Late => "payment_timeout",
        };
        assert_eq!(ends[0], want, "order {order}");
        *tally.entry(ends[0].clone()).or_default() += 1;
    }
    let timed_out = count(orders, &[Kind::Silent, Kind::Late]);
    assert_eq!(tally["confirmed"], count(orders, &[Kind::Normal]));
    assert_eq!(tally["out_of_stock"], count(orders, &[Kind::OutOfStock]));
    assert_eq!(tally["payment_timeout"], timed_out);
    if orders == ORDERS {
        assert_eq!(
            (tally["confirmed"], tally["out_of_stock"], timed_out),
            (800, 100, 100)
        );
    }
    let refunded: HashSet<String> = events
        .iter()
        .filter(|e| e["type"] == "payment.refunded")
        .filter_map(|e| e["data"]["order_id"].as_str().map(str::to_string))
        .collect();
    assert_eq!(refunded.len() as u64, refunds_due, "out of stock and late");
    assert_eq!(refunds(h), refunds_due, "once per refund id");
    for order in &refunded {
        let i: usize = order
            .trim_start_matches("o-")
            .parse()
            .expect("order number");
        assert!(
            matches!(kind(i), Kind::OutOfStock | Kind::Late),
            "{order} refunded"
        );
    }
    let mut timeouts: std::collections::HashMap<&str, usize> = Default::default();
    for e in events
        .iter()
        .filter(|e| e["type"] == "saga.payment-timeout")
    {
        *timeouts
            .entry(e["data"]["order_id"].as_str().unwrap_or(""))
            .or_default() += 1;
    }
    // Each order not answered in time has its timeout. Another order's
    // may have fired too, when the machine was so slow that its answer
    // was handled after the timeout was due (the saga ignores a timeout
    // of an ended order: its end was checked above).
    for i in (0..orders).filter(|i| matches!(kind(*i), Kind::Silent | Kind::Late)) {
        assert_eq!(
            timeouts.get(format!("o-{i}").as_str()),
            Some(&1),
            "the timeout of order {i}: {timeouts:?}"
        );
    }
    assert!(
        timeouts.values().all(|n| *n == 1),
        "at most one timeout per order"
    );
    for i in (0..orders).filter(|i| kind(*i) == Kind::OutOfStock) {
        // A host on a broker keeps no trace index (the API answers 501):
        // there the chain is the log's events of the order's correlation,
        // in log order.
        let chain = match h.get(&format!("/v1/trace/order-{i}")) {
            Ok(trace) => trace["events"].as_array().cloned().unwrap_or_default(),
            Err(e) if e.contains("501") => events
                .iter()
                .filter(|e| {
                    let root = format!("order-{i}");
                    e["id"] == root || e["correlationid"] == root
                })
                .cloned()
                .collect(),
            Err(e) => panic!("trace: {e}"),
        };
        let seen: Vec<&str> = chain.iter().filter_map(|e| e["id"].as_str()).collect();
        for (n, e) in chain.iter().enumerate() {
            if let Some(cause) = e["causationid"].as_str() {
                assert!(
                    seen[..n].contains(&cause),
                    "order {i}: {} before its cause",
                    e["type"]
                );
            }
        }
        let topics: Vec<&str> = chain.iter().filter_map(|e| e["type"].as_str()).collect();
        for want in [
            "order.placed",
            "payment.authorized",
            "inventory.insufficient",
            "payment.refund.requested",
            "payment.refunded",
            "order.cancelled",
        ] {
            assert!(topics.contains(&want), "order {i}: no {want} in {topics:?}");
        }
    }
    h.audit_clean();
    events
}

#[test]
fn a_saga_ends_every_order_once_refunds_what_it_must_and_times_out_the_rest() {
    let data = TestDir::new("saga");
    let h = start(&data);
    publish(&h, 0, ORDERS);
    check(&h, ORDERS);
}

#[test]
fn on_redis_a_saga_ends_every_order_once_and_survives_a_kill_9() {
    let redis = plugbus_e2e::brokers::Redis::start().unwrap_or_else(|e| panic!("{e}"));
    on_a_broker(&["--broker", &redis.url]);
}

#[test]
fn on_nats_a_saga_ends_every_order_once_and_survives_a_kill_9() {
    let nats = plugbus_e2e::brokers::Nats::start().unwrap_or_else(|e| panic!("{e}"));
    on_a_broker(&["--broker", &nats.url]);
}

/// The shorter run on a broker: half the orders; once those whose payment
/// answers in time have ended, a kill -9 of the host while the others'
/// timeouts (and the late payments' answers) wait in the broker, due while
/// it is down; the rest from a new host. (Killed earlier, events in flight
/// come back only after the broker's lease, and a payment that answers
/// after its timeout is rightly a timeout.)
fn on_a_broker(args: &[&str]) {
    let half = BROKER_ORDERS / 2;
    let h = start_on(args);
    publish(&h, 0, half);
    let in_time = count(half, &[Kind::Normal, Kind::OutOfStock]);
    h.wait_until("the orders answered in time ended", WAIT, |h| {
        ends(&h.log_events(None)) >= in_time
    })
    .expect("ended");
    h.kill9();
    std::thread::sleep(Duration::from_millis(2_500));
    let h = start_on(args);
    publish(&h, half, BROKER_ORDERS);
    check(&h, BROKER_ORDERS);
}

#[test]
fn the_saga_survives_a_kill_9_halfway_with_its_timers() {
    let data = TestDir::new("saga-kill");
    let h = start(&data);
    publish(&h, 0, 500);
    h.kill9();
    // Down long enough for timeouts set before the kill to fall due.
    std::thread::sleep(Duration::from_millis(2_500));
    let h = start(&data);
    let ready = std::time::SystemTime::now();
    publish(&h, 500, ORDERS);
    let events = check(&h, ORDERS);
    // Timeouts that fell due while the host was down fired within a second
    // of it being ready.
    let at = |e: &Value, k: &str| humantime::parse_rfc3339_weak(e[k].as_str().unwrap_or("")).ok();
    let overdue: Vec<Duration> = events
        .iter()
        .filter(|e| e["type"] == "saga.payment-timeout")
        .filter_map(|e| Some((at(e, "scheduledat")?, at(e, "time")?)))
        .filter(|(due, _)| *due < ready)
        .map(|(_, fired)| fired.duration_since(ready).unwrap_or_default())
        .collect();
    eprintln!(
        "overdue timeouts after the restart: {} (fired at most {:?} after ready)",
        overdue.len(),
        overdue.iter().max()
    );
    assert!(
        overdue.iter().all(|d| *d <= Duration::from_secs(1)),
        "{overdue:?}"
    );
}

#[test]
fn a_hot_swap_of_the_saga_midway_loses_and_doubles_nothing() {
    let data = TestDir::new("saga-swap");
    let h = start(&data);
    publish(&h, 0, 300);
    let before = h.plugin("order-saga").expect("running")["content_hash"].clone();
    // The same logic, a new file: a custom section makes it another version.
    let mut bytes = std::fs::read(artifacts::ORDER_SAGA).expect("order-saga built");
    bytes.extend_from_slice(&[0, 8, 7]);
    bytes.extend_from_slice(b"version");
    deploy(h.plugin_dir(), "order-saga.wasm", &bytes);
    publish(&h, 300, ORDERS);
    h.wait_until("the new version runs", WAIT, |h| {
        h.plugin("order-saga")
            .is_some_and(|p| p["content_hash"] != before)
    })
    .expect("swapped");
    check(&h, ORDERS);
}
