//! Rows for plugbus on a broker (`--broker`), each beside the broker's own
//! ceiling measured in the same run with its own client, and the embedded
//! store:
//!
//! - Redis Streams ceiling: one client publishing (XADD, 64 per round trip)
//!   while three consumer groups consume (XREADGROUP 64, XACK),
//!   `appendfsync always`;
//! - NATS JetStream ceiling: one client publishing with acks (256 in
//!   flight) while three durable pull consumers fetch (64) and ack each
//!   message, at the server's default sync (every two minutes) and with
//!   `sync_interval: always`;
//! - plugbus publish → handled by three trivial plugins, through HTTP
//!   (CloudEvents batches of 64), on one host and on two hosts sharing the
//!   broker, and on the embedded store;
//! - a CPU-bound plugin (the hostile plugin's `work` mode, concurrency 1)
//!   on one host and two: work sharing;
//! - publish → handled latency (p50/p99) on each broker, as the latency
//!   rows measure it on the embedded store.

use super::*;

/// Rounds of (ceiling, plugbus on one host) per broker
/// (`PLUGBUS_BENCH_BROKER_ROUNDS`, default 3).
fn broker_rounds() -> usize {
    std::env::var("PLUGBUS_BENCH_BROKER_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3)
        .max(1)
}

/// Events per publish request.
const PER_REQUEST: usize = 64;
/// Concurrent publishing clients.
const PUBLISHERS: usize = 4;

/// A redis-server on a free port with its AOF fsynced always, in a temp
/// directory; its URL.
pub(crate) fn redis(dir: &Path) -> Result<(Server, String), String> {
    let (server, _, _, url) = peers::start_redis_aof(dir, "redis-broker", "always")?;
    Ok((server, url))
}

/// A nats-server with JetStream (the test harness's), syncing every write
/// (`sync_interval: always`) or, as by default, every two minutes; its
/// URL.
fn nats(sync_always: bool) -> Result<(Box<dyn std::any::Any>, String), String> {
    use plugbus_e2e::brokers::Nats;
    let server = if sync_always {
        Nats::start()
    } else {
        Nats::start_default_sync()
    }?;
    let url = server.url.clone();
    Ok((Box::new(server), url))
}

/// NATS JetStream with its own client: publish with acks (256 in flight)
/// while three durable pull consumers (one per subscriber) fetch up to 64
/// and ack each; events/s through all of them.
fn nats_ceiling(sync_always: bool, n: usize) -> Result<f64, String> {
    use async_nats::jetstream::{self, consumer::pull, stream};
    let (_server, url) = nats(sync_always)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async move {
        let client = async_nats::connect(&url).await.map_err(|e| e.to_string())?;
        let js = jetstream::new(client);
        let stream = js
            .get_or_create_stream(stream::Config {
                name: "CEILING".into(),
                subjects: vec!["ceiling.>".into()],
                storage: stream::StorageType::File,
                ..Default::default()
            })
            .await
            .map_err(|e| e.to_string())?;
        let mut consumers = Vec::new();
        for g in 0..SUBSCRIBERS {
            consumers.push(
                stream
                    .create_consumer(pull::Config {
                        durable_name: Some(format!("g{g}")),
                        ..Default::default()
                    })
                    .await
                    .map_err(|e| e.to_string())?,
            );
        }
        let start = Instant::now();
        let readers: Vec<_> = consumers
            .into_iter()
            .map(|c| {
                tokio::spawn(async move {
                    let mut got = 0;
                    while got < n {
                        let mut batch = c
                            .batch()
                            .max_messages(64)
                            .expires(Duration::from_secs(1))
                            .messages()
                            .await
                            .map_err(|e| e.to_string())?;
                        while let Some(m) = futures_util::StreamExt::next(&mut batch).await {
                            m.map_err(|e| e.to_string())?
                                .ack()
                                .await
                                .map_err(|e| e.to_string())?;
                            got += 1;
                        }
                    }
                    Ok::<(), String>(())
                })
            })
            .collect();
        peers::publish_pipelined(&js, "ceiling.order", n).await?;
        for r in readers {
            r.await.map_err(|e| e.to_string())??;
        }
        Ok(n as f64 / start.elapsed().as_secs_f64())
    })
}

/// The brokers the rows run on.
#[derive(Clone, Copy)]
enum Broker {
    /// `appendfsync always`.
    Redis,
    /// The server's default: synced every two minutes (durability from
    /// replication).
    Nats,
    /// `sync_interval: always`.
    NatsSynced,
}

