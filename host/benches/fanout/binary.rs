//! Rows that run the real `plugbus` binary beside the three reference
//! plugins: start to ready (compile cache cold and warm, resident memory
//! idle), and publish (HTTP) to handled latency at fixed rates.

use super::*;

/// Start the real binary with the three reference plugins and a compile
/// cache in `cache` (emptied first when `cold`): ms from spawn to ready,
/// and the resident memory (KiB) after a second idle.
/// One start of the real binary on the plugins in `dir` (with an emptied
/// compile cache when `cold`, and `--no-tiering` when not `tiered`): ms to
/// `plugbus ready`, ms until every plugin runs its optimized build, and the
/// resident memory (KiB) a second after that.
pub(crate) fn start_to_ready(
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

/// Start the real binary with the plugins in `dir` and `args`; returns it
/// and its URL.
/// End-to-end latency through the real binary: single-event POSTs at a
/// fixed `rate` for `seconds`, to the three reference plugins and the probe
/// plugin, which keeps the time from the host accepting each event to its
/// `handle` seeing it. Returns the probe's samples (µs) as an HDR histogram.
pub(crate) fn latency(
    dir: &Path,
    args: &[&str],
    rate: u64,
    seconds: u64,
) -> Result<Histogram<u64>, String> {
    latency_of(dir, args, rate, seconds, Probe::Handled).map(|(h, _)| h)
}

/// What the probe measures.
#[derive(Clone, Copy, PartialEq)]
pub(crate) enum Probe {
    /// Accepted to the probe handling the order.
    Handled,
    /// Accepted to the probe handling the order's follow-up from
    /// inventory (the chain: as email sees it).
    Chain,
}

/// [`latency`], of what `probe` measures; with the host's mean fsync in
/// µs, when it synced.
pub(crate) fn latency_of(
    dir: &Path,
    args: &[&str],
    rate: u64,
    seconds: u64,
    probe: Probe,
) -> Result<(Histogram<u64>, Option<f64>), String> {
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
    let manifest = plugins.join("probe.toml");
    if probe == Probe::Chain {
        std::fs::write(&manifest, "[config]\nmeasure = \"chain\"\n").map_err(|e| e.to_string())?;
    } else {
        let _ = std::fs::remove_file(&manifest);
    }
    let (server, url) = start_host(&plugins, args)?;
    let n = rate * seconds;
    // Orders per POST: one, or for the chain's higher rate a CloudEvents
    // batch of ten every millisecond, so that the senders (on the same two
    // cores) take little of the host's CPU. Latency counts from when the
    // host accepted each order either way.
    let per_post: u64 = match probe {
        Probe::Handled => 1,
        Probe::Chain => 10,
    };
    let n_senders: u64 = 4;
    let posts = n.div_ceil(per_post);
    let start = Instant::now() + Duration::from_millis(200);
    let senders: Vec<_> = (0..n_senders)
        .map(|t| {
            let url = url.clone();
            thread::spawn(move || {
                let agent = ureq::AgentBuilder::new().build();
                let mut failed = 0u64;
                for k in (t..posts).step_by(n_senders as usize) {
                    let first = k * per_post;
                    let due = start + Duration::from_nanos(first * 1_000_000_000 / rate);
                    thread::sleep(due.saturating_duration_since(Instant::now()));
                    let order = |i: u64| {
                        format!(
                            r#"{{"order_id":"o-{i}","customer":"c{i}@example.com","items":[{{"sku":"sku-{}","qty":1}}],"total_cents":{}}}"#,
                            i % 1000,
                            100 + i % 900
                        )
                    };
                    let sent = if per_post == 1 {
                        agent
                            .post(&format!("{url}/v1/events/order.placed"))
                            .set("content-type", "application/json")
                            .send_string(&order(first))
                    } else {
                        let batch: Vec<String> = (first..n.min(first + per_post))
                            .map(|i| {
                                format!(
                                    r#"{{"specversion":"1.0","id":"o-{i}","source":"/bench","type":"order.placed","data":{}}}"#,
                                    order(i)
                                )
                            })
                            .collect();
                        agent
                            .post(&format!("{url}/v1/events"))
                            .set("content-type", "application/cloudevents-batch+json")
                            .send_string(&format!("[{}]", batch.join(",")))
                    };
                    if sent.is_err() {
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
    let fsync = mean_fsync_micros(&url);
    drop(server);
    Ok((hist, fsync))
}

/// The host's mean fsync so far, in µs (from its metrics).
fn mean_fsync_micros(url: &str) -> Option<f64> {
    let text = ureq::get(&format!("{url}/metrics"))
        .call()
        .ok()?
        .into_string()
        .ok()?;
    let value = |name: &str| -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
    };
    let (sum, count) = (
        value("plugbus_fsync_duration_seconds_sum ")?,
        value("plugbus_fsync_duration_seconds_count ")?,
    );
    (count > 0.0).then(|| sum / count * 1e6)
}
