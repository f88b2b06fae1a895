use super::*;
use crate::{Context, Event, PublishError, State};

/// Counts orders in state, publishes `order.counted`, rejects empty data,
/// retries data `"later"`, and logs what it saw.
struct Counter {
    state: State,
    calls: u32,
}

impl Plugin for Counter {
    fn init(config: &Config) -> Result<Self, String> {
        if config.get("fail") == Some("yes") {
            return Err("config `fail` is yes".to_string());
        }
        let state = State::open().map_err(|e| e.to_string())?;
        state.set("started", b"1").map_err(|e| e.to_string())?;
        Ok(Counter { state, calls: 0 })
    }

    fn info(&self) -> Info {
        Info::new("counter", "0.1.0", ["order.*"])
    }

    fn handle(&mut self, event: &Event<'_>, ctx: &mut Context) -> Outcome {
        self.calls += 1;
        crate::info!("saw {}", event.id());
        let n = self.state.increment("orders", 1).expect("counter");
        ctx.publish("order.counted", &serde_json::json!({ "n": n }))
            .expect("publish");
        match event.data() {
            b"" => Outcome::reject("no data"),
            b"\"later\"" => Outcome::retry("later"),
            _ => Outcome::Ack,
        }
    }
}

#[test]
fn an_event_reads_back_every_attribute_it_was_built_with() {
    let e = TestEvent::json("order.placed", &serde_json::json!({"a": 1}))
        .id("e-1")
        .subject("customer-7")
        .source("/shop")
        .correlation_id("root")
        .causation_id("parent")
        .extension("tenant", "acme")
        .extension("region", "eu")
        .attempt(3)
        .sequence(1 << 40);
    let other = TestEvent::new("x", b"raw".to_vec());
    let batch = pack(&[other, e.clone()]);
    let header =
        plugbus_contract::batch::Header::at(&batch.bytes, &batch.headers, &batch.extensions, 1)
            .expect("two events");
    let view = Event { header };
    assert_eq!(view.id(), "e-1");
    assert_eq!(view.source(), "/shop");
    assert_eq!(view.topic(), "order.placed");
    assert_eq!(view.subject(), Some("customer-7"));
    assert_eq!(view.time(), e.time);
    assert_eq!(view.datacontenttype(), Some("application/json"));
    assert_eq!(view.data(), br#"{"a":1}"#);
    assert_eq!(view.correlation_id(), Some("root"));
    assert_eq!(view.causation_id(), Some("parent"));
    assert_eq!(view.sequence(), 1 << 40);
    assert_eq!(view.attempt(), 3);
    assert_eq!(
        view.extensions().collect::<Vec<_>>(),
        [("tenant", "acme"), ("region", "eu")]
    );
    assert_eq!(view.extension("region"), Some("eu"));
}

#[test]
fn only_acked_events_keep_their_writes_and_follow_ups() {
    let mut h = Harness::<Counter>::new().expect("init");
    assert_eq!(h.info().name, "counter");
    assert_eq!(
        h.state().get("started"),
        Some(b"1".to_vec()),
        "init's writes kept"
    );
    let ok = h.deliver(TestEvent::json("order.placed", "x").correlation_id("root"));
    assert_eq!(ok.outcome, Outcome::Ack);
    assert_eq!(ok.published.len(), 1);
    assert_eq!(ok.published[0].causation_id, ok.event_id);
    assert_eq!(ok.published[0].correlation_id, "root");
    assert_eq!(
        ok.published[0].json::<serde_json::Value>().expect("json")["n"],
        1
    );
    let rejected = h.deliver(TestEvent::new("order.placed", Vec::new()));
    assert!(matches!(rejected.outcome, Outcome::Reject(ref m) if m == "no data"));
    assert!(rejected.published.is_empty());
    let retried = h.deliver(TestEvent::json("order.placed", "later"));
    assert!(matches!(retried.outcome, Outcome::Retry(_)));
    assert_eq!(h.state().counter("orders"), 1);
    assert_eq!(h.published().len(), 1);
    // Logs are kept whatever the outcome.
    assert_eq!(h.logs().len(), 3);
    assert!(h.logs()[1].message.starts_with("saw test-"));
}

#[test]
fn a_batch_with_a_failure_and_writes_is_handled_again_one_by_one() {
    let mut h = Harness::<Counter>::new().expect("init");
    let out = h.deliver_batch([
        TestEvent::json("order.placed", "a"),
        TestEvent::new("order.placed", Vec::new()),
        TestEvent::json("order.placed", "b"),
    ]);
    let outcomes: Vec<bool> = out.iter().map(|d| d.outcome == Outcome::Ack).collect();
    assert_eq!(outcomes, [true, false, true]);
    assert_eq!(h.state().counter("orders"), 2, "the rejected write is gone");
    // The batch ran once whole, then each event alone, as on the host.
    assert_eq!(h.plugin().calls, 6);
    let counted: Vec<i64> = h
        .published()
        .iter()
        .map(|p| {
            p.json::<serde_json::Value>().expect("json")["n"]
                .as_i64()
                .unwrap_or(0)
        })
        .collect();
    assert_eq!(counted, [1, 2]);
    // Sequences are numbered as a log would.
    let all_acked = h.deliver_batch([
        TestEvent::json("order.placed", "c"),
        TestEvent::json("order.placed", "d"),
    ]);
    assert!(all_acked.iter().all(|d| d.outcome == Outcome::Ack));
    assert_eq!(h.state().counter("orders"), 4);
}

#[test]
fn publishes_are_checked_as_the_host_checks_them() {
    struct Publisher;
    impl Plugin for Publisher {
        fn init(_: &Config) -> Result<Self, String> {
            Ok(Publisher)
        }
        fn info(&self) -> Info {
            Info::new("p", "0", ["t"])
        }
        fn handle(&mut self, _: &Event<'_>, ctx: &mut Context) -> Outcome {
            let wild = ctx.publish("order.*", &1);
            assert!(matches!(wild, Err(PublishError::Invalid(ref m)) if m.contains("wildcard")));
            let stray = Context { cause: 7 }.publish("order.x", &1);
            assert!(matches!(stray, Err(PublishError::UnknownCause(_))));
            Outcome::Ack
        }
    }
    let mut h = Harness::<Publisher>::new().expect("init");
    assert_eq!(
        h.deliver(TestEvent::new("t", b"1".to_vec())).outcome,
        Outcome::Ack
    );
    assert!(h.published().is_empty());
}

#[test]
fn config_reaches_init_and_harnesses_do_not_share_state() {
    let refused = Harness::<Counter>::with_config([("fail", "yes")]).err();
    assert_eq!(refused.as_deref(), Some("config `fail` is yes"));
    let mut a = Harness::<Counter>::with_config([("fail", "no")]).expect("a");
    let mut b = Harness::<Counter>::new().expect("b");
    a.seed_json("orders", &41);
    a.deliver(TestEvent::json("order.placed", "x"));
    b.deliver(TestEvent::json("order.placed", "x"));
    assert_eq!(a.state().counter("orders"), 42);
    assert_eq!(b.state().counter("orders"), 1);
}

#[test]
fn a_fixture_in_cloudevents_json_becomes_an_event() {
    let e = TestEvent::from_cloudevent(&serde_json::json!({
        "specversion": "1.0", "type": "order.placed", "id": "o-1", "source": "/shop",
        "subject": "c-1", "tenant": "acme", "data": {"order_id": "o-1"}
    }))
    .expect("event");
    assert_eq!((e.topic.as_str(), e.id.as_str()), ("order.placed", "o-1"));
    assert_eq!(e.data, br#"{"order_id":"o-1"}"#);
    assert_eq!(e.extensions, [("tenant".to_string(), "acme".to_string())]);
    let raw = TestEvent::from_cloudevent(&serde_json::json!({"type": "t", "data_base64": "aGk="}))
        .expect("event");
    assert_eq!(raw.data, b"hi");
    let missing = TestEvent::from_cloudevent(&serde_json::json!({"data": 1})).expect_err("no type");
    assert!(missing.contains("`type`"), "{missing}");
}

/// Sets a timeout for each order, calls it off when the payment comes,
/// rejects orders whose data is `"bad"` (after setting the timer).
struct Timeouts;

impl Plugin for Timeouts {
    fn init(_: &Config) -> Result<Self, String> {
        Ok(Timeouts)
    }

    fn info(&self) -> Info {
        Info::new("timeouts", "0.1.0", ["order.placed", "payment.authorized"])
    }

    fn handle(&mut self, event: &Event<'_>, ctx: &mut Context) -> Outcome {
        let key = format!("timeout.{}", event.subject().unwrap_or("none"));
        let done = match event.topic() {
            "order.placed" => ctx.schedule(
                &key,
                crate::When::AfterMs(2_000),
                "order.timed-out",
                &serde_json::json!({ "order": event.subject() }),
            ),
            _ => ctx.cancel(&key),
        };
        match (done, event.data()) {
            (Err(e), _) => Outcome::reject(e.to_string()),
            (Ok(()), b"\"bad\"") => Outcome::reject("bad order"),
            (Ok(()), _) => Outcome::Ack,
        }
    }
}

#[test]
fn a_timer_fires_once_when_due_keeps_its_chain_and_a_cancel_wins() {
    let mut h = Harness::<Timeouts>::new().expect("init");
    let placed = TestEvent::json("order.placed", &1).subject("o-1").id("p-1");
    h.deliver(placed);
    assert_eq!(
        h.timers(),
        vec![("timeout.o-1".to_string(), h.now_ms() + 2_000)]
    );
    assert!(
        h.advance(std::time::Duration::from_millis(1_999))
            .is_empty(),
        "early"
    );
    let fired = h.advance(std::time::Duration::from_millis(1));
    assert_eq!(fired.len(), 1);
    assert_eq!(fired[0].topic, "order.timed-out");
    assert_eq!(fired[0].causation_id.as_deref(), Some("p-1"));
    assert_eq!(fired[0].correlation_id.as_deref(), Some("p-1"));
    assert!(fired[0]
        .extensions
        .iter()
        .any(|(k, v)| k == "latems" && v == "0"));
    assert!(
        h.advance(std::time::Duration::from_secs(60)).is_empty(),
        "once"
    );

    // Called off before it is due: it never fires.
    h.deliver(TestEvent::json("order.placed", &1).subject("o-2"));
    h.deliver(TestEvent::json("payment.authorized", &1).subject("o-2"));
    assert!(h.timers().is_empty());
    assert!(h.advance(std::time::Duration::from_secs(60)).is_empty());

    // A rejected event keeps no timer; setting a key again replaces it.
    h.deliver(TestEvent::json("order.placed", &"bad").subject("o-3"));
    assert!(h.timers().is_empty());
    h.deliver(TestEvent::json("order.placed", &1).subject("o-4"));
    h.advance(std::time::Duration::from_millis(1_000));
    h.deliver(TestEvent::json("order.placed", &1).subject("o-4"));
    assert_eq!(h.timers()[0].1, h.now_ms() + 2_000, "replaced");
    assert_eq!(h.advance(std::time::Duration::from_millis(2_000)).len(), 1);
}

#[test]
fn a_timer_is_refused_in_the_hosts_words() {
    struct Far;
    impl Plugin for Far {
        fn init(_: &Config) -> Result<Self, String> {
            Ok(Far)
        }
        fn info(&self) -> Info {
            Info::new("far", "0.1.0", ["x"])
        }
        fn handle(&mut self, event: &Event<'_>, ctx: &mut Context) -> Outcome {
            let due = crate::When::AfterMs(plugbus_contract::timer::DELAY_MS_MAX_DEFAULT + 1);
            let key = String::from_utf8_lossy(event.data()).into_owned();
            match ctx.schedule(&key, due, "x.later", &1) {
                Err(e) => Outcome::reject(e.to_string()),
                Ok(()) => Outcome::Ack,
            }
        }
    }
    let mut h = Harness::<Far>::new().expect("init");
    let d = h.deliver(TestEvent::new("x", b"k".to_vec()));
    let Outcome::Reject(why) = d.outcome else {
        panic!("accepted: {:?}", d.outcome)
    };
    assert!(
        why.contains("further ahead than the plugin may set one"),
        "{why}"
    );
    let d = h.deliver(TestEvent::new("x", Vec::new()));
    let Outcome::Reject(why) = d.outcome else {
        panic!("accepted: {:?}", d.outcome)
    };
    assert!(why.contains("the timer key is empty"), "{why}");
}
