//! Upgrades: a data directory written by the previous release (format 1,
//! `tests/fixtures/data-format-1.tar.gz`: 300 orders through the three
//! reference plugins, then a clean stop, by the build of acdbc76) opens
//! with this one, is upgraded in place, and the plugins go on from their
//! cursors without handling anything twice; a directory of a newer format
//! is refused naming both.

use super::*;

/// Unpack the fixture into `dir`; the data directory's path.
fn unpack(dir: &std::path::Path) -> std::path::PathBuf {
    let fixture = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/fixtures/data-format-1.tar.gz"
    );
    let status = std::process::Command::new("tar")
        .args(["-xzf", fixture, "-C"])
        .arg(dir)
        .status()
        .expect("run tar");
    assert!(status.success(), "unpacking {fixture}");
    dir.join("data")
}

#[test]
fn the_previous_releases_data_directory_opens_and_the_plugins_go_on_from_their_cursors() {
    let top = TestDir::new("upgrade");
    let data = unpack(&top.0);
    assert!(!data.join("format").exists(), "format 1 has no format file");
    let data_arg = data.display().to_string();
    let h = host(&order_flow(), &["--data", &data_arg]);
    h.wait_log("data directory upgraded from format 1 to 2", WAIT)
        .expect("the upgrade is said");
    let format = std::fs::read_to_string(data.join("format")).expect("format written");
    assert_eq!(format.trim(), "plugbus data format 2");
    // Everything the old release kept is there, and nothing is handled
    // again: the plugins were at the end.
    let log = crate::accounting::whole_log(&h);
    let orders: HashSet<&str> = log
        .iter()
        .filter(|e| e["type"] == "order.placed")
        .filter_map(|e| e["id"].as_str())
        .collect();
    assert_eq!(orders.len(), 300);
    crate::accounting::one_follow_up_each_and_no_dead_letters(&h, &log, &orders);
    let counted =
        |h: &TestHost| h.get("/v1/plugins/analytics/kv/orders").expect("count")["value"].as_u64();
    assert_eq!(counted(&h), Some(300));
    h.audit_clean();
    for p in ["email", "inventory", "analytics"] {
        assert_eq!(h.count(p, "handled"), 0, "{p} handled nothing again");
    }
    // And the flow goes on.
    h.publish("order.placed", &order("o-new", "sku-1", 1, 100))
        .expect("publish");
    h.wait_until("analytics to count the new order", WAIT, |h| {
        counted(h) == Some(301)
    })
    .expect("counted");
    assert!(h.stop().expect("stops").success());

    // A newer release's directory is refused, naming both formats.
    std::fs::write(data.join("format"), "plugbus data format 3\n").expect("write");
    let out = start_output(&["--data", &data_arg]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("data format 3")
            && err.contains("formats 1 to 2")
            && err.contains("downgrade"),
        "{err}"
    );
}
