//! A worker's health: counting failed batches towards quarantine, resting
//! after an offence (the low-priority hold), resetting the instance after a
//! failed call, and taking a new version offered by a hot swap.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::{
    Worker, LOW_PRIORITY_FOR, QUARANTINE_AFTER_BATCHES, QUARANTINE_PAUSE_MAX, QUARANTINE_PAUSE_MIN,
};
use crate::plugin::Quarantine;
use crate::runtime::CallMode;

/// A worker's record: its failed batches towards quarantine, and the holds
/// its recent calls earned.
pub(super) struct Health {
    /// Batches in a row that failed without an ack.
    fail_streak: u32,
    /// The next quarantine's pause.
    quarantine_pause: Duration,
    /// Delivery is paused until then.
    pub(super) quarantined_until: Option<Instant>,
    /// Calls run at low CPU priority, throttled, until then.
    low_priority_until: Option<Instant>,
    /// Calls run in the background until then.
    pub(super) background_until: Option<Instant>,
    /// Delivery pauses this long at the next batch boundary (after a
    /// misbehaving call).
    pub(super) rest_due: Duration,
}

impl Default for Health {
    fn default() -> Health {
        Health {
            fail_streak: 0,
            quarantine_pause: QUARANTINE_PAUSE_MIN,
            quarantined_until: None,
            low_priority_until: None,
            background_until: None,
            rest_due: Duration::ZERO,
        }
    }
}

impl Health {
    /// Whether a call starting `at` is held to low CPU priority.
    pub(super) fn held_low(&self, at: Instant) -> bool {
        self.low_priority_until.is_some_and(|t| at < t)
    }

    /// How a call starting `at` runs.
    pub(super) fn mode(&self, at: Instant) -> CallMode {
        if self.held_low(at) {
            CallMode::Throttled
        } else if self.background_until.is_some_and(|t| at < t) {
            CallMode::Background
        } else {
            CallMode::Foreground
        }
    }

    /// Batches in a row that failed.
    pub(super) fn failed_in_a_row(&self) -> u32 {
        self.fail_streak
    }

    /// An acked batch: the streak and the pause start again; true when it
    /// ends a quarantine.
    fn acked(&mut self) -> bool {
        let was = self.fail_streak >= QUARANTINE_AFTER_BATCHES;
        self.fail_streak = 0;
        self.quarantine_pause = QUARANTINE_PAUSE_MIN;
        was
    }

    /// A failed batch: the quarantine it starts now (until, pause), once
    /// the streak is long enough, each pause twice the last.
    fn failed(&mut self) -> Option<(Instant, Duration)> {
        self.fail_streak += 1;
        if self.fail_streak < QUARANTINE_AFTER_BATCHES {
            return None;
        }
        let pause = self.quarantine_pause;
        let until = Instant::now() + pause;
        self.quarantined_until = Some(until);
        self.quarantine_pause = (pause * 2).min(QUARANTINE_PAUSE_MAX);
        Some((until, pause))
    }
}

impl Worker {
    /// Pause delivery for the rest due (at most [`LOW_PRIORITY_FOR`]), or
    /// until the host or the plugin stops or a new version is offered.
    pub(super) fn rest(&mut self) {
        let pause = std::mem::take(&mut self.health.rest_due);
        if pause.is_zero() {
            return;
        }
        let until = Instant::now() + pause.min(LOW_PRIORITY_FOR);
        while Instant::now() < until
            && !self.stopping.load(Ordering::Relaxed)
            && !self.plugin.stop.load(Ordering::Relaxed)
            && !self.plugin.swap_offered(self.index)
        {
            std::thread::sleep((until - Instant::now()).min(Duration::from_millis(10)));
        }
    }

