//! The disk going wrong under a running host: a full file system, a failed
//! fsync, a damaged journal.

use super::*;

/// Mount a tmpfs of `size` at `dir` (root only: CI runs as root).
pub(crate) fn mount_tmpfs(dir: &std::path::Path, size: &str) {
    std::fs::create_dir_all(dir).expect("mount point");
    let status = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
        .arg(dir)
        .status()
        .expect("run mount");
    assert!(
        status.success(),
        "mounting a tmpfs failed: this test needs root (it fills a small file system)"
    );
}

/// Unmounts its directory when dropped.
pub(crate) struct Unmount(pub(crate) std::path::PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn a_full_small_disk_answers_507_naming_free_space_and_reserve_and_recovers_when_space_is_freed() {
    let top = TestDir::new("diskfull");
    let mnt = top.0.join("mnt");
    // A small device: 64 MiB, with the default reserve (an eighth: 8 MiB),
    // 16 MiB of it taken by another program's file.
    mount_tmpfs(&mnt, "64m");
    let _unmount = Unmount(mnt.clone());
    let filler = mnt.join("other-program.bin");
    std::fs::write(&filler, vec![7u8; 16 << 20]).expect("filler");
    let data = mnt.join("data");
    let data_arg = data.display().to_string();
    let h = host(
        &[
            PluginFile::Wasm("recorder", artifacts::RECORDER),
            PluginFile::Manifest("recorder", LOUD),
        ],
        &["--data", &data_arg],
    );
    // Incompressible padding (the store compresses).
    let noise = |seed: usize| -> String {
        let mut x = seed as u64 | 1;
        (0..8 * 1024)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                char::from(b"0123456789abcdef"[(x % 16) as usize])
            })
            .collect()
    };
    let send = |k: usize| {
        let ids: Vec<String> = (0..10).map(|j| format!("f-{k}-{j}")).collect();
        let batch: Vec<Value> = ids
            .iter()
            .enumerate()
            .map(|(j, id)| {
                json!({"specversion": "1.0", "id": id, "source": "/fill",
                       "type": "order.placed", "data": {"pad": noise(k * 10 + j + 7)}})
            })
            .collect();
        let (status, body) = h.post(
            "/v1/events",
            Some("application/cloudevents-batch+json"),
            &[],
            Value::Array(batch).to_string().as_bytes(),
        );
        (status, body, ids)
    };
    let mut acked = Vec::new();
    let mut refusal = None;
    for k in 0..1000 {
        match send(k) {
            (202, _, ids) => acked.extend(ids),
            (507, body, _) => {
                refusal = Some(body);
                break;
            }
            (status, body, _) => panic!("unexpected {status}: {body}"),
        }
    }
    let body = refusal.expect("the file system fills up");
    let message = body["error"].as_str().unwrap_or("");
    assert!(
        message.contains(&data_arg)
            && message.contains("full")
            && message.contains("free on its file system")
            && message.contains("keeps 8.0 MiB free")
            && message.contains("--disk-reserve-bytes"),
        "{message}"
    );
    // The reserve fits the device: what was free (48 MiB) took events
    // before the refusals began, at least 16 MiB of them (a batch is about
    // 80 KiB; the store's journal and tables hold some twice for a while).
    assert!(
        acked.len() >= 10 * 200,
        "only {} events fit on a 64 MiB device with 48 MiB free",
        acked.len()
    );

    // Another program frees its space: publishing resumes in the same
    // process.
    std::fs::remove_file(&filler).expect("free space");
    let deadline = Instant::now() + WAIT;
    loop {
        let (status, body, ids) = send(1000);
        if status == 202 {
            acked.extend(ids);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "publishing did not resume: {status} {body}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    h.wait_until("the recorder to catch up", WAIT, |h| {
        h.plugin("recorder").and_then(|p| p["lag"].as_u64()) == Some(0)
    })
    .expect("caught up");
    // The cursor moves after the handler logged; the log reaches the
    // test through a pipe, so give it a moment.
    let handled_all = |log: &[String]| -> Vec<String> {
        acked
            .iter()
            .filter(|id| !log.iter().any(|l| l.ends_with(&format!("handled {id}"))))
            .cloned()
            .collect()
    };
    let deadline = Instant::now() + WAIT;
    let mut lost = handled_all(&h.log());
    while !lost.is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        lost = handled_all(&h.log());
    }
    assert!(lost.is_empty(), "acknowledged but never handled: {lost:?}");
}

/// Bytes free on the file system of `path` (`df`).
fn free_bytes(path: &std::path::Path) -> u64 {
    let out = std::process::Command::new("df")
        .args(["-B1", "--output=avail"])
        .arg(path)
        .output()
        .expect("run df");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .nth(1)
        .and_then(|l| l.trim().parse().ok())
        .expect("df prints the free bytes")
}

