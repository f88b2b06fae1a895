//! The reference plugins, the same `.wasm` files as on the embedded store,
//! on each broker: Redis Streams (`--broker redis+unix://…`) and NATS
//! JetStream (`--broker nats://…`). Hosts sharing one broker share each
//! plugin's work, and a plugin's state counts every acknowledged event
//! exactly once across them. The same cases run on both (the macro at the
//! end), each against a server it starts.

use super::*;
use plugbus_e2e::brokers::{Nats, Redis};

/// A broker server as these tests drive it.
trait Broker: Sized {
    fn start() -> Self;
    fn url(&self) -> &str;
    fn kill9(&mut self);
    fn restart(&mut self);
    /// Whether events of `plugin` are handed out and unsettled, on any
    /// host (asked while one host runs).
    fn holds(&self, plugin: &str) -> bool;
    /// Started serving TLS with a password; the CA is `ca.pem` in `certs`.
    fn start_tls(certs: &std::path::Path, password: &str) -> Self;
    /// What the broker answers a wrong password with.
    const WRONG_PASSWORD: &'static str;
}

impl Broker for Redis {
    fn start() -> Self {
        Redis::start().unwrap_or_else(|e| panic!("{e}"))
    }
    fn url(&self) -> &str {
        &self.url
    }
    fn kill9(&mut self) {
        Redis::kill9(self)
    }
    fn restart(&mut self) {
        Redis::restart(self).unwrap_or_else(|e| panic!("{e}"))
    }
    fn holds(&self, plugin: &str) -> bool {
        let client = redis::Client::open(self.url.as_str()).expect("url");
        let mut con = client.get_connection().expect("connects");
        let pending: redis::Value = redis::cmd("XPENDING")
            .arg("plugbus:log")
            .arg(plugin)
            .arg("-")
            .arg("+")
            .arg(100)
            .query(&mut con)
            .expect("xpending");
        matches!(pending, redis::Value::Array(entries) if !entries.is_empty())
    }
    fn start_tls(certs: &std::path::Path, password: &str) -> Self {
        Redis::start_tls(certs, "broker", password).unwrap_or_else(|e| panic!("{e}"))
    }
    const WRONG_PASSWORD: &'static str = "Password authentication failed";
}

impl Broker for Nats {
    fn start() -> Self {
        Nats::start().unwrap_or_else(|e| panic!("{e}"))
    }
    fn url(&self) -> &str {
        &self.url
    }
    fn kill9(&mut self) {
        Nats::kill9(self)
    }
    fn restart(&mut self) {
        Nats::restart(self).unwrap_or_else(|e| panic!("{e}"))
    }
    /// Handed out and not committed: a settlement's state is committed
    /// before its acks, so an event whose applied-marker is written but
    /// whose ack is not yet sent does not count (a host stopped there has
    /// nothing left to be refused).
    fn holds(&self, plugin: &str) -> bool {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio");
        rt.block_on(async {
            let client = async_nats::connect(&self.url).await.expect("connects");
            let js = async_nats::jetstream::new(client);
            let stream = js.get_stream("PLUGBUS").await.expect("stream");
            let info = stream.consumer_info(plugin).await.expect("consumer");
            if info.num_ack_pending == 0 {
                return false;
            }
            let bucket = js
                .get_stream(format!("KV_plugbus_{plugin}"))
                .await
                .expect("bucket");
            let (floor, delivered) = (
                info.ack_floor.stream_sequence,
                info.delivered.stream_sequence,
            );
            for seq in floor + 1..=delivered {
                let marker = bucket
                    .direct_get_last_for_subject(format!("$KV.plugbus_{plugin}._pb.a.{seq}"))
                    .await;
                let settled = marker.is_ok_and(|m| {
                    serde_json::from_slice::<serde_json::Value>(&m.payload)
                        .is_ok_and(|v| !v["done"].is_null())
                });
                if !settled {
                    return true;
                }
            }
            false
        })
    }
    fn start_tls(certs: &std::path::Path, password: &str) -> Self {
        Nats::start_tls(certs, "broker", "plugbus", password).unwrap_or_else(|e| panic!("{e}"))
    }
    const WRONG_PASSWORD: &'static str = "authorization violation";
}

fn on(broker: &impl Broker, name: &str) -> TestHost {
    host(
        &order_flow(),
        &["--broker", broker.url(), "--host-name", name],
    )
}

