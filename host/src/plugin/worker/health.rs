//! A worker's health: counting failed batches towards quarantine, resting
//! after an offence (the low-priority hold), resetting the instance after a
//! failed call, and taking a new version offered by a hot swap.

use super::*;

impl Worker {
    /// Pause delivery for the rest due (at most [`LOW_PRIORITY_FOR`]), or
    /// until the host or the plugin stops or a new version is offered.
    pub(super) fn rest(&mut self) {
        let pause = std::mem::take(&mut self.rest_due);
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
        let until = Instant::now() + LOW_PRIORITY_FOR;
        if self.low_priority_until.is_none_or(|t| t < Instant::now()) {
            tracing::info!(plugin = %self.plugin.name, worker = self.index, "misbehaving (trapped, past its deadline, refused or cut): its calls are held to a tenth of a core");
        }
        self.low_priority_until = Some(until);
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
            self.fail_streak = 0;
            self.quarantine_pause = QUARANTINE_PAUSE_MIN;
            self.quarantined_until = None;
            self.plugin.set_quarantine(self.index, None);
            self.low_priority_until = None;
            self.plugin.low_priority_until.clear();
            self.background_until = None;
            self.plugin.background_until.clear();
            self.swaps.inc();
            "new version swapped in"
        };
        tracing::info!(plugin = %self.plugin.name, content_hash = %hash, waited_ms = waited.as_millis() as u64, "{swapped}");
    }

    /// Count a batch toward quarantine: `acked` if any event was acked,
    /// `failed` with a failure (trap or retry) if any.
    pub(super) fn note_batch(&mut self, acked: bool, failed: Option<&str>) {
        if let Some((any_acked, first_failure)) = self.split_outcome.as_mut() {
            // A piece of a split batch: the batch counts once, at its end.
            *any_acked |= acked;
            if first_failure.is_none() {
                *first_failure = failed.map(str::to_string);
            }
            return;
        }
        if acked {
            if self.fail_streak >= QUARANTINE_AFTER_BATCHES {
                tracing::info!(plugin = %self.plugin.name, worker = self.index, "acking again: out of quarantine");
            }
            self.fail_streak = 0;
            self.quarantine_pause = QUARANTINE_PAUSE_MIN;
            self.plugin.set_quarantine(self.index, None);
            return;
        }
        let Some(reason) = failed else {
            return;
        };
        self.fail_streak += 1;
        if self.fail_streak < QUARANTINE_AFTER_BATCHES {
            return;
        }
        let pause = self.quarantine_pause;
        let until = Instant::now() + pause;
        self.quarantined_until = Some(until);
        self.quarantine_pause = (pause * 2).min(QUARANTINE_PAUSE_MAX);
        self.plugin.quarantines.inc();
        let reason = plugbus_contract::prefix_at_char(reason, 512).to_string();
        tracing::warn!(plugin = %self.plugin.name, worker = self.index, pause_ms = pause.as_millis() as u64, last_error = %reason, "quarantined: {} batches in a row failed; delivery pauses, its events wait", self.fail_streak);
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
