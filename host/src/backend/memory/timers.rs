//! Memory mode's timers: kept in a map (lost with the process, as
//! everything in memory mode is), fired onto the bus by a thread of their
//! own when due. A change and a fire take the map's lock, so a cancel
//! committed before the fire wins; a fired event that finds a queue full
//! is dropped and logged, as memory mode drops what a full queue refuses.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::bus::Bus;
use crate::timer::{Timer, TimerChange, Usage};

/// The longest sleep: a bound on lateness should a ring be missed.
const SLEEP_MAX: Duration = Duration::from_millis(250);

/// Set timers, by (owner, key).
type Set = BTreeMap<(String, String), Timer>;

#[derive(Default)]
struct Shared {
    set: Mutex<Set>,
    ring: Condvar,
    stop: AtomicBool,
}

/// The timers and their thread, stopped when dropped.
pub(super) struct Timers {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl Timers {
    /// Fire onto `bus`, counting into `metrics`.
    pub(super) fn start(bus: Arc<Bus>, metrics: &crate::metrics::Metrics) -> Timers {
        let shared = Arc::new(Shared::default());
        let s = shared.clone();
        let meters = (
            metrics.timers_fired.clone(),
            metrics.timer_lateness_seconds.clone(),
        );
        let thread = std::thread::Builder::new()
            .name("plugbus-timers".into())
            .spawn(move || run(&s, &bus, &meters))
            .map_err(|e| tracing::error!("cannot start the timer clock: {e}; timers do not fire"))
            .ok();
        Timers { shared, thread }
    }

    fn set(&self) -> std::sync::MutexGuard<'_, Set> {
        self.shared.set.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Apply `owner`'s changes, in order.
    pub(super) fn apply(&self, owner: &str, changes: Vec<TimerChange>) {
        if changes.is_empty() {
            return;
        }
        let mut set = self.set();
        for change in changes {
            match change {
                TimerChange::Set(t) => {
                    set.insert((owner.to_string(), t.key.clone()), *t);
                }
                TimerChange::Cancel(key) => {
                    set.remove(&(owner.to_string(), key));
                }
            }
        }
        drop(set);
        self.shared.ring.notify_one();
    }

    /// `owner`'s timer `key`.
    pub(super) fn get(&self, owner: &str, key: &str) -> Option<Timer> {
        self.set()
            .get(&(owner.to_string(), key.to_string()))
            .cloned()
    }

    /// Up to `max` of `owner`'s timers, by key.
    pub(super) fn of(&self, owner: &str, max: usize) -> Vec<Timer> {
        self.set()
            .iter()
            .filter(|((o, _), _)| o == owner)
            .take(max)
            .map(|(_, t)| t.clone())
            .collect()
    }

    /// How many `owner` keeps, and their bytes.
    pub(super) fn usage(&self, owner: &str) -> Usage {
        let set = self.set();
        let mut u = Usage::default();
        for ((o, _), t) in set.iter() {
            if o == owner {
                u.count += 1;
                u.bytes += crate::timer::bytes(&t.key, &t.event);
            }
        }
        u
    }
}

impl Drop for Timers {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        self.shared.ring.notify_one();
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                tracing::error!("the timer clock panicked");
            }
        }
    }
}

/// Timers fired, and seconds from due to publish.
type Meters = (
    prometheus_client::metrics::counter::Counter,
    prometheus_client::metrics::histogram::Histogram,
);

fn run(shared: &Shared, bus: &Bus, (fired_count, lateness): &Meters) {
    let mut set = shared.set.lock().unwrap_or_else(|p| p.into_inner());
    while !shared.stop.load(Ordering::Acquire) {
        let now = crate::timer::now_ms();
        let due: Vec<(String, String)> = set
            .iter()
            .filter(|(_, t)| t.due_ms <= now)
            .map(|(k, _)| k.clone())
            .collect();
        if !due.is_empty() {
            let mut fired: Vec<Timer> = due.iter().filter_map(|k| set.remove(k)).collect();
            fired.sort_by_key(|t| t.due_ms);
            drop(set);
            fired_count.inc_by(fired.len() as u64);
            for t in &fired {
                lateness.observe(now.saturating_sub(t.due_ms) as f64 / 1000.0);
            }
            let events = fired
                .into_iter()
                .map(|t| {
                    let restamp = true;
                    crate::timer::fired(t.event, t.due_ms, now, restamp)
                })
                .collect();
            if let Err(e) = bus.publish(crate::event::stamped(events)) {
                tracing::error!("timers' events lost in memory mode: {e}");
            }
            set = shared.set.lock().unwrap_or_else(|p| p.into_inner());
            continue;
        }
        let wait = set
            .values()
            .map(|t| Duration::from_millis(t.due_ms.saturating_sub(now)))
            .min()
            .unwrap_or(SLEEP_MAX)
            .min(SLEEP_MAX);
        set = shared
            .ring
            .wait_timeout(set, wait)
            .map(|(g, _)| g)
            .unwrap_or_else(|p| p.into_inner().0);
    }
}
