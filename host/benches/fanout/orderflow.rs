//! The order flow, the number users care about: the three reference
//! plugins on the real binary, durable, every default, fed N orders over
//! HTTP in CloudEvents batches of 1,000 (each order its own subject), timed
//! until every plugin is done and the audit is clean at rest; beside it in
//! the same run, the same host publishing only (the ceiling), and the peer
//! a team would write instead (`orderflow_peer.py`: Python services on
//! Redis Streams with consumer groups, reads of 64, each batch's writes
//! and acks in one MULTI/EXEC, hiredis) on the same orders, at the same
//! durability (`appendfsync always` against `--fsync always`, `everysec`
//! against `--fsync interval=1000`). Each row says the host's (or the
//! peer's processes') CPU seconds per 100,000 orders and peak resident
//! memory. Then the flow on Redis Streams, one host and two, beside the
//! peer on the same Redis, and on NATS JetStream (syncing as it does by
//! default), one host and two; and the chain latency at a fixed 10,000 orders a second
//! (order accepted to its follow-up handled).
//!
//! `PLUGBUS_BENCH_ORDERS` sets N (default 200,000); the peer needs
//! `PLUGBUS_PEER_PYTHON` (a Python with redis-py and hiredis, installed by
//! `scripts/bench.sh`) and Debian's redis-server.

use std::fmt::Write as _;

use super::*;

/// Orders per CloudEvents batch (one HTTP request; one pipeline for the
/// peer's publisher).
const BATCH: usize = 1000;
/// SKUs the orders ask for; each starts at the inventory's default stock,
/// so that some orders find it short (`inventory.insufficient`).
const SKUS: usize = 4000;

/// One measured run.
pub(crate) struct Run {
    pub(crate) seconds: f64,
    pub(crate) cpu_seconds: f64,
    peak_rss_kib: u64,
}

/// The orders, as CloudEvents batches of JSON, one per line.
pub(crate) fn orders(n: usize) -> Vec<String> {
    (0..n)
        .step_by(BATCH)
        .map(|start| {
            let batch: Vec<serde_json::Value> = (start..n.min(start + BATCH))
                .map(|i| {
                    let id = format!("o-{i}");
                    serde_json::json!({"specversion": "1.0", "id": id, "source": "/bench",
                        "type": "order.placed", "subject": id,
                        "data": {"order_id": id, "customer": format!("c{i}@example.com"),
                                 "items": [{"sku": format!("sku-{}", i % SKUS), "qty": 1 + i % 3}],
                                 "total_cents": 100 * (1 + i % 3)}})
                })
                .collect();
            serde_json::Value::Array(batch).to_string()
        })
        .collect()
}

/// User and system CPU seconds `pid` has used, and its peak resident
/// memory (KiB).
fn usage(pid: u32) -> (f64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The fields after the command's closing parenthesis: utime and stime
    // are the 12th and 13th.
    let after = stat.rsplit(')').next().unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let cpu = (ticks(11) + ticks(12)) / 100.0;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let hwm = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    (cpu, hwm)
}

/// Post every batch to the hosts at `urls` (two connections to each, as
/// clients would); a refusal is an error.
fn post_all(urls: &[String], batches: &[String]) -> Result<(), String> {
    let next = AtomicU64::new(0);
    thread::scope(|s| {
        let workers: Vec<_> = (0..2 * urls.len())
            .map(|c| {
                let url = &urls[c % urls.len()];
                let next = &next;
                s.spawn(move || -> Result<(), String> {
                    let agent = ureq::AgentBuilder::new().build();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                        let Some(body) = batches.get(i) else {
                            return Ok(());
                        };
                        agent
                            .post(&format!("{url}/v1/events"))
                            .set("content-type", "application/cloudevents-batch+json")
                            .send_string(body)
                            .map_err(|e| format!("batch {i}: {e}"))?;
                    }
                })
            })
            .collect();
        workers
            .into_iter()
            .try_for_each(|w| w.join().unwrap_or(Err("a poster panicked".into())))
    })
}

