//! A damaged journal, start to finish: the host refuses to open it naming
//! the file, `plugbus repair --dry-run` changes nothing, `plugbus repair`
//! keeps every intact event and names exactly the sequences lost, and the
//! host then serves the rest, answers 410 for a lost sequence, announces
//! the loss once, and its plugins account for every event that is left.

use super::*;

const N: usize = 20_000;

/// `plugbus repair` on `data` with `args`: its exit code and output.
fn repair(data: &str, args: &[&str]) -> (Option<i32>, String) {
    let out = std::process::Command::new(BIN)
        .args(["repair", "--data", data])
        .args(args)
        .output()
        .expect("run plugbus repair");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), text)
}

/// Every file under `dir` with its bytes.
fn contents(dir: &std::path::Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).expect("read dir").flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(contents(&path));
        } else {
            out.push((path.clone(), std::fs::read(&path).expect("read")));
        }
    }
    out.sort();
    out
}

/// The one journal of a stopped host's directory, and where its data ends.
fn journal(data: &std::path::Path) -> (std::path::PathBuf, usize) {
    let path = std::fs::read_dir(data)
        .expect("data dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "jnl"))
        .max()
        .expect("a journal file");
    let bytes = std::fs::read(&path).expect("read journal");
    let used = bytes.iter().rposition(|b| *b != 0).map_or(0, |i| i + 1);
    (path, used)
}

#[test]
fn a_flipped_byte_mid_journal_is_refused_then_repaired_losing_exactly_its_batch() {
    let data = TestDir::new("repair");
    let args = ["--data", &data.arg()];
    let recorder = [PluginFile::Wasm("recorder", artifacts::RECORDER)];
    let h = host(&recorder, &args);
    for start in (0..N).step_by(100) {
        h.publish_batch(
            (start..start + 100)
                .map(|i| {
                    json!({"specversion": "1.0", "id": format!("e-{i}"), "source": "/t",
                           "type": "order.placed", "data": {"n": i}})
                })
                .collect(),
        );
    }
    h.wait_until("the recorder to finish every event", WAIT, |h| {
        h.plugin("recorder").and_then(|p| p["lag"].as_u64()) == Some(0)
    })
    .expect("finished");
    assert!(h.stop().expect("stops").success());

    // One byte flipped in the middle of the journal. (The one field no
    // checksum covers is a batch's engine seqno: should the byte land
    // there, the dry run finds nothing and the next one is flipped.)
    let (file, used) = journal(&data.0);
    let mut flipped = None;
    for at in (0..64).map(|k| used / 2 + 97 * k) {
        let mut bytes = std::fs::read(&file).expect("read");
        bytes[at] ^= 0x08;
        std::fs::write(&file, &bytes).expect("flip");
        // A batch of published events (not one of the recorder's
        // progress, which it would only redo).
        let (code, said) = repair(&data.arg(), &["--dry-run", "--json"]);
        let lost_events = serde_json::from_str::<Value>(&said)
            .ok()
            .and_then(|r| r["lost"].as_array().map(Vec::len));
        if code == Some(2) && lost_events == Some(1) {
            flipped = Some(at);
            break;
        }
        bytes[at] ^= 0x08;
        std::fs::write(&file, &bytes).expect("restore");
    }
    let at = flipped.expect("a flipped byte is found by the dry run");

    // The host refuses, naming the file, the offset and the way out, and
    // changes nothing.
    let before = contents(&data.0);
    let out = start_output(&args);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let name = file.file_name().unwrap_or_default().to_string_lossy();
    assert!(
        err.contains(&*name)
            && err.contains("plugbus repair --data")
            && err.contains("intact batches"),
        "{err}"
    );
    let (code, dry) = repair(&data.arg(), &["--dry-run"]);
    assert_eq!(code, Some(2), "{dry}");
    assert!(dry.contains("dry run: nothing was changed"), "{dry}");
    assert_eq!(
        contents(&data.0),
        before,
        "neither the host nor a dry run changed a byte"
    );

    // The repair: exit 2, the lost sequences named, the original kept.
    let (code, said) = repair(&data.arg(), &["--json"]);
    assert_eq!(code, Some(2), "{said}");
    let report: Value = serde_json::from_str(&said).expect("a JSON report");
    let cut = &report["cuts"][0];
    assert!(
        cut["offset"].as_u64() <= Some(at as u64)
            && cut["offset"]
                .as_u64()
                .zip(cut["bytes"].as_u64())
                .map(|(o, b)| o + b)
                > Some(at as u64),
        "the cut holds the flipped byte: {report}"
    );
    let lost: Vec<(u64, u64)> = report["lost"]
        .as_array()
        .expect("lost ranges")
        .iter()
        .map(|r| (r[0].as_u64().expect("from"), r[1].as_u64().expect("to")))
        .collect();
    assert_eq!(lost.len(), 1, "one batch, one range: {report}");
    let (from, to) = lost[0];
    assert!(
        to >= from && to - from < 1000,
        "one group commit: {from}..={to}"
    );
    let original = report["original"].as_str().expect("the original is kept");
    assert!(std::path::Path::new(original).is_dir(), "{original}");

    // The host starts and serves every other event, in order, with its id.
    let h = host(&recorder, &args);
    let log = crate::accounting::whole_log(&h);
    let orders: Vec<&Value> = log.iter().filter(|e| e["type"] == "order.placed").collect();
    assert_eq!(
        orders.len() as u64,
        N as u64 - (to - from + 1),
        "every other event kept"
    );
    for e in &orders {
        let seq = e["sequence"].as_u64().expect("sequence");
        assert!(
            !(from..=to).contains(&seq),
            "a lost sequence came back: {seq}"
        );
        assert_eq!(e["id"], format!("e-{}", seq - 1), "each event where it was");
    }
    // A lost sequence is gone, and says where the log goes on.
    let (status, body) = crate::operations::get_status(&h, &format!("/v1/log/{from}"));
    assert_eq!(status, 410, "{body}");
    let error = body["error"].as_str().unwrap_or_default();
    assert!(error.contains(&format!("goes on at {}", to + 1)), "{error}");
    // Announced once, numbered after everything acknowledged.
    let announced = |log: &[Value]| {
        log.iter()
            .filter(|e| e["type"] == "plugbus.log.lost")
            .count()
    };
    assert_eq!(announced(&log), 1);
    let lost_event = log
        .iter()
        .find(|e| e["type"] == "plugbus.log.lost")
        .expect("announced");
    assert_eq!(lost_event["data"]["from"], from);
    assert_eq!(lost_event["data"]["to"], to);
    assert!(lost_event["sequence"].as_u64() > Some(N as u64));
    // The plugin goes on from its cursor: it had finished every event,
    // so it handles nothing again (at most the announcement, were it
    // subscribed), and the audit counts what it finished and the log
    // lost as lost, not unaccounted.
    h.wait_until("the recorder at rest", WAIT, |h| {
        h.plugin("recorder").and_then(|p| p["lag"].as_u64()) == Some(0)
    })
    .expect("at rest");
    assert!(h.count("recorder", "handled") <= 1, "nothing handled again");
    let audit = h.get("/v1/audit").expect("audit");
    assert_eq!(audit["plugins"][0]["lost"], to - from + 1, "{audit}");
    assert!(h.stop().expect("stops").success());
    let h = host(&recorder, &args);
    assert_eq!(
        announced(&crate::accounting::whole_log(&h)),
        1,
        "announced once"
    );
    h.audit_clean();
}
