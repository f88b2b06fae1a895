//! Rows of the three reference plugins under stress: beside each hostile
//! test plugin (isolation) and on a busy machine, with the honest plugins'
//! offences counted; workers per plugin (concurrency); and how long
//! delivery stops while a new version is swapped in.

use super::durable::{drop_log, temp_log};
use super::*;

/// Swap pause under load: a plugin (the swapper test plugin, its version
/// tag patched per swap) is replaced `swaps` times through the registry
/// while a publisher appends 5000 events/s to the durable log; each
/// swap's pause is the time from the swap (at a batch boundary) to the
/// new version's first `handle` call, less time spent waiting for events.
/// Returns the pauses in µs.
pub(crate) fn swap_pauses(rt: Arc<Runtime>, swaps: u32) -> Vec<u64> {
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
        plugbus::dispatch::Dispatch::embedded(log.clone()),
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

/// Runs of the reference plugins alone and beside each hostile plugin.
pub(crate) const ISOLATION_RUNS: usize = 5;

/// The three reference plugins through the durable log (fsync always,
/// appends of 500), with `beside` (a hostile plugin's name and manifest)
/// running next to them: orders/s handled by all three.
pub(crate) fn reference_rate(rt: Arc<Runtime>, beside: Option<(&str, &str)>, n: usize) -> f64 {
    reference_run(rt, beside, n).0
}

/// [`reference_rate`], and the offences of the reference plugins: failed,
/// retried or trapped batches, quarantines, batches throttled or in the
/// background (an honest plugin has none).
pub(crate) fn reference_run(
    rt: Arc<Runtime>,
    beside: Option<(&str, &str)>,
    n: usize,
) -> (f64, u64) {
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
        plugbus::dispatch::Dispatch::embedded(log.clone()),
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
pub(crate) fn concurrency_rate(rt: Arc<Runtime>, workers: usize, work_us: u64, n: usize) -> f64 {
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
    let metrics = Arc::new(Metrics::new());
    let bus = Arc::new(Bus::new(Duration::from_secs(60), metrics.clone()));
    let registry = Registry::new(
        plugbus::dispatch::Dispatch::new(Arc::new(plugbus::backend::memory::MemoryBackend::new(
            bus.clone(),
            metrics.clone(),
        ))),
        rt,
        metrics,
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