impl Broker {
    fn name(self) -> &'static str {
        match self {
            Broker::Redis => "Redis",
            Broker::Nats => "NATS",
            Broker::NatsSynced => "NATS (sync always)",
        }
    }

    /// Whether `PLUGBUS_BENCH_BROKERS` (a comma-separated subset of
    /// `redis,nats,nats-synced`; all when unset) keeps it.
    fn wanted(self) -> bool {
        let Ok(only) = std::env::var("PLUGBUS_BENCH_BROKERS") else {
            return true;
        };
        let key = match self {
            Broker::Redis => "redis",
            Broker::Nats => "nats",
            Broker::NatsSynced => "nats-synced",
        };
        only.split(',').any(|b| b.trim() == key)
    }

    /// A fresh server of it; its URL.
    fn start(self, dir: &Path) -> Result<(Box<dyn std::any::Any>, String), String> {
        match self {
            Broker::Redis => redis(dir).map(|(server, url)| (Box::new(server) as _, url)),
            Broker::Nats => nats(false),
            Broker::NatsSynced => nats(true),
        }
    }

    /// Its own client's publish + consume rate, and what was measured.
    fn ceiling(self, dir: &Path, n: usize) -> (Result<f64, String>, &'static str) {
        match self {
            Broker::Redis => (
                redis_ceiling(dir, n),
                "Redis Streams ceiling: XADD x64 + 3 groups XREADGROUP/XACK x64, its own client, appendfsync always",
            ),
            Broker::Nats => (
                nats_ceiling(false, n),
                "NATS JetStream ceiling: publish with ack (256 in flight) + 3 pull consumers fetch x64/ack, its own client, default sync (2 min)",
            ),
            Broker::NatsSynced => (
                nats_ceiling(true, n),
                "NATS JetStream ceiling, as above with sync_interval always",
            ),
        }
    }
}

