//! The in-process rows: the crossbeam floor (native consumers), the bare
//! wasm `handle` call, and plugbus's bus with three wasm plugins, all in
//! this process with no HTTP.

use std::path::Path;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use plugbus::bus::Bus;
use plugbus::event::Event;
use plugbus::metrics::Metrics;
use plugbus::plugin::{DeliverySettings, Registry};
use plugbus::runtime::{self, CallMode, InstanceConfig, Runtime};

use super::{events, start_noops, wait_handled, SUBSCRIBERS};

/// Raw crossbeam fan-out to three native consumers that drain in batches.
/// The publisher builds each event as it goes, as ingress does.
pub(crate) fn floor(n: usize) -> f64 {
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
pub(crate) fn wasm_call_ns(rt: &Runtime, noop: &Path, batch: usize, n: usize) -> f64 {
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

/// plugbus in-process: bus + workers + three wasm plugins.
pub(crate) fn plugbus_inprocess(rt: Arc<Runtime>, dir: &Path, batch: usize, n: usize) -> f64 {
    let metrics = Arc::new(Metrics::new());
    let bus = Arc::new(Bus::new(Duration::from_secs(30), metrics.clone()));
    let settings = DeliverySettings {
        batch_events_max: batch,
        queue_events_max: 8192,
        ..DeliverySettings::default()
    };
    let metrics_dbg = metrics.clone();
    let registry = Registry::new(
        plugbus::dispatch::Dispatch::new(Arc::new(plugbus::backend::memory::MemoryBackend::new(
            bus.clone(),
            metrics.clone(),
        ))),
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
