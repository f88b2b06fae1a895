//! The Python helper (`host/templates/python/plugbus.py`) against the
//! rules it copies from `plugbus_contract`: a batch packed in Rust reads
//! back attribute for attribute through the helper's `Event`, a batch the
//! helper's test harness packs reads back through the contract's `Header`,
//! the helper's `settle` gives the contract's answer for every case of
//! the ack rule, and its publish and state checks (key and value sizes,
//! bytes per call, counters) refuse what the contract refuses, in the same
//! words. Runs `python3` (which `plugbus test` needs for Python
//! projects too).

use std::path::Path;
use std::process::Command;

use plugbus_contract::ack::{self, Settlement};
use plugbus_contract::batch::{word, Fields, Header, Writer};
use serde_json::{json, Value};

const HELPER_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/templates/python");

/// The events both sides lay out.
fn extensions() -> [Vec<(String, String)>; 2] {
    [
        vec![
            ("tenant".to_string(), "acme".to_string()),
            ("region".to_string(), "eu-west".to_string()),
        ],
        Vec::new(),
    ]
}

fn events(ext: &[Vec<(String, String)>; 2]) -> [Fields<'_>; 2] {
    [
        Fields {
            id: "e-1",
            source: "/shop",
            topic: "order.placed",
            subject: Some("customer-7"),
            time: "2026-12-07T10:00:00Z",
            datacontenttype: Some("application/json"),
            data: br#"{"total": 12.5, "note": "h\u00e9"}"#,
            correlation_id: Some("root"),
            causation_id: Some("parent"),
            sequence: (5 << 32) + 17,
            attempt: 3,
            extensions: &ext[0],
        },
        Fields {
            id: "e-2",
            source: "plugbus",
            topic: "stock.reserved",
            time: "2026-12-07T10:00:01Z",
            data: b"",
            sequence: 18,
            attempt: 1,
            extensions: &ext[1],
            ..Fields::default()
        },
    ]
}

/// `fields` as the JSON the Python side reads and writes.
fn as_json(f: &Fields<'_>) -> Value {
    json!({
        "id": f.id, "source": f.source, "topic": f.topic, "subject": f.subject,
        "time": f.time, "datacontenttype": f.datacontenttype,
        "data": f.data.to_vec(), "correlation_id": f.correlation_id,
        "causation_id": f.causation_id, "sequence": f.sequence, "attempt": f.attempt,
        "extensions": f.extensions.iter()
            .map(|(k, v)| (k.clone(), Value::from(v.as_str())))
            .collect::<serde_json::Map<String, Value>>(),
    })
}

