//! The host side of `scheduler`: a handler's timer changes, checked
//! (`plugbus_contract::timer`, the publish rules for the timer's event,
//! the plugin's count and its state quota, which timers count in) and held
//! with its state writes until the call's outcomes say whether they are
//! kept. They follow the ack rule as state writes do: kept with a batch
//! whose events were all acked, a batch with any other outcome being
//! handled again one event at a time.

use super::bindings::plugbus::plugin::scheduler::{self, When};
use super::bindings::plugbus::plugin::types::{Outgoing, PublishError};
use super::HostState;
use crate::timer::{Timer, TimerChange};
use plugbus_contract::timer as rules;

/// A plugin's timer limits (how many it keeps is the store's).
#[derive(Debug, Clone, Copy)]
pub struct TimerBook {
    delay_max_ms: u64,
    max: u64,
}

impl Default for TimerBook {
    fn default() -> Self {
        TimerBook::new(rules::DELAY_MS_MAX_DEFAULT, rules::TIMERS_MAX_DEFAULT)
    }
}

impl TimerBook {
    /// Timers due at most `delay_max_ms` ahead, at most `max` set.
    pub fn new(delay_max_ms: u64, max: u64) -> TimerBook {
        TimerBook { delay_max_ms, max }
    }
}

/// A call's timer changes, not yet committed.
#[derive(Default)]
pub(super) struct CallTimers {
    /// In order.
    pub(super) changes: Vec<TimerChange>,
    /// How they change the count of timers set.
    pub(super) count_delta: i64,
    /// How they change the timers' bytes.
    pub(super) bytes_delta: i64,
    /// The plugin's timers as stored when the call first asked.
    stored: Option<crate::timer::Usage>,
    /// Per key changed: its bytes as the call left it (none: not set).
    view: std::collections::HashMap<String, Option<u64>>,
}

fn invalid(e: impl std::fmt::Display) -> PublishError {
    PublishError::Invalid(e.to_string())
}

impl HostState {
    /// The plugin's timers as stored (asked once per call).
    pub(super) fn stored_timers(&mut self) -> crate::timer::Usage {
        if let Some(u) = self.timers.stored {
            return u;
        }
        let u = if self.kv.keeps_timers() {
            self.kv.timer_usage(&self.plugin).unwrap_or_default()
        } else {
            crate::timer::Usage::default()
        };
        self.timers.stored = Some(u);
        u
    }

    /// The bytes timer `key` counts as this call sees it (none: not set).
    fn timer_before(&self, key: &str) -> Result<Option<u64>, PublishError> {
        if let Some(seen) = self.timers.view.get(key) {
            return Ok(*seen);
        }
        let stored = self.kv.timer(&self.plugin, key).map_err(invalid)?;
        Ok(stored.map(|t| crate::timer::bytes(&t.key, &t.event)))
    }

    /// Timers are kept by this backend; the cause is an event in hand.
    fn timer_allowed(&self, cause: u32) -> Result<(), PublishError> {
        if !self.kv.keeps_timers() {
            return Err(PublishError::Invalid(
                "this host's backend does not keep timers: run it on the embedded store (--data, the default), a broker, or in --memory to set timers".into(),
            ));
        }
        plugbus_contract::publish::check_cause(cause, self.batch_len())
            .map_err(|e| PublishError::UnknownCause(e.to_string()))
    }

    /// Note a change of `key` from `before` bytes to `after`.
    fn note_timer(&mut self, key: String, before: Option<u64>, after: Option<u64>) {
        self.timers.count_delta += i64::from(after.is_some()) - i64::from(before.is_some());
        self.timers.bytes_delta += after.unwrap_or(0) as i64 - before.unwrap_or(0) as i64;
        self.timers.view.insert(key, after);
    }
}

impl scheduler::Host for HostState {
    fn schedule(
        &mut self,
        cause: u32,
        key: String,
        due: When,
        event: Outgoing,
    ) -> Result<(), PublishError> {
        self.timer_allowed(cause)?;
        let now = crate::timer::now_ms();
        let due_ms = match due {
            When::AtMs(at) => rules::When::AtMs(at),
            When::AfterMs(after) => rules::When::AfterMs(after),
        }
        .due_ms(now);
        let changes = (self.timers.changes.len(), self.batch_len());
        rules::check_set(&key, due_ms, now, self.timer_book.delay_max_ms, changes)
            .map_err(invalid)?;
        let before = self.timer_before(&key)?;
        if before.is_none() {
            let set = self
                .stored_timers()
                .count
                .saturating_add_signed(self.timers.count_delta);
            rules::check_count(set, self.timer_book.max).map_err(invalid)?;
        }
        let id = |plugin: &str, cause_id: &str| crate::timer::event_id(plugin, cause_id, &key);
        let event = self.follow_up(cause, event, id)?;
        let after = crate::timer::bytes(&key, &event);
        self.check_quota(after as i64 - before.unwrap_or(0) as i64)
            .map_err(invalid)?;
        self.note_timer(key.clone(), before, Some(after));
        self.timers
            .changes
            .push(TimerChange::Set(Box::new(Timer { key, due_ms, event })));
        Ok(())
    }

    fn cancel(&mut self, cause: u32, key: String) -> Result<(), PublishError> {
        self.timer_allowed(cause)?;
        rules::check_key(&key).map_err(invalid)?;
        rules::check_changes(self.timers.changes.len(), self.batch_len()).map_err(invalid)?;
        let before = self.timer_before(&key)?;
        self.note_timer(key.clone(), before, None);
        self.timers.changes.push(TimerChange::Cancel(key));
        Ok(())
    }
}
