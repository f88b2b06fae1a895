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
//!   memory, beside the three reference plugins (HDR histogram).
//!
//! Run with `scripts/bench.sh` (installs redis-server and wrk), or
//! `cargo bench -p plugbus --bench fanout`; rows whose tools are missing say
//! so. `PLUGBUS_BENCH_EVENTS` sets the event count (default 1,000,000);
//! `PLUGBUS_BENCH_ONLY` (a comma-separated subset of `floor,wasm,plugbus,
//! redis,swap,busy,isolation,concurrency,startup,durable,http,latency`) runs only those rows, for profiling; `PLUGBUS_BENCH_DEBUG`
//! prints each plugin's time inside `handle` and its batch sizes;
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

#[path = "fanout/http.rs"]
mod http;

use http::start_host;
use plugbus::bus::Bus;
use plugbus::event::Event;
use plugbus::metrics::Metrics;
use plugbus::plugin::{DeliverySettings, Registry};
use plugbus::runtime::{self, CallMode, InstanceConfig, Limits, Runtime};
use plugbus::store::log::Log;
use plugbus::store::{Fsync, Store};
use prometheus_client::metrics::counter::Counter;

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

/// Raw crossbeam fan-out to three native consumers that drain in batches.
/// The publisher builds each event as it goes, as ingress does.
fn floor(n: usize) -> f64 {
    let template = events(1).remove(0);
    let mut txs = Vec::new();
    let mut consumers = Vec::new();
    for _ in 0..SUBSCRIBERS {
        let (tx, rx) = crossbeam_channel::bounded::<Arc<Event>>(8192);
        txs.push(tx);
        consumers.push(thread::spawn(move || {
            let mut seen = 0usize;
            let mut bytes = 0usize;
            while let Ok(e) = rx.recv() {
                seen += 1;
                bytes += e.data.len();
                for e in rx.try_iter().take(63) {
                    seen += 1;
                    bytes += e.data.len();
                }
            }
            std::hint::black_box(bytes);
            seen
        }));
    }
    let start = Instant::now();
    for _ in 0..n {
        let e = Arc::new(template.clone());
        for tx in &txs {
            tx.send(e.clone()).expect("consumer alive");
        }
    }
    drop(txs);
    for c in consumers {
        assert_eq!(c.join().expect("consumer"), n);
    }
    n as f64 / start.elapsed().as_secs_f64()
}

