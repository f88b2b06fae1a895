//! Retries and giving up: when a failed event's next attempt is due (the
//! plugin's delay, or backoff with jitter), and giving an event up (dead
//! letter or counted drop) when its attempts are used up or the retry
//! backlog is full.

use std::sync::Arc;
use std::time::Duration;

use super::Worker;
use crate::event::Event;

/// Why a worker stops delivering an event.
#[derive(Clone, Copy)]
pub(super) enum GiveUp {
    Rejected,
    Exhausted,
    BacklogFull,
}

impl GiveUp {
    pub(super) fn says(self) -> &'static str {
        match self {
            GiveUp::Rejected => "rejected by the plugin",
            GiveUp::Exhausted => "no attempts left",
            GiveUp::BacklogFull => "retry backlog full",
        }
    }
}

impl Worker {
    /// Count a failed attempt and schedule the next, or give up on the
    /// event when its attempts are used up.
    pub(super) fn fail(
        &mut self,
        event: &Arc<Event>,
        attempt: u32,
        delay_ms: Option<u64>,
        message: &str,
    ) {
        self.plugin.failed.inc();
        let heap_full =
            self.feed.consumer.waiting() + self.fx.retries.len() >= self.settings.queue_events_max;
        if attempt >= self.settings.max_attempts || heap_full {
            let why = if heap_full {
                GiveUp::BacklogFull
            } else {
                GiveUp::Exhausted
            };
            self.give_up(event, attempt, message, why);
            return;
        }
        let delay = match delay_ms {
            Some(ms) => ms.min(self.settings.retry_delay_ms_max),
            None => self.backoff_ms(attempt),
        };
        self.fx
            .retries
            .push((event.sequence, Duration::from_millis(delay)));
    }

    /// Stop delivering `event`: in durable mode it becomes a dead letter (kept,
    /// with its attempts and last error, until re-driven or purged); in
    /// memory mode it is dropped and counted.
    pub(super) fn give_up(&mut self, event: &Arc<Event>, attempts: u32, error: &str, why: GiveUp) {
        self.fx
            .gave_up
            .push((event.clone(), attempts, error.to_string(), why));
    }

    /// `backoff_ms_min * 2^(attempt-1)`, capped at `backoff_ms_max`, with
    /// ±25 % jitter so that retries of many events do not arrive together.
    pub(super) fn backoff_ms(&mut self, attempt: u32) -> u64 {
        let base = self
            .settings
            .backoff_ms_min
            .saturating_mul(1u64 << (attempt - 1).min(30))
            .min(self.settings.backoff_ms_max);
        // xorshift64: jitter needs spread, not cryptographic quality.
        self.jitter ^= self.jitter << 13;
        self.jitter ^= self.jitter >> 7;
        self.jitter ^= self.jitter << 17;
        let span = base / 2;
        if span == 0 {
            return base;
        }
        base - span / 2 + self.jitter % span
    }
}