/// Whether every plugin of the host is done: its audit checked at rest,
/// nothing pending, nothing unaccounted.
fn audited_at_rest(url: &str) -> Result<bool, String> {
    let audit: serde_json::Value = ureq::get(&format!("{url}/v1/audit"))
        .call()
        .map_err(|e| e.to_string())?
        .into_json()
        .map_err(|e| e.to_string())?;
    if audit["unaccounted"] != 0 {
        return Err(format!("the audit found events unaccounted for: {audit}"));
    }
    Ok(audit["plugins"].as_array().is_some_and(|ps| {
        !ps.is_empty() && ps.iter().all(|p| p["checked"] == true && p["pending"] == 0)
    }))
}

/// The host with `plugins` (none: publish only) and `args`, fed `batches`
/// (`n` orders); timed until its plugins are done.
pub(crate) fn plugbus(
    dir: &Path,
    plugins: &[&str],
    args: &[&str],
    batches: &[String],
    n: usize,
) -> Result<Run, String> {
    let name = if plugins.is_empty() {
        "publish"
    } else {
        "flow"
    };
    let data = dir.join(format!("orderflow-{name}-data"));
    let _ = std::fs::remove_dir_all(&data);
    let data_arg = data.display().to_string();
    let mut all = vec!["--data", data_arg.as_str()];
    all.extend(args);
    let run = hosts(dir, plugins, &all, 1, batches, n);
    let _ = std::fs::remove_dir_all(&data);
    run
}

/// The order flow on a fresh redis-server (`appendfsync always`, as the
/// peer's), on `count` hosts sharing it.
fn plugbus_on_redis(dir: &Path, count: usize, batches: &[String], n: usize) -> Result<Run, String> {
    let (redis_server, url) = brokers::redis(dir)?;
    let flow = ["email", "inventory", "analytics"];
    let mut run = hosts(dir, &flow, &["--broker", &url], count, batches, n)?;
    // The broker works for the hosts: its CPU and memory are theirs.
    let (cpu, rss) = usage(redis_server.0.id());
    run.cpu_seconds += cpu;
    run.peak_rss_kib += rss;
    drop(redis_server);
    Ok(run)
}

/// The order flow on NATS JetStream on `count` hosts, its server syncing
/// to disk as it does by default (every two minutes: less durable than the
/// rows above). Syncing every write (`sync_interval: always`), JetStream
/// fsyncs each message on its own: the flow ran at 766 orders/s against
/// 3,357 for 20,000 orders, and took minutes per row.
fn plugbus_on_nats(dir: &Path, count: usize, batches: &[String], n: usize) -> Result<Run, String> {
    let server = plugbus_e2e::brokers::Nats::start_default_sync().map_err(|e| e.to_string())?;
    let pid: u32 = std::fs::read_to_string(server.dir.0.join("nats.pid"))
        .map_err(|e| format!("nats-server's pid file: {e}"))?
        .trim()
        .parse()
        .map_err(|e| format!("nats-server's pid file: {e}"))?;
    let flow = ["email", "inventory", "analytics"];
    let mut run = hosts(dir, &flow, &["--broker", &server.url], count, batches, n)?;
    // The broker works for the hosts: its CPU and memory are theirs.
    let (cpu, rss) = usage(pid);
    run.cpu_seconds += cpu;
    run.peak_rss_kib += rss;
    Ok(run)
}