#[test]
fn a_card_filled_during_the_order_flow_pauses_deliveries_and_every_order_is_handled_once_space_is_freed(
) {
    const N: usize = 20_000;
    let top = TestDir::new("cardfull");
    let mnt = top.0.join("mnt");
    // A 64 MiB card: the store keeps an eighth of it free (8 MiB).
    mount_tmpfs(&mnt, "64m");
    let _unmount = Unmount(mnt.clone());
    let data = mnt.join("data");
    let data_arg = data.display().to_string();
    // The orders are accepted first, so that the plugins start with all
    // of them to do.
    let h = host(&[], &["--data", &data_arg]);
    // Retention is sized to the card: a third of what is above the reserve.
    h.wait_log(
        "the log keeps at most 18.7 MiB of events every plugin has finished",
        WAIT,
    )
    .expect("retention stated at start");
    crate::accounting::post_orders(&h, N);
    assert!(h.stop().expect("stops").success());
    // Another program fills the card to 512 KiB above the reserve: far
    // less than the plugins' state and follow-ups for the orders.
    let reserve: u64 = 8 << 20;
    let filler = mnt.join("other-program.bin");
    let fill = free_bytes(&mnt).saturating_sub(reserve + (512 << 10));
    std::fs::write(&filler, vec![7u8; fill as usize]).expect("filler");
    let h = host(&order_flow(), &["--data", &data_arg]);
    // The plugins' commits reach the reserve: deliveries wait, and say
    // why, where an operator looks.
    h.wait_until("deliveries to wait for room", WAIT, |h| {
        h.plugin("inventory")
            .and_then(|p| p["held"].as_str().map(|s| s.contains("inside its reserve")))
            == Some(true)
    })
    .expect("the status says deliveries wait for room");
    let (status, ready) = crate::operations::get_status(&h, "/readyz");
    assert_eq!(status, 503, "{ready}");
    assert!(ready.to_string().contains("deliveries wait"), "{ready}");
    assert!(
        h.count("inventory", "handled") < N as u64,
        "the card filled before inventory was done"
    );
    // Nothing failed: a publish (of an event no plugin takes) is refused
    // for room (507) or taken, never failed by a store that gave up (500),
    // and the host keeps running.
    let (status, body) = h.post(
        "/v1/events/probe.ping",
        Some("application/json"),
        &[],
        b"{}",
    );
    assert!(status == 507 || status == 202, "{status} {body}");
    assert!(
        !h.log()
            .iter()
            .any(|l| l.contains("fsync failed") || l.contains("refuses every write")),
        "the store never failed a write"
    );
    // The other program frees its space: every order is handled, once,
    // with no restart.
    std::fs::remove_file(&filler).expect("free space");
    crate::accounting::order_flow_accounted(&h, N as u64);
}

