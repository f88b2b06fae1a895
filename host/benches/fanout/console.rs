//! What watching the flow costs (issue 15): publishing with no observer
//! (as before the console), with the observer and nobody watching, and
//! with 1 and 4 live tails open, at ~1 M events/s in memory and through
//! the durable log, in interleaved rounds; what the tails missed (counted,
//! never waited for); memory per tail; `/v1/trace`, `/v1/flow` and
//! `/v1/catalog` latency on a host with a log of 1 M events; the console's
//! page weight and its time to first render in headless chromium.

use std::io::Write;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use plugbus::bus::Bus;
use plugbus::event::Event;
use plugbus::metrics::Metrics;
use plugbus::observe::tail::{Filter, RATE_DEFAULT};
use plugbus::observe::Observer;
use plugbus::store::Fsync;
use serde_json::{json, Value};

use super::durable::{drop_log, temp_log};
use super::{events, row, Row};

/// Events per publish call (as an HTTP batch or a follow-up group).
const BATCH: usize = 64;

#[derive(Clone, Copy, PartialEq)]
enum Watch {
    /// No observer attached: the publish path as before the console.
    Before,
    /// The observer attached, no tail connected.
    Closed,
    /// This many tails, each draining its queue as fast as it can.
    Tails(usize),
}

impl Watch {
    fn label(self) -> String {
        match self {
            Watch::Before => "no observer (before)".into(),
            Watch::Closed => "console closed".into(),
            Watch::Tails(n) => format!("{n} live tail{}", if n == 1 { "" } else { "s" }),
        }
    }
}

/// What a run measured.
struct Run {
    rate: f64,
    /// CPU time of the whole process (publisher, committer, tails) per
    /// event published: what watching costs, whoever else uses the cores.
    cpu_ns: f64,
    /// Events the tails received, and missed (queue full, rate cap).
    sent: u64,
    queue_full: u64,
    rate_cap: u64,
}

/// `n` tails, each an async task (as a stream client is) receiving from
/// its queue until `stop`; each answers what it got and missed.
fn tails(
    rt: &tokio::runtime::Runtime,
    observer: &Arc<Observer>,
    n: usize,
    rate: u32,
    stop: &Arc<tokio::sync::Notify>,
) -> Vec<tokio::task::JoinHandle<(u64, u64, u64)>> {
    (0..n)
        .map(|_| {
            let mut sub = observer.subscribe(Filter::default(), rate);
            let stop = stop.clone();
            rt.spawn(async move {
                let mut got = 0u64;
                let stopped = stop.notified();
                tokio::pin!(stopped);
                loop {
                    tokio::select! {
                        e = sub.events.recv() => match e {
                            Some(_) => got += 1,
                            None => break,
                        },
                        () = &mut stopped => break,
                    }
                }
                while sub.events.try_recv().is_ok() {
                    got += 1;
                }
                (
                    got,
                    sub.missed.queue_full.load(Ordering::Relaxed),
                    sub.missed.rate_cap.load(Ordering::Relaxed),
                )
            })
        })
        .collect()
}

/// CPU time this process has used.
fn process_cpu() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

fn measure(watch: Watch, n: usize, durable: bool, tail_rate: u32) -> Run {
    let metrics = Arc::new(Metrics::new());
    let observer = Arc::new(Observer::new(&metrics));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let stop = Arc::new(tokio::sync::Notify::new());
    let clients = match watch {
        Watch::Tails(k) => tails(&rt, &observer, k, tail_rate, &stop),
        _ => Vec::new(),
    };
    let template = events(1).remove(0);
    let batch = |i: usize| -> Vec<Event> {
        (0..BATCH)
            .map(|j| {
                let mut e = template.clone();
                e.id = format!("c-{i}-{j}");
                e
            })
            .collect()
    };
    let cpu = process_cpu();
    let rate = if durable {
        let (dir, log) = temp_log("console", Fsync::Interval(Duration::from_millis(100)));
        if watch != Watch::Before {
            log.observe(observer.clone());
        }
        let start = Instant::now();
        let mut pending = std::collections::VecDeque::new();
        for i in 0..n / BATCH {
            pending.push_back(log.submit(batch(i)).expect("submit"));
            if pending.len() >= 64 {
                if let Some(t) = pending.pop_front() {
                    t.wait().expect("ack");
                }
            }
        }
        for t in pending {
            t.wait().expect("ack");
        }
        let rate = (n / BATCH * BATCH) as f64 / start.elapsed().as_secs_f64();
        drop_log(dir, log);
        rate
    } else {
        let bus = Bus::new(Duration::from_secs(1), metrics.clone());
        if watch != Watch::Before {
            bus.observe(observer.clone());
        }
        let start = Instant::now();
        for i in 0..n / BATCH {
            bus.publish(batch(i)).expect("publish");
        }
        (n / BATCH * BATCH) as f64 / start.elapsed().as_secs_f64()
    };
    stop.notify_waiters();
    let cpu_ns = (process_cpu() - cpu).as_nanos() as f64 / (n / BATCH * BATCH) as f64;
    let mut run = Run {
        rate,
        cpu_ns,
        sent: 0,
        queue_full: 0,
        rate_cap: 0,
    };
    for c in clients {
        let (got, full, capped) = rt.block_on(c).expect("tail task");
        run.sent += got;
        run.queue_full += full;
        run.rate_cap += capped;
    }
    run
}

