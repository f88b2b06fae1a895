//! Dead letters, re-drive and replay, through the CLI and the HTTP API.

use super::*;

fn cli(args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(BIN)
        .args(args)
        .output()
        .expect("run the cli");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn given_up_events_become_dead_letters_that_a_fixed_plugin_gets_when_redriven() {
    let data = TestDir::new("dead");
    let data_arg = data.arg();
    let args = [
        &["--data", data_arg.as_str(), "--batch-events-max", "1"][..],
        &GIVE_UP_FAST,
    ]
    .concat();
    let h = host(
        &[
            PluginFile::Wasm("trap", artifacts::TRAP),
            PluginFile::Wasm("inventory", artifacts::INVENTORY),
        ],
        &args,
    );
    let no_items = h
        .publish(
            "order.placed",
            &json!({"order_id": "o-1", "customer": "c", "total_cents": 1}),
        )
        .expect("publish");
    let boom = h
        .publish(
            "order.placed",
            &json!({"order_id": "o-2", "customer": "c", "note": "boom",
                                         "items": [{"sku": "w", "qty": 1}]}),
        )
        .expect("publish");
    h.wait_until("two dead letters", WAIT, |h| {
        dead_count(h, "/v1/dead") == Some(2)
    })
    .expect("dead-lettered");
    let list = h.get("/v1/dead").expect("list");
    let letter = |plugin: &str| {
        list["dead_letters"]
            .as_array()
            .and_then(|l| l.iter().find(|d| d["plugin"] == plugin).cloned())
            .unwrap_or_else(|| panic!("{plugin} in {list}"))
    };
    let inv = letter("inventory");
    assert_eq!(
        (inv["attempts"].as_u64(), inv["id"].clone()),
        (Some(1), no_items["id"].clone()),
        "a reject is not retried"
    );
    assert!(
        inv["error"].as_str().unwrap_or("").contains("has no items"),
        "{inv}"
    );
    let trap = letter("trap");
    assert_eq!(
        (trap["attempts"].as_u64(), trap["id"].clone()),
        (Some(2), boom["id"].clone())
    );
    assert!(
        trap["error"].as_str().unwrap_or("").contains("trapped"),
        "{trap}"
    );
    assert_eq!(
        h.metric(r#"plugbus_events_dead_lettered_total{plugin="trap"}"#),
        Some(1.0)
    );

    let (ok, out, _) = cli(&["dead", "list", "--url", &h.url]);
    assert!(
        ok && out.contains("inventory") && out.contains("trap"),
        "{out}"
    );
    let seq = trap["sequence"].as_u64().expect("sequence").to_string();
    let (ok, out, _) = cli(&["dead", "show", "trap", &seq, "--url", &h.url]);
    assert!(
        ok && out.contains("boom"),
        "the letter carries its event: {out}"
    );
    assert!(h.stop().expect("stops").success());

    // The fix is deployed under the same name; re-drive to it.
    let h = host(
        &[
            PluginFile::Wasm("trap", artifacts::NOOP),
            PluginFile::Wasm("inventory", artifacts::INVENTORY),
        ],
        &args,
    );
    redrive_trap_to_the_fix(&h);
    let (ok, out, _) = cli(&["dead", "purge", "inventory", "--all", "--url", &h.url]);
    assert!(ok && out.contains("purged: 1"), "{out}");
    let (ok, _, err) = cli(&["dead", "redrive", "trap", "--url", &h.url]);
    assert!(
        !ok && err.contains("--all"),
        "a selection is required: {err}"
    );
    assert!(h.stop().expect("stops").success());

    // Handled once is done: a restart does not bring it again.
    let h = host(&[PluginFile::Wasm("trap", artifacts::NOOP)], &args);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(h.count("trap", "handled"), 0);
    assert_eq!(h.get("/v1/dead").expect("list")["dead_letters"], json!([]));
}

/// Re-drive `trap`'s one dead letter with the CLI to the fixed build `h`
/// runs under that name: it handles it, and no letter is left.
pub(crate) fn redrive_trap_to_the_fix(h: &TestHost) {
    let (ok, out, err) = cli(&["dead", "redrive", "trap", "--all", "--url", &h.url]);
    assert!(ok && out.contains("re-driven: 1"), "{out}{err}");
    h.wait_until("the fixed plugin to handle it", WAIT, |h| {
        h.count("trap", "handled") == 1
    })
    .expect("re-driven");
    assert_eq!(
        h.get("/v1/dead/trap").expect("list")["dead_letters"],
        json!([])
    );
}

#[test]
fn dead_letters_need_durable_mode() {
    let h = host(
        &[PluginFile::Wasm("analytics", artifacts::ANALYTICS)],
        &["--memory"],
    );
    let status = match ureq::get(&format!("{}/v1/dead", h.url)).call() {
        Err(ureq::Error::Status(code, r)) => {
            let body = r.into_string().unwrap_or_default();
            assert!(body.contains("durable mode"), "{body}");
            code
        }
        other => panic!("expected a refusal, got {other:?}"),
    };
    assert_eq!(status, 409);
}

#[test]
fn replay_rebuilds_a_projection_from_the_log_by_sequence_or_time() {
    let h = host(
        &[
            PluginFile::Wasm("analytics", artifacts::ANALYTICS),
            PluginFile::Wasm("inventory", artifacts::INVENTORY),
        ],
        &[],
    );
    let mut acks = Vec::new();
    for (i, cents) in [100u64, 250, 400, 800, 1600].iter().enumerate() {
        if i == 2 {
            std::thread::sleep(Duration::from_millis(20));
        }
        acks.push(
            h.publish("order.placed", &order(&format!("o-{i}"), "w", 1, *cents))
                .expect("publish"),
        );
    }
    let all = "[analytics] totals: orders=5 revenue_cents=3150";
    h.wait_log(all, WAIT).expect("projection built");

    let (ok, out, _) = cli(&["log", "tail", "-n", "3", "--url", &h.url]);
    assert!(ok && out.lines().count() == 3, "{out}");
    assert!(out.lines().all(|l| l.contains("\"sequence\"")), "{out}");
    let first = acks[0]["sequence"].as_u64().expect("sequence").to_string();
    let (ok, out, _) = cli(&["log", "get", &first, "--url", &h.url]);
    assert!(ok && out.contains("o-0"), "{out}");

    // The projection is the plugin's state, readable from outside.
    let kv = |key: &str| {
        h.get(&format!("/v1/plugins/analytics/kv/{key}"))
            .map(|v| v["value"].clone())
    };
    assert_eq!(kv("orders").expect("orders"), json!(5));
    assert_eq!(kv("revenue_cents").expect("revenue"), json!(3150));
    assert_eq!(
        h.get("/v1/plugins/inventory/kv/stock.w").expect("stock")["value"],
        json!(95),
        "inventory keeps its stock in its state"
    );

    // Event sourcing: cleared, then rebuilt from the log, identical.
    let (ok, out, err) = cli(&[
        "replay",
        "analytics",
        "--from-seq",
        "1",
        "--reset-state",
        "--url",
        &h.url,
    ]);
    assert!(
        ok && out.contains("replays from sequence 1 with its state cleared"),
        "{out}{err}"
    );
    h.wait_until("the rebuilt totals", WAIT, |h| {
        h.log().iter().filter(|l| l.ends_with(all)).count() == 2
    })
    .expect("rebuilt, identical");
    h.wait_until("the rebuilt state", WAIT, |_| {
        kv("orders").ok() == Some(json!(5))
    })
    .expect("state rebuilt");
    assert_eq!(kv("revenue_cents").expect("revenue"), json!(3150));

    // Time travel: from the third order on.
    let third = acks[2]["sequence"].as_u64().expect("sequence");
    let time = h.get(&format!("/v1/log/{third}")).expect("event")["time"]
        .as_str()
        .expect("time")
        .to_string();
    let (ok, out, err) = cli(&[
        "replay",
        "analytics",
        "--from-time",
        &time,
        "--reset-state",
        "--url",
        &h.url,
    ]);
    assert!(ok, "{out}{err}");
    h.wait_log("[analytics] totals: orders=3 revenue_cents=2800", WAIT)
        .expect("the projection of the later orders");

    // Without --reset-state the replayed events add to what is kept.
    let (ok, out, err) = cli(&[
        "replay",
        "analytics",
        "--from-seq",
        &third.to_string(),
        "--url",
        &h.url,
    ]);
    assert!(ok && !out.contains("cleared"), "{out}{err}");
    h.wait_log("[analytics] totals: orders=6 revenue_cents=5600", WAIT)
        .expect("added to the kept state");

    // The CLI reads state too; values show as JSON.
    let (ok, out, err) = cli(&["kv", "list", "analytics", "--url", &h.url]);
    assert!(ok, "{err}");
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        ["orders\t6", "revenue_cents\t5600"]
    );
    let (ok, out, _) = cli(&["kv", "get", "analytics", "orders", "--url", &h.url]);
    assert!(ok && out.trim() == "6", "{out}");
    let (ok, _, err) = cli(&["kv", "get", "analytics", "nothing", "--url", &h.url]);
    assert!(!ok && err.contains("no key `nothing`"), "{err}");
    let (ok, _, err) = cli(&["kv", "list", "nobody", "--url", &h.url]);
    assert!(!ok && err.contains("no plugin named `nobody`"), "{err}");

    let (ok, _, err) = cli(&["replay", "nobody", "--from-seq", "1", "--url", &h.url]);
    assert!(
        !ok && err.contains("no running plugin is called `nobody`"),
        "{err}"
    );
}
