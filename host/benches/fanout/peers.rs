//! The peers measured beside plugbus in the same run, each with its own
//! server started on loopback and stopped by its pid: NATS JetStream
//! (pipelined publish-with-ack, file storage), Redis Streams (`XADD` under
//! an `appendfsync` policy) and Redis pub/sub with three subscribers (the
//! textbook setup).

use super::*;

/// NATS JetStream, file storage, one publisher with up to 256 publishes
/// awaiting their acks (pipelined).
pub(crate) fn jetstream(n: usize) -> Result<f64, String> {
    // scripts/bench.sh installs the pinned server the broker tests use.
    let bin = std::env::var_os("PLUGBUS_NATS_SERVER")
        .map(PathBuf::from)
        .or_else(|| which("nats-server"))
        .ok_or("nats-server not installed (scripts/bench.sh installs it)")?;
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
        publish_pipelined(&js, "order.placed", n).await?;
        Ok::<f64, String>(n as f64 / start.elapsed().as_secs_f64())
    });
    let _ = std::fs::remove_dir_all(&store);
    rate
}

/// Publish `n` payloads to `subject` with acks, up to 256 awaiting theirs.
pub(crate) async fn publish_pipelined(
    js: &async_nats::jetstream::Context,
    subject: &'static str,
    n: usize,
) -> Result<(), String> {
    let body = bytes::Bytes::from(payload(0));
    let mut pending = std::collections::VecDeque::new();
    for _ in 0..n {
        pending.push_back(
            js.publish(subject, body.clone())
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
    Ok(())
}

/// A redis-server with its append-only file in `dir/name` (made fresh),
/// fsynced as `appendfsync` says; as [`start_redis`].
pub(crate) fn start_redis_aof(
    dir: &Path,
    name: &str,
    appendfsync: &str,
) -> Result<(Server, redis::Client, redis::Connection, String), String> {
    let data = dir.join(name);
    let _ = std::fs::remove_dir_all(&data);
    std::fs::create_dir_all(&data).map_err(|e| e.to_string())?;
    let data_arg = data.display().to_string();
    start_redis(&[
        "--appendonly",
        "yes",
        "--appendfsync",
        appendfsync,
        "--dir",
        &data_arg,
    ])
}

/// Start Debian's redis-server on a free loopback port with `extra`
/// arguments (stopped by pid when the `Server` drops), and connect; its URL
/// too.
pub(crate) fn start_redis(
    extra: &[&str],
) -> Result<(Server, redis::Client, redis::Connection, String), String> {
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
    let url = format!("redis://127.0.0.1:{port}/");
    let client = redis::Client::open(url.as_str()).map_err(|e| e.to_string())?;
    let con = (0..100)
        .find_map(|_| {
            thread::sleep(Duration::from_millis(50));
            client.get_connection().ok()
        })
        .ok_or("redis-server did not come up")?;
    Ok((server, client, con, url))
}

/// Redis Streams: `XADD` pipelined 64 per round trip on one connection,
/// with the append-only file synced `always` or `everysec`.
pub(crate) fn redis_streams(appendfsync: &str, n: usize) -> Result<f64, String> {
    let dir = std::env::temp_dir().join(format!("plugbus-bench-rs-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let dir_arg = dir.display().to_string();
    let (_server, _client, mut con, _) = start_redis(&[
        "--appendonly",
        "yes",
        "--appendfsync",
        appendfsync,
        "--dir",
        &dir_arg,
    ])?;
    let start = Instant::now();
    xadd_pipelined(&mut con, "orders", n)?;
    let rate = n as f64 / start.elapsed().as_secs_f64();
    let _ = std::fs::remove_dir_all(&dir);
    Ok(rate)
}

/// Append `n` payloads to `stream` with XADD, 64 per round trip.
pub(crate) fn xadd_pipelined(
    con: &mut redis::Connection,
    stream: &str,
    n: usize,
) -> Result<(), String> {
    let body = payload(0);
    let mut sent = 0;
    while sent < n {
        let mut pipe = redis::pipe();
        for _ in 0..64.min(n - sent) {
            pipe.cmd("XADD")
                .arg(stream)
                .arg("*")
                .arg("data")
                .arg(&body)
                .ignore();
            sent += 1;
        }
        pipe.query::<()>(con).map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// redis-server pub/sub, three subscribers: delivered events/s per
/// subscriber and what each got.
pub(crate) fn redis_pubsub(n: usize) -> Result<(f64, Vec<usize>), String> {
    let (_server, client, mut con, _) = start_redis(&["--appendonly", "no"])?;
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