fn handled(hosts: &[&TestHost], plugin: &str) -> u64 {
    hosts.iter().map(|h| h.count(plugin, "handled")).sum()
}

/// The analytics plugin's committed order count, as the broker has it.
fn orders_counted(h: &TestHost) -> u64 {
    count_of(
        &h.get("/v1/plugins/analytics/kv/orders")
            .expect("analytics state"),
    )
}

/// [`orders_counted`] while waiting: none yet (no state committed, or just
/// emptied by a replay) is not a failure.
fn orders_counted_yet(h: &TestHost) -> Option<u64> {
    Some(count_of(&h.get("/v1/plugins/analytics/kv/orders").ok()?))
}

/// The count in a `kv/orders` answer.
fn count_of(v: &Value) -> u64 {
    match &v["value"] {
        Value::Number(n) => n.as_u64().expect("a count"),
        Value::String(s) => s.parse().expect("a count"),
        other => panic!("orders is not a count: {other}"),
    }
}

/// The order flow with inventory's publish limit forced low: held, not
/// failed, and every order accounted for on the broker.
fn a_publish_limit_loses_nothing<B: Broker>() {
    let broker = B::start();
    let mut files = order_flow();
    files.push(PluginFile::Manifest(
        "inventory",
        "[publish]\nrate_events_per_s_max = 300\n",
    ));
    let h = host(&files, &["--broker", broker.url(), "--host-name", "solo"]);
    const N: usize = 2_000;
    crate::accounting::post_orders(&h, N);
    crate::accounting::order_flow_accounted(&h, N as u64);
    assert_eq!(h.count("inventory", "failed"), 0, "no publish failed");
    assert!(h.stop().expect("stops").success());
}

fn the_order_flow_runs_with_its_chain<B: Broker>() {
    let broker = B::start();
    let h = on(&broker, "solo");
    crate::order_flow::two_orders_through(&h);
    assert_eq!(orders_counted(&h), 2);
    // The chain index is the embedded store's: a broker says so.
    let refused = h.get("/v1/trace/anything").expect_err("501");
    assert!(refused.contains("501"), "{refused}");
    let status = h.stop().expect("stops");
    assert!(status.success(), "clean exit on SIGTERM, got {status}");
}

/// What one host shows of the flow covers every host's events: its tail
/// (with the broker's sequences), its flow graph and its catalog.
fn one_host_shows_the_flow_of_every_host<B: Broker>() {
    let broker = B::start();
    let a = on(&broker, "a");
    let b = on(&broker, "b");
    let mut s = a
        .stream(
            "/v1/stream?topic=order.*,inventory.>&rates=0&plugins=0",
            None,
        )
        .expect("stream");
    s.until("hello", |_| true).expect("hello");
    let accepted = post_order(&b, "o-1").1;
    let id = accepted["id"].as_str().expect("id").to_string();
    let placed = s
        .until("tail", |f| f.json()["id"] == id.as_str())
        .expect("b's order in a's tail");
    assert_eq!(
        placed.id.as_deref(),
        Some(accepted["sequence"].to_string().as_str())
    );
    let follow = s
        .until("tail", |f| f.json()["correlationid"] == id.as_str())
        .expect("its follow-up");
    assert_eq!(follow.json()["published_by"], "inventory");
    drop(s);
    a.wait_until("the publish edge in a's flow", WAIT, |h| {
        h.get("/v1/flow").is_ok_and(|f| {
            f["edges"].as_array().is_some_and(|edges| {
                edges.iter().any(|e| {
                    e["from"] == "plugin:inventory"
                        && e["kind"] == "publishes"
                        && e["to"]
                            .as_str()
                            .is_some_and(|t| t.starts_with("topic:inventory."))
                })
            })
        })
    })
    .expect("flow");
    let catalog = a.get("/v1/catalog").expect("catalog");
    let topics = catalog["topics"].as_array().expect("topics");
    assert!(
        topics.iter().any(|t| t["topic"] == "order.placed"),
        "{catalog}"
    );
    assert!(a.stop().expect("stops").success());
    assert!(b.stop().expect("stops").success());
}

