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
use crate::{Level, Outgoing, PublishError};

/// Follow-up events one handled event may publish, as on the host.
const PUBLISHES_PER_EVENT_MAX: usize = 64;
/// The largest follow-up payload, as on the host.
const PUBLISH_DATA_BYTES_MAX: usize = 1 << 20;
/// The longest topic and subject, as on the host.
const TOPIC_BYTES_MAX: usize = 256;
const ATTRIBUTE_BYTES_MAX: usize = 1024;

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
        if key.is_empty() || key.len() > 1024 {
            return Err(store::Error::Other(format!(
                "key of {} bytes: keys are 1 to 1024 bytes",
                key.len()
            )));
        }
        if value.as_ref().is_some_and(|v| v.len() > 1 << 20) {
            return Err(store::Error::Other(format!(
                "value for `{key}` is over the limit of 1 MiB"
            )));
        }
        self.overlay.insert(key.to_string(), value);
        Ok(())
    }

    pub(crate) fn increment(&mut self, key: &str, delta: i64) -> Result<i64, store::Error> {
        let now = match self.get(key) {
            None => 0,
            Some(bytes) => std::str::from_utf8(&bytes)
                .ok()
                .and_then(|t| t.trim().parse::<i64>().ok())
                .ok_or_else(|| {
                    store::Error::Other(format!("`{key}` does not hold a decimal number"))
                })?,
        };
        let next = now
            .checked_add(delta)
            .ok_or_else(|| store::Error::Other(format!("`{key}` would overflow adding {delta}")))?;
        self.write(key, Some(next.to_string().into_bytes()))?;
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
        if cause >= self.batch_len {
            return Err(PublishError::UnknownCause(format!(
                "index {cause} is not in the batch being handled ({} events); pass the index of the event you are handling",
                self.batch_len
            )));
        }
        if self.published.len() >= self.batch_len as usize * PUBLISHES_PER_EVENT_MAX {
            return Err(PublishError::Invalid(format!(
                "more than {PUBLISHES_PER_EVENT_MAX} follow-up events per handled event"
            )));
        }
        check_topic(&event.type_).map_err(PublishError::Invalid)?;
        if event.data.len() > PUBLISH_DATA_BYTES_MAX {
            return Err(PublishError::Invalid(format!(
                "data is {} bytes, over the limit of {PUBLISH_DATA_BYTES_MAX}",
                event.data.len()
            )));
        }
        if event
            .subject
            .as_ref()
            .is_some_and(|s| s.len() > ATTRIBUTE_BYTES_MAX)
        {
            return Err(PublishError::Invalid(format!(
                "subject is longer than {ATTRIBUTE_BYTES_MAX} bytes"
            )));
        }
        self.published.push((cause, event.clone()));
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
        for (key, value) in std::mem::take(&mut self.overlay) {
            match value {
                Some(v) => self.committed.insert(key, v),
                None => self.committed.remove(&key),
            };
        }
    }

    /// Forget the call's writes and publishes.
    pub(crate) fn discard(&mut self) {
        self.overlay.clear();
        self.published.clear();
    }
}

/// The host's rule for an event topic: dot-separated tokens of ASCII
/// letters, digits, `-` and `_`, no wildcards, at most 256 bytes.
fn check_topic(topic: &str) -> Result<(), String> {
    if topic.is_empty() {
        return Err("the topic is empty; name it, e.g. `order.placed`".to_string());
    }
    if topic.len() > TOPIC_BYTES_MAX {
        return Err(format!("topic is longer than {TOPIC_BYTES_MAX} bytes"));
    }
    for token in topic.split('.') {
        if token == "*" || token == ">" {
            return Err(format!(
                "topic `{topic}` contains a wildcard; `*` and `>` are for subscriptions, not for events"
            ));
        }
        if token.is_empty() {
            return Err(format!("topic `{topic}` has an empty token"));
        }
        if let Some(ch) = token
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
        {
            return Err(format!(
                "topic `{topic}` contains `{ch}`; use letters, digits, `-` and `_` between dots"
            ));
        }
    }
    Ok(())
}
