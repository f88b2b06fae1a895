//! The reference plugins, the same `.wasm` files as on the embedded store,
//! on Redis Streams (`--broker redis+unix://…`): hosts sharing one broker
//! share each plugin's work, and a plugin's state counts every acknowledged
//! event exactly once across them.

use super::*;
use plugbus_e2e::brokers::Redis;

fn on(redis: &Redis, name: &str) -> TestHost {
    host(
        &order_flow(),
        &["--broker", &redis.url, "--host-name", name],
    )
}

fn handled(hosts: &[&TestHost], plugin: &str) -> u64 {
    hosts.iter().map(|h| h.count(plugin, "handled")).sum()
}

/// The analytics plugin's committed order count, as the broker has it.
fn orders_counted(h: &TestHost) -> u64 {
    let v = h
        .get("/v1/plugins/analytics/kv/orders")
        .expect("analytics state");
    match &v["value"] {
        Value::Number(n) => n.as_u64().expect("a count"),
        Value::String(s) => s.parse().expect("a count"),
        other => panic!("orders is not a count: {other}"),
    }
}

#[test]
fn the_order_flow_runs_on_redis_with_its_chain() {
    let redis = Redis::start().unwrap_or_else(|e| panic!("{e}"));
    let h = on(&redis, "solo");
    crate::order_flow::two_orders_through(&h);
    assert_eq!(orders_counted(&h), 2);
    let status = h.stop().expect("stops");
    assert!(status.success(), "clean exit on SIGTERM, got {status}");
}

#[test]
fn two_hosts_share_each_plugin_and_count_every_order_once() {
    const ORDERS: u64 = 40;
    let redis = Redis::start().unwrap_or_else(|e| panic!("{e}"));
    let a = on(&redis, "host-a");
    let b = on(&redis, "host-b");
    for i in 0..ORDERS {
        let via = if i % 2 == 0 { &a } else { &b };
        via.publish("order.placed", &order(&format!("o-{i}"), "widget", 1, 100))
            .expect("accepted");
    }
    for plugin in ["email", "inventory", "analytics"] {
        a.wait_until(
            &format!("{plugin} to handle {ORDERS} on the two hosts"),
            WAIT,
            |a| handled(&[a, &b], plugin) >= ORDERS,
        )
        .expect("handled");
    }
    // Exactly once per plugin across the hosts, and the shared state counts
    // each order once, even where both hosts raced on the same key.
    for plugin in ["email", "inventory", "analytics"] {
        assert_eq!(handled(&[&a, &b], plugin), ORDERS, "{plugin}");
    }
    for plugin in ["email", "inventory", "analytics"] {
        let (on_a, on_b) = (a.count(plugin, "handled"), b.count(plugin, "handled"));
        eprintln!("{plugin}: host-a handled {on_a}, host-b {on_b}");
    }
    assert_eq!(orders_counted(&a), ORDERS);
    assert_eq!(orders_counted(&b), ORDERS, "both hosts read the one bucket");
    for h in [a, b] {
        let status = h.stop().expect("stops");
        assert!(status.success(), "clean exit on SIGTERM, got {status}");
    }
}

#[test]
fn a_host_killed_mid_stream_is_taken_over_and_nothing_acknowledged_is_lost() {
    const ORDERS: u64 = 40;
    let redis = Redis::start().unwrap_or_else(|e| panic!("{e}"));
    // A short lease, so that the survivor takes the killed host's events
    // over soon (three deadlines at least).
    let short = ["--deadline-ms", "200", "--broker-lease-ms", "600"];
    let start = |name: &str| {
        let mut args = vec!["--broker", redis.url.as_str(), "--host-name", name];
        args.extend(short);
        host(&order_flow(), &args)
    };
    let a = start("host-a");
    let b = start("host-b");
    for i in 0..ORDERS / 2 {
        a.publish("order.placed", &order(&format!("o-{i}"), "widget", 1, 100))
            .expect("accepted");
    }
    // Killed with whatever it holds: handed out, maybe half handled.
    a.kill9();
    for i in ORDERS / 2..ORDERS {
        b.publish("order.placed", &order(&format!("o-{i}"), "widget", 1, 100))
            .expect("accepted");
    }
    b.wait_until("every acknowledged order counted", WAIT, |b| {
        orders_counted(b) >= ORDERS
    })
    .expect("counted");
    assert_eq!(orders_counted(&b), ORDERS, "none lost, none twice");
    let status = b.stop().expect("stops");
    assert!(status.success(), "clean exit on SIGTERM, got {status}");
}
