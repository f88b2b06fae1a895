//! The embedded store's timer clock: one thread that sleeps until the next
//! timer is due (the store's `timer_due` is the truth; a commit that sets
//! one rings it awake), then has the log publish what is due
//! ([`Log::fire_due`]), soonest first. After a restart it fires what fell
//! due while the host was down at once, in due order.
//!
//! Timers are due by the host's wall clock: a clock set back delays them,
//! one set forward fires them early.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::Histogram;

use crate::store::log::Log;
use crate::store::StoreError;

/// Timers fired per write.
const FIRE_BATCH_MAX: usize = 256;
/// The longest sleep: a bound on lateness should a ring be missed.
const SLEEP_MAX: Duration = Duration::from_millis(250);
/// The pause after the store failed to fire.
const FAILED_PAUSE: Duration = Duration::from_secs(1);

/// What the clock counts ([`crate::metrics::Metrics`]'s, once given).
#[derive(Clone)]
pub struct TimerMeters {
    /// Timers fired.
    pub fired: Counter,
    /// Seconds from due to append.
    pub lateness: Histogram,
}

impl Default for TimerMeters {
    fn default() -> Self {
        TimerMeters {
            fired: Counter::default(),
            lateness: Histogram::new([0.1]),
        }
    }
}

/// Rung by a commit that set a timer; read by the clock.
#[derive(Default)]
struct Bell {
    rung: Mutex<bool>,
    ring: Condvar,
}

/// The clock thread, stopped when dropped.
pub(super) struct Clock {
    bell: Arc<Bell>,
    stop: Arc<AtomicBool>,
    meters: Arc<Mutex<TimerMeters>>,
    thread: Option<JoinHandle<()>>,
}

impl Clock {
    /// Start firing `log`'s timers.
    pub(super) fn start(log: Arc<Log>) -> Clock {
        let bell = Arc::new(Bell::default());
        let stop = Arc::new(AtomicBool::new(false));
        let meters = Arc::new(Mutex::new(TimerMeters::default()));
        let (b, s, m) = (bell.clone(), stop.clone(), meters.clone());
        let thread = std::thread::Builder::new()
            .name("plugbus-timers".into())
            .spawn(move || run(&log, &b, &s, &m))
            .map_err(|e| tracing::error!("cannot start the timer clock: {e}; timers do not fire"))
            .ok();
        Clock {
            bell,
            stop,
            meters,
            thread,
        }
    }

    /// Count into `meters` from now on.
    pub(super) fn count_into(&self, meters: TimerMeters) {
        *self.meters.lock().unwrap_or_else(|p| p.into_inner()) = meters;
    }

    /// What wakes the clock.
    pub(super) fn ringer(&self) -> Ringer {
        Ringer(self.bell.clone())
    }

    fn ring(&self) {
        self.ringer().ring();
    }
}

/// Wakes the clock.
#[derive(Clone)]
pub(super) struct Ringer(Arc<Bell>);

impl Ringer {
    /// A timer was set: look again at what is due next.
    pub(super) fn ring(&self) {
        *self.0.rung.lock().unwrap_or_else(|p| p.into_inner()) = true;
        self.0.ring.notify_one();
    }
}

impl Drop for Clock {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        self.ring();
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                tracing::error!("the timer clock panicked");
            }
        }
    }
}

fn run(log: &Log, bell: &Bell, stop: &AtomicBool, meters: &Mutex<TimerMeters>) {
    while !stop.load(Ordering::Acquire) {
        let now = crate::timer::now_ms();
        match log.fire_due(now, FIRE_BATCH_MAX) {
            Ok(fired) => {
                let m = meters.lock().unwrap_or_else(|p| p.into_inner()).clone();
                m.fired.inc_by(fired.len() as u64);
                for f in &fired {
                    let late = now.saturating_sub(f.timer.due_ms);
                    m.lateness.observe(late as f64 / 1000.0);
                }
                if fired.len() == FIRE_BATCH_MAX {
                    continue;
                }
            }
            Err(StoreError::Closed) => return,
            Err(e) => {
                tracing::error!(
                    "cannot publish due timers ({e}); trying again in {FAILED_PAUSE:?}"
                );
                sleep(bell, FAILED_PAUSE);
                continue;
            }
        }
        let wait = match log.store().next_due() {
            Ok(Some(due)) => Duration::from_millis(due.saturating_sub(crate::timer::now_ms())),
            Ok(None) => SLEEP_MAX,
            Err(e) => {
                tracing::error!("cannot read the next timer's due time: {e}");
                FAILED_PAUSE
            }
        };
        sleep(bell, wait.min(SLEEP_MAX));
    }
}

/// Sleep for `wait`, or until the bell rings.
fn sleep(bell: &Bell, wait: Duration) {
    let rung = bell.rung.lock().unwrap_or_else(|p| p.into_inner());
    let (mut rung, _) = bell
        .ring
        .wait_timeout_while(rung, wait, |r| !*r)
        .unwrap_or_else(|p| p.into_inner());
    *rung = false;
}