/// Damage the journal of a stopped host's data directory: cut its used
/// part to two thirds, or flip 40 bytes in its middle. (The engine
/// recovers the prefix before a cut, and refuses or recovers a prefix
/// around flipped bytes, depending on where they land.)
fn damage_journal(data: &std::path::Path, flip: bool) {
    let journal = std::fs::read_dir(data)
        .expect("data dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "jnl"))
        .expect("a journal file");
    let mut bytes = std::fs::read(&journal).expect("read journal");
    let used = bytes.iter().rposition(|b| *b != 0).map_or(0, |i| i + 1);
    if flip {
        for b in &mut bytes[used / 2..used / 2 + 40] {
            *b ^= 0x5a;
        }
    } else {
        bytes.truncate(used * 2 / 3);
    }
    std::fs::write(&journal, bytes).expect("write journal");
}

/// Build the LD_PRELOAD shim that makes fsync fail on demand
/// (`tests/faults/fsync_fails.c`) into `dir`.
fn fsync_fault_shim(dir: &std::path::Path) -> std::path::PathBuf {
    let src = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/faults/fsync_fails.c");
    let out = dir.join("libfsync_fails.so");
    let status = std::process::Command::new("cc")
        .args(["-shared", "-fPIC", "-O2", "-o"])
        .arg(&out)
        .arg(src)
        .arg("-ldl")
        .status()
        .expect("run cc (the C compiler the Rust toolchain links with)");
    assert!(status.success(), "building the fsync fault shim failed");
    out
}

#[test]
fn a_failed_fsync_is_never_retried_then_acknowledged_and_the_host_stops_to_be_restarted() {
    let data = TestDir::new("fsync-fault");
    let shim = fsync_fault_shim(&data.0);
    let trigger = data.0.join("fail-fsync-now");
    let args = ["--data", &format!("{}/db", data.arg()), "--fsync", "always"];
    let plugins = [
        PluginFile::Wasm("recorder", artifacts::RECORDER),
        PluginFile::Manifest("recorder", LOUD),
    ];
    let h = TestHost::start_with_env(
        BIN,
        &plugins,
        &args,
        &[
            ("LD_PRELOAD", shim.as_os_str()),
            ("PLUGBUS_FAULT_FSYNC", trigger.as_os_str()),
        ],
    )
    .expect("starts with the shim");
    let publish = |h: &TestHost, id: &str| {
        let event = json!({"specversion": "1.0", "id": id, "source": "/t",
                           "type": "order.placed", "data": {"total_cents": 1}});
        h.post(
            "/v1/events",
            Some("application/cloudevents+json"),
            &[],
            event.to_string().as_bytes(),
        )
    };
    for id in ["ok-1", "ok-2"] {
        assert_eq!(publish(&h, id).0, 202, "fsync works before the fault");
    }
    // The disk fails: the publish is refused, not acknowledged.
    std::fs::write(&trigger, b"").expect("trigger");
    let (status, body) = publish(&h, "during-fault");
    assert_eq!(status, 500, "{body}");
    let error = body["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("fsync failed") && error.contains("restart"),
        "names the failure and the fix: {error}"
    );
    // The disk seems fine again, but the kernel may have dropped the
    // dirty pages: nothing more is acknowledged (not even the same event
    // sent again), and the host stops by itself, to be restarted by its
    // supervisor, with the status that asks for it.
    std::fs::remove_file(&trigger).expect("untrigger");
    let (status, body) = publish(&h, "after-fault");
    assert_ne!(status, 202, "nothing acknowledged after the fault: {body}");
    let (exit, before) = h.wait_exit(WAIT).expect("stops by itself");
    assert_eq!(exit.code(), Some(75), "asks to be restarted (EX_TEMPFAIL)");
    let said = before.join("\n");
    assert!(
        said.contains("stopping so that a restart recovers it from its journal")
            && said.contains("fsync failed"),
        "says why it stopped: {said}"
    );
    // Restarted, as the systemd unit would: everything acknowledged is
    // there and handled, and publishing works again. (The event whose
    // fsync failed may be in the log, as may any event whose answer a
    // publisher never got; it was not acknowledged.)
    let h = host(&plugins, &args);
    assert_eq!(publish(&h, "after-restart").0, 202);
    h.wait_log("[recorder] handled after-restart", WAIT)
        .expect("publishing works again");
    let handled = |id: &str| {
        before
            .iter()
            .chain(h.log().iter())
            .any(|l| l.ends_with(&format!("[recorder] handled {id}")))
    };
    assert!(
        handled("ok-1") && handled("ok-2"),
        "acknowledged events handled"
    );
    assert!(
        !handled("after-fault"),
        "an event refused after the fault was never stored"
    );
}

#[test]
fn a_damaged_journal_recovers_a_prefix_says_so_and_skips_nothing_new() {
    for flip in [false, true] {
        let data = TestDir::new("damaged");
        let args = ["--data", &data.arg()];
        let plugins = [
            PluginFile::Wasm("recorder", artifacts::RECORDER),
            PluginFile::Manifest("recorder", LOUD),
        ];
        let h = host(&plugins, &args);
        for i in 0..20 {
            h.publish("order.placed", &json!({ "n": i }))
                .expect("publish");
        }
        h.wait_until("the recorder", WAIT, |h| {
            h.count("recorder", "handled") == 20
        })
        .expect("handled");
        assert!(h.stop().expect("stops").success());

        damage_journal(&data.0, flip);
        // Refused, naming the journal and the choices.
        let out = start_output(&["--data", &data.arg()]);
        assert!(
            !out.status.success(),
            "a store that lost acknowledged events must not start silently"
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(".jnl"), "names the journal: {err}");
        // Damage with intact batches after it is refused before the
        // engine sees it (`plugbus repair` salvages it: tests/e2e/repair.rs)...
        if err.contains("intact batches come after the damage") {
            assert!(err.contains("plugbus repair --data"), "{err}");
            continue;
        }
        // ...or the engine refuses the damaged journal outright...
        if err.contains("the store is damaged") {
            assert!(err.contains("Restore the directory from a backup"), "{err}");
            continue;
        }
        // ...or it recovers a prefix, which plugbus refuses until told.
        assert!(
            err.contains("were acknowledged") && err.contains("--accept-lost-events"),
            "{err}"
        );
        // Accepted knowingly: reported, and nothing new is skipped.
        let h = host(&plugins, &["--data", &data.arg(), "--accept-lost-events"]);
        let line = h
            .wait_log("going on as --accept-lost-events asks", WAIT)
            .expect("the loss is reported");
        assert!(
            line.contains(&data.arg()) && line.contains("up to 20"),
            "{line}"
        );
        let after = h
            .publish("order.placed", &json!({ "n": "new" }))
            .expect("publish");
        assert!(
            after["sequence"].as_u64() > Some(20),
            "numbered after every cursor: {after}"
        );
        // (The recovered cursor may sit before the recovered end: those
        // events come again, at least once. The new one must come too.)
        let id = after["id"].as_str().expect("id");
        h.wait_log(&format!("handled {id}"), WAIT)
            .expect("it is the new one");
    }
}
