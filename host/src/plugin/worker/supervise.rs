//! A worker that panics does not die: the panic is caught at the batch
//! boundary, the plugin's status says so with the message, the events of
//! the batch in hand count a failed attempt (retried, or dead letters once
//! their attempts are used up) and the rest in hand are handed back, all
//! delivered again to a fresh instance; it is counted
//! (`plugbus_plugin_worker_deaths_total`), and delivery goes on after a
//! pause that doubles with each failure in a row. A plugin that
//! keeps killing its worker is quarantined like one that keeps trapping
//! (each death counts as a failed batch).
//!
//! Test-only faults, for the fault simulation (`tests/e2e/simulation.rs`):
//! `PLUGBUS_FAULT_WORKER_PANIC=PLUGIN:N` makes the worker of PLUGIN panic
//! before settling every Nth batch (after the plugin handled it, before
//! anything of it is committed); `PLUGBUS_FAULT_CALL_TRAP=PLUGIN:N` turns
//! every Nth `handle` call of PLUGIN into a trap after it ran (what it did
//! is thrown away, as after a real trap).

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use std::ops::Range;
use std::time::Duration;

use super::{Effects, Worker};
use crate::backend::{Settlement, Verdict};
use crate::event::Chunk;
use crate::runtime::{BatchResult, CallError};

/// The first pause after a death; it doubles with each failed batch in a
/// row, up to [`DEATH_PAUSE_MAX`].
const DEATH_PAUSE_MIN: Duration = Duration::from_millis(100);
/// The longest pause after a death.
const DEATH_PAUSE_MAX: Duration = Duration::from_secs(10);

impl Worker {
    /// [`Worker::step`], with a panic caught and returned as its message.
    pub(super) fn step_supervised(&mut self) -> Result<bool, String> {
        std::panic::catch_unwind(AssertUnwindSafe(|| self.step())).map_err(|p| panic_message(&*p))
    }

    /// The worker panicked with `message` while handling a batch.
    pub(super) fn died(&mut self, message: &str) {
        self.fx = Effects::default();
        self.cap.split_outcome = None;
        self.plugin.conditions.deaths.inc();
        self.plugin.conditions.note_death(self.index, message);
        tracing::error!(plugin = %self.plugin.name, worker = self.index, "the plugin's worker panicked ({message}); the events in hand are delivered again to a fresh instance");
        self.needs_reset = true;
        let why = format!("its worker panicked: {message}");
        if let Some(chunk) = self.in_hand.chunk.take() {
            let range = self.in_hand.range.clone();
            let attempts = std::mem::take(&mut self.in_hand.attempts);
            self.fail_in_hand(&chunk, range, &attempts, &why);
        }
        self.hand_back();
        self.note_batch(false, Some(&why));
        let pause = DEATH_PAUSE_MIN
            .saturating_mul(1 << self.health.failed_in_a_row().min(8))
            .min(DEATH_PAUSE_MAX);
        self.health.rest_due = self.health.rest_due.max(pause);
    }

    /// Each event of `chunk[range]` (at `attempts`) the consumer still holds
    /// counts a failed attempt, settled alone (one already settled is no
    /// longer held, and its settlement is refused).
    fn fail_in_hand(&mut self, chunk: &Chunk, range: Range<usize>, attempts: &[u32], why: &str) {
        for (i, &attempt) in range.zip(attempts) {
            let Some(event) = chunk.get(i).cloned() else {
                continue;
            };
            self.fail(&event, attempt, None, why);
            let fx = std::mem::take(&mut self.fx);
            let verdict = match (fx.retries.first(), fx.gave_up.first()) {
                (Some(&(_, delay)), _) => Verdict::Retry(delay),
                (None, Some((_, _, error, _))) => Verdict::Dead(error.clone()),
                (None, None) => continue,
            };
            let settled = self.feed.consumer.settle(Settlement {
                verdicts: vec![(event.sequence, verdict)],
                ..Settlement::default()
            });
            if settled.is_ok() {
                self.apply(fx);
            }
        }
    }

    /// The test-only fault hook: panic here on every Nth batch of the
    /// plugin named in `PLUGBUS_FAULT_WORKER_PANIC`.
    pub(super) fn fault_point(&self) {
        static FAULT: Fault = Fault::new("PLUGBUS_FAULT_WORKER_PANIC");
        if FAULT.due(&self.plugin.name) {
            panic!("fault injected by PLUGBUS_FAULT_WORKER_PANIC");
        }
    }

    /// The test-only fault hook: `result` becomes a trap on every Nth call
    /// of the plugin named in `PLUGBUS_FAULT_CALL_TRAP`.
    pub(super) fn fault_trap(&self, result: &mut Result<BatchResult, CallError>) {
        static FAULT: Fault = Fault::new("PLUGBUS_FAULT_CALL_TRAP");
        if FAULT.due(&self.plugin.name) {
            *result = Err(CallError::Trap {
                plugin: self.plugin.name.clone(),
                reason: "fault injected by PLUGBUS_FAULT_CALL_TRAP".into(),
            });
        }
    }
}

/// A fault set by an environment variable `PLUGIN:N`: due on every Nth
/// time it is asked for that plugin.
struct Fault {
    var: &'static str,
    spec: OnceLock<Option<(String, u64)>>,
    seen: AtomicU64,
}

impl Fault {
    const fn new(var: &'static str) -> Fault {
        Fault {
            var,
            spec: OnceLock::new(),
            seen: AtomicU64::new(0),
        }
    }

    fn due(&self, plugin: &str) -> bool {
        let spec = self.spec.get_or_init(|| {
            let spec = std::env::var(self.var).ok()?;
            let (plugin, every) = spec.rsplit_once(':')?;
            Some((plugin.to_string(), every.parse().ok().filter(|&n| n > 0)?))
        });
        match spec {
            Some((p, every)) if p == plugin => {
                (self.seen.fetch_add(1, Ordering::Relaxed) + 1).is_multiple_of(*every)
            }
            _ => false,
        }
    }
}

/// What a panic said.
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_string())
}
