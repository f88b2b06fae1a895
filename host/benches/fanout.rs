//! The fan-out benchmark: 256-byte `order.placed` events fanned out to
//! three subscribers, measured in one run against a floor and peers, and
//! printed as a table.
//!
//! Rows:
//! - floor: raw crossbeam fan-out to three native no-op consumers;
//! - wasm limit: the bare batched `handle` call into one trivial plugin, no
//!   bus (batch 1 and 64), and what that allows for three plugins on the
//!   machine's cores;
//! - plugbus: the bus, queues and workers with three trivial wasm plugins,
//!   batch 1 and 64, as a ratio of the floor and of the wasm limit;
//! - redis pub/sub: Debian's redis-server on loopback with three
//!   subscribers (the textbook setup): delivered events/s and what each
//!   subscriber received;
//! - durable publishing (acknowledged once stored) with `--fsync always`
//!   and `interval=10ms`, 1 and 64 publishers waiting for each ack, and one
//!   publisher appending 64 at a time; in the same run the peers a user would
//!   pick instead: NATS JetStream (file storage, pipelined publish-with-ack)
//!   and Redis Streams (`XADD`, `appendfsync always` and `everysec`);
//! - the cost of durability: three wasm plugins fed through the durable log
//!   against the in-memory bus;
//! - on a broker (`fanout/brokers.rs`): Redis Streams' own publish+consume
//!   ceiling, plugbus on it with one host and two against the embedded
//!   store, and a CPU-bound plugin on one host and two (work sharing);
//! - hot swap: how long a plugin's delivery stops while a new version is
//!   swapped in, 100 times under a steady publishing load;
//! - busy machine: the three reference plugins with a CPU hog per core
//!   against a quiet machine, and the honest plugins' offences (failed,
//!   retried, quarantined, throttled or background batches: target 0);
//! - isolation: the three reference plugins' throughput (durable) alone
//!   and beside each hostile test plugin (infinite loop, 4 GiB allocation,
//!   recursion, trap on every event, publish storm, 100 MB return, garbage
//!   outcomes, sandbox probing), each with a manifest of two attempts;
//! - concurrency 1, 2 and 4 workers ordering by subject, on a plugin that
//!   works 20 µs per event, and the cost of the epoch deadline and memory
//!   cap (the bare batched call with and without them);
//! - start to ready: the binary with the three reference plugins, compile
//!   cache cold and warm, and its resident memory idle;
//! - the pipelined durable rows and JetStream's are the median of three
//!   runs each;
//! - HTTP ingress: the real binary under wrk, single-event and batch mode
//!   (median of three runs after a warm-up), with a check that every
//!   plugin handled every accepted event, plain and with a token file, TLS
//!   and both (`fanout/http.rs`);
//! - latency: publish (HTTP) to handled, at fixed rates, durable and in
//!   memory, beside the three reference plugins (HDR histogram);
//! - the order flow (`fanout/orderflow.rs`): the three reference plugins on
//!   the real binary fed orders over HTTP until the audit is clean, against
//!   the same host publishing only and the hand-written peer (Python
//!   services on Redis Streams) at the same durability;
//! - validation (`fanout/validation.rs`): what event contracts cost, per
//!   check and on the order flow with topic schemas enforced, in turns
//!   with the flow without them;
//! - console: publishing with the observer, nobody watching and 1 and 4
//!   live tails, against no observer; memory per tail; the console API's
//!   latency on a log of 1 M events; page weight; first render in headless
//!   chromium (`fanout/console.rs`).
//!
//! Run with `scripts/bench.sh` (installs redis-server and wrk), or
//! `cargo bench -p plugbus --bench fanout`; rows whose tools are missing say
//! so. `PLUGBUS_BENCH_EVENTS` sets the event count (default 1,000,000);
//! `PLUGBUS_BENCH_ONLY` (a comma-separated subset of `floor,wasm,plugbus,
//! redis,swap,busy,isolation,concurrency,startup,durable,http,latency,console,orderflow,timers,validation`, or `chain`: the order flow's chain latency alone) runs only those rows, for profiling; `PLUGBUS_BENCH_DEBUG`
//! prints each plugin's time inside `handle` and its batch sizes;
//! `PLUGBUS_BENCH_BROKERS` (a comma-separated subset of
//! `redis,nats,nats-synced`) keeps only those brokers' rows,
//! `PLUGBUS_BENCH_BROKER_ROUNDS` sets how many times each broker's ceiling
//! and one host are measured in turns (default 3, the median reported) and
//! `PLUGBUS_BENCH_HOST_ARGS` adds flags to the hosts they start;
//! `PLUGBUS_BENCH_PIPELINED_ONLY=1` keeps, of the durable publishing rows,
//! only the pipelined ones and their peers.
//! `PLUGBUS_BENCH_HOSTILE` (a comma-separated subset of the hostile modes)
//! keeps only those isolation rows.

