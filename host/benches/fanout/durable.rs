//! The durable rows: publishing acknowledged once stored (publishers
//! waiting for each ack, and pipelined), under each fsync policy, and the
//! three wasm plugins fed through the durable log.

use super::*;

/// A log in a fresh temporary directory; hand both to [`drop_log`].
pub(crate) fn temp_log(name: &str, fsync: Fsync) -> (PathBuf, Arc<Log>) {
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
pub(crate) fn drop_log(dir: PathBuf, log: Arc<Log>) {
    log.close();
    drop(log);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Durable publishing through the log: `publishers` threads, each
/// appending `per_append` events at a time and waiting for the ack.
pub(crate) fn durable_publish(fsync: Fsync, publishers: usize, per_append: usize, n: usize) -> f64 {
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
pub(crate) fn durable_pipelined(fsync: Fsync, in_flight: usize, n: usize) -> f64 {
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
pub(crate) fn plugbus_durable(rt: Arc<Runtime>, plugins: &Path, n: usize) -> f64 {
    let (dir, log) = temp_log("dlog", Fsync::Always);
    let metrics = Arc::new(Metrics::new());
    let registry = Registry::new(
        plugbus::dispatch::Dispatch::embedded(log.clone()),
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