/// Redis Streams with its own client: publish with ack (pipelined XADD)
/// while three consumer groups (one per subscriber, as plugbus's three
/// plugins) read and ack; events/s through all of them.
fn redis_ceiling(dir: &Path, n: usize) -> Result<f64, String> {
    let (_server, url) = redis(dir)?;
    let client = redis::Client::open(url.as_str()).map_err(|e| e.to_string())?;
    let mut con = client.get_connection().map_err(|e| e.to_string())?;
    for g in 0..SUBSCRIBERS {
        redis::cmd("XGROUP")
            .arg(&["CREATE", "ceiling", &format!("g{g}"), "0", "MKSTREAM"][..])
            .query::<()>(&mut con)
            .map_err(|e| e.to_string())?;
    }
    let start = Instant::now();
    let consumers: Vec<_> = (0..SUBSCRIBERS)
        .map(|g| {
            let client = client.clone();
            let group = format!("g{g}");
            thread::spawn(move || -> Result<(), String> {
                let mut con = client.get_connection().map_err(|e| e.to_string())?;
                let mut got = 0;
                while got < n {
                    let read: redis::Value = redis::cmd("XREADGROUP")
                        .arg(&["GROUP", &group, "c", "COUNT", "64", "BLOCK", "1000"][..])
                        .arg(&["STREAMS", "ceiling", ">"][..])
                        .query(&mut con)
                        .map_err(|e| e.to_string())?;
                    let ids = entry_ids(&read);
                    if ids.is_empty() {
                        continue;
                    }
                    got += ids.len();
                    redis::cmd("XACK")
                        .arg("ceiling")
                        .arg(&group)
                        .arg(&ids)
                        .query::<u64>(&mut con)
                        .map_err(|e| e.to_string())?;
                }
                Ok(())
            })
        })
        .collect();
    peers::xadd_pipelined(&mut con, "ceiling", n)?;
    for c in consumers {
        c.join().map_err(|_| "consumer panicked")??;
    }
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

/// The entry ids in an XREADGROUP answer ([[stream, [[id, fields]...]]]).
fn entry_ids(v: &redis::Value) -> Vec<String> {
    let list = |v: &redis::Value| match v {
        redis::Value::Array(items) => items.clone(),
        _ => Vec::new(),
    };
    list(v)
        .iter()
        .flat_map(|stream| list(stream).get(1).map(list).unwrap_or_default())
        .filter_map(|entry| match list(&entry).first() {
            Some(redis::Value::BulkString(id)) => String::from_utf8(id.clone()).ok(),
            _ => None,
        })
        .collect()
}

/// Publish `n` `order.placed` events to the hosts at `urls` (round robin,
/// [`PUBLISHERS`] clients, [`PER_REQUEST`] a request); wait until `plugins`
/// each handled them all across the hosts. Events/s from first publish to
/// last handled.
fn publish_and_handle(urls: &[String], plugins: &[&str], n: usize) -> Result<f64, String> {
    let handled = |plugin: &str| handled(urls, plugin);
    let before: Vec<u64> = plugins.iter().map(|p| handled(p)).collect();
    let start = Instant::now();
    let per = n.div_ceil(PUBLISHERS);
    let clients: Vec<_> = (0..PUBLISHERS)
        .map(|c| {
            let url = urls[c % urls.len()].clone();
            thread::spawn(move || -> Result<(), String> {
                let data = String::from_utf8_lossy(&payload(0)).into_owned();
                let mut sent = 0;
                while sent < per {
                    let k = PER_REQUEST.min(per - sent);
                    let batch: Vec<serde_json::Value> = (0..k)
                        .map(|i| {
                            serde_json::json!({"specversion": "1.0", "id": format!("c{c}-{}", sent + i),
                                "source": "/bench", "type": "order.placed", "data": data})
                        })
                        .collect();
                    let r = ureq::post(&format!("{url}/v1/events"))
                        .set("content-type", "application/cloudevents-batch+json")
                        .send_string(&serde_json::Value::Array(batch).to_string());
                    match r {
                        Ok(r) if r.status() == 202 => sent += k,
                        Ok(r) => return Err(format!("publish: {}", r.status())),
                        Err(ureq::Error::Status(503, _)) => thread::sleep(Duration::from_millis(5)),
                        Err(e) => return Err(format!("publish: {e}")),
                    }
                }
                Ok(())
            })
        })
        .collect();
    for c in clients {
        c.join().map_err(|_| "publisher panicked")??;
    }
    let total = (per * PUBLISHERS) as u64;
    let deadline = Instant::now() + Duration::from_secs(600);
    for (plugin, before) in plugins.iter().zip(before) {
        while handled(plugin) < before + total {
            if Instant::now() > deadline {
                return Err(format!("{plugin} did not handle every event"));
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
    Ok(total as f64 / start.elapsed().as_secs_f64())
}

/// How many events `plugin` handled on the hosts at `urls`.
pub(crate) fn handled(urls: &[String], plugin: &str) -> u64 {
    urls.iter()
        .filter_map(|u| ureq::get(&format!("{u}/v1/plugins")).call().ok())
        .filter_map(|r| r.into_json::<serde_json::Value>().ok())
        .filter_map(|v| {
            v["plugins"]
                .as_array()?
                .iter()
                .find(|p| p["name"] == plugin)?["handled"]
                .as_u64()
        })
        .sum()
}

/// The two halves of [`publish_and_handle`] apart, on a fresh `broker`
/// and one host: events/s published with no plugin running, then events/s
/// handled by `names` from that backlog (counted from the first look at
/// their counters, the host already started).
fn publish_then_consume(
    broker: Broker,
    dir: &Path,
    plugins: &Path,
    names: &[&str],
    n: usize,
) -> Result<(f64, f64), String> {
    let (_server, url) = broker.start(dir)?;
    let empty = dir.join("broker-no-plugins");
    let _ = std::fs::remove_dir_all(&empty);
    std::fs::create_dir_all(&empty).map_err(|e| e.to_string())?;
    let published = with_hosts(&empty, 1, &["--broker", &url], |urls| {
        publish_and_handle(urls, &[], n)
    })?;
    let total = (n.div_ceil(PUBLISHERS) * PUBLISHERS) as u64;
    let consumed = with_hosts(plugins, 1, &["--broker", &url], |urls| {
        let start = Instant::now();
        let before: u64 = names.iter().map(|p| handled(urls, p)).sum();
        let deadline = start + Duration::from_secs(600);
        loop {
            let now: u64 = names.iter().map(|p| handled(urls, p)).sum();
            if now >= total * names.len() as u64 {
                let done = (now - before) as f64 / names.len() as f64;
                return Ok(done / start.elapsed().as_secs_f64());
            }
            if Instant::now() > deadline {
                return Err("the backlog was not handled".into());
            }
            thread::sleep(Duration::from_millis(20));
        }
    })?;
    Ok((published, consumed))
}

/// Start `hosts` hosts on the plugins in `plugins`, with `args` and
/// `--host-name hN`; run `f` on their URLs.
fn with_hosts<T>(
    plugins: &Path,
    hosts: usize,
    args: &[&str],
    f: impl FnOnce(&[String]) -> Result<T, String>,
) -> Result<T, String> {
    let mut servers = Vec::new();
    let mut urls = Vec::new();
    // Extra host flags for an experiment (`PLUGBUS_BENCH_HOST_ARGS`,
    // split on spaces), on every host these rows start.
    let extra = std::env::var("PLUGBUS_BENCH_HOST_ARGS").unwrap_or_default();
    for h in 0..hosts {
        let name = format!("h{h}");
        let mut all: Vec<&str> = args.to_vec();
        all.extend(extra.split_whitespace());
        all.extend(["--host-name", &name]);
        let (server, url) = start_host(plugins, &all)?;
        servers.push(server);
        urls.push(url);
    }
    f(&urls)
}

/// [`publish_and_handle`] on a fresh `broker` with one host, then with
/// two: (hosts, events/s) each.
fn on_one_and_two_hosts(
    broker: Broker,
    dir: &Path,
    plugins: &Path,
    names: &[&str],
    n: usize,
) -> Vec<(usize, Result<f64, String>)> {
    [1, 2]
        .into_iter()
        .map(|hosts| {
            let rate = broker.start(dir).and_then(|(_server, url)| {
                with_hosts(plugins, hosts, &["--broker", &url], |urls| {
                    publish_and_handle(urls, names, n)
                })
            });
            (hosts, rate)
        })
        .collect()
}

pub(crate) fn rows(dir: &Path, rows: &mut Vec<Row>, n: usize) {
    let trivial = dir.join("broker-trivial");
    let _ = std::fs::remove_dir_all(&trivial);
    std::fs::create_dir_all(&trivial).expect("dir");
    for i in 1..=SUBSCRIBERS {
        deploy(
            &trivial,
            &format!("noop{i}"),
            plugbus_e2e::artifacts::NOOP,
            None,
        );
    }
    let names: Vec<String> = (1..=SUBSCRIBERS).map(|i| format!("noop{i}")).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let m = (n / 20).max(10_000);

    let embedded = dir.join("broker-embedded-data");
    let _ = std::fs::remove_dir_all(&embedded);
    let embedded_arg = embedded.display().to_string();
    let on_embedded = with_hosts(&trivial, 1, &["--data", &embedded_arg], |urls| {
        publish_and_handle(urls, &names, m)
    });
    rows.push(match on_embedded {
        Ok(rate) => row(
            "plugbus embedded: HTTP publish (x64) → handled by 3 trivial plugins, 1 host",
            Some(rate),
            "baseline",
        ),
        Err(e) => row("plugbus embedded", None, format!("failed: {e}")),
    });
    for broker in [Broker::Redis, Broker::Nats, Broker::NatsSynced] {
        if !broker.wanted() {
            continue;
        }
        let name = broker.name();
        // The ceiling and plugbus on one host, taken in turns: the disk's
        // fsyncs here get twice as slow and back within minutes, so each
        // round's ratio is to the ceiling measured just before it, and the
        // median round is reported.
        let mut rounds: Vec<(f64, f64)> = Vec::new();
        let mut what = "";
        let mut failed = None;
        for _ in 0..broker_rounds() {
            let (ceiling, said) = broker.ceiling(dir, m);
            what = said;
            let one = broker.start(dir).and_then(|(_server, url)| {
                with_hosts(&trivial, 1, &["--broker", &url], |urls| {
                    publish_and_handle(urls, &names, m)
                })
            });
            match (ceiling, one) {
                (Ok(c), Ok(p)) => rounds.push((c, p)),
                (Err(e), _) | (_, Err(e)) => failed = Some(e),
            }
        }
        if rounds.is_empty() {
            let e = failed.unwrap_or_else(|| "no rounds".into());
            rows.push(row(
                &format!("{name} ceiling"),
                None,
                format!("failed: {e}"),
            ));
            continue;
        }
        rounds.sort_by(|a, b| (a.1 / a.0).total_cmp(&(b.1 / b.0)));
        let ratios: Vec<String> = rounds
            .iter()
            .map(|(c, p)| format!("{:.0}", 100.0 * p / c))
            .collect();
        let (ceiling_rate, one_host) = rounds[rounds.len() / 2];
        rows.push(row(
            what,
            Some(ceiling_rate),
            format!(
                "the broker's own publish+consume (the median round's of {})",
                rounds.len()
            ),
        ));
        let vs = |rate: f64| format!("{:.0} % of the {name} ceiling", 100.0 * rate / ceiling_rate);
        match publish_then_consume(broker, dir, &trivial, &names, m) {
            Ok((published, consumed)) => {
                rows.push(row(
                    &format!("plugbus on {name}: HTTP publish (x64) alone, no plugins, 1 host"),
                    Some(published),
                    vs(published),
                ));
                rows.push(row(
                    &format!(
                        "plugbus on {name}: that backlog handled by 3 trivial plugins, 1 host"
                    ),
                    Some(consumed),
                    vs(consumed),
                ));
            }
            Err(e) => rows.push(row(
                &format!("plugbus on {name}, publish then consume"),
                None,
                format!("failed: {e}"),
            )),
        }
        rows.push(row(
            &format!(
                "plugbus on {name}: HTTP publish (x64) → handled by 3 trivial plugins, 1 host"
            ),
            Some(one_host),
            format!("{}; rounds: {} %", vs(one_host), ratios.join(", ")),
        ));
        let two = broker.start(dir).and_then(|(_server, url)| {
            with_hosts(&trivial, 2, &["--broker", &url], |urls| {
                publish_and_handle(urls, &names, m)
            })
        });
        rows.push(match two {
            Ok(rate) => row(
                &format!(
                    "plugbus on {name}: HTTP publish (x64) → handled by 3 trivial plugins, 2 hosts"
                ),
                Some(rate),
                format!("{}, {:.2}x one host", vs(rate), rate / one_host),
            ),
            Err(e) => row(
                &format!("plugbus on {name}, 2 hosts"),
                None,
                format!("failed: {e}"),
            ),
        });
    }

    // Work sharing: a plugin spending 2 ms of CPU per event, one worker a
    // host; two hosts on two cores should come near twice one.
    let work = dir.join("broker-work");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).expect("dir");
    deploy(
        &work,
        "work",
        plugbus_e2e::artifacts::HOSTILE,
        Some("[config]\nmode = \"work\"\nwork_us = \"2000\"\nsubscribe = \"order.placed\"\n"),
    );
    for broker in [Broker::Redis, Broker::Nats] {
        if !broker.wanted() {
            continue;
        }
        let name = broker.name();
        let runs = on_one_and_two_hosts(broker, dir, &work, &["work"], 2_000);
        let one = runs[0].1.as_ref().map_or(f64::NAN, |r| *r);
        for (hosts, result) in runs {
            rows.push(match result {
                Ok(rate) => row(
                    &format!(
                    "work sharing on {name}: 2 ms of CPU per event, concurrency 1, {hosts} host(s)"
                ),
                    Some(rate),
                    if hosts == 1 {
                        "baseline".to_string()
                    } else {
                        format!("{:.2}x one host (target ≥ 1.7x on 2 cores)", rate / one)
                    },
                ),
                Err(e) => row(
                    &format!("work sharing, {hosts} host(s)"),
                    None,
                    format!("failed: {e}"),
                ),
            });
        }
    }
}

/// One latency run: its mode, its rate, its samples (µs).
pub(crate) type LatencyRun = (&'static str, u64, Result<Histogram<u64>, String>);

/// Publish → handled latency on each broker (the probe plugin beside the
/// three reference plugins, one event per POST at a fixed rate), as the
/// latency rows measure it on the embedded store.
pub(crate) fn latencies(dir: &Path, out: &mut Vec<LatencyRun>) {
    let data = dir.join("latency-embedded-data");
    let _ = std::fs::remove_dir_all(&data);
    let data = data.display().to_string();
    out.push((
        "embedded, fsync always (same run)",
        1000,
        binary::latency(dir, &["--data", &data, "--fsync", "always"], 1000, 5),
    ));
    for (broker, label) in [
        (Broker::Redis, "on Redis (appendfsync always)"),
        (Broker::Nats, "on NATS JetStream (default sync)"),
    ] {
        let result = broker
            .start(dir)
            .and_then(|(_server, url)| binary::latency(dir, &["--broker", &url], 1000, 5));
        out.push((label, 1000, result));
    }
}
