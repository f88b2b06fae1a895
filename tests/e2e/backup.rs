//! Backup and restore: `plugbus backup` taken while the reference order
//! flow runs at full speed restores, by starting a host on it, to a store
//! with every order acknowledged before the backup began, each plugin's
//! state matching its cursor (the flow finishes on it with exactly one
//! follow-up per order and analytics counting each order once), and
//! `plugbus verify` finds it whole.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use super::*;

#[test]
fn a_backup_taken_during_an_order_storm_restores_with_state_matching_cursors() {
    const BATCHES: usize = 200;
    let h = host(&order_flow(), &[]);
    let acked: Arc<Mutex<Vec<String>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let posted = Arc::new(AtomicUsize::new(0));
    let storm = {
        let (url, acked, stop, posted) =
            (h.url.clone(), acked.clone(), stop.clone(), posted.clone());
        std::thread::spawn(move || {
            for b in 0..BATCHES {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let ids: Vec<String> = (0..100).map(|i| format!("o-{b}-{i}")).collect();
                let batch: Vec<Value> = ids
                    .iter()
                    .map(|id| {
                        json!({"specversion": "1.0", "id": id, "source": "/shop",
                               "type": "order.placed", "subject": id,
                               "data": order(id, &format!("sku-{}", b % 7), 1, 100)})
                    })
                    .collect();
                let sent = ureq::post(&format!("{url}/v1/events"))
                    .set("content-type", "application/cloudevents-batch+json")
                    .send_string(&Value::Array(batch).to_string());
                if sent.is_ok_and(|r| r.status() == 202) {
                    acked.lock().expect("lock").extend(ids);
                }
                posted.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    // In the middle of the storm: what was acknowledged so far, then the
    // backup, while orders keep coming.
    h.wait_until("a quarter of the storm", WAIT, |_| {
        posted.load(Ordering::Relaxed) >= BATCHES / 4
    })
    .expect("the storm runs");
    let before: HashSet<String> = acked.lock().expect("lock").iter().cloned().collect();
    let dir = TestDir::new("backup");
    let target = dir.0.join("copy");
    let out = std::process::Command::new(BIN)
        .args(["backup", "--url", &h.url])
        .arg(&target)
        .output()
        .expect("run plugbus backup");
    let said =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{said}");
    assert!(said.contains("restore: plugbus run --data"), "{said}");
    let during = posted.load(Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    storm.join().expect("storm");
    assert!(during < BATCHES, "the backup was taken while orders came");

    let verified = std::process::Command::new(BIN)
        .args(["verify", "--data"])
        .arg(&target)
        .output()
        .expect("run plugbus verify");
    assert!(
        verified.status.success(),
        "{}{}",
        String::from_utf8_lossy(&verified.stdout),
        String::from_utf8_lossy(&verified.stderr)
    );

    // Restore: a host started on the copy, with the same plugins.
    let target_arg = target.display().to_string();
    let restored = host(&order_flow(), &["--data", &target_arg]);
    restored.audit_at_rest(3, Duration::from_secs(120));
    let log = crate::accounting::whole_log(&restored);
    let orders: HashSet<&str> = log
        .iter()
        .filter(|e| e["type"] == "order.placed")
        .filter_map(|e| e["id"].as_str())
        .collect();
    let missing: Vec<&String> = before
        .iter()
        .filter(|id| !orders.contains(id.as_str()))
        .take(5)
        .collect();
    assert!(
        missing.is_empty(),
        "acknowledged before the backup, not in it: {missing:?}"
    );
    // State matched cursors: nothing handled twice or skipped.
    crate::accounting::one_follow_up_each_and_no_dead_letters(&restored, &log, &orders);
    let counted = restored
        .get("/v1/plugins/analytics/kv/orders")
        .expect("analytics' count");
    let counted = match &counted["value"] {
        Value::String(s) => s.parse().ok(),
        v => v.as_u64(),
    };
    assert_eq!(
        counted,
        Some(orders.len() as u64),
        "analytics counted each order once"
    );
}