fn two_hosts_share_each_plugin_and_count_every_order_once<B: Broker>() {
    const ORDERS: u64 = 40;
    let broker = B::start();
    let a = on(&broker, "host-a");
    let b = on(&broker, "host-b");
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
    // The broker's view, the same from either host: soon nothing left to
    // do (events of other topics are acknowledged with a host's next
    // settlement, or when it is idle).
    a.wait_until("nothing pending on the broker", WAIT, |a| {
        ["email", "inventory", "analytics"].iter().all(|plugin| {
            a.plugin(plugin).is_some_and(|p| {
                [&p["lag"], &p["pending"], &p["waiting_retries"]]
                    .iter()
                    .all(|n| n.as_u64() == Some(0))
            })
        })
    })
    .expect("settled");
    assert_eq!(
        a.metric(r#"plugbus_broker_pending_events{plugin="analytics"}"#),
        Some(0.0)
    );
    let out = std::process::Command::new(BIN)
        .args(["plugins", "--url", &b.url])
        .output()
        .expect("cli");
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("(connected)") && table.contains("on the broker: 0 handed out"),
        "{table}"
    );
    for h in [a, b] {
        let status = h.stop().expect("stops");
        assert!(status.success(), "clean exit on SIGTERM, got {status}");
    }
}

fn a_host_killed_mid_stream_is_taken_over_and_nothing_acknowledged_is_lost<B: Broker>() {
    const ORDERS: u64 = 40;
    let broker = B::start();
    // A short lease, so that the survivor takes the killed host's events
    // over soon (three deadlines at least).
    let short = ["--deadline-ms", "200", "--broker-lease-ms", "600"];
    let start = |name: &str| {
        let mut args = vec!["--broker", broker.url(), "--host-name", name];
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
        orders_counted_yet(b).is_some_and(|n| n >= ORDERS)
    })
    .expect("counted");
    assert_eq!(orders_counted(&b), ORDERS, "none lost, none twice");
    let status = b.stop().expect("stops");
    assert!(status.success(), "clean exit on SIGTERM, got {status}");
}

fn post_order(h: &TestHost, id: &str) -> (u16, Value) {
    let body = order(id, "widget", 1, 100).to_string();
    h.post(
        "/v1/events/order.placed",
        Some("application/json"),
        &[],
        body.as_bytes(),
    )
}

fn a_killed_broker_is_reported_503_and_the_host_reconnects_by_itself<B: Broker>() {
    let mut broker = B::start();
    let h = on(&broker, "solo");
    for i in 0..10 {
        assert_eq!(post_order(&h, &format!("o-{i}")).0, 202);
    }
    h.wait_until("10 orders counted", WAIT, |h| {
        orders_counted_yet(h).is_some_and(|n| n == 10)
    })
    .expect("counted");
    let status = h.get("/v1/plugins").expect("status");
    assert_eq!(status["backend"]["kind"], "broker");
    assert_eq!(status["backend"]["connected"], true, "{status}");
    assert_eq!(h.metric("plugbus_broker_connected"), Some(1.0));
    broker.kill9();
    let (status, body) = post_order(&h, "o-lost");
    assert_eq!(status, 503, "the broker is down: {body}");
    assert!(
        body["error"].as_str().unwrap_or("").contains("unreachable"),
        "names the broker: {body}"
    );
    let status = h
        .get("/v1/plugins")
        .expect("status while the broker is down");
    assert_eq!(status["backend"]["connected"], false, "{status}");
    assert_eq!(h.metric("plugbus_broker_connected"), Some(0.0));
    broker.restart();
    // The host reconnects on its own; publishes are accepted again.
    let mut accepted = 0;
    let mut i = 10;
    while accepted < 10 {
        let (status, body) = post_order(&h, &format!("o-{i}"));
        match status {
            202 => accepted += 1,
            503 => std::thread::sleep(Duration::from_millis(50)),
            other => panic!("{other}: {body}"),
        }
        i += 1;
        assert!(i < 100_000, "the host never reconnected");
    }
    h.wait_until("20 orders counted", WAIT, |h| {
        orders_counted_yet(h).is_some_and(|n| n >= 20)
    })
    .expect("counted after the restart");
    if orders_counted(&h) != 20 {
        // Rare (seen twice in a full suite, never alone): say whether the
        // order refused while the broker was down (`o-lost`) was stored
        // after all, or an order was counted twice.
        eprintln!(
            "the log: {}",
            h.get("/v1/log?limit=200").unwrap_or_default()
        );
        eprintln!("the audit: {}", h.get("/v1/audit").unwrap_or_default());
    }
    assert_eq!(orders_counted(&h), 20, "every acknowledged order once");
    assert!(h.stop().expect("stops").success());
}

