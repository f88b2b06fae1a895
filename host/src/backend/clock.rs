//! The timer clock of a backend that fires timers itself (the embedded
//! store, Redis): one thread that sleeps until the next timer is due (the
//! backend's record is the truth; a commit that sets one rings it awake,
//! and it looks at least every [`SLEEP_MAX`], for timers other hosts set),
//! then has the backend publish what is due ([`Fire::fire_due`]), soonest
//! first. After a restart it fires what fell due while the host was down
//! at once, in due order.
//!
//! Timers are due by the backend's clock (the host's wall clock on the
//! embedded store, the server's on Redis): a clock set back delays them,
//! one set forward fires them early.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::Histogram;

use super::BackendError;
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
    /// How late each owner's last fired timer was.
    pub last_lateness: crate::metrics::LatenessByOwner,
}

impl Default for TimerMeters {
    fn default() -> Self {
        TimerMeters {
            fired: Counter::default(),
            lateness: Histogram::new([0.1]),
            last_lateness: Default::default(),
        }
    }
}

/// What a clock fires: a backend's due timers.
pub(super) trait Fire: Send + Sync + 'static {
    /// Publish up to `max` timers due now, soonest first, each once.
    fn fire_due(&self, max: usize) -> Result<Fired, BackendError>;
}

/// What one [`Fire::fire_due`] did.
#[derive(Debug, Default)]
pub(super) struct Fired {
    /// Each timer fired: its owner, and how late it was in ms.
    pub late_ms: Vec<(String, u64)>,
    /// How long until the next timer is due, if one is set.
    pub next_in: Option<Duration>,
}

impl TimerMeters {
    /// Count a timer of `owner` fired `late_ms` late.
    pub fn observe(&self, owner: &str, late_ms: u64) {
        let seconds = late_ms as f64 / 1000.0;
        self.lateness.observe(seconds);
        self.last_lateness
            .get_or_create(&crate::metrics::plugin(owner))
            .set(seconds);
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
    /// Start firing `due`'s timers.
    pub(super) fn start(due: Arc<dyn Fire>) -> Clock {
        let bell = Arc::new(Bell::default());
        let stop = Arc::new(AtomicBool::new(false));
        let meters = Arc::new(Mutex::new(TimerMeters::default()));
        let (b, s, m) = (bell.clone(), stop.clone(), meters.clone());
        let thread = std::thread::Builder::new()
            .name("plugbus-timers".into())
            .spawn(move || run(due.as_ref(), &b, &s, &m))
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

/// A clock started when first needed (a broker's: a host that runs no
/// plugin, or a CLI command, needs none), counting where it was told to
/// even before.
#[derive(Default)]
pub(super) struct LazyClock {
    clock: std::sync::OnceLock<Clock>,
    meters: Mutex<Option<TimerMeters>>,
}

impl LazyClock {
    /// The clock, started on `fire()` if it does not run yet: what wakes it.
    pub(super) fn start(&self, fire: impl FnOnce() -> Arc<dyn Fire>) -> Ringer {
        self.clock
            .get_or_init(|| {
                let clock = Clock::start(fire());
                let meters = self.meters.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(m) = meters.clone() {
                    clock.count_into(m);
                }
                clock
            })
            .ringer()
    }

    /// Count into `meters`, now or once started.
    pub(super) fn count_into(&self, meters: TimerMeters) {
        let mut kept = self.meters.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(clock) = self.clock.get() {
            clock.count_into(meters.clone());
        }
        *kept = Some(meters);
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

fn run(due: &dyn Fire, bell: &Bell, stop: &AtomicBool, meters: &Mutex<TimerMeters>) {
    while !stop.load(Ordering::Acquire) {
        let wait = match due.fire_due(FIRE_BATCH_MAX) {
            Ok(fired) => {
                let m = meters.lock().unwrap_or_else(|p| p.into_inner()).clone();
                m.fired.inc_by(fired.late_ms.len() as u64);
                for (owner, late) in &fired.late_ms {
                    m.observe(owner, *late);
                }
                if fired.late_ms.len() == FIRE_BATCH_MAX {
                    continue;
                }
                fired.next_in.unwrap_or(SLEEP_MAX)
            }
            Err(BackendError::Store(StoreError::Closed)) => return,
            Err(e) => {
                tracing::error!(
                    "cannot publish due timers ({e}); trying again in {FAILED_PAUSE:?}"
                );
                sleep(bell, FAILED_PAUSE);
                continue;
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
