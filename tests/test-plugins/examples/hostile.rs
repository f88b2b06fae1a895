//! A hostile plugin for the isolation tests and benchmarks. What it does is
//! set by its manifest's `[config] mode`, so one build serves every case:
//!
//! - `loop`: spins forever in `handle` (the deadline must stop it);
//! - `init-loop`: spins forever in `init`;
//! - `alloc`: allocates 4 GiB (the memory cap must stop it);
//! - `recurse`: recurses without end (the stack cap must stop it);
//! - `trap`: panics on every event;
//! - `storm`: publishes as fast as the host lets it, to `order.placed` and
//!   `storm.noise`, and keeps what it was told in its state;
//! - `big`: rejects every event, the first of each batch with a 100 MB
//!   message;
//! - `amplify`: publishes 20 follow-ups to the topic it subscribes to for
//!   each event it handles (an event storm: it consumes its own output),
//!   and acks;
//! - `statebomb`: keeps a new 1 MiB value for each event it handles, and
//!   acks (a refused write is logged);
//! - `garbage`: returns three outcomes per event;
//! - `hugekey`: reads, then writes, a state key of 1 MiB for each event,
//!   and asks for a retry with the error it got (a plugin must get one);
//! - `sandbox`: tries to open files, list directories, connect a socket,
//!   read the environment and arguments, and read the clocks, and keeps
//!   what it saw in its state (`sandbox`), then acks;
//! - `work` (not hostile): spins `[config] work_us` µs per event, then
//!   acks, for the concurrency benchmark.
//!
//! It subscribes to `[config] subscribe` (default `order.placed`). It
//! implements the handler export itself (not through `export_plugin!`), so
//! that it can return what a well-behaved plugin never would.

// wit-bindgen's export glue is unsafe by nature: raw ABI functions. No
// hand-written unsafe in this file.
#![allow(unsafe_code)]

use std::cell::RefCell;

use plugbus_sdk::bindings::exports::plugbus::plugin::handler::Guest;
use plugbus_sdk::bindings::plugbus::plugin::config;
use plugbus_sdk::bindings::plugbus::plugin::publisher;
use plugbus_sdk::bindings::plugbus::plugin::types::Batch;
use plugbus_sdk::{Info, Outcome, Outgoing, State};

thread_local! {
    static MODE: RefCell<String> = const { RefCell::new(String::new()) };
    static WORK_US: RefCell<u64> = const { RefCell::new(0) };
}

struct Hostile;

fn events(batch: &Batch) -> usize {
    batch.headers.len() / 24
}

/// Recurses until `depth` reaches `until`, which the caller makes
/// unreachable. Its frames live on the WebAssembly stack alone (no locals
/// in linear memory), so the host's stack cap is what stops it.
fn recurse(depth: u64, until: u64) -> u64 {
    if depth == until {
        return 0;
    }
    recurse(depth + 1, until).wrapping_add(std::hint::black_box(depth))
}

fn amplify(batch: &Batch) -> Vec<Outcome> {
    let topic = config::get("subscribe").unwrap_or_else(|| "amp.x".into());
    for i in 0..events(batch) {
        for _ in 0..20 {
            let event = Outgoing {
                type_: topic.clone(),
                subject: None,
                datacontenttype: None,
                data: br#"{"again":true}"#.to_vec(),
            };
            if let Err(e) = publisher::publish(i as u32, &event) {
                println!("publish refused: {e:?}");
                break;
            }
        }
    }
    vec![Outcome::Ack; events(batch)]
}