use hdrhistogram::Histogram;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

#[path = "fanout/binary.rs"]
mod binary;
#[path = "fanout/brokers.rs"]
mod brokers;
#[path = "fanout/console.rs"]
mod console;
#[path = "fanout/durable.rs"]
mod durable;
#[path = "fanout/http.rs"]
mod http;
#[path = "fanout/inprocess.rs"]
mod inprocess;
#[path = "fanout/orderflow.rs"]
mod orderflow;
#[path = "fanout/peers.rs"]
mod peers;
#[path = "fanout/stress.rs"]
mod stress;
#[path = "fanout/timers.rs"]
mod timers;
#[path = "fanout/validation.rs"]
mod validation;

use binary::{latency, start_to_ready};
use durable::{durable_pipelined, durable_publish, plugbus_durable};
use http::start_host;
use inprocess::{floor, plugbus_inprocess, wasm_call_ns};
use peers::{jetstream, redis_pubsub, redis_streams};
use plugbus::bus::Bus;
use plugbus::event::Event;
use plugbus::metrics::Metrics;
use plugbus::plugin::{DeliverySettings, Registry};
use plugbus::runtime::{Limits, Runtime};
use plugbus::store::log::Log;
use plugbus::store::{Fsync, Store};
use prometheus_client::metrics::counter::Counter;
use stress::{concurrency_rate, reference_rate, reference_run, swap_pauses, ISOLATION_RUNS};

// The allocator the plugbus binary uses (see host/src/main.rs), so that the
// in-process rows measure what the binary does.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const PAYLOAD_BYTES: usize = 256;
const SUBSCRIBERS: usize = 3;

pub(crate) fn payload(i: usize) -> Vec<u8> {
    let head = format!(
        r#"{{"order_id":"o-{i:08}","customer":"alice@example.com","items":[{{"sku":"widget","qty":2}}],"total_cents":2500,"pad":""#
    );
    let mut s = head;
    while s.len() < PAYLOAD_BYTES - 2 {
        s.push('x');
    }
    s.push_str("\"}");
    s.into_bytes()
}

fn events(n: usize) -> Vec<Event> {
    let template = Event::new("order.placed", Some("application/json".into()), payload(0))
        .expect("valid event");
    (0..n)
        .map(|i| {
            let mut e = template.clone();
            e.id = format!("{i:016x}");
            e
        })
        .collect()
}

pub(crate) struct Row {
    name: String,
    events_per_s: Option<f64>,
    note: String,
}

pub(crate) fn row(name: &str, events_per_s: Option<f64>, note: impl Into<String>) -> Row {
    Row {
        name: name.to_string(),
        events_per_s,
        note: note.into(),
    }
}

/// Start the three noop plugins of `dir` in `registry`.
fn start_noops(registry: &Registry, dir: &Path) {
    for i in 1..=SUBSCRIBERS {
        registry
            .start(&dir.join(format!("noop{i}.wasm")))
            .expect("noop starts");
    }
}