fn a_stalled_host_past_its_lease_cannot_commit_what_another_took_over<B: Broker>() {
    // Host a is stopped while it holds an event it has not committed. The
    // stop can land just after a's commit left for the broker (host a
    // then finds it taken, and says it committed past its lease): that
    // run proves nothing about the fence, so the scene is played again.
    const TRIES: usize = 5;
    for _ in 0..TRIES {
        if stall_once::<B>() {
            return;
        }
    }
    panic!("in {TRIES} tries host a was never stopped before its commit reached the broker");
}

/// One stalled-host scene; false when host a's commit beat its stop.
fn stall_once<B: Broker>() -> bool {
    const ORDERS: u64 = 30;
    let broker = B::start();
    let args = |name: &'static str| {
        [
            "--broker",
            broker.url(),
            "--host-name",
            name,
            "--deadline-ms",
            "200",
            "--broker-lease-ms",
            "600",
            "--batch-events-max",
            "1",
        ]
    };
    // `slow` spends 50 ms on each order: host a is stopped while it holds
    // one, as a stalled machine would be.
    let plugins = [
        PluginFile::Wasm("slow", artifacts::SLOW),
        PluginFile::Wasm("analytics", artifacts::ANALYTICS),
    ];
    let a = host(&plugins, &args("host-a"));
    for i in 0..ORDERS {
        a.publish("order.placed", &order(&format!("o-{i}"), "widget", 1, 100))
            .expect("accepted");
    }
    loop {
        a.pause();
        if broker.holds("slow") {
            break;
        }
        a.resume();
        assert!(
            a.count("slow", "handled") < ORDERS,
            "host a finished before it could be stopped holding an event"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let b = host(&plugins, &args("host-b"));
    // Host a holds an order it has not settled: nothing held any more
    // with host a stopped means host b took that one over.
    b.wait_until("host b to take over and finish", WAIT, |b| {
        orders_counted_yet(b).is_some_and(|n| n >= ORDERS) && !broker.holds("slow")
    })
    .expect("taken over");
    // Host a wakes up and finishes the event it held: its settlement must
    // be refused, since host b handled that event.
    a.resume();
    // Refused either way: by the fence (the event is another host's now)
    // or by the state it read (host b has written that key since).
    const REFUSED: [&str; 2] = [
        "is no longer this host's",
        "changed while the batch was handled",
    ];
    const BEAT_THE_STOP: &str = "held past its lease";
    let slow = |l: &String, what: &str| l.contains("plugin=slow") && l.contains(what);
    let refused = |l: &String| REFUSED.iter().any(|r| slow(l, r));
    a.wait_until("host a to settle what it held", WAIT, |a| {
        a.log().iter().any(|l| refused(l) || slow(l, BEAT_THE_STOP))
    })
    .expect("the late settlement answered");
    let fenced = a.log().iter().any(refused);
    b.wait_until("every order handled once", WAIT, |b| {
        a.count("slow", "handled") + b.count("slow", "handled") >= ORDERS
    })
    .expect("handled");
    assert_eq!(
        a.count("slow", "handled") + b.count("slow", "handled"),
        ORDERS,
        "each order handled (and acked) by exactly one host"
    );
    assert_eq!(orders_counted(&b), ORDERS);
    for h in [a, b] {
        assert!(h.stop().expect("stops").success());
    }
    fenced
}

fn dead_letters_are_redriven_to_a_fixed_build_with_their_id<B: Broker>() {
    let broker = B::start();
    let args = [&["--broker", broker.url()][..], &GIVE_UP_FAST].concat();
    let h = host(&[PluginFile::Wasm("trap", artifacts::TRAP)], &args);
    let boom = h
        .publish("order.placed", &json!({"order_id": "o-2", "note": "boom"}))
        .expect("publish");
    h.wait_until("a dead letter", WAIT, |h| {
        dead_count(h, "/v1/dead/trap") == Some(1)
    })
    .expect("dead-lettered");
    let letter = h.get("/v1/dead/trap").expect("list")["dead_letters"][0].clone();
    assert_eq!(letter["id"], boom["id"]);
    assert_eq!(letter["attempts"], json!(2), "{letter}");
    assert!(h.stop().expect("stops").success());
    // The fix under the same name, on the same broker; re-driven with the CLI.
    let h = host(&[PluginFile::Wasm("trap", artifacts::NOOP)], &args);
    crate::dead_letters::redrive_trap_to_the_fix(&h);
    assert!(h.stop().expect("stops").success());
}

fn replay_with_reset_state_rebuilds_analytics<B: Broker>() {
    let broker = B::start();
    let h = on(&broker, "solo");
    for i in 0..5 {
        assert_eq!(post_order(&h, &format!("o-{i}")).0, 202);
    }
    h.wait_until("5 orders counted", WAIT, |h| {
        orders_counted_yet(h).is_some_and(|n| n == 5)
    })
    .expect("counted");
    h.replay_from_start("analytics");
    // Rebuilt from nothing: the totals pass 5 a second time.
    h.wait_until("analytics rebuilt", WAIT, |h| {
        let passes = h
            .log()
            .iter()
            .filter(|l| l.contains("totals: orders=5 "))
            .count();
        passes == 2 && orders_counted_yet(h) == Some(5)
    })
    .expect("rebuilt");
    assert_eq!(orders_counted(&h), 5, "identical totals, not doubled");
    assert!(h.stop().expect("stops").success());
}

fn a_plugin_swapped_100_times_under_load_handles_every_event_once<B: Broker>() {
    let broker = B::start();
    let (v0, _) = plugbus_e2e::swapper_version(0);
    let h = host(
        &[PluginFile::Bytes("swapper", &v0)],
        &["--broker", broker.url()],
    );
    crate::hot_swap::swap_100_times_under_load(&h);
}

fn a_broker_over_tls_with_a_password_is_used_and_a_wrong_password_is_named<B: Broker>() {
    let certs = TestDir::new("broker-certs");
    crate::auth::make_ca(&certs.0);
    crate::auth::make_server_cert(&certs.0, "broker");
    let broker = B::start_tls(&certs.0, "s3cret");
    let ca = certs.0.join("ca.pem").display().to_string();
    let h = host(
        &order_flow(),
        &["--broker", broker.url(), "--broker-ca", &ca],
    );
    crate::order_flow::two_orders_through(&h);
    assert_eq!(orders_counted(&h), 2);
    // The chain index is the embedded store's: a broker says so.
    let refused = h.get("/v1/trace/anything").expect_err("501");
    assert!(refused.contains("501"), "{refused}");
    assert!(h.stop().expect("stops").success());
    // A wrong password stops the start with the broker's refusal, the
    // password itself not shown.
    let wrong = broker.url().replace("s3cret", "wrong");
    let err = match TestHost::start(
        BIN,
        &order_flow(),
        &["--broker", &wrong, "--broker-ca", &ca],
    ) {
        Ok(_) => panic!("started with a wrong password"),
        Err(e) => e,
    };
    assert!(
        err.contains("exited at start")
            && err
                .to_lowercase()
                .contains(&B::WRONG_PASSWORD.to_lowercase())
            && !err.contains("wrong@"),
        "{err}"
    );
}

#[test]
fn a_nats_token_is_used_and_a_wrong_one_is_named_without_showing_it() {
    let nats = Nats::start_with_token("t0ken-s3cret").unwrap_or_else(|e| panic!("{e}"));
    let h = host(&order_flow(), &["--broker", &nats.url]);
    crate::order_flow::two_orders_through(&h);
    assert_eq!(orders_counted(&h), 2);
    // The chain index is the embedded store's: a broker says so.
    let refused = h.get("/v1/trace/anything").expect_err("501");
    assert!(refused.contains("501"), "{refused}");
    assert!(h.stop().expect("stops").success());
    let wrong = nats.url.replace("t0ken-s3cret", "guessed");
    let err = match TestHost::start(BIN, &order_flow(), &["--broker", &wrong]) {
        Ok(_) => panic!("started with a wrong token"),
        Err(e) => e,
    };
    assert!(
        err.contains("exited at start")
            && err.contains("authorization violation")
            && err.contains("nats://***@")
            && !err.contains("guessed"),
        "{err}"
    );
    // A creds file that is not one is named, with the flag to fix.
    let creds = nats.dir.0.join("not.creds");
    std::fs::write(&creds, "not a creds file").expect("write");
    let creds = creds.display().to_string();
    let err = match TestHost::start(
        BIN,
        &order_flow(),
        &["--broker", &nats.url, "--broker-creds", &creds],
    ) {
        Ok(_) => panic!("started with a broken creds file"),
        Err(e) => e,
    };
    assert!(err.contains("--broker-creds"), "{err}");
}

macro_rules! on_broker {
    ($broker:ident, $kind:ty) => {
        mod $broker {
            use super::*;

            #[test]
            fn a_publish_limit_loses_nothing() {
                super::a_publish_limit_loses_nothing::<$kind>();
            }
            #[test]
            fn the_order_flow_runs_with_its_chain() {
                super::the_order_flow_runs_with_its_chain::<$kind>();
            }
            #[test]
            fn one_host_shows_the_flow_of_every_host() {
                super::one_host_shows_the_flow_of_every_host::<$kind>();
            }
            #[test]
            fn two_hosts_share_each_plugin_and_count_every_order_once() {
                super::two_hosts_share_each_plugin_and_count_every_order_once::<$kind>();
            }
            #[test]
            fn a_host_killed_mid_stream_is_taken_over_and_nothing_acknowledged_is_lost() {
                super::a_host_killed_mid_stream_is_taken_over_and_nothing_acknowledged_is_lost::<
                    $kind,
                >();
            }
            #[test]
            fn a_killed_broker_is_reported_503_and_the_host_reconnects_by_itself() {
                super::a_killed_broker_is_reported_503_and_the_host_reconnects_by_itself::<$kind>();
            }
            #[test]
            fn a_stalled_host_past_its_lease_cannot_commit_what_another_took_over() {
                super::a_stalled_host_past_its_lease_cannot_commit_what_another_took_over::<$kind>(
                );
            }
            #[test]
            fn dead_letters_are_redriven_to_a_fixed_build_with_their_id() {
                super::dead_letters_are_redriven_to_a_fixed_build_with_their_id::<$kind>();
            }
            #[test]
            fn replay_with_reset_state_rebuilds_analytics() {
                super::replay_with_reset_state_rebuilds_analytics::<$kind>();
            }
            #[test]
            fn a_plugin_swapped_100_times_under_load_handles_every_event_once() {
                super::a_plugin_swapped_100_times_under_load_handles_every_event_once::<$kind>();
            }
            #[test]
            fn a_broker_over_tls_with_a_password_is_used_and_a_wrong_password_is_named() {
                super::a_broker_over_tls_with_a_password_is_used_and_a_wrong_password_is_named::<
                    $kind,
                >();
            }
        }
    };
}

on_broker!(on_redis, Redis);
on_broker!(on_nats, Nats);

/// Every host on one broker runs one release: a host of this release on a
/// broker another release took over delivers what it has and exits with
/// status 75 (to be restarted on the new binary), a new host of this
/// release is refused naming both, and `--take-over-broker` takes it back:
/// the documented rolling upgrade, on Redis (the conformance suite checks
/// the same record on NATS).
#[test]
fn a_broker_taken_over_by_another_release_stops_this_ones_hosts_and_refuses_new_ones() {
    let broker = <Redis as Broker>::start();
    let args = ["--broker", broker.url(), "--host-name", "old"];
    let plugins = [
        PluginFile::Wasm("recorder", artifacts::RECORDER),
        PluginFile::Manifest("recorder", LOUD),
    ];
    let h = host(&plugins, &args);
    h.publish("order.placed", &json!({"n": 1}))
        .expect("publish");
    h.wait_log("handled", WAIT).expect("handled");
    // Another release takes the broker over (as `--take-over-broker` of a
    // newer binary would).
    let client = redis::Client::open(broker.url()).expect("url");
    let mut con = client.get_connection().expect("connects");
    let _: () = redis::cmd("SET")
        .arg("plugbus:release")
        .arg("99.0.0")
        .query(&mut con)
        .expect("set");
    let (status, log) = h.wait_exit(WAIT).expect("stops by itself");
    assert_eq!(status.code(), Some(75), "asks to be restarted");
    let said = log.join("\n");
    assert!(
        said.contains("plugbus 99.0.0 took the broker over"),
        "{said}"
    );
    // A new host of this release is refused, naming both.
    let out = start_output(&args);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("used by plugbus 99.0.0") && err.contains("--take-over-broker"),
        "{err}"
    );
    // Taken back: it starts, and the record is this release's again.
    let h = host(&plugins, &[&args[..], &["--take-over-broker"]].concat());
    h.wait_log("took the broker over from plugbus 99.0.0", WAIT)
        .expect("says so");
    let release: String = redis::cmd("GET")
        .arg("plugbus:release")
        .query(&mut con)
        .expect("get");
    assert_ne!(release, "99.0.0");
}

