//! The test host a [`Harness`](super::Harness) runs a plugin in: what the
//! real host keeps for one plugin (its committed state, its config) and
//! what it collects during one `handle` call (writes, publishes), with the
//! real host's checks on a publish.
//!
//! The harness owns its sandbox and lends it to the thread while it calls
//! into the plugin, so several harnesses can live in one test.

use std::cell::RefCell;
use std::collections::BTreeMap;

use crate::bindings::wasi::keyvalue::store;
use crate::{Level, Outgoing, PublishError, When};
use plugbus_contract::{publish, state, timer};

/// 2026-01-01T00:00:00Z: where a harness's clock starts.
pub(crate) const EPOCH_MS: u64 = 1_767_225_600_000;

/// A timer change of the call in progress: the cause's index, the key, and
/// what it sets (none: a cancel).
pub(crate) type TimerChange = (u32, String, Option<(u64, Outgoing)>);

/// One line a plugin logged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    /// Its level.
    pub level: Level,
    /// What it said.
    pub message: String,
}

#[derive(Debug, Default)]
pub(crate) struct Sandbox {
    pub(crate) config: Vec<(String, String)>,
    /// State as committed: the effect of acked events only.
    pub(crate) committed: BTreeMap<String, Vec<u8>>,
    /// Writes of the call in progress (`None`: deleted).
    pub(crate) overlay: BTreeMap<String, Option<Vec<u8>>>,
    /// Publishes of the call in progress: (cause index, event).
    pub(crate) published: Vec<(u32, Outgoing)>,
    pub(crate) logs: Vec<LogLine>,
    /// Events in the batch being handled.
    pub(crate) batch_len: u32,
    /// Bytes (keys and values) written by the call in progress.
    pub(crate) written: usize,
    /// The harness's clock, Unix ms.
    pub(crate) now_ms: u64,
    /// Timers committed, by key: when due, and the event they publish.
    pub(crate) timers: BTreeMap<String, (u64, super::Published)>,
    /// Timer changes of the call in progress, in order.
    pub(crate) timer_changes: Vec<TimerChange>,
}

thread_local! {
    static CURRENT: RefCell<Sandbox> = RefCell::new(Sandbox::default());
}

/// Run `f` on the sandbox lent to this thread (a default one outside a
/// harness call).
pub(crate) fn with<T>(f: impl FnOnce(&mut Sandbox) -> T) -> T {
    CURRENT.with(|s| f(&mut s.borrow_mut()))
}

/// Lend `sandbox` to this thread while `f` runs.
pub(crate) fn lend<T>(sandbox: &mut Sandbox, f: impl FnOnce() -> T) -> T {
    CURRENT.with(|s| std::mem::swap(&mut *s.borrow_mut(), sandbox));
    let out = f();
    CURRENT.with(|s| std::mem::swap(&mut *s.borrow_mut(), sandbox));
    out
}

impl Sandbox {
    pub(crate) fn get(&self, key: &str) -> Option<Vec<u8>> {
        match self.overlay.get(key) {
            Some(written) => written.clone(),
            None => self.committed.get(key).cloned(),
        }
    }

    pub(crate) fn write(&mut self, key: &str, value: Option<Vec<u8>>) -> Result<(), store::Error> {
        let value_bytes = value.as_ref().map_or(0, Vec::len);
        state::check_write(key, value_bytes, self.written).map_err(refused)?;
        self.written += key.len() + value_bytes;
        self.overlay.insert(key.to_string(), value);
        Ok(())
    }

    pub(crate) fn increment(&mut self, key: &str, delta: i64) -> Result<i64, store::Error> {
        state::check_key(key).map_err(refused)?;
        let held = self.get(key);
        let (next, stored) = state::increment(key, held.as_deref(), delta).map_err(refused)?;
        self.write(key, Some(stored))?;
        Ok(next)
    }