/// Wait until every plugin of `registry` has acked `n` events.
fn wait_handled(registry: &Registry, n: usize) {
    while registry.status().iter().any(|p| p.handled < n as u64) {
        thread::sleep(Duration::from_micros(200));
    }
}

/// Copies of `template` with ids `{prefix}-{i}` for `i` in `range`.
fn numbered(template: &Event, prefix: &str, range: std::ops::Range<usize>) -> Vec<Event> {
    range
        .map(|i| {
            let mut e = template.clone();
            e.id = format!("{prefix}-{i}");
            e
        })
        .collect()
}

/// The median of three runs of `run`, or the first error.
fn median_of_3(run: impl Fn() -> Result<f64, String>) -> Result<f64, String> {
    let mut rates = (0..3)
        .map(|_| run())
        .collect::<Result<Vec<f64>, String>>()?;
    rates.sort_by(f64::total_cmp);
    Ok(rates[1])
}

/// An `order.placed` the reference plugins accept, keyed by its subject.
fn order_event(i: usize) -> Event {
    let data = format!(
        r#"{{"order_id":"b-{i}","customer":"c{i}@example.com","items":[{{"sku":"sku-{}","qty":1}}],"total_cents":1999}}"#,
        i % 50
    );
    let mut e = Event::new(
        "order.placed",
        Some("application/json".into()),
        data.into_bytes(),
    )
    .expect("event");
    e.subject = Some(format!("b-{i}"));
    e
}

/// Write `name.wasm` (a copy of `wasm`) and, if any, `name.toml` in `dir`.
fn deploy(dir: &Path, name: &str, wasm: &str, manifest: Option<&str>) {
    std::fs::copy(wasm, dir.join(format!("{name}.wasm"))).expect("copy plugin");
    if let Some(m) = manifest {
        std::fs::write(dir.join(format!("{name}.toml")), m).expect("write manifest");
    }
}

/// The reference plugins; inventory publishes a follow-up per order, more
/// than the default publish rate at the benchmark's load, so its manifest
/// raises it (as the README says to for a high-volume publisher).
fn deploy_reference(dir: &Path) {
    use plugbus_e2e::artifacts;
    deploy(dir, "email", artifacts::EMAIL, None);
    deploy(
        dir,
        "inventory",
        artifacts::INVENTORY,
        Some("[publish]\nrate_events_per_s_max = 10000000\n"),
    );
    deploy(dir, "analytics", artifacts::ANALYTICS, None);
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

pub(crate) fn which(tool: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(tool))
            .find(|p| p.is_file())
    })
}