/// The documented backup of a Redis broker, tested: `BGSAVE` on the
/// running server (plugbus keeps serving), copy its `dump.rdb`, and
/// restore by starting a redis-server on a directory holding the copy;
/// a host on it finds every event acknowledged before the save and its
/// plugin's cursor, and the audit is clean.
#[test]
fn a_redis_snapshot_taken_while_serving_restores_the_log_and_the_cursors() {
    let broker = <Redis as Broker>::start();
    let h = fifty_handled(broker.url());
    // The backup: BGSAVE, waited for by the count of saves, then the file
    // copied.
    let client = redis::Client::open(broker.url()).expect("url");
    let mut con = client.get_connection().expect("connects");
    let saves = |con: &mut redis::Connection| -> (u64, String) {
        let info: String = redis::cmd("INFO")
            .arg("persistence")
            .query(con)
            .expect("info");
        let n = info
            .lines()
            .find_map(|l| l.strip_prefix("rdb_saves:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        (n, info)
    };
    let (before, _) = saves(&mut con);
    let _: redis::Value = redis::cmd("BGSAVE").query(&mut con).expect("bgsave");
    let deadline = Instant::now() + WAIT;
    loop {
        let (now, info) = saves(&mut con);
        if now > before && info.contains("rdb_bgsave_in_progress:0") {
            break;
        }
        assert!(Instant::now() < deadline, "BGSAVE did not finish: {info}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let copy = TestDir::new("redis-backup");
    std::fs::copy(broker.dir.0.join("dump.rdb"), copy.0.join("dump.rdb")).expect("copy");
    // Later events are not in the backup.
    h.publish("order.placed", &json!({ "n": "after" }))
        .expect("publish");
    drop(h);
    drop(broker);

    let restored = Redis::start_from_snapshot(&copy.0.join("dump.rdb")).expect("restored");
    restored_at_rest(&restored.url);
}

/// The documented backup of a JetStream broker, tested: stop nats-server
/// (it synced every write it acknowledged), copy its store directory, and
/// restore by starting a nats-server on the copy; a host on it finds every
/// event and its plugin's cursor, and the audit is clean.
#[test]
fn a_jetstream_store_copied_while_stopped_restores_the_log_and_the_cursors() {
    let mut broker = <Nats as Broker>::start();
    let h = fifty_handled(broker.url());
    assert!(h.stop().expect("stops").success());
    broker.kill9();
    let copy = TestDir::new("nats-backup");
    let status = std::process::Command::new("cp")
        .arg("-a")
        .arg(broker.store_dir())
        .arg(copy.0.join("js"))
        .status()
        .expect("cp");
    assert!(status.success());
    drop(broker);

    let restored = Nats::start_from_store(&copy.0.join("js")).expect("restored");
    restored_at_rest(&restored.url);
}

fn recorder() -> [PluginFile<'static>; 2] {
    [
        PluginFile::Wasm("recorder", artifacts::RECORDER),
        PluginFile::Manifest("recorder", LOUD),
    ]
}

/// A host on the broker at `url` whose recorder handled 50 events.
fn fifty_handled(url: &str) -> TestHost {
    let h = host(&recorder(), &["--broker", url, "--host-name", "a"]);
    for i in 0..50 {
        h.publish("order.placed", &json!({ "n": i }))
            .expect("publish");
    }
    h.wait_until("the recorder to finish", WAIT, |h| {
        h.plugin("recorder").and_then(|p| p["lag"].as_u64()) == Some(0)
            && h.count("recorder", "handled") == 50
    })
    .expect("handled");
    h
}

/// A host on the restored broker at `url` finds the 50 events (none
/// later), its recorder goes on from its cursor handling nothing again,
/// and the audit is clean.
fn restored_at_rest(url: &str) {
    let h = host(&recorder(), &["--broker", url, "--host-name", "b"]);
    let log = crate::accounting::whole_log(&h);
    assert_eq!(log.len(), 50, "every event saved, none after");
    h.wait_until("the recorder at rest", WAIT, |h| {
        h.plugin("recorder").and_then(|p| p["lag"].as_u64()) == Some(0)
    })
    .expect("at rest");
    assert_eq!(
        h.count("recorder", "handled"),
        0,
        "its cursor came back: nothing again"
    );
    h.audit_clean();
}