/// The bare batched call into one trivial plugin: ns per event.
fn wasm_call_ns(rt: &Runtime, noop: &Path, batch: usize, n: usize) -> f64 {
    let loaded = Arc::new(rt.load_file(noop).expect("noop loads"));
    let (mut instance, _) =
        runtime::instantiate(loaded, InstanceConfig::default()).expect("instantiates");
    let evs: plugbus::event::Chunk = events(batch).into_iter().map(Arc::new).collect();
    let attempts = vec![1u32; batch];
    let calls = (n / batch).max(1);
    let mut call = || {
        let r = instance
            .handle(
                &evs,
                0..batch,
                &attempts,
                CallMode::Foreground,
                Duration::from_secs(1),
            )
            .expect("handle");
        std::hint::black_box(r.outcomes.len());
    };
    for _ in 0..calls.min(1000) {
        call();
    }
    let start = Instant::now();
    for _ in 0..calls {
        call();
    }
    start.elapsed().as_nanos() as f64 / (calls * batch) as f64
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

/// plugbus in-process: bus + workers + three wasm plugins.
fn plugbus_inprocess(rt: Arc<Runtime>, dir: &Path, batch: usize, n: usize) -> f64 {
    let metrics = Arc::new(Metrics::new());
    let bus = Arc::new(Bus::new(Duration::from_secs(30), metrics.clone()));
    let settings = DeliverySettings {
        batch_events_max: batch,
        queue_events_max: 8192,
        ..DeliverySettings::default()
    };
    let metrics_dbg = metrics.clone();
    let registry = Registry::new(
        plugbus::dispatch::Dispatch::Memory(bus.clone()),
        rt,
        metrics,
        settings,
    );
    start_noops(&registry, dir);
    // The publisher builds events as it goes (as ingress does) and
    // publishes them 64 at a time.
    let template = events(1).remove(0);
    let start = Instant::now();
    let mut sent = 0;
    while sent < n {
        let k = 64.min(n - sent);
        let chunk: Vec<Event> = (0..k).map(|_| template.clone()).collect();
        bus.publish(chunk).expect("no backpressure timeout");
        sent += k;
    }
    wait_handled(&registry, n);
    let rate = n as f64 / start.elapsed().as_secs_f64();
    if std::env::var_os("PLUGBUS_BENCH_DEBUG").is_some() {
        eprintln!("wall {:?}", start.elapsed());
        for l in metrics_dbg.encode().lines().filter(|l| {
            l.contains("handle_duration_seconds_sum")
                || l.contains("batch_events_sum")
                || l.contains("batch_events_count")
        }) {
            eprintln!("{l}");
        }
    }
    registry.shutdown();
    rate
}

/// A log in a fresh temporary directory; hand both to [`drop_log`].
fn temp_log(name: &str, fsync: Fsync) -> (PathBuf, Arc<Log>) {
    let dir = std::env::temp_dir().join(format!("plugbus-bench-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let log = Log::start(
        Store::open(&dir, fsync).expect("store"),
        fsync,
        Counter::default(),
    )
    .expect("log");
    (dir, log)
}

/// Close a [`temp_log`] and remove its directory.
fn drop_log(dir: PathBuf, log: Arc<Log>) {
    log.close();
    drop(log);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Durable publishing through the log: `publishers` threads, each
/// appending `per_append` events at a time and waiting for the ack.
fn durable_publish(fsync: Fsync, publishers: usize, per_append: usize, n: usize) -> f64 {
    let (dir, log) = temp_log("log", fsync);
    let template = events(1).remove(0);
    let each = n / publishers;
    let start = Instant::now();
    let threads: Vec<_> = (0..publishers)
        .map(|p| {
            let (log, template) = (log.clone(), template.clone());
            thread::spawn(move || {
                let mut sent = 0;
                while sent < each {
                    let k = per_append.min(each - sent);
                    log.append(numbered(&template, &p.to_string(), sent..sent + k))
                        .expect("append");
                    sent += k;
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("publisher");
    }
    let rate = (each * publishers) as f64 / start.elapsed().as_secs_f64();
    drop_log(dir, log);
    rate
}

/// One publisher with up to `in_flight` single-event appends awaiting their
/// acks (pipelined, as the JetStream row).
fn durable_pipelined(fsync: Fsync, in_flight: usize, n: usize) -> f64 {
    let (dir, log) = temp_log("plog", fsync);
    let template = events(1).remove(0);
    let start = Instant::now();
    let mut pending = std::collections::VecDeque::new();
    for i in 0..n {
        let mut e = template.clone();
        e.id = format!("p-{i}");
        pending.push_back(log.submit(vec![e]).expect("submit"));
        if pending.len() >= in_flight {
            if let Some(t) = pending.pop_front() {
                t.wait().expect("ack");
            }
        }
    }
    for t in pending {
        t.wait().expect("ack");
    }
    let rate = n as f64 / start.elapsed().as_secs_f64();
    drop_log(dir, log);
    rate
}

/// Three wasm plugins fed through the durable log (fsync always, one
/// publisher appending 1000 at a time): events/s handled by all three.
fn plugbus_durable(rt: Arc<Runtime>, plugins: &Path, n: usize) -> f64 {
    let (dir, log) = temp_log("dlog", Fsync::Always);
    let metrics = Arc::new(Metrics::new());
    let registry = Registry::new(
        plugbus::dispatch::Dispatch::Durable(log.clone()),
        rt,
        metrics,
        DeliverySettings {
            queue_events_max: 8192,
            ..DeliverySettings::default()
        },
    );
    start_noops(&registry, plugins);
    let template = events(1).remove(0);
    let start = Instant::now();
    let mut sent = 0;
    while sent < n {
        let k = 1000.min(n - sent);
        log.append(numbered(&template, "d", sent..sent + k))
            .expect("append");
        sent += k;
    }
    wait_handled(&registry, n);
    let rate = n as f64 / start.elapsed().as_secs_f64();
    registry.shutdown();
    drop(registry);
    drop_log(dir, log);
    rate
}

/// The median of three runs of `run`, or the first error.
fn median_of_3(run: impl Fn() -> Result<f64, String>) -> Result<f64, String> {
    let mut rates = (0..3)
        .map(|_| run())
        .collect::<Result<Vec<f64>, String>>()?;
    rates.sort_by(f64::total_cmp);
    Ok(rates[1])
}

/// Swap pause under load: a plugin (the swapper test plugin, its version
/// tag patched per swap) is replaced `swaps` times through the registry
/// while a publisher appends 5000 events/s to the durable log; each
/// swap's pause is the time from the swap (at a batch boundary) to the
/// new version's first `handle` call, less time spent waiting for events.
/// Returns the pauses in µs.
fn swap_pauses(rt: Arc<Runtime>, swaps: u32) -> Vec<u64> {
    let (dir, log) = temp_log("swap", Fsync::Always);
    let plugins = dir.join("plugins");
    std::fs::create_dir_all(&plugins).expect("plugin dir");
    let file = plugins.join("swapper.wasm");
    let write_version = |v: u32| {
        let (bytes, tag) = plugbus_e2e::swapper_version(v);
        std::fs::write(&file, bytes).expect("write version");
        tag
    };
    write_version(0);
    let registry = Registry::new(
        plugbus::dispatch::Dispatch::Durable(log.clone()),
        rt,
        Arc::new(Metrics::new()),
        DeliverySettings::default(),
    );
    registry.start(&file).expect("swapper starts");
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let publisher = {
        let (log, stop) = (log.clone(), stop.clone());
        thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(Ordering::Acquire) {
                let batch: Vec<Event> = (n..n + 50)
                    .map(|i| {
                        let mut e = Event::new("swap.one", None, b"{}".to_vec()).expect("event");
                        e.subject = Some(format!("k{}", i % 1000));
                        e
                    })
                    .collect();
                log.append(batch).expect("append");
                n += 50;
                thread::sleep(Duration::from_millis(10));
            }
        })
    };
    let status = |r: &Registry| r.status().into_iter().find(|p| p.name == "swapper");
    let mut pauses = Vec::with_capacity(swaps as usize);
    for v in 1..=swaps {
        let tag = write_version(v);
        registry.reload(&file).expect("new version loads");
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut handled_at_swap = None;
        loop {
            let p = status(&registry).expect("running");
            if p.version == tag {
                let base = *handled_at_swap.get_or_insert(p.handled);
                // A batch handled after the swap: the pause is measured.
                if p.handled > base {
                    pauses.extend(p.swap_pause_us);
                    break;
                }
            }
            assert!(Instant::now() < deadline, "swap {v} not taken");
            thread::sleep(Duration::from_millis(2));
        }
    }
    stop.store(true, Ordering::Release);
    publisher.join().expect("publisher");
    registry.shutdown();
    drop(registry);
    drop_log(dir, log);
    pauses
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

/// Runs of the reference plugins alone and beside each hostile plugin.
const ISOLATION_RUNS: usize = 5;

/// The three reference plugins through the durable log (fsync always,
/// appends of 500), with `beside` (a hostile plugin's name and manifest)
/// running next to them: orders/s handled by all three.
fn reference_rate(rt: Arc<Runtime>, beside: Option<(&str, &str)>, n: usize) -> f64 {
    reference_run(rt, beside, n).0
}

/// [`reference_rate`], and the offences of the reference plugins: failed,
/// retried or trapped batches, quarantines, batches throttled or in the
/// background (an honest plugin has none).
fn reference_run(rt: Arc<Runtime>, beside: Option<(&str, &str)>, n: usize) -> (f64, u64) {
    let (dir, log) = temp_log("iso", Fsync::Always);
    let plugins = dir.join("plugins");
    std::fs::create_dir_all(&plugins).expect("plugin dir");
    deploy_reference(&plugins);
    if let Some((name, manifest)) = beside {
        deploy(
            &plugins,
            name,
            plugbus_e2e::artifacts::HOSTILE,
            Some(manifest),
        );
    }
    let metrics = Arc::new(Metrics::new());
    let registry = Registry::new(
        plugbus::dispatch::Dispatch::Durable(log.clone()),
        rt,
        metrics.clone(),
        DeliverySettings::default(),
    );
    let failed = registry.load_dir(&plugins).expect("plugin dir loads");
    assert!(failed.is_empty(), "{failed:?}");
    let start = Instant::now();
    let mut sent = 0;
    while sent < n {
        let k = 500.min(n - sent);
        log.append((sent..sent + k).map(order_event).collect())
            .expect("append");
        sent += k;
    }
    let reference = |r: &Registry| {
        r.status()
            .into_iter()
            .filter(|p| ["email", "inventory", "analytics"].contains(&p.name.as_str()))
            .all(|p| p.handled >= n as u64)
    };
    while !reference(&registry) {
        thread::sleep(Duration::from_millis(1));
    }
    let rate = n as f64 / start.elapsed().as_secs_f64();
    let mut offences = 0;
    for p in registry.status() {
        if !["email", "inventory", "analytics"].contains(&p.name.as_str()) {
            continue;
        }
        let labels = plugbus::metrics::plugin(&p.name);
        offences += p.failed
            + p.retried
            + p.quarantines
            + metrics.traps.get_or_create(&labels).get()
            + metrics.low_priority_batches.get_or_create(&labels).get()
            + metrics.background_batches.get_or_create(&labels).get();
    }
    registry.shutdown();
    drop(registry);
    drop_log(dir, log);
    (rate, offences)
}

/// A plugin spending `work_us` µs per event with `workers` workers
/// (ordering by subject, 1000 subjects), fed through the in-memory bus:
/// events/s handled.
fn concurrency_rate(rt: Arc<Runtime>, workers: usize, work_us: u64, n: usize) -> f64 {
    let dir = std::env::temp_dir().join(format!(
        "plugbus-bench-conc-{}-{workers}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("work.wasm");
    deploy(
        &dir,
        "work",
        plugbus_e2e::artifacts::HOSTILE,
        Some(&format!(
            "concurrency = {workers}\nordering_key = \"subject\"\n[config]\nmode = \"work\"\nwork_us = \"{work_us}\"\nsubscribe = \"order.placed\"\n"
        )),
    );
    let bus = Arc::new(Bus::new(Duration::from_secs(60), Arc::new(Metrics::new())));
    let registry = Registry::new(
        plugbus::dispatch::Dispatch::Memory(bus.clone()),
        rt,
        Arc::new(Metrics::new()),
        DeliverySettings::default(),
    );
    registry.start(&file).expect("work plugin starts");
    let template = events(1).remove(0);
    let start = Instant::now();
    let mut sent = 0;
    while sent < n {
        let k = 64.min(n - sent);
        let chunk: Vec<Event> = (sent..sent + k)
            .map(|i| {
                let mut e = template.clone();
                e.subject = Some(format!("k{}", i % 1000));
                e
            })
            .collect();
        bus.publish(chunk).expect("no backpressure timeout");
        sent += k;
    }
    wait_handled(&registry, n);
    let rate = n as f64 / start.elapsed().as_secs_f64();
    registry.shutdown();
    let _ = std::fs::remove_dir_all(&dir);
    rate
}

/// Start the real binary with the three reference plugins and a compile
/// cache in `cache` (emptied first when `cold`): ms from spawn to ready,
/// and the resident memory (KiB) after a second idle.
/// One start of the real binary on the plugins in `dir` (with an emptied
/// compile cache when `cold`, and `--no-tiering` when not `tiered`): ms to
/// `plugbus ready`, ms until every plugin runs its optimized build, and the
/// resident memory (KiB) a second after that.
fn start_to_ready(
    dir: &Path,
    cache: &Path,
    cold: bool,
    tiered: bool,
) -> Result<(f64, f64, u64), String> {
    if cold {
        let _ = std::fs::remove_dir_all(cache);
    }
    let data = dir.join("ready-data");
    let _ = std::fs::remove_dir_all(&data);
    let started = Instant::now();
    let cache_arg = cache.to_string_lossy().into_owned();
    let data_arg = data.to_string_lossy().into_owned();
    let mut args = vec!["--cache-dir", &cache_arg, "--data", &data_arg];
    if !tiered {
        args.push("--no-tiering");
    }
    let (server, url) = start_host(dir, &args)?;
    let ready_ms = started.elapsed().as_secs_f64() * 1e3;
    let optimized = || -> Option<bool> {
        let v: serde_json::Value = ureq::get(&format!("{url}/v1/plugins"))
            .call()
            .ok()?
            .into_json()
            .ok()?;
        let list = v["plugins"].as_array()?;
        Some(!list.is_empty() && list.iter().all(|p| p["tier"] == "optimized"))
    };
    while optimized() != Some(true) {
        if started.elapsed() > Duration::from_secs(60) {
            return Err("the optimized builds never came".into());
        }
        thread::sleep(Duration::from_millis(2));
    }
    let optimized_ms = started.elapsed().as_secs_f64() * 1e3;
    thread::sleep(Duration::from_secs(1));
    let status = std::fs::read_to_string(format!("/proc/{}/status", server.0.id()))
        .map_err(|e| e.to_string())?;
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or("no VmRSS")?;
    drop(server);
    let _ = std::fs::remove_dir_all(&data);
    Ok((ready_ms, optimized_ms, rss_kib))
}

/// NATS JetStream, file storage, one publisher with up to 256 publishes
/// awaiting their acks (pipelined).
fn jetstream(n: usize) -> Result<f64, String> {
    let bin = which("nats-server")
        .or_else(|| Some(PathBuf::from("/usr/sbin/nats-server")).filter(|p| p.is_file()))
        .ok_or("nats-server not installed")?;
    let port = free_port();
    let store = std::env::temp_dir().join(format!("plugbus-bench-js-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&store);
    let _server = Server(
        Command::new(bin)
            .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
            .arg(&store)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| e.to_string())?,
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let payload = bytes::Bytes::from(payload(0));
    let rate = rt.block_on(async move {
        let url = format!("nats://127.0.0.1:{port}");
        let mut client = None;
        for _ in 0..100 {
            if let Ok(c) = async_nats::connect(&url).await {
                client = Some(c);
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let js = async_nats::jetstream::new(client.ok_or("nats-server did not come up")?);
        js.get_or_create_stream(async_nats::jetstream::stream::Config {
            name: "ORDERS".into(),
            subjects: vec!["order.>".into()],
            storage: async_nats::jetstream::stream::StorageType::File,
            ..Default::default()
        })
        .await
        .map_err(|e| e.to_string())?;
        let start = Instant::now();
        let mut pending = std::collections::VecDeque::new();
        for _ in 0..n {
            pending.push_back(
                js.publish("order.placed", payload.clone())
                    .await
                    .map_err(|e| e.to_string())?,
            );
            if pending.len() >= 256 {
                if let Some(ack) = pending.pop_front() {
                    ack.await.map_err(|e| e.to_string())?;
                }
            }
        }
        for ack in pending {
            ack.await.map_err(|e| e.to_string())?;
        }
        Ok::<f64, String>(n as f64 / start.elapsed().as_secs_f64())
    });
    let _ = std::fs::remove_dir_all(&store);
    rate
}

/// Start Debian's redis-server on a free loopback port with `extra`
/// arguments (stopped by pid when the `Server` drops), and connect.
fn start_redis(extra: &[&str]) -> Result<(Server, redis::Client, redis::Connection), String> {
    let bin = which("redis-server").ok_or("redis-server not installed")?;
    let port = free_port().to_string();
    let server = Server(
        Command::new(bin)
            .args(["--port", &port, "--bind", "127.0.0.1", "--save", ""])
            .args(extra)
            .stdout(Stdio::null())
            .spawn()
            .map_err(|e| e.to_string())?,
    );
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/").as_str())
        .map_err(|e| e.to_string())?;
    let con = (0..100)
        .find_map(|_| {
            thread::sleep(Duration::from_millis(50));
            client.get_connection().ok()
        })
        .ok_or("redis-server did not come up")?;
    Ok((server, client, con))
}

/// Redis Streams: `XADD` pipelined 64 per round trip on one connection,
/// with the append-only file synced `always` or `everysec`.
fn redis_streams(appendfsync: &str, n: usize) -> Result<f64, String> {
    let dir = std::env::temp_dir().join(format!("plugbus-bench-rs-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let dir_arg = dir.display().to_string();
    let (_server, _client, mut con) = start_redis(&[
        "--appendonly",
        "yes",
        "--appendfsync",
        appendfsync,
        "--dir",
        &dir_arg,
    ])?;
    let body = payload(0);
    let start = Instant::now();
    let mut sent = 0;
    while sent < n {
        let mut pipe = redis::pipe();
        for _ in 0..64.min(n - sent) {
            pipe.cmd("XADD")
                .arg("orders")
                .arg("*")
                .arg("data")
                .arg(&body)
                .ignore();
            sent += 1;
        }
        pipe.query::<()>(&mut con).map_err(|e| e.to_string())?;
    }
    let rate = n as f64 / start.elapsed().as_secs_f64();
    let _ = std::fs::remove_dir_all(&dir);
    Ok(rate)
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

/// redis-server pub/sub, three subscribers: delivered events/s per
/// subscriber and what each got.
fn redis_pubsub(n: usize) -> Result<(f64, Vec<usize>), String> {
    let (_server, client, mut con) = start_redis(&["--appendonly", "no"])?;
    let last_seen = Arc::new(AtomicU64::new(0));
    let t0 = Instant::now();
    let mut subs = Vec::new();
    let (ready_tx, ready_rx) = crossbeam_channel::bounded(SUBSCRIBERS);
    for _ in 0..SUBSCRIBERS {
        let client = client.clone();
        let (last_seen, ready) = (last_seen.clone(), ready_tx.clone());
        subs.push(thread::spawn(move || -> usize {
            let Ok(mut c) = client.get_connection() else {
                return 0;
            };
            let mut ps = c.as_pubsub();
            if ps.subscribe("order.placed").is_err() {
                return 0;
            }
            let _ = ps.set_read_timeout(Some(Duration::from_secs(2)));
            let _ = ready.send(());
            let mut got = 0;
            while let Ok(msg) = ps.get_message() {
                std::hint::black_box(msg.get_payload_bytes().len());
                got += 1;
                last_seen.fetch_max(t0.elapsed().as_nanos() as u64, Ordering::Relaxed);
            }
            got
        }));
    }
    for _ in 0..SUBSCRIBERS {
        ready_rx
            .recv_timeout(Duration::from_secs(5))
            .map_err(|_| "subscriber did not subscribe")?;
    }
    let body = payload(0);
    let start = t0.elapsed();
    let mut sent = 0;
    while sent < n {
        let mut pipe = redis::pipe();
        for _ in 0..64.min(n - sent) {
            pipe.cmd("PUBLISH").arg("order.placed").arg(&body).ignore();
            sent += 1;
        }
        pipe.query::<()>(&mut con).map_err(|e| e.to_string())?;
    }
    let received: Vec<usize> = subs.into_iter().map(|s| s.join().unwrap_or(0)).collect();
    let elapsed = Duration::from_nanos(last_seen.load(Ordering::Relaxed)).saturating_sub(start);
    let per_subscriber = *received.iter().min().unwrap_or(&0) as f64;
    Ok((per_subscriber / elapsed.as_secs_f64().max(1e-9), received))
}

/// Start the real binary with the plugins in `dir` and `args`; returns it
/// and its URL.
/// End-to-end latency through the real binary: single-event POSTs at a
/// fixed `rate` for `seconds`, to the three reference plugins and the probe
/// plugin, which keeps the time from the host accepting each event to its
/// `handle` seeing it. Returns the probe's samples (µs) as an HDR histogram.
fn latency(dir: &Path, args: &[&str], rate: u64, seconds: u64) -> Result<Histogram<u64>, String> {
    use plugbus_e2e::artifacts;
    let mode = if args.contains(&"--memory") {
        "memory"
    } else {
        "durable"
    };
    let plugins = dir.join(format!("latency-{mode}"));
    std::fs::create_dir_all(&plugins).map_err(|e| e.to_string())?;
    for (name, file) in [
        ("email", artifacts::EMAIL),
        ("inventory", artifacts::INVENTORY),
        ("analytics", artifacts::ANALYTICS),
        ("probe", artifacts::PROBE),
    ] {
        std::fs::copy(file, plugins.join(format!("{name}.wasm"))).map_err(|e| e.to_string())?;
    }
    let (server, url) = start_host(&plugins, args)?;
    let n = rate * seconds;
    const SENDERS: u64 = 4;
    let start = Instant::now() + Duration::from_millis(200);
    let senders: Vec<_> = (0..SENDERS)
        .map(|t| {
            let url = format!("{url}/v1/events/order.placed");
            thread::spawn(move || {
                let agent = ureq::AgentBuilder::new().build();
                let mut failed = 0u64;
                for i in (t..n).step_by(SENDERS as usize) {
                    let due = start + Duration::from_nanos(i * 1_000_000_000 / rate);
                    thread::sleep(due.saturating_duration_since(Instant::now()));
                    let order = format!(
                        r#"{{"order_id":"o-{i}","customer":"c{i}@example.com","items":[{{"sku":"sku-{}","qty":1}}],"total_cents":{}}}"#,
                        i % 1000,
                        100 + i % 900
                    );
                    if agent
                        .post(&url)
                        .set("content-type", "application/json")
                        .send_string(&order)
                        .is_err()
                    {
                        failed += 1;
                    }
                }
                failed
            })
        })
        .collect();
    let failed: u64 = senders.into_iter().map(|s| s.join().unwrap_or(n)).sum();
    if failed > 0 {
        return Err(format!("{failed} of {n} publishes failed"));
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut hist =
        Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).map_err(|e| e.to_string())?;
    let mut after = String::new();
    loop {
        let mut request = ureq::get(&format!("{url}/v1/plugins/probe/kv")).query("limit", "10000");
        if !after.is_empty() {
            request = request.query("after", &after);
        }
        let page: serde_json::Value = request
            .call()
            .map_err(|e| e.to_string())?
            .into_json()
            .map_err(|e| e.to_string())?;
        let entries = page["entries"].as_array().cloned().unwrap_or_default();
        for e in &entries {
            if let Some(us) = e["value"].as_u64() {
                hist.record(us.max(1)).map_err(|e| e.to_string())?;
            }
        }
        match page["next_after"].as_str() {
            Some(next) => after = next.to_string(),
            None if hist.len() >= n => break,
            None if Instant::now() > deadline => {
                return Err(format!("the probe saw {} of {n} events", hist.len()))
            }
            None => {
                // Not all handled yet: read again from the start.
                hist.reset();
                after.clear();
                thread::sleep(Duration::from_millis(200));
            }
        }
    }
    drop(server);
    Ok(hist)
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
    let _ = std::fs::remove_dir_all(&dir);

    println!();
    println!("| measurement | events/s | ns/event | notes |");
    println!("|---|---:|---:|---|");
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