/// A child process killed (by its pid) when dropped.
pub(crate) struct Server(pub(crate) Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn main() {
    let n: usize = std::env::var("PLUGBUS_BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let only = std::env::var("PLUGBUS_BENCH_ONLY").unwrap_or_default();
    let want = |part: &str| only.is_empty() || only.split(',').any(|p| p.trim() == part);
    let cores = thread::available_parallelism().map_or(1, |c| c.get());
    let dir = std::env::temp_dir().join(format!("plugbus-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("bench dir");
    for i in 1..=SUBSCRIBERS {
        std::fs::copy(
            plugbus_e2e::artifacts::NOOP,
            dir.join(format!("noop{i}.wasm")),
        )
        .expect("copy noop");
    }
    let rt = Arc::new(Runtime::new(Limits::default(), None).expect("runtime"));
    eprintln!(
        "measuring with {n} events of {PAYLOAD_BYTES} bytes, {SUBSCRIBERS} subscribers, {cores} cores..."
    );

    let mut rows = Vec::new();
    let mut floor_rate = f64::NAN;
    if want("floor") {
        floor_rate = floor(n);
        rows.push(row(
            "floor: crossbeam fan-out, 3 native no-op consumers",
            Some(floor_rate),
            "",
        ));
    }

    let (mut limit1, mut limit64) = (f64::NAN, f64::NAN);
    if want("wasm") {
        let call1 = wasm_call_ns(&rt, &dir.join("noop1.wasm"), 1, n / 4);
        let call64 = wasm_call_ns(&rt, &dir.join("noop1.wasm"), 64, n);
        rows.push(row(
            "wasm: bare handle call, batch 1 (1 plugin)",
            Some(1e9 / call1),
            format!("{call1:.0} ns/event"),
        ));
        rows.push(row(
            "wasm: bare handle call, batch 64 (1 plugin)",
            Some(1e9 / call64),
            format!("{call64:.0} ns/event"),
        ));
        limit1 = cores as f64 * 1e9 / (call1 * SUBSCRIBERS as f64);
        limit64 = cores as f64 * 1e9 / (call64 * SUBSCRIBERS as f64);
        rows.push(row(
            "wasm limit: 3 plugins on all cores, batch 64",
            Some(limit64),
            format!("{cores} cores / (3 x {call64:.0} ns)"),
        ));
    }

    let mut pb64 = f64::NAN;
    if want("plugbus") {
        let pb1 = plugbus_inprocess(rt.clone(), &dir, 1, n / 4);
        pb64 = plugbus_inprocess(rt.clone(), &dir, 64, n);
        rows.push(row(
            "plugbus: 3 wasm plugins, batch 1",
            Some(pb1),
            format!(
                "{:.2}x floor, {:.2}x wasm limit at batch 1",
                pb1 / floor_rate,
                pb1 / limit1
            ),
        ));
        rows.push(row(
            "plugbus: 3 wasm plugins, batch 64",
            Some(pb64),
            format!(
                "{:.2}x floor, {:.2}x wasm limit",
                pb64 / floor_rate,
                pb64 / limit64
            ),
        ));
    }

    if want("redis") {
        let sent = (n / 5).max(1000);
        match redis_pubsub(sent) {
            Ok((rate, got)) => rows.push(row(
                "redis-server pub/sub, 3 subscribers (pipelined PUBLISH)",
                Some(rate),
                format!(
                    "sent {sent}; the subscribers received {got:?}; plugbus batch 64 = {:.2}x",
                    pb64 / rate
                ),
            )),
            Err(e) => rows.push(row("redis-server pub/sub", None, format!("skipped: {e}"))),
        }
    }

    if want("swap") {
        let swaps = 100;
        let mut pauses = swap_pauses(rt.clone(), swaps);
        pauses.sort_unstable();
        let at = |q: f64| pauses[((pauses.len() as f64 * q) as usize).min(pauses.len() - 1)];
        rows.push(row(
            "hot swap under load: delivery pause per swap (µs), 100 swaps, 5000 events/s",
            None,
            format!(
                "p50 {} µs, p99 {} µs, max {} µs (target p99 ≤ 5000 µs)",
                at(0.5),
                at(0.99),
                pauses.last().copied().unwrap_or(0)
            ),
        ));
    }

    if want("busy") {
        // The reference plugins on a machine whose every core is kept busy
        // by another program: how much slower, and whether an honest
        // plugin is ever judged for waiting for a CPU (target: 0 offences).
        let k = (n / 10).max(20_000);
        let (mut quiet, mut busy, mut offences) = (Vec::new(), Vec::new(), 0);
        let mut hog_count = 0;
        for _ in 0..3 {
            quiet.push(reference_run(rt.clone(), None, k));
            let hogs = plugbus_e2e::Hogs::start().expect("CPU hogs (yes)");
            hog_count = hogs.count();
            busy.push(reference_run(rt.clone(), None, k));
            drop(hogs);
        }
        offences += quiet.iter().chain(&busy).map(|r| r.1).sum::<u64>();
        let median = |v: &[(f64, u64)]| {
            let mut r: Vec<f64> = v.iter().map(|r| r.0).collect();
            r.sort_by(f64::total_cmp);
            r[r.len() / 2]
        };
        let (quiet, busy) = (median(&quiet), median(&busy));
        rows.push(row(
            &format!("busy machine: the 3 reference plugins with {hog_count} CPU hogs"),
            Some(busy),
            format!(
                "{:.0} % of quiet ({quiet:.0}/s, alternating, medians of 3); honest-plugin offences {offences} (target 0)",
                100.0 * busy / quiet
            ),
        ));
    }
    if want("isolation") {
        // Each hostile plugin's row is compared with runs of the reference
        // plugins alone made right beside it (alternating, ISOLATION_RUNS of
        // each, medians), so that the machine's drift does not make the
        // ratio.
        let k = (n / 10).max(20_000);
        let retry = "[retry]\nmax_attempts = 2\nbackoff_ms_min = 10\nbackoff_ms_max = 20\n";
        let mut all_alone = Vec::new();
        let hostile = std::env::var("PLUGBUS_BENCH_HOSTILE").unwrap_or_default();
        for (mode, extra) in [
            ("loop", ""),
            ("alloc", ""),
            ("recurse", ""),
            ("trap", ""),
            (
                "storm",
                "[publish]\nallow = [\"storm.>\"]\nrate_events_per_s_max = 50\n",
            ),
            ("big", "[limits]\nmemory_bytes_max = 268435456\n"),
            ("garbage", ""),
            ("sandbox", ""),
        ] {
            if !hostile.is_empty() && !hostile.split(',').any(|m| m.trim() == mode) {
                continue;
            }
            let manifest = format!("[config]\nmode = \"{mode}\"\n{extra}{retry}");
            let name = format!("hostile_{mode}");
            let (mut alone, mut beside) = (Vec::new(), Vec::new());
            for _ in 0..ISOLATION_RUNS {
                alone.push(reference_rate(rt.clone(), None, k));
                beside.push(reference_rate(rt.clone(), Some((&name, &manifest)), k));
            }
            eprintln!("isolation `{mode}`: alone {alone:.0?}, beside {beside:.0?} events/s");
            let median = |v: &mut Vec<f64>| {
                v.sort_by(f64::total_cmp);
                v[v.len() / 2]
            };
            let (alone, beside) = (median(&mut alone), median(&mut beside));
            all_alone.push(alone);
            rows.push(row(
                &format!("isolation: the 3 reference plugins beside hostile `{mode}`"),
                Some(beside),
                format!(
                    "{:.0} % of alone ({alone:.0}/s, run beside it; target ≥ 90 %)",
                    100.0 * beside / alone
                ),
            ));
        }
        all_alone.sort_by(f64::total_cmp);
        if let Some(&median) = all_alone.get(all_alone.len() / 2) {
            rows.push(row(
                "isolation: the 3 reference plugins alone (durable, fsync always; median of the runs above)",
                Some(median),
                "baseline",
            ));
        }
    }

    if want("concurrency") {
        let k = (n / 20).max(20_000);
        let work_us = 20;
        let one = concurrency_rate(rt.clone(), 1, work_us, k);
        for workers in [1, 2, 4] {
            let rate = if workers == 1 {
                one
            } else {
                concurrency_rate(rt.clone(), workers, work_us, k)
            };
            rows.push(row(
                &format!(
                    "concurrency {workers}, ordering by subject ({work_us} µs of work per event)"
                ),
                Some(rate),
                format!("{:.2}x one worker, {cores} cores", rate / one),
            ));
        }
        let unlimited = Arc::new(
            Runtime::new(
                Limits {
                    enforce: false,
                    ..Limits::default()
                },
                None,
            )
            .expect("runtime"),
        );
        let on = median_of_3(|| Ok::<_, String>(wasm_call_ns(&rt, &dir.join("noop1.wasm"), 64, n)))
            .unwrap_or(f64::NAN);
        let off = median_of_3(|| {
            Ok::<_, String>(wasm_call_ns(&unlimited, &dir.join("noop1.wasm"), 64, n))
        })
        .unwrap_or(f64::NAN);
        rows.push(row(
            "limits off: bare handle call, batch 64, no epoch deadline or memory cap",
            Some(1e9 / off),
            format!("{off:.0} ns/event"),
        ));
        rows.push(row(
            "limits on: the same with epoch deadline and memory cap",
            Some(1e9 / on),
            format!(
                "{on:.0} ns/event: limits cost {:.0} %",
                100.0 * (on - off) / off
            ),
        ));
    }

    let mut startup = Vec::new();
    if want("startup") {
        let ready = dir.join("ready");
        std::fs::create_dir_all(&ready).expect("dir");
        deploy_reference(&ready);
        let cache = dir.join("ready-cache");
        for (label, cold, tiered) in [
            (
                "cold, compiled optimized at once (--no-tiering)",
                true,
                false,
            ),
            (
                "cold (baseline first, optimized in the background)",
                true,
                true,
            ),
            ("warm", false, true),
        ] {
            let mut runs: Vec<(f64, f64, u64)> = (0..3)
                .filter_map(|_| start_to_ready(&ready, &cache, cold, tiered).ok())
                .collect();
            runs.sort_by(|a, b| a.0.total_cmp(&b.0));
            startup.push((label, runs.get(runs.len() / 2).copied()));
        }
    }

    if want("durable") {
        let m = (n / 5).max(10_000);
        let interval = Fsync::Interval(Duration::from_millis(10));
        // The pipelined rows and JetStream's: the median of three runs each
        // (one run is short, and the first in a process is cold).
        let js = median_of_3(|| jetstream(m));
        let js_rate = js.as_ref().ok().copied();
        let vs_js =
            |rate: f64| js_rate.map_or(String::new(), |j| format!("{:.2}x JetStream", rate / j));
        let all = !std::env::var("PLUGBUS_BENCH_PIPELINED_ONLY").is_ok_and(|v| v == "1");
        for (name, fsync, publishers, per_append, count) in [
            (
                "durable publish, fsync always, 1 publisher (ack per event)",
                Fsync::Always,
                1,
                1,
                m / 20,
            ),
            (
                "durable publish, fsync always, 64 publishers (ack per event)",
                Fsync::Always,
                64,
                1,
                m,
            ),
            (
                "durable publish, fsync always, 1 publisher, 64 per append",
                Fsync::Always,
                1,
                64,
                m,
            ),
            (
                "durable publish, fsync interval=10ms, 1 publisher (ack per event)",
                interval,
                1,
                1,
                m / 4,
            ),
            (
                "durable publish, fsync interval=10ms, 64 publishers (ack per event)",
                interval,
                64,
                1,
                m,
            ),
        ]
        .into_iter()
        .filter(|_| all)
        {
            let rate = durable_publish(fsync, publishers, per_append, count);
            rows.push(row(name, Some(rate), vs_js(rate)));
        }
        for (name, fsync) in [
            (
                "durable publish, fsync always, 1 publisher pipelined (256 in flight, median of 3)",
                Fsync::Always,
            ),
            (
                "durable publish, fsync interval=10ms, 1 publisher pipelined (256 in flight, median of 3)",
                interval,
            ),
        ] {
            let rate = median_of_3(|| Ok::<_, String>(durable_pipelined(fsync, 256, m)))
                .unwrap_or(f64::NAN);
            rows.push(row(name, Some(rate), vs_js(rate)));
        }
        match js {
            Ok(rate) => rows.push(row(
                "NATS JetStream, file storage, pipelined publish-with-ack (256 in flight, median of 3)",
                Some(rate),
                "nats-server from Debian; does not fsync each message by default",
            )),
            Err(e) => rows.push(row("NATS JetStream", None, format!("skipped: {e}"))),
        }
        for sync in ["always", "everysec"] {
            match redis_streams(sync, m) {
                Ok(rate) => rows.push(row(
                    &format!("Redis Streams XADD, appendfsync {sync}, pipelined 64"),
                    Some(rate),
                    "",
                )),
                Err(e) => rows.push(row("Redis Streams", None, format!("skipped: {e}"))),
            }
        }
        let durable_fanout = plugbus_durable(rt.clone(), &dir, m);
        rows.push(row(
            "plugbus: 3 wasm plugins through the durable log (fsync always, appends of 1000)",
            Some(durable_fanout),
            if pb64.is_nan() {
                String::new()
            } else {
                format!("{:.2}x the in-memory bus", durable_fanout / pb64)
            },
        ));
    }

    if want("http") {
        http::rows(&dir, &mut rows);
    }

    let mut latencies = Vec::new();
    if want("brokers") {
        brokers::rows(&dir, &mut rows, n);
        brokers::latencies(&dir, &mut latencies);
    }

    if want("latency") {
        let data = dir.join("latency-data");
        let data = data.to_string_lossy().into_owned();
        for (name, args, rate) in [
            (
                "durable, fsync always",
                vec!["--data", data.as_str(), "--fsync", "always"],
                1000,
            ),
            (
                "durable, fsync always",
                vec!["--data", data.as_str(), "--fsync", "always"],
                5000,
            ),
            ("in memory (--memory)", vec!["--memory"], 1000),
            ("in memory (--memory)", vec!["--memory"], 5000),
        ] {
            let _ = std::fs::remove_dir_all(&data);
            latencies.push((name, rate, latency(&dir, &args, rate, 5)));
        }
    }
    if want("console") {
        console::rows(n, &mut rows);
    }
    let timer_table = if want("timers") {
        timers::table()
    } else {
        String::new()
    };
    let orderflow = if want("orderflow") {
        orderflow::table(&dir)
    } else if !only.is_empty() && want("chain") {
        orderflow::chain_latency(&dir)
    } else {
        String::new()
    };
    let validation = if want("validation") {
        validation::table(&dir)
    } else {
        String::new()
    };
    let _ = std::fs::remove_dir_all(&dir);

    if !rows.is_empty() {
        println!();
        println!("| measurement | events/s | ns/event | notes |");
        println!("|---|---:|---:|---|");
    }
    for r in rows {
        match r.events_per_s {
            Some(rate) => println!(
                "| {} | {:.0} | {:.0} | {} |",
                r.name,
                rate,
                1e9 / rate,
                r.note
            ),
            None => println!("| {} | - | - | {} |", r.name, r.note),
        }
    }
    if !startup.is_empty() {
        println!();
        println!("Start to ready (spawn to `plugbus ready`, the real binary with the three reference plugins, durable, median of 3), to every plugin on its optimized build, and resident memory a second after that:");
        println!();
        println!("| compile cache | start to ready (ms) | target | to optimized (ms) | idle RSS (MiB) | target |");
        println!("|---|---:|---:|---:|---:|---:|");
        for (label, run) in startup {
            let target = if label == "warm" {
                "≤ 100"
            } else {
                "≤ 300"
            };
            match run {
                Some((ms, optimized, kib)) => println!(
                    "| {label} | {ms:.0} | {target} | {optimized:.0} | {:.1} | ≤ 50 |",
                    kib as f64 / 1024.0
                ),
                None => println!("| {label} | - | {target} | - | - | ≤ 50 |"),
            }
        }
    }
    print!("{orderflow}");
    print!("{validation}");
    print!("{timer_table}");
    if !latencies.is_empty() {
        println!();
        println!("Latency from the host accepting an event (HTTP, one event per POST, at a fixed rate for 5 s) to the probe plugin's handle seeing it, beside the three reference plugins (HDR histogram, µs):");
        println!();
        println!("| mode | events/s | p50 | p99 | p99.9 | max | samples |");
        println!("|---|---:|---:|---:|---:|---:|---:|");
        for (name, rate, h) in latencies {
            match h {
                Ok(h) => println!(
                    "| {name} | {rate} | {} | {} | {} | {} | {} |",
                    h.value_at_quantile(0.5),
                    h.value_at_quantile(0.99),
                    h.value_at_quantile(0.999),
                    h.max(),
                    h.len()
                ),
                Err(e) => println!("| {name} | {rate} | - | - | - | - | skipped: {e} |"),
            }
        }
    }
}
