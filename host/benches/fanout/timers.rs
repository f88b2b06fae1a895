//! Timer lateness: 10,000 timers set through the embedded store's log as
//! a plugin's commits set them (100 per commit, fsync always), due evenly
//! over three seconds from half a second on, fired by the store's clock;
//! each fired event's `latems` is how late it came. The floor, measured in
//! the same run: one thread sleeping until each due time in turn (what the
//! operating system gives any timer). Idle, then beside two CPU hogs.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use plugbus::backend::embedded::EmbeddedBackend;
use plugbus::backend::Backend;
use plugbus::event::Event;
use plugbus::store::progress::Progress;
use plugbus::store::Fsync;
use plugbus::timer::{Timer, TimerChange};

use super::durable::{drop_log, temp_log};

const TIMERS: u64 = 10_000;
const SPREAD_MS: u64 = 3_000;
const LEAD_MS: u64 = 500;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The due times: evenly over the spread, from the lead on.
fn dues(start: u64) -> Vec<u64> {
    (0..TIMERS)
        .map(|i| start + LEAD_MS + i * SPREAD_MS / TIMERS)
        .collect()
}

/// Lateness in ms of the store's timers.
fn store_lateness() -> Histogram<u64> {
    let (dir, log) = temp_log("timers", Fsync::Always);
    let backend = EmbeddedBackend::new(log.clone(), log.dedup_window());
    let dues = dues(now_ms());
    for (n, chunk) in dues.chunks(100).enumerate() {
        let timers = chunk
            .iter()
            .enumerate()
            .map(|(i, &due_ms)| {
                let mut event = Event::new("bench.timer", None, b"{}".to_vec()).expect("event");
                event.id = format!("t-{n}-{i}");
                TimerChange::Set(Box::new(Timer {
                    key: event.id.clone(),
                    due_ms,
                    event,
                }))
            })
            .collect();
        let progress = Progress {
            plugin: "bench".into(),
            timers,
            ..Progress::default()
        };
        log.submit_with(Vec::new(), Some(progress))
            .expect("submit")
            .wait()
            .expect("commit");
    }
    // Fired, and readable (fired events are shown once durable).
    while backend.timer_usage("bench").map_or(1, |u| u.count) > 0 || log.head() < TIMERS {
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut late = Histogram::<u64>::new(3).expect("histogram");
    let mut from = 1;
    loop {
        let events = log.read_from(from, 1_000).expect("read");
        if events.is_empty() {
            break;
        }
        from += events.len() as u64;
        for e in &events {
            let ms = e
                .extensions
                .iter()
                .find(|(k, _)| k == plugbus::timer::LATE_MS)
                .and_then(|(_, v)| v.parse().ok())
                .unwrap_or(u64::MAX >> 4);
            late.record(ms).expect("record");
        }
    }
    assert_eq!(late.len(), TIMERS, "every timer fired once");
    drop(backend);
    drop_log(dir, Arc::clone(&log));
    late
}

/// Lateness in ms of one thread sleeping until each due time in turn.
fn sleep_lateness() -> Histogram<u64> {
    let mut late = Histogram::<u64>::new(3).expect("histogram");
    for due in dues(now_ms()) {
        let now = now_ms();
        if due > now {
            std::thread::sleep(Duration::from_millis(due - now));
        }
        late.record(now_ms().saturating_sub(due)).expect("record");
    }
    late
}

/// Two processes spinning on a core each, stopped when dropped.
struct Hogs(Vec<Child>);

impl Hogs {
    fn start() -> Hogs {
        Hogs(
            (0..2)
                .filter_map(|_| Command::new("yes").stdout(Stdio::null()).spawn().ok())
                .collect(),
        )
    }
}

impl Drop for Hogs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The lateness table.
pub(crate) fn table() -> String {
    let mut out = String::from(
        "\nTimer lateness: 10000 timers due evenly over 3 s, set through the embedded store (fsync always) and fired by its clock, against one thread sleeping until each due time (the floor), in ms:\n\n| setup | p50 | p99 | max |\n|---|---:|---:|---:|\n",
    );
    for hogs in [false, true] {
        let _hogs = hogs.then(Hogs::start);
        let beside = if hogs { ", beside two CPU hogs" } else { "" };
        for (name, h) in [
            ("plugbus timers", store_lateness()),
            ("a sleeping thread (floor)", sleep_lateness()),
        ] {
            out.push_str(&format!(
                "| {name}{beside} | {} | {} | {} |\n",
                h.value_at_quantile(0.5),
                h.value_at_quantile(0.99),
                h.max()
            ));
        }
    }
    out
}