    pub(crate) fn keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = self
            .committed
            .keys()
            .filter(|k| !matches!(self.overlay.get(*k), Some(None)))
            .cloned()
            .collect();
        keys.extend(
            self.overlay
                .iter()
                .filter(|(k, v)| v.is_some() && !self.committed.contains_key(*k))
                .map(|(k, _)| k.clone()),
        );
        keys.sort();
        keys
    }

    pub(crate) fn publish(&mut self, cause: u32, event: &Outgoing) -> Result<(), PublishError> {
        let call = publish::Publish {
            cause,
            topic: &event.type_,
            subject: event.subject.as_deref(),
            data_bytes: event.data.len(),
        };
        publish::check(&call, self.batch_len as usize, self.published.len()).map_err(|why| {
            match why.is_unknown_cause() {
                true => PublishError::UnknownCause(why.to_string()),
                false => PublishError::Invalid(why.to_string()),
            }
        })?;
        self.published.push((cause, event.clone()));
        Ok(())
    }

    /// Whether timer `key` is set as the call in progress sees it.
    fn timer_set(&self, key: &str) -> bool {
        match self.timer_changes.iter().rev().find(|(_, k, _)| k == key) {
            Some((_, _, change)) => change.is_some(),
            None => self.timers.contains_key(key),
        }
    }

    /// Timers set as the call in progress sees them.
    fn timers_set(&self) -> u64 {
        let mut keys: std::collections::BTreeSet<&str> =
            self.timers.keys().map(String::as_str).collect();
        for (_, k, change) in &self.timer_changes {
            match change {
                Some(_) => keys.insert(k),
                None => keys.remove(k.as_str()),
            };
        }
        keys.len() as u64
    }

    pub(crate) fn schedule(
        &mut self,
        cause: u32,
        key: &str,
        due: When,
        event: &Outgoing,
    ) -> Result<(), PublishError> {
        let call = publish::Publish {
            cause,
            topic: &event.type_,
            subject: event.subject.as_deref(),
            data_bytes: event.data.len(),
        };
        publish::check(&call, self.batch_len as usize, 0).map_err(|why| {
            match why.is_unknown_cause() {
                true => PublishError::UnknownCause(why.to_string()),
                false => PublishError::Invalid(why.to_string()),
            }
        })?;
        let due_ms = match due {
            When::AtMs(at) => timer::When::AtMs(at),
            When::AfterMs(after) => timer::When::AfterMs(after),
        }
        .due_ms(self.now_ms);
        let changes = (self.timer_changes.len(), self.batch_len as usize);
        let invalid = |why: timer::Refused| PublishError::Invalid(why.to_string());
        timer::check_set(
            key,
            due_ms,
            self.now_ms,
            timer::DELAY_MS_MAX_DEFAULT,
            changes,
        )
        .map_err(invalid)?;
        if !self.timer_set(key) {
            timer::check_count(self.timers_set(), timer::TIMERS_MAX_DEFAULT).map_err(invalid)?;
        }
        self.timer_changes
            .push((cause, key.to_string(), Some((due_ms, event.clone()))));
        Ok(())
    }

    pub(crate) fn cancel(&mut self, cause: u32, key: &str) -> Result<(), PublishError> {
        publish::check_cause(cause, self.batch_len as usize)
            .map_err(|why| PublishError::UnknownCause(why.to_string()))?;
        let invalid = |why: timer::Refused| PublishError::Invalid(why.to_string());
        timer::check_key(key).map_err(invalid)?;
        timer::check_changes(self.timer_changes.len(), self.batch_len as usize).map_err(invalid)?;
        self.timer_changes.push((cause, key.to_string(), None));
        Ok(())
    }

    pub(crate) fn log(&mut self, level: Level, message: &str) {
        self.logs.push(LogLine {
            level,
            message: message.to_string(),
        });
    }

    /// Keep the call's writes.
    pub(crate) fn commit(&mut self) {
        self.written = 0;
        for (key, value) in std::mem::take(&mut self.overlay) {
            match value {
                Some(v) => self.committed.insert(key, v),
                None => self.committed.remove(&key),
            };
        }
    }

    /// Forget the call's writes, timer changes and publishes.
    pub(crate) fn discard(&mut self) {
        self.written = 0;
        self.overlay.clear();
        self.published.clear();
        self.timer_changes.clear();
    }
}

/// A refused state operation, as the host words it.
fn refused(why: state::Refused) -> store::Error {
    store::Error::Other(why.to_string())
}
