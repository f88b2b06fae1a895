//! Memory mode's timers: kept in memory (lost with the process, as
//! everything in memory mode is), by key and by due time, with each
//! owner's count and bytes, and fired onto the bus when due by a thread
//! started with the first timer. A change and a fire take the same lock,
//! so a cancel committed before the fire wins; a fired event that finds a
//! queue full is dropped and logged, as memory mode drops what a full
//! queue refuses.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::backend::clock::TimerMeters;

use crate::bus::Bus;
use crate::timer::{Timer, TimerChange, Usage};

/// The longest sleep: a bound on lateness should a ring be missed.
const SLEEP_MAX: Duration = Duration::from_millis(250);

/// The timers set.
#[derive(Default)]
struct Set {
    /// By (owner, key).
    by_key: BTreeMap<(String, String), Timer>,
    /// (due, owner, key), soonest first.
    by_due: BTreeSet<(u64, String, String)>,
    usage: HashMap<String, Usage>,
}

impl Set {
    fn insert(&mut self, owner: &str, t: Timer) {
        self.remove(owner, &t.key);
        let u = self.usage.entry(owner.to_string()).or_default();
        u.count += 1;
        u.bytes += crate::timer::bytes(&t.key, &t.event);
        self.by_due
            .insert((t.due_ms, owner.to_string(), t.key.clone()));
        self.by_key.insert((owner.to_string(), t.key.clone()), t);
    }

    fn remove(&mut self, owner: &str, key: &str) -> Option<Timer> {
        let t = self.by_key.remove(&(owner.to_string(), key.to_string()))?;
        self.by_due
            .remove(&(t.due_ms, owner.to_string(), key.to_string()));
        if let Some(u) = self.usage.get_mut(owner) {
            u.count = u.count.saturating_sub(1);
            u.bytes = u
                .bytes
                .saturating_sub(crate::timer::bytes(&t.key, &t.event));
        }
        Some(t)
    }
}

struct Shared {
    set: Mutex<Set>,
    ring: Condvar,
    stop: AtomicBool,
    bus: Arc<Bus>,
    meters: TimerMeters,
}

/// The timers and their thread (once one is set), stopped when dropped.
pub(super) struct Timers {
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Timers {
    /// Timers to fire onto `bus`, counting into `metrics`.
    pub(super) fn new(bus: Arc<Bus>, metrics: &crate::metrics::Metrics) -> Timers {
        Timers {
            shared: Arc::new(Shared {
                set: Mutex::default(),
                ring: Condvar::new(),
                stop: AtomicBool::new(false),
                bus,
                meters: TimerMeters {
                    fired: metrics.timers_fired.clone(),
                    lateness: metrics.timer_lateness_seconds.clone(),
                    last_lateness: metrics.timer_last_lateness_seconds.clone(),
                },
            }),
            thread: Mutex::new(None),
        }
    }

    fn set(&self) -> std::sync::MutexGuard<'_, Set> {
        self.shared.set.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The clock's thread, started with the first timer (a backend that
    /// never has one, as in `plugbus test`, costs none).
    fn start_clock(&self) {
        let mut thread = self.thread.lock().unwrap_or_else(|p| p.into_inner());
        if thread.is_some() {
            return;
        }
        let s = self.shared.clone();
        *thread = std::thread::Builder::new()
            .name("plugbus-timers".into())
            .spawn(move || run(&s))
            .map_err(|e| tracing::error!("cannot start the timer clock: {e}; timers do not fire"))
            .ok();
    }

    /// Apply `owner`'s changes, in order.
    pub(super) fn apply(&self, owner: &str, changes: Vec<TimerChange>) {
        if changes.is_empty() {
            return;
        }
        let mut set = self.set();
        for change in changes {
            match change {
                TimerChange::Set(t) => set.insert(owner, *t),
                TimerChange::Cancel(key) => {
                    set.remove(owner, &key);
                }
            }
        }
        drop(set);
        self.start_clock();
        self.shared.ring.notify_one();
    }

    /// `owner`'s timer `key`.
    pub(super) fn get(&self, owner: &str, key: &str) -> Option<Timer> {
        self.set()
            .by_key
            .get(&(owner.to_string(), key.to_string()))
            .cloned()
    }

    /// Up to `max` of `owner`'s timers, by key.
    pub(super) fn of(&self, owner: &str, max: usize) -> Vec<Timer> {
        self.set()
            .by_key
            .range((owner.to_string(), String::new())..)
            .take_while(|((o, _), _)| o == owner)
            .take(max)
            .map(|(_, t)| t.clone())
            .collect()
    }

    /// When `owner`'s next timer is due.
    pub(super) fn next_due(&self, owner: &str) -> Option<u64> {
        self.set()
            .by_key
            .range((owner.to_string(), String::new())..)
            .take_while(|((o, _), _)| o == owner)
            .map(|(_, t)| t.due_ms)
            .min()
    }

    /// How many `owner` keeps, and their bytes.
    pub(super) fn usage(&self, owner: &str) -> Usage {
        self.set().usage.get(owner).copied().unwrap_or_default()
    }
}

impl Drop for Timers {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        self.shared.ring.notify_one();
        let thread = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(t) = thread {
            if t.join().is_err() {
                tracing::error!("the timer clock panicked");
            }
        }
    }
}

fn run(shared: &Shared) {
    let mut set = shared.set.lock().unwrap_or_else(|p| p.into_inner());
    while !shared.stop.load(Ordering::Acquire) {
        let now = crate::timer::now_ms();
        let next = set.by_due.first().map(|(due, _, _)| *due);
        match next {
            Some(due) if due <= now => {
                let mut fired = Vec::new();
                while let Some((due, owner, key)) = set.by_due.first().cloned() {
                    if due > now {
                        break;
                    }
                    if let Some(t) = set.remove(&owner, &key) {
                        fired.push((owner, t));
                    }
                }
                drop(set);
                shared.meters.fired.inc_by(fired.len() as u64);
                let events = fired
                    .into_iter()
                    .map(|(owner, t)| {
                        shared.meters.observe(&owner, now.saturating_sub(t.due_ms));
                        // A plugin's timer happens now: its time is the
                        // fire's; a publisher's keeps the time it was given.
                        let restamp = owner != crate::timer::OUTSIDE;
                        crate::timer::fired(t.event, t.due_ms, now, restamp)
                    })
                    .collect();
                if let Err(e) = shared.bus.publish(crate::event::stamped(events)) {
                    tracing::error!("timers' events lost in memory mode: {e}");
                }
                set = shared.set.lock().unwrap_or_else(|p| p.into_inner());
            }
            _ => {
                let wait = next.map_or(SLEEP_MAX, |due| {
                    Duration::from_millis(due - now).min(SLEEP_MAX)
                });
                set = shared
                    .ring
                    .wait_timeout(set, wait)
                    .map(|(g, _)| g)
                    .unwrap_or_else(|p| p.into_inner().0);
            }
        }
    }
}