/// `count` hosts with `plugins` (none: publish only) and `args`, fed
/// `batches` (`n` orders) round robin; timed until the plugins are done
/// (their handled counts across the hosts, then the audit at rest). CPU and
/// peak memory are the hosts' together.
fn hosts(
    dir: &Path,
    plugins: &[&str],
    args: &[&str],
    count: usize,
    batches: &[String],
    n: usize,
) -> Result<Run, String> {
    let plugin_dir = dir.join(format!("orderflow-plugins-{}", plugins.len()));
    let _ = std::fs::remove_dir_all(&plugin_dir);
    std::fs::create_dir_all(&plugin_dir).map_err(|e| e.to_string())?;
    for p in plugins {
        let file = match *p {
            "email" => plugbus_e2e::artifacts::EMAIL,
            "inventory" => plugbus_e2e::artifacts::INVENTORY,
            _ => plugbus_e2e::artifacts::ANALYTICS,
        };
        std::fs::copy(file, plugin_dir.join(format!("{p}.wasm"))).map_err(|e| e.to_string())?;
    }
    let mut servers = Vec::new();
    let mut urls = Vec::new();
    for h in 0..count {
        let name = format!("h{h}");
        let mut all = args.to_vec();
        if count > 1 {
            all.extend(["--host-name", name.as_str()]);
        }
        let (server, url) = start_host(&plugin_dir, &all)?;
        servers.push(server);
        urls.push(url);
    }
    let pids: Vec<u32> = servers.iter().map(|s| s.0.id()).collect();
    let cpu_before: f64 = pids.iter().map(|&p| usage(p).0).sum();
    let start = Instant::now();
    post_all(&urls, batches)?;
    if !plugins.is_empty() {
        // Cheap looks first (the audit reads the whole log), then the
        // audit until it finds every plugin at rest.
        let deadline = Instant::now() + Duration::from_secs(600);
        let n = n as u64;
        let handled = |plugin: &str| brokers::handled(&urls, plugin);
        let caught_up = || handled("inventory") >= n && handled("analytics") >= n;
        while !(caught_up() && audited_at_rest(&urls[0])?) {
            if Instant::now() > deadline {
                return Err("the plugins did not finish within 600 s".into());
            }
            thread::sleep(Duration::from_millis(10));
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    let used: Vec<(f64, u64)> = pids.iter().map(|&p| usage(p)).collect();
    drop(servers);
    let _ = std::fs::remove_dir_all(&plugin_dir);
    Ok(Run {
        seconds,
        cpu_seconds: used.iter().map(|u| u.0).sum::<f64>() - cpu_before,
        peak_rss_kib: used.iter().map(|u| u.1).sum(),
    })
}

/// The peer on a fresh redis-server with `appendfsync`, fed the orders of
/// `file` (`n` orders) by its publisher; timed until every service is done.
fn peer(dir: &Path, appendfsync: &str, file: &Path, n: usize) -> Result<Run, String> {
    let python = std::env::var("PLUGBUS_PEER_PYTHON").map_err(|_| {
        "PLUGBUS_PEER_PYTHON is not set (scripts/bench.sh installs redis-py and hiredis)"
    })?;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/fanout/orderflow_peer.py");
    let aof = format!("orderflow-redis-{appendfsync}");
    let (redis_server, _client, mut con, url) = peers::start_redis_aof(dir, &aof, appendfsync)?;
    let spawn = |args: &[&str]| -> Result<Server, String> {
        Command::new(&python)
            .arg(&script)
            .arg(&url)
            .args(args)
            .stdout(Stdio::null())
            .spawn()
            .map(Server)
            .map_err(|e| e.to_string())
    };
    let log = dir.join("orderflow-peer-email.log").display().to_string();
    let services = [
        spawn(&["email", &log])?,
        spawn(&["inventory"])?,
        spawn(&["analytics"])?,
    ];
    let count = |con: &mut redis::Connection, field: &str| -> u64 {
        redis::cmd("HGET")
            .arg("counts")
            .arg(field)
            .query::<Option<u64>>(con)
            .ok()
            .flatten()
            .unwrap_or(0)
    };
    // Their groups (and so the streams) made before the first order.
    loop {
        let made: u64 = redis::cmd("EXISTS")
            .arg("orders")
            .arg("inventory")
            .query(&mut con)
            .map_err(|e| e.to_string())?;
        if made == 2 {
            break;
        }
        thread::sleep(Duration::from_millis(20));
    }
    let pids: Vec<u32> = services
        .iter()
        .map(|s| s.0.id())
        .chain([redis_server.0.id()])
        .collect();
    let cpu_before: f64 = pids.iter().map(|&p| usage(p).0).sum();
    let start = Instant::now();
    let publisher = Command::new(&python)
        .arg(&script)
        .arg(&url)
        .arg("publish")
        .arg(file)
        .status()
        .map_err(|e| e.to_string())?;
    if !publisher.success() {
        return Err(format!("the peer's publisher failed: {publisher}"));
    }
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let (inventory, analytics, email) = (
            count(&mut con, "inventory"),
            count(&mut con, "analytics"),
            count(&mut con, "email"),
        );
        // Email reads each order and each follow-up (a stream is not
        // filtered by type: it acks the reserved ones without a word).
        if inventory >= n as u64 && analytics >= n as u64 && email >= 2 * n as u64 {
            break;
        }
        if Instant::now() > deadline {
            return Err(format!(
                "the peer did not finish: inventory {inventory}, analytics {analytics}, email {email} of {n}"
            ));
        }
        thread::sleep(Duration::from_millis(5));
    }
    let seconds = start.elapsed().as_secs_f64();
    let cpu_after: f64 = pids.iter().map(|&p| usage(p).0).sum();
    let peak_rss_kib = pids.iter().map(|&p| usage(p).1).sum();
    drop(services);
    drop(redis_server);
    let _ = std::fs::remove_dir_all(dir.join(&aof));
    Ok(Run {
        seconds,
        cpu_seconds: cpu_after - cpu_before,
        peak_rss_kib,
    })
}

/// Measure the order flow; its table, to print.
pub(crate) fn table(dir: &Path) -> String {
    let n: usize = std::env::var("PLUGBUS_BENCH_ORDERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    let batches = orders(n);
    let file = dir.join("orderflow-orders.jsonl");
    if let Err(e) = std::fs::write(&file, batches.join("\n") + "\n") {
        return format!("\nThe order flow: skipped, cannot write the orders: {e}\n");
    }
    let flow = ["email", "inventory", "analytics"];
    let runs: Vec<(&str, Result<Run, String>)> = vec![
        (
            "plugbus, publish only (no plugins): the ceiling",
            plugbus(dir, &[], &["--fsync", "always"], &batches, n),
        ),
        (
            "plugbus, the order flow, every default (--fsync always)",
            plugbus(dir, &flow, &["--fsync", "always"], &batches, n),
        ),
        (
            "peer: Python services on Redis Streams, appendfsync always",
            peer(dir, "always", &file, n),
        ),
        (
            "plugbus, the order flow, --fsync interval=1000",
            plugbus(dir, &flow, &["--fsync", "interval=1000"], &batches, n),
        ),
        (
            "peer: Python services on Redis Streams, appendfsync everysec",
            peer(dir, "everysec", &file, n),
        ),
        (
            "plugbus on Redis Streams (appendfsync always), one host (with redis-server)",
            plugbus_on_redis(dir, 1, &batches, n),
        ),
        (
            "plugbus on Redis Streams (appendfsync always), two hosts (with redis-server)",
            plugbus_on_redis(dir, 2, &batches, n),
        ),
        (
            "plugbus on NATS JetStream (its default sync, every 2 min), one host (with nats-server)",
            plugbus_on_nats(dir, 1, &batches, n),
        ),
        (
            "plugbus on NATS JetStream (its default sync, every 2 min), two hosts (with nats-server)",
            plugbus_on_nats(dir, 2, &batches, n),
        ),
    ];
    let _ = std::fs::remove_file(&file);
    let chain = chain_latency(dir);
    let rate = |r: &Result<Run, String>| r.as_ref().map_or(f64::NAN, |r| n as f64 / r.seconds);
    let (ceiling, flow_always, peer_always, flow_interval, peer_everysec) = (
        rate(&runs[0].1),
        rate(&runs[1].1),
        rate(&runs[2].1),
        rate(&runs[3].1),
        rate(&runs[4].1),
    );
    let (redis_one, redis_two) = (rate(&runs[5].1), rate(&runs[6].1));
    let (nats_one, nats_two) = (rate(&runs[7].1), rate(&runs[8].1));
    let mut out = String::new();
    out.push('\n');
    let _ = writeln!(
        out,
        "The order flow: {n} orders in CloudEvents batches of {BATCH} (each its own subject), the three reference plugins (or the peer's three services), until every one is done (plugbus: the audit clean at rest):");
    out.push('\n');
    let _ = writeln!(
        out,
        "| setup | orders/s | seconds | CPU s per 100k orders | peak RSS (MiB) |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|");
    for (name, run) in &runs {
        let _ = match run {
            Ok(r) => writeln!(
                out,
                "| {name} | {:.0} | {:.2} | {:.2} | {:.1} |",
                n as f64 / r.seconds,
                r.seconds,
                r.cpu_seconds * 100_000.0 / n as f64,
                r.peak_rss_kib as f64 / 1024.0
            ),
            Err(e) => writeln!(out, "| {name} | - | - | - | - ({e}) |"),
        };
    }
    out.push('\n');
    let _ = writeln!(
        out,

        "Ratios: the flow (fsync always) is {:.2}x publish-only (target ≥ 0.25) and {:.2}x the peer at appendfsync always (target ≥ 6); with interval=1000 {:.2}x the peer at everysec.",
        flow_always / ceiling,
        flow_always / peer_always,
        flow_interval / peer_everysec
    );
    let _ = writeln!(
        out,
        "On Redis Streams: one host is {:.2}x the peer on the same Redis at appendfsync always (goal ≥ 1.5), two hosts {:.2}x one (goal ≥ 1.7).",
        redis_one / peer_always,
        redis_two / redis_one
    );
    let _ = writeln!(
        out,
        "On NATS JetStream (syncing every 2 min): one host is {:.2}x the peer on Redis at appendfsync everysec, two hosts {:.2}x one.",
        nats_one / peer_everysec,
        nats_two / nats_one
    );
    out.push_str(&chain);
    out
}

/// Orders a second for the chain latency.
const CHAIN_RATE: u64 = 10_000;
/// Seconds the chain latency is measured for.
const CHAIN_SECONDS: u64 = 5;

/// The chain latency at a fixed rate, durable, fsync always: from the host
/// accepting an order (one per POST) to a probe plugin handling the
/// follow-up inventory published for it, as email does; to print.
pub(crate) fn chain_latency(dir: &Path) -> String {
    let data = dir.join("orderflow-chain-data");
    let _ = std::fs::remove_dir_all(&data);
    let data_arg = data.display().to_string();
    let measured = binary::latency_of(
        dir,
        &["--data", &data_arg, "--fsync", "always"],
        CHAIN_RATE,
        CHAIN_SECONDS,
        binary::Probe::Chain,
    );
    let _ = std::fs::remove_dir_all(&data);
    match measured {
        Ok((h, fsync)) => format!(
            "\nThe chain latency at {CHAIN_RATE} orders/s for {CHAIN_SECONDS} s (CloudEvents batches of 10 every millisecond), every default, fsync always: from the host accepting an order to a probe plugin (subscribed as email is) handling inventory's follow-up for it: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms (target p99 ≤ 5 ms); the host's mean fsync {} ms.\n",
            h.value_at_quantile(0.5) as f64 / 1000.0,
            h.value_at_quantile(0.99) as f64 / 1000.0,
            h.max() as f64 / 1000.0,
            fsync.map_or("-".to_string(), |us| format!("{:.2}", us / 1000.0)),
        ),
        Err(e) => format!("\nThe chain latency: not measured ({e}).\n"),
    }
}
