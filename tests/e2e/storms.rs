//! Event storms and runaway state, contained by default: a plugin that
//! publishes 20 follow-ups for each event it handles and consumes its own
//! output, and one that keeps a new 1 MiB value per event, beside the
//! reference plugins.

use super::*;
use crate::isolation::{orders, reference_plugins_deliver};

#[test]
fn an_event_storm_and_a_state_bomb_stop_at_their_budgets_and_the_order_flow_goes_on() {
    let mut files = order_flow();
    files.push(PluginFile::Wasm("amplifier", artifacts::HOSTILE));
    files.push(PluginFile::Manifest(
        "amplifier",
        "[config]\nmode = \"amplify\"\nsubscribe = \"amp.x\"\n",
    ));
    files.push(PluginFile::Wasm("bomb", artifacts::HOSTILE));
    files.push(PluginFile::Manifest(
        "bomb",
        "[config]\nmode = \"statebomb\"\n[limits]\nstate_bytes_max = 8388608\n",
    ));
    let h = host(&files, &[]);
    let seed = h.publish("amp.x", &json!({"seed": 1})).expect("seed");
    let seed_id = seed["id"].as_str().expect("id").to_string();
    const N: usize = 20;
    orders(&h, N);
    reference_plugins_deliver(&h, N as u64);

    // The storm is stopped at the chain's budget (1000 follow-ups by
    // default), and shown with its correlation id.
    h.wait_until("the storm to be shown", WAIT, |h| {
        h.plugin("amplifier")
            .is_some_and(|p| p["storm"]["correlation_id"] == json!(seed_id))
    })
    .expect("storm shown");
    let all_done = |h: &TestHost| {
        ["amplifier", "bomb", "email", "inventory", "analytics"]
            .iter()
            .all(|p| h.plugin(p).and_then(|s| s["lag"].as_u64()) == Some(0))
    };
    h.wait_until("every plugin to finish", WAIT, all_done)
        .expect("finished");
    let status = h.plugin("amplifier").expect("listed");
    assert_eq!(status["storm"]["chain_events"], json!(1000), "{status}");
    assert!(status["storm"]["refused"].as_u64() >= Some(1), "{status}");
    assert_eq!(status["limits"]["chain_events_max"], json!(1000));
    // The log holds the seed, its 1000 follow-ups, the orders and
    // inventory's follow-up for each, and grows no more.
    let events = || h.metric("plugbus_log_events").unwrap_or(0.0);
    let total = events();
    assert_eq!(total, (1 + 1000 + 2 * N) as f64, "the log stopped growing");
    assert_eq!(
        h.count("amplifier", "handled"),
        1001,
        "each event of the chain handled once"
    );
    assert!(
        h.metric("plugbus_plugin_chain_refused_total{plugin=\"amplifier\"}")
            .unwrap_or(0.0)
            >= 1.0
    );
    h.wait_log("held to a tenth of a core plugin=amplifier", WAIT)
        .expect("a refused publish is an offence");
    h.wait_log("its budget (publish.chain_events_max", WAIT)
        .expect("the plugin was told why");

    // The state bomb keeps at most its quota, and is told why.
    let status = h.plugin("bomb").expect("listed");
    let kept = status["state_bytes"].as_u64().expect("state_bytes");
    assert!(kept <= 8 << 20, "{kept} bytes kept: {status}");
    assert!(kept >= 7 << 20, "it kept what fitted: {kept}");
    assert_eq!(status["limits"]["state_bytes_max"], json!(8 << 20));
    assert_eq!(h.count("bomb", "handled"), N as u64, "its events are acked");
    assert!(
        h.metric("plugbus_plugin_state_refused_total{plugin=\"bomb\"}")
            .unwrap_or(0.0)
            >= 1.0
    );
    h.wait_log("limits.state_bytes_max", WAIT)
        .expect("the refusal names the quota");
    assert_eq!(events(), total, "nothing more was published");
}