fn statebomb(batch: &Batch) -> Vec<Outcome> {
    let Ok(state) = State::open() else {
        return vec![Outcome::retry("no state"); events(batch)];
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    for i in 0..events(batch) {
        if let Err(e) = state.set(&format!("bomb.{now}.{i}"), &vec![7u8; 1 << 20]) {
            println!("state write refused: {e:?}");
        }
    }
    vec![Outcome::Ack; events(batch)]
}

fn hugekey(n: usize) -> Vec<Outcome> {
    let Ok(state) = State::open() else {
        return vec![Outcome::retry("no state"); n];
    };
    let key = "k".repeat(1 << 20);
    (0..n)
        .map(|_| {
            let read = state.get(&key);
            match state.set(&key, b"v") {
                Ok(()) => Outcome::Ack,
                Err(e) => Outcome::retry(format!("read: {read:?}; write: {e:?}")),
            }
        })
        .collect()
}

fn storm(batch: &Batch) -> Vec<Outcome> {
    let state = State::open().ok();
    let mut out = Vec::new();
    for i in 0..events(batch) {
        let mut sent = 0u64;
        let mut refused = String::new();
        for topic in ["order.placed", "storm.noise"] {
            for _ in 0..1_000_000 {
                let event = Outgoing {
                    type_: topic.to_string(),
                    subject: None,
                    datacontenttype: None,
                    data: br#"{"order_id":"storm","items":[{"sku":"x","qty":1}],"total_cents":1}"#
                        .to_vec(),
                };
                match publisher::publish(i as u32, &event) {
                    Ok(()) => sent += 1,
                    Err(e) => {
                        refused.push_str(&format!("{topic}: {e:?}\n"));
                        break;
                    }
                }
            }
        }
        if let Some(state) = &state {
            let _ = state.increment("storm.sent", sent as i64);
            let _ = state.set("storm.refused", refused.as_bytes());
        }
        out.push(Outcome::Ack);
    }
    out
}

fn sandbox(batch: &Batch) -> Vec<Outcome> {
    let mut seen = Vec::new();
    let attempt = |what: &str, r: Result<String, String>| match r {
        Ok(v) => format!("{what}: allowed: {v}"),
        Err(e) => format!("{what}: refused: {e}"),
    };
    seen.push(attempt(
        "open /etc/passwd",
        std::fs::read_to_string("/etc/passwd")
            .map(|s| format!("{} bytes", s.len()))
            .map_err(|e| e.to_string()),
    ));
    seen.push(attempt(
        "open ./secret",
        std::fs::read("secret")
            .map(|s| format!("{} bytes", s.len()))
            .map_err(|e| e.to_string()),
    ));
    seen.push(attempt(
        "create /tmp/plugbus-escape",
        std::fs::write("/tmp/plugbus-escape", b"x")
            .map(|()| "written".into())
            .map_err(|e| e.to_string()),
    ));
    seen.push(attempt(
        "list /",
        std::fs::read_dir("/")
            .map(|d| format!("{} entries", d.count()))
            .map_err(|e| e.to_string()),
    ));
    seen.push(attempt(
        "connect 127.0.0.1:22",
        std::net::TcpStream::connect("127.0.0.1:22")
            .map(|_| "connected".into())
            .map_err(|e| e.to_string()),
    ));
    let vars: Vec<String> = std::env::vars().map(|(k, _)| k).collect();
    seen.push(format!("env: {} variables {vars:?}", vars.len()));
    seen.push(format!("args: {}", std::env::args().count()));
    let wall = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    seen.push(format!("wall clock: {}", wall > 1_600_000_000));
    let start = std::time::Instant::now();
    seen.push(format!(
        "monotonic clock: {}",
        start.elapsed().as_secs() < 5
    ));
    if let Ok(state) = State::open() {
        let _ = state.set("sandbox", seen.join("\n").as_bytes());
    }
    vec![Outcome::Ack; events(batch)]
}

impl Guest for Hostile {
    fn init() -> Result<Info, String> {
        let mode = config::get("mode").unwrap_or_default();
        let subscribe = config::get("subscribe").unwrap_or_else(|| "order.placed".into());
        MODE.with(|m| *m.borrow_mut() = mode.clone());
        if mode == "init-loop" {
            let mut x = 0u64;
            loop {
                x = std::hint::black_box(x.wrapping_add(1));
            }
        }
        let work = config::get("work_us")
            .and_then(|w| w.parse().ok())
            .unwrap_or(0);
        WORK_US.with(|w| *w.borrow_mut() = work);
        Ok(Info::new(&format!("hostile-{mode}"), "0.1.0", [subscribe]))
    }

    fn handle(batch: Batch) -> Vec<Outcome> {
        let mode = MODE.with(|m| m.borrow().clone());
        let n = events(&batch);
        match mode.as_str() {
            "loop" => {
                let mut x = 0u64;
                loop {
                    x = std::hint::black_box(x.wrapping_add(1));
                }
            }
            "alloc" => {
                let mut hog: Vec<Vec<u8>> = Vec::new();
                for _ in 0..4096 {
                    hog.push(vec![1u8; 1 << 20]);
                }
                std::hint::black_box(&hog);
                vec![Outcome::Ack; n]
            }
            "recurse" => {
                let r = recurse(0, std::hint::black_box(u64::MAX));
                std::hint::black_box(r);
                vec![Outcome::Ack; n]
            }
            "trap" => panic!("this plugin traps on every event"),
            "storm" => storm(&batch),
            "amplify" => amplify(&batch),
            "statebomb" => statebomb(&batch),
            "big" => {
                // One 100 MB message per batch; the other events get the
                // same outcome with a short one.
                let mut out = vec![Outcome::Reject("a big return".into()); n];
                if let Some(first) = out.first_mut() {
                    *first = Outcome::Reject("x".repeat(100 << 20));
                }
                out
            }
            "garbage" => vec![Outcome::Ack; n * 3],
            "hugekey" => hugekey(n),
            "sandbox" => sandbox(&batch),
            "work" => {
                let per_event = std::time::Duration::from_micros(WORK_US.with(|w| *w.borrow()));
                for _ in 0..n {
                    let start = std::time::Instant::now();
                    while start.elapsed() < per_event {
                        std::hint::spin_loop();
                    }
                }
                vec![Outcome::Ack; n]
            }
            other => vec![Outcome::Reject(format!("unknown mode `{other}`")); n],
        }
    }
}

plugbus_sdk::bindings::export!(Hostile with_types_in plugbus_sdk::bindings);