    /// Hold delivery while the plugin owes its publish rate
    /// (`publish.rate_events_per_s_max`): the follow-ups it published on
    /// credit are paid back before it is given more events.
    pub(super) fn hold_for_publish_rate(&mut self) {
        let rate = &self.plugin.settings.publish.rate;
        if rate.owed().is_zero() {
            return;
        }
        let why = format!(
            "publish rate limit of {} events/s reached (publish.rate_events_per_s_max): deliveries are held until it is back under",
            rate.per_s().unwrap_or(0)
        );
        loop {
            let owed = rate.owed();
            if owed.is_zero()
                || self.stopping.load(Ordering::Relaxed)
                || self.plugin.stop.load(Ordering::Relaxed)
                || self.plugin.swap_offered(self.index)
            {
                break;
            }
            self.plugin.conditions.note_held(&why);
            std::thread::sleep(owed.min(Duration::from_millis(10)));
        }
    }

    /// The plugin misbehaved in its last call: its calls run at low CPU
    /// priority for [`LOW_PRIORITY_FOR`] from now.
    pub(super) fn misbehaved(&mut self) {
        let now = Instant::now();
        let until = now + LOW_PRIORITY_FOR;
        if !self.health.held_low(now) {
            tracing::info!(plugin = %self.plugin.name, worker = self.index, "misbehaving (trapped, past its deadline, refused or cut): its calls are held to a tenth of a core");
        }
        self.health.low_priority_until = Some(until);
        self.plugin.low_priority_until.extend(until);
    }

    /// Swap in the new version offered, if any: the next batch goes to it.
    pub(super) fn take_swap(&mut self) {
        let Some(swap) = self.plugin.take_swap(self.index) else {
            return;
        };
        let swapping = Instant::now();
        let (instance, waited, hash, tier_up) = swap.into_parts();
        self.instance = instance;
        self.needs_reset = false;
        self.pause_from = Some(swapping);
        let swapped = if tier_up {
            // The same version optimized: its record stands.
            "optimized build swapped in"
        } else {
            // A new version gets a fresh start.
            self.health = Health {
                rest_due: self.health.rest_due,
                ..Health::default()
            };
            self.plugin.set_quarantine(self.index, None);
            self.plugin.low_priority_until.clear();
            self.plugin.background_until.clear();
            self.meters.swaps.inc();
            "new version swapped in"
        };
        tracing::info!(plugin = %self.plugin.name, content_hash = %hash, waited_ms = waited.as_millis() as u64, "{swapped}");
    }

    /// Count a batch toward quarantine: `acked` if any event was acked,
    /// `failed` with a failure (trap or retry) if any.
    pub(super) fn note_batch(&mut self, acked: bool, failed: Option<&str>) {
        if let Some((any_acked, first_failure)) = self.cap.split_outcome.as_mut() {
            // A piece of a split batch: the batch counts once, at its end.
            *any_acked |= acked;
            if first_failure.is_none() {
                *first_failure = failed.map(str::to_string);
            }
            return;
        }
        if acked {
            if self.health.acked() {
                tracing::info!(plugin = %self.plugin.name, worker = self.index, "acking again: out of quarantine");
            }
            self.plugin.set_quarantine(self.index, None);
            return;
        }
        let Some(reason) = failed else {
            return;
        };
        let Some((until, pause)) = self.health.failed() else {
            return;
        };
        self.plugin.quarantines.inc();
        let reason = plugbus_contract::prefix_at_char(reason, 512).to_string();
        tracing::warn!(plugin = %self.plugin.name, worker = self.index, pause_ms = pause.as_millis() as u64, last_error = %reason, "quarantined: {} batches in a row failed; delivery pauses, its events wait", self.health.failed_in_a_row());
        self.plugin.set_quarantine(
            self.index,
            Some(Quarantine {
                until,
                pause,
                reason,
            }),
        );
    }

    /// Make a fresh instance; false (and logged) when that fails too.
    pub(super) fn reset(&mut self) -> bool {
        match self.instance.reset() {
            Ok(_) => {
                self.needs_reset = false;
                true
            }
            Err(e) => {
                tracing::error!(plugin = %self.plugin.name, "cannot re-instantiate after a trap: {e}");
                false
            }
        }
    }
}
