//! Several workers per plugin, ordered by subject.

use super::*;

#[test]
fn four_workers_keep_each_subject_in_order_and_handle_every_event_once() {
    let h = host(
        &[
            PluginFile::Wasm("tally", artifacts::TALLY),
            PluginFile::Manifest("tally", "concurrency = 4\nordering_key = \"subject\"\n"),
        ],
        &[],
    );
    const SUBJECTS: usize = 8;
    const N: usize = 400;
    let mut sent: Vec<Vec<String>> = vec![Vec::new(); SUBJECTS];
    for chunk in (0..N).collect::<Vec<_>>().chunks(50) {
        let batch: Vec<Value> = chunk
            .iter()
            .map(|&i| {
                sent[i % SUBJECTS].push(format!("c{i}"));
                json!({"specversion": "1.0", "id": format!("c{i}"), "source": "/t",
                       "type": "tally.one", "subject": format!("s{}", i % SUBJECTS), "data": {}})
            })
            .collect();
        h.publish_batch(batch);
    }
    h.wait_until("all handled", WAIT, |h| {
        h.count("tally", "handled") == N as u64
    })
    .expect("handled");
    let p = h.plugin("tally").expect("running");
    assert_eq!(p["limits"]["concurrency"], json!(4));
    for (s, ids) in sent.iter().enumerate() {
        let order = h
            .get(&format!("/v1/plugins/tally/kv/order.s{s}"))
            .expect("order kept");
        let order: Vec<String> =
            serde_json::from_value(order.get("value").cloned().unwrap_or(order.clone()))
                .unwrap_or_else(|e| panic!("order.s{s}: {e}: {order}"));
        assert_eq!(&order, ids, "subject s{s}: every event once, in order");
    }
    // The four workers all count into one key: a batch whose count was
    // read before another worker committed is handled again, not lost.
    let seen = h.get("/v1/plugins/tally/kv/seen").expect("seen kept");
    assert_eq!(seen["value"], json!(N), "every event counted once: {seen}");
    // Every worker's cursor moves past the end, its events or not.
    h.wait_until("the workers' cursors to reach the end", WAIT, |h| {
        h.plugin("tally").is_some_and(|p| p["lag"] == json!(0))
    })
    .expect("cursors at the end");
}