/// The publish rows: each variant in `rounds()` interleaved rounds (the
/// order rotating from round to round); each
/// round's rate is compared with the same round's no-observer rate, and
/// the median of those paired ratios is reported with every round's.
fn publish_rows(n: usize, durable: bool, rows: &mut Vec<Row>) {
    let variants = [
        Watch::Before,
        Watch::Closed,
        Watch::Tails(1),
        Watch::Tails(4),
    ];
    let rounds = rounds();
    let mut runs: Vec<Vec<Run>> = variants.iter().map(|_| Vec::new()).collect();
    for r in 0..rounds {
        // Each round starts with another variant: no variant always runs
        // first on a fresh heap.
        let mut measured: Vec<(usize, Run)> = (0..variants.len())
            .map(|k| (r + k) % variants.len())
            .map(|v| (v, measure(variants[v], n, durable, RATE_DEFAULT)))
            .collect();
        measured.sort_by_key(|(v, _)| *v);
        for (v, run) in measured {
            runs[v].push(run);
        }
    }
    let mode = if durable {
        "durable log (fsync every 100 ms)"
    } else {
        "in memory"
    };
    let median = |mut v: Vec<f64>| -> f64 {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    for (v, watch) in variants.iter().enumerate() {
        let ratios: Vec<f64> = (0..rounds)
            .map(|r| 100.0 * runs[v][r].rate / runs[0][r].rate)
            .collect();
        let rate = median(runs[v].iter().map(|r| r.rate).collect());
        let cpu = median(runs[v].iter().map(|r| r.cpu_ns).collect());
        let cpu_before = median(runs[0].iter().map(|r| r.cpu_ns).collect());
        let mut note = format!(
            "CPU {cpu:.0} ns/event, {:.1} % of before's throughput per CPU; wall rate {:.1} % of before (paired rounds: {})",
            100.0 * cpu_before / cpu,
            median(ratios.clone()),
            ratios
                .iter()
                .map(|r| format!("{r:.0}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        if let Watch::Tails(k) = watch {
            let offered = (n / BATCH * BATCH * k) as u64;
            let all = runs[v]
                .iter()
                .all(|r| r.sent + r.rate_cap + r.queue_full == offered);
            let last = &runs[v][rounds - 1];
            note.push_str(&format!(
                "; last round the tails got {} of {offered}, missed {} (rate cap {}/s) + {} (queue full); every round {}",
                last.sent,
                last.rate_cap,
                RATE_DEFAULT,
                last.queue_full,
                if all { "all counted" } else { "NOT all counted" }
            ));
        }
        rows.push(row(
            &format!("publish {mode}, batch {BATCH}: {}", watch.label()),
            Some(rate),
            note,
        ));
    }
    if !durable {
        // Tails at the highest rate a client may ask for.
        let before = measure(Watch::Before, n, false, RATE_DEFAULT).rate;
        let run = measure(Watch::Tails(4), n, false, plugbus::observe::tail::RATE_MAX);
        let offered = (n / BATCH * BATCH * 4) as u64;
        rows.push(row(
            &format!(
                "publish in memory: 4 live tails at {} events/s each",
                plugbus::observe::tail::RATE_MAX
            ),
            Some(run.rate),
            format!(
                "CPU {:.0} ns/event; wall rate {:.1} % of a no-observer run beside it; tails got {}, missed {} (rate cap) + {} (queue full) of {offered}",
                run.cpu_ns,
                100.0 * run.rate / before,
                run.sent,
                run.rate_cap,
                run.queue_full
            ),
        ));
    }
}

/// `PLUGBUS_BENCH_CONSOLE_ROUNDS` (default 8: each variant first twice).
fn rounds() -> usize {
    std::env::var("PLUGBUS_BENCH_CONSOLE_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&r: &usize| r > 0)
        .unwrap_or(8)
}

/// Resident memory of this process, in bytes.
fn rss() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * 4096)
}

/// Memory per tail: 10,000 clients (measured first, before the other
/// rows free memory the allocator would reuse), each with a full queue of events that
/// every client shares (as committed events are).
fn memory_per_tail() -> f64 {
    const CLIENTS: usize = 10_000;
    let metrics = Metrics::new();
    let observer = Arc::new(Observer::new(&metrics));
    let shared: Vec<Arc<Event>> = events(plugbus::observe::tail::QUEUE_EVENTS)
        .into_iter()
        .enumerate()
        .map(|(i, mut e)| {
            e.sequence = i as u64 + 1;
            Arc::new(e)
        })
        .collect();
    observer.accepted(&shared);
    let before = rss();
    let subs: Vec<_> = (0..CLIENTS)
        .map(|_| observer.subscribe(Filter::default(), plugbus::observe::tail::RATE_MAX))
        .collect();
    observer.accepted(&shared);
    let after = rss();
    let full = subs
        .iter()
        .filter(|s| s.events.len() == plugbus::observe::tail::QUEUE_EVENTS)
        .count();
    assert_eq!(full, CLIENTS, "every queue full");
    drop(subs);
    after.saturating_sub(before) as f64 / CLIENTS as f64
}

/// p50 and p99 of `GET url` over `k` calls, in ms.
fn latency(agent: &ureq::Agent, url: impl Fn(usize) -> String, k: usize) -> (f64, f64) {
    let mut ms: Vec<f64> = (0..k)
        .map(|i| {
            let t = Instant::now();
            let r = agent.get(&url(i)).call().expect("GET");
            let _ = r.into_string();
            t.elapsed().as_secs_f64() * 1000.0
        })
        .collect();
    ms.sort_by(f64::total_cmp);
    (ms[k / 2], ms[(k * 99 / 100).min(k - 1)])
}

/// The API's latency on a host whose log holds `n` events: chains of four
/// (an order and three events with its correlation id), published over
/// HTTP in batches.
fn api_rows(n: usize, rows: &mut Vec<Row>) {
    let dir = std::env::temp_dir().join(format!("plugbus-bench-console-{}", std::process::id()));
    let plugins = dir.join("plugins");
    std::fs::create_dir_all(&plugins).expect("dir");
    let data = dir.join("data");
    let data_arg = data.display().to_string();
    let (server, url) =
        match super::start_host(&plugins, &["--data", &data_arg, "--fsync", "interval=100"]) {
            Ok(s) => s,
            Err(e) => {
                rows.push(row("console API latency", None, format!("skipped: {e}")));
                return;
            }
        };
    let agent = ureq::AgentBuilder::new().build();
    let chains = n / 4;
    let started = Instant::now();
    let mut batch = Vec::with_capacity(1000);
    for c in 0..chains {
        let root = format!("r-{c}");
        batch.push(json!({"specversion": "1.0", "id": root, "source": "/bench", "type": "order.placed",
                          "subject": format!("o-{c}"), "data": {"order_id": format!("o-{c}"), "total_cents": c}}));
        for (k, topic) in ["inventory.reserved", "payment.taken", "email.sent"]
            .iter()
            .enumerate()
        {
            batch.push(json!({"specversion": "1.0", "id": format!("{root}-{k}"), "source": "/bench", "type": topic,
                              "correlationid": root, "causationid": if k == 0 { root.clone() } else { format!("{root}-{}", k - 1) },
                              "data": {"order_id": format!("o-{c}")}}));
        }
        if batch.len() >= 1000 || c + 1 == chains {
            let body = Value::Array(std::mem::take(&mut batch)).to_string();
            agent
                .post(&format!("{url}/v1/events"))
                .set("content-type", "application/cloudevents-batch+json")
                .send_string(&body)
                .expect("publish");
        }
    }
    let fill = started.elapsed();
    let (t50, t99) = latency(
        &agent,
        |i| format!("{url}/v1/trace/r-{}", (i * 7919) % chains),
        200,
    );
    let (f50, f99) = latency(&agent, |_| format!("{url}/v1/flow"), 200);
    let (c50, c99) = latency(&agent, |_| format!("{url}/v1/catalog"), 200);
    rows.push(row(
        &format!("console API on a log of {n} events ({chains} chains of 4; filled in {:.1} s)", fill.as_secs_f64()),
        None,
        format!(
            "GET /v1/trace/ID p50 {t50:.2} ms p99 {t99:.2} ms; /v1/flow p50 {f50:.2} ms p99 {f99:.2} ms; /v1/catalog p50 {c50:.2} ms p99 {c99:.2} ms"
        ),
    ));
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The embedded JS and CSS, raw and gzip -9 (the target: 150 KB
/// compressed).
fn page_weight(rows: &mut Vec<Row>) {
    let mut raw = 0usize;
    let mut gz = 0usize;
    for a in plugbus::http::console::ASSETS {
        if !(a.path.ends_with(".js") || a.path.ends_with(".css") || a.path.ends_with(".html")) {
            continue;
        }
        raw += a.bytes.len();
        let mut child = std::process::Command::new("gzip")
            .arg("-9c")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("gzip");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(a.bytes)
            .expect("write");
        gz += child.wait_with_output().expect("gzip").stdout.len();
    }
    rows.push(row(
        "console page weight: HTML, JS and CSS",
        None,
        format!(
            "{:.1} KB raw, {:.1} KB gzip -9 (target ≤ 150 KB compressed)",
            raw as f64 / 1024.0,
            gz as f64 / 1024.0
        ),
    ));
}

/// Time to first render in headless chromium, median of five loads.
fn first_render(rows: &mut Vec<Row>) {
    let driver = match plugbus_e2e::browser::Chromedriver::start() {
        Ok(Some(d)) => d,
        Ok(None) => {
            rows.push(row(
                "console first render",
                None,
                "skipped: chromium and chromedriver are not installed",
            ));
            return;
        }
        Err(e) => {
            rows.push(row("console first render", None, format!("skipped: {e}")));
            return;
        }
    };
    let dir = std::env::temp_dir().join(format!("plugbus-bench-render-{}", std::process::id()));
    let plugins = dir.join("plugins");
    std::fs::create_dir_all(&plugins).expect("dir");
    super::deploy_reference(&plugins);
    let Ok((server, url)) = super::start_host(&plugins, &["--memory"]) else {
        rows.push(row(
            "console first render",
            None,
            "skipped: the host did not start",
        ));
        return;
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let times: Result<Vec<f64>, String> = rt.block_on(async {
        let c = fantoccini::ClientBuilder::new(
            hyper_util::client::legacy::connect::HttpConnector::new(),
        )
        .capabilities(driver.capabilities())
        .connect(&driver.url)
        .await
        .map_err(|e| e.to_string())?;
        let mut out = Vec::new();
        for _ in 0..5 {
            c.goto(&format!("{url}/console/?fresh={}#/overview", out.len()))
                .await
                .map_err(|e| e.to_string())?;
            c.wait()
                .at_most(Duration::from_secs(60))
                .for_element(fantoccini::Locator::Css(
                    "#overview-plugins tr[data-plugin]",
                ))
                .await
                .map_err(|e| e.to_string())?;
            let v = c
                .execute("return window.__firstRender;", vec![])
                .await
                .map_err(|e| e.to_string())?;
            out.push(v.as_f64().unwrap_or(f64::NAN));
        }
        let _ = c.close().await;
        Ok(out)
    });
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
    match times {
        Ok(mut t) => {
            t.sort_by(f64::total_cmp);
            rows.push(row(
                "console first render (headless chromium, overview with 3 plugins)",
                None,
                format!(
                    "median {:.0} ms from navigation start, of 5 loads ({:.0}–{:.0} ms)",
                    t[2], t[0], t[4]
                ),
            ));
        }
        Err(e) => rows.push(row("console first render", None, format!("failed: {e}"))),
    }
}

/// Every console row.
pub(crate) fn rows(n: usize, rows: &mut Vec<Row>) {
    let per_tail = memory_per_tail();
    publish_rows(2 * n, false, rows);
    publish_rows(n, true, rows);
    rows.push(row(
        "memory per live tail (its queue of 256 full, the events shared)",
        None,
        format!("{per_tail:.0} bytes (resident, 10,000 tails)"),
    ));
    api_rows(n, rows);
    page_weight(rows);
    first_render(rows);
}
