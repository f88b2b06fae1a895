//! A worker that panics does not die: the panic is caught at the batch
//! boundary, the plugin's status says so with the message, the events in
//! hand are handed back and delivered again to a fresh instance, it is
//! counted (`plugbus_plugin_worker_deaths_total`), and delivery goes on
//! after a pause that doubles with each failure in a row. A plugin that
//! keeps killing its worker is quarantined like one that keeps trapping
//! (each death counts as a failed batch).
//!
//! A test-only fault: `PLUGBUS_FAULT_WORKER_PANIC=PLUGIN:N` makes the
//! worker of PLUGIN panic before settling every Nth batch (after the
//! plugin handled it, before anything of it is committed).

use std::panic::AssertUnwindSafe;
use std::sync::atomic::AtomicU64;
use std::sync::OnceLock;

use super::*;

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
        self.plugin.conditions.deaths.inc();
        self.plugin.conditions.note_death(self.index, message);
        tracing::error!(plugin = %self.plugin.name, worker = self.index, "the plugin's worker panicked ({message}); the events in hand are delivered again to a fresh instance");
        self.needs_reset = true;
        self.hand_back();
        self.note_batch(false, Some(&format!("its worker panicked: {message}")));
        let pause = DEATH_PAUSE_MIN
            .saturating_mul(1 << self.fail_streak.min(8))
            .min(DEATH_PAUSE_MAX);
        self.rest_due = self.rest_due.max(pause);
    }

    /// The test-only fault hook: panic here on every Nth batch of the
    /// plugin named in `PLUGBUS_FAULT_WORKER_PANIC`.
    pub(super) fn fault_point(&self) {
        static FAULT: OnceLock<Option<(String, u64)>> = OnceLock::new();
        static SEEN: AtomicU64 = AtomicU64::new(0);
        let fault = FAULT.get_or_init(|| {
            let spec = std::env::var("PLUGBUS_FAULT_WORKER_PANIC").ok()?;
            let (plugin, every) = spec.rsplit_once(':')?;
            Some((plugin.to_string(), every.parse().ok().filter(|&n| n > 0)?))
        });
        if let Some((plugin, every)) = fault {
            if *plugin == self.plugin.name
                && (SEEN.fetch_add(1, Ordering::Relaxed) + 1).is_multiple_of(*every)
            {
                panic!("fault injected by PLUGBUS_FAULT_WORKER_PANIC");
            }
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