/// Run `script` with the helper importable and `input` on stdin; its
/// stdout as JSON.
fn python(script: &str, input: &Value) -> Value {
    let mut child = Command::new("python3")
        .arg("-c")
        .arg(script)
        .env("PYTHONPATH", Path::new(HELPER_DIR))
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python3 runs (Debian: apt-get install python3)");
    {
        use std::io::Write as _;
        let mut stdin = child.stdin.take().expect("stdin");
        stdin
            .write_all(input.to_string().as_bytes())
            .expect("input written");
    }
    let out = child.wait_with_output().expect("python3 finished");
    assert!(
        out.status.success(),
        "python3 failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("python printed JSON")
}

const UNPACK: &str = r#"
import json, sys
import plugbus
batch = json.load(sys.stdin)
data = bytes(batch["bytes"])
out = []
for i in range(len(batch["headers"]) // plugbus.HEADER_WORDS):
    e = plugbus.Event(data, batch["headers"], batch["extensions"], i)
    out.append({
        "id": e.id, "source": e.source, "topic": e.topic, "subject": e.subject,
        "time": e.time, "datacontenttype": e.datacontenttype, "data": list(e.data),
        "correlation_id": e.correlation_id, "causation_id": e.causation_id,
        "sequence": e.sequence, "attempt": e.attempt, "extensions": e.extensions,
    })
print(json.dumps(out))
"#;

#[test]
fn a_batch_packed_by_the_host_reads_back_in_python() {
    let ext = extensions();
    let events = events(&ext);
    let (mut bytes, mut headers, mut extensions) = (Vec::new(), Vec::new(), Vec::new());
    let mut w = Writer {
        bytes: &mut bytes,
        headers: &mut headers,
        extensions: &mut extensions,
    };
    for e in &events {
        w.push(e);
    }
    let read = python(
        UNPACK,
        &json!({"bytes": bytes, "headers": headers, "extensions": extensions}),
    );
    let want: Vec<Value> = events.iter().map(as_json).collect();
    assert_eq!(read, Value::Array(want));
}

const PACK: &str = r#"
import json, sys
import plugbus
events = []
for e in json.load(sys.stdin):
    events.append(plugbus.TestEvent(
        e["topic"], bytes(e["data"]), id=e["id"], source=e["source"], subject=e["subject"],
        time=e["time"], datacontenttype=e["datacontenttype"],
        correlation_id=e["correlation_id"], causation_id=e["causation_id"],
        attempt=e["attempt"], extensions=e["extensions"], sequence=e["sequence"]))
data, headers, ext = plugbus._pack(events)
print(json.dumps({"bytes": list(data), "headers": headers, "extensions": ext}))
"#;

#[test]
fn a_batch_packed_by_the_python_harness_reads_back_in_the_contract() {
    let ext = extensions();
    let events = events(&ext);
    let packed = python(PACK, &Value::Array(events.iter().map(as_json).collect()));
    let list = |k: &str| -> Vec<u64> {
        packed[k]
            .as_array()
            .expect("a list")
            .iter()
            .map(|v| v.as_u64().expect("a number"))
            .collect()
    };
    let bytes: Vec<u8> = list("bytes").into_iter().map(|b| b as u8).collect();
    let headers: Vec<u32> = list("headers").into_iter().map(|w| w as u32).collect();
    let extensions: Vec<u32> = list("extensions").into_iter().map(|w| w as u32).collect();
    let read: Vec<Header<'_>> = Header::all(&bytes, &headers, &extensions).collect();
    assert_eq!(read.len(), events.len());
    for (h, e) in read.iter().zip(&events) {
        assert_eq!(h.text(word::ID), e.id);
        assert_eq!(h.text(word::SOURCE), e.source);
        assert_eq!(h.text(word::TOPIC), e.topic);
        assert_eq!(h.optional(word::SUBJECT), e.subject);
        assert_eq!(h.text(word::TIME), e.time);
        assert_eq!(h.optional(word::DATACONTENTTYPE), e.datacontenttype);
        assert_eq!(h.span(word::DATA), e.data);
        assert_eq!(h.optional(word::CORRELATION_ID), e.correlation_id);
        assert_eq!(h.optional(word::CAUSATION_ID), e.causation_id);
        assert_eq!(h.sequence(), e.sequence);
        assert_eq!(h.attempt(), e.attempt);
        assert_eq!(h.word(word::RESERVED), 0);
        let want: Vec<(&str, &str)> = e
            .extensions
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(h.extensions().collect::<Vec<_>>(), want);
    }
}

const SETTLE: &str = r#"
import json, sys
import plugbus
print(json.dumps([plugbus.settle(c["acked"], c["wrote"]) for c in json.load(sys.stdin)]))
"#;

#[test]
fn the_python_harness_keeps_the_ack_rule() {
    let cases: Vec<Value> = ack::CASES
        .iter()
        .map(|(acked, wrote, _)| json!({"acked": acked, "wrote": wrote}))
        .collect();
    let answers = python(SETTLE, &Value::Array(cases));
    let want: Vec<&str> = ack::CASES
        .iter()
        .map(|(_, _, s)| match s {
            Settlement::KeepAll => "keep-all",
            Settlement::KeepAckedFollowUps => "keep-acked-follow-ups",
            Settlement::OneAtATime => "one-at-a-time",
        })
        .collect();
    assert_eq!(answers, json!(want));
}

const PUBLISH: &str = r#"
import json, sys
import plugbus
out = []
for c in json.load(sys.stdin):
    out.append(plugbus.publish_refusal(c["cause"], c["batch_len"], c["published"], c["topic"],
                                       c["subject"], c["data_bytes"]))
print(json.dumps(out))
"#;

/// A publish to check: cause, batch length, published so far, topic,
/// subject, data bytes.
type PublishCase<'a> = (u32, usize, usize, &'a str, Option<&'a str>, usize);

#[test]
fn the_python_harness_refuses_publishes_as_the_host_does() {
    use plugbus_contract::publish::{
        check, Publish, PUBLISHES_PER_EVENT_MAX, PUBLISH_DATA_BYTES_MAX,
    };
    let long_subject = "s".repeat(plugbus_contract::ATTRIBUTE_BYTES_MAX + 1);
    let long_topic = "t".repeat(plugbus_contract::topic::TOPIC_BYTES_MAX + 1);
    // (cause, batch length, published so far, topic, subject, data bytes)
    let cases: Vec<PublishCase<'_>> = vec![
        (0, 1, 0, "order.shipped", None, 2),
        (1, 1, 0, "order.shipped", None, 2),
        (0, 1, 0, "", None, 2),
        (0, 1, 0, &long_topic, None, 2),
        (0, 1, 0, "order.*", None, 2),
        (0, 1, 0, "order..x", None, 2),
        (0, 1, 0, "order placed", None, 2),
        (0, 1, 0, "ordér.x", None, 2),
        (0, 2, 2 * PUBLISHES_PER_EVENT_MAX, "a.b", None, 2),
        (0, 1, 0, "a.b", None, PUBLISH_DATA_BYTES_MAX + 1),
        (0, 1, 0, "a.b", Some(&long_subject), 2),
        (0, 1, 0, "a_b-c.d", Some("fine"), PUBLISH_DATA_BYTES_MAX),
    ];
    let input: Vec<Value> = cases
        .iter()
        .map(
            |(cause, batch_len, published, topic, subject, data_bytes)| {
                json!({"cause": cause, "batch_len": batch_len, "published": published,
                   "topic": topic, "subject": subject, "data_bytes": data_bytes})
            },
        )
        .collect();
    let python = python(PUBLISH, &Value::Array(input));
    let want: Vec<Value> = cases
        .iter()
        .map(
            |(cause, batch_len, published, topic, subject, data_bytes)| {
                let p = Publish {
                    cause: *cause,
                    topic,
                    subject: *subject,
                    data_bytes: *data_bytes,
                };
                match check(&p, *batch_len, *published) {
                    Ok(()) => Value::Null,
                    Err(why) => Value::from(why.to_string()),
                }
            },
        )
        .collect();
    assert_eq!(python, Value::Array(want));
}

const STATE: &str = r#"
import json, sys
import plugbus
cases = json.load(sys.stdin)
writes = [plugbus.state_write_refusal(c["key"], c["value_bytes"], c["written"])
          for c in cases["writes"]]
increments = []
for c in cases["increments"]:
    held = None if c["held"] is None else bytes(c["held"])
    why, value = plugbus.increment_refusal(c["key"], held, c["delta"])
    increments.append({"refused": why} if why else {"value": value})
# The harness's state goes through the same rules.
h = plugbus._TestHost()
try:
    h.kv_set("default", "k" * (plugbus.STATE_KEY_BYTES_MAX + 1), b"v")
    harness = None
except plugbus.StateError as e:
    harness = str(e)
print(json.dumps({"writes": writes, "increments": increments, "harness": harness}))
"#;

#[test]
fn the_python_harness_keeps_the_state_rules() {
    use plugbus_contract::state::{
        check_write, increment, CALL_WRITE_BYTES_MAX, KEY_BYTES_MAX, VALUE_BYTES_MAX,
    };
    let long_key = "k".repeat(KEY_BYTES_MAX + 1);
    let wide_key = "é".repeat(KEY_BYTES_MAX / 2 + 1);
    let writes: Vec<(&str, usize, usize)> = vec![
        ("orders", 10, 0),
        ("", 0, 0),
        (&long_key, 1, 0),
        (&wide_key, 1, 0),
        ("orders", VALUE_BYTES_MAX, 0),
        ("orders", VALUE_BYTES_MAX + 1, 0),
        ("orders", 10, CALL_WRITE_BYTES_MAX - 16),
        ("orders", 10, CALL_WRITE_BYTES_MAX - 15),
    ];
    let increments: Vec<(&str, Option<Vec<u8>>, i64)> = vec![
        ("n", None, 1),
        ("n", Some(b"41".to_vec()), 1),
        ("n", Some(b" -7\n".to_vec()), 2),
        ("n", Some(b"+5".to_vec()), 1),
        ("n", Some(b"1_0".to_vec()), 1),
        ("n", Some(b"oops".to_vec()), 1),
        ("n", Some(5i64.to_le_bytes().to_vec()), 1),
        ("n", Some(i64::MAX.to_string().into_bytes()), 1),
        ("n", Some(i64::MIN.to_string().into_bytes()), -1),
        ("n", Some(b"99999999999999999999".to_vec()), 1),
        ("n", Some(vec![0xff; 8]), 3),
    ];
    let input = json!({
        "writes": writes.iter().map(|(k, v, w)| json!({"key": k, "value_bytes": v, "written": w})).collect::<Vec<_>>(),
        "increments": increments.iter().map(|(k, h, d)| json!({"key": k, "held": h, "delta": d})).collect::<Vec<_>>(),
    });
    let python = python(STATE, &input);
    let want_writes: Vec<Value> = writes
        .iter()
        .map(|(k, v, w)| match check_write(k, *v, *w) {
            Ok(()) => Value::Null,
            Err(why) => Value::from(why.to_string()),
        })
        .collect();
    let want_increments: Vec<Value> = increments
        .iter()
        .map(|(k, h, d)| match increment(k, h.as_deref(), *d) {
            Ok((value, _)) => json!({"value": value}),
            Err(why) => json!({"refused": why.to_string()}),
        })
        .collect();
    assert_eq!(python["writes"], Value::Array(want_writes));
    assert_eq!(python["increments"], Value::Array(want_increments));
    let harness = check_write(&long_key, 1, 0).expect_err("too long");
    assert_eq!(python["harness"], Value::from(harness.to_string()));
}

const TIMER: &str = r#"
import json, sys
import plugbus
print(json.dumps([plugbus.timer_refusal(c["key"], c["due"], c["now"], c["changes"], c["batch_len"])
                  for c in json.load(sys.stdin)]))
"#;

#[test]
fn the_python_harness_refuses_timers_as_the_host_does() {
    use plugbus_contract::timer::{
        check_set, CHANGES_PER_EVENT_MAX, DELAY_MS_MAX_DEFAULT, KEY_BYTES_MAX,
    };
    let long = "k".repeat(KEY_BYTES_MAX + 1);
    let now = 1_767_225_600_000u64;
    // (key, due, changes, batch length)
    let cases: Vec<(&str, u64, usize, usize)> = vec![
        ("payment-timeout", now + 2_000, 0, 1),
        ("past", now - 5_000, 0, 1),
        ("", now, 0, 1),
        (&long, now, 0, 1),
        ("far", now + DELAY_MS_MAX_DEFAULT + 1, 0, 1),
        ("edge", now + DELAY_MS_MAX_DEFAULT, 0, 1),
        ("many", now, CHANGES_PER_EVENT_MAX, 1),
        ("two", now, CHANGES_PER_EVENT_MAX, 2),
    ];
    let input: Vec<Value> = cases
        .iter()
        .map(|(key, due, changes, batch_len)| {
            json!({"key": key, "due": due, "now": now, "changes": changes, "batch_len": batch_len})
        })
        .collect();
    let python = python(TIMER, &Value::Array(input));
    let want: Vec<Value> = cases
        .iter()
        .map(|(key, due, changes, batch_len)| {
            match check_set(key, *due, now, DELAY_MS_MAX_DEFAULT, (*changes, *batch_len)) {
                Ok(()) => Value::Null,
                Err(why) => Value::from(why.to_string()),
            }
        })
        .collect();
    assert_eq!(python, Value::Array(want));
}

const TIMER_HARNESS: &str = r#"
import json, sys
import plugbus

class Saga:
    name = "saga"; version = "1"; subscriptions = ["order.placed", "payment.authorized"]
    def __init__(self, config): pass
    def handle(self, event, ctx):
        key = "timeout." + (event.subject or "-")
        if event.topic == "order.placed":
            ctx.schedule(key, "order.timeout", {"order": event.subject}, after_ms=2000)
            return plugbus.reject("bad") if event.json() == "bad" else plugbus.ack()
        ctx.cancel(key)
        return plugbus.ack()

h = plugbus.Harness(Saga)
out = {}
h.deliver(plugbus.TestEvent.json("order.placed", 1, subject="o-1", id="p-1"))
out["set"] = [[k, d - h.now_ms] for k, d in h.timers()]
out["early"] = len(h.advance(1999))
fired = h.advance(1)
out["fired"] = [[e.topic, e.causation_id, e.correlation_id, e.extensions.get("latems")] for e in fired]
out["again"] = len(h.advance(60000))
h.deliver(plugbus.TestEvent.json("order.placed", 1, subject="o-2"))
h.deliver(plugbus.TestEvent.json("payment.authorized", 1, subject="o-2"))
h.deliver(plugbus.TestEvent.json("order.placed", "bad", subject="o-3"))
out["left"] = h.timers()
print(json.dumps(out))
"#;

#[test]
fn the_python_harness_fires_timers_once_when_due_and_keeps_them_as_state() {
    let out = python(TIMER_HARNESS, &Value::Null);
    assert_eq!(out["set"], json!([["timeout.o-1", 2000]]));
    assert_eq!(out["early"], 0, "never before it is due");
    assert_eq!(out["fired"], json!([["order.timeout", "p-1", "p-1", "0"]]));
    assert_eq!(out["again"], 0, "once");
    assert_eq!(
        out["left"],
        json!([]),
        "a cancel wins; a rejected event keeps no timer"
    );
}
