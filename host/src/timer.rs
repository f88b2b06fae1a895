//! Timers: events set to be published later, by a plugin's handler (the
//! WIT's `scheduler`) or a publisher from outside (`deliverat`). This is
//! the vocabulary the layers share; the runtime collects a call's timer
//! changes, the worker keeps those of acked events, the backend commits
//! them with the plugin's state and publishes each due timer once
//! (`store::timers` on the embedded store).
//!
//! A timer's event is stamped when it fires: `time` is the fire's, the
//! extension [`SCHEDULED_AT`] says when it was due and [`LATE_MS`] how
//! late it was published.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::event::Event;

/// The extension attribute naming when a timer's event was due (RFC 3339).
pub const SCHEDULED_AT: &str = "scheduledat";
/// The extension attribute saying how many ms after its due time a timer's
/// event was published.
pub const LATE_MS: &str = "latems";
/// The owner of timers set from outside (`deliverat`): no plugin has an
/// empty name.
pub const OUTSIDE: &str = "";
/// The CloudEvents extension attribute that asks for an event to be
/// delivered not before a time (RFC 3339).
pub const DELIVER_AT: &str = "deliverat";

/// A timer: `event`, published once due.
#[derive(Debug, Clone, PartialEq)]
pub struct Timer {
    /// Names it among its owner's timers.
    pub key: String,
    /// When it is due, Unix time in ms.
    pub due_ms: u64,
    /// What it publishes (its id fixed when it was set).
    pub event: Event,
}

/// A change to a plugin's timers, committed with its state.
#[derive(Debug, Clone, PartialEq)]
pub enum TimerChange {
    /// Set a timer, replacing one of its key.
    Set(Box<Timer>),
    /// Call off the timer of this key, if it is set.
    Cancel(String),
}

impl TimerChange {
    /// The key it changes.
    pub fn key(&self) -> &str {
        match self {
            TimerChange::Set(t) => &t.key,
            TimerChange::Cancel(k) => k,
        }
    }
}

/// What a timer's owner keeps set: how many, and their bytes (keys and
/// events), counted in its state quota.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Timers set.
    pub count: u64,
    /// Their keys' and events' bytes.
    pub bytes: u64,
}

/// The bytes a timer counts in its owner's state quota.
pub fn bytes(key: &str, event: &Event) -> u64 {
    (key.len() + event.data.len() + event.topic.len() + event.id.len()) as u64
}

/// Now, as Unix time in ms.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Unix time in ms as RFC 3339.
pub fn rfc3339(ms: u64) -> String {
    let t = UNIX_EPOCH + std::time::Duration::from_millis(ms);
    humantime::format_rfc3339_millis(t).to_string()
}

/// `event` as a timer due at `due_ms` publishes it at `now_ms`; a
/// plugin's timer (`restamp`) happens then, so its `time` is now, while a
/// publisher's scheduled event keeps the time it was given.
pub fn fired(mut event: Event, due_ms: u64, now_ms: u64, restamp: bool) -> Event {
    if restamp {
        event.time = rfc3339(now_ms);
    }
    event
        .extensions
        .retain(|(k, _)| k != SCHEDULED_AT && k != LATE_MS);
    event
        .extensions
        .push((SCHEDULED_AT.to_string(), rfc3339(due_ms)));
    event.extensions.push((
        LATE_MS.to_string(),
        now_ms.saturating_sub(due_ms).to_string(),
    ));
    event
}

/// When `event` asks to be delivered (its [`DELIVER_AT`] attribute), if
/// that is after `now_ms`; the words of a refusal when the attribute is not
/// a time or is further ahead than `max_ms`.
pub fn deliver_at(event: &Event, now_ms: u64, max_ms: u64) -> Result<Option<u64>, String> {
    let Some((_, text)) = event.extensions.iter().find(|(k, _)| k == DELIVER_AT) else {
        return Ok(None);
    };
    let at = humantime::parse_rfc3339_weak(text).map_err(|_| {
        format!("event `{}`: attribute `{DELIVER_AT}` is `{text}`, not an RFC 3339 time; write it like 2026-12-07T10:00:00Z", event.id)
    })?;
    let at_ms = at
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    if at_ms <= now_ms {
        return Ok(None);
    }
    if at_ms - now_ms > max_ms {
        return Err(format!(
            "event `{}`: attribute `{DELIVER_AT}` is {} ms ahead, more than the {max_ms} ms a scheduled event may wait; publish it nearer its time",
            event.id,
            at_ms - now_ms
        ));
    }
    Ok(Some(at_ms))
}

/// A timer as a broker keeps it: `DUE:BYTES:` (due in Unix ms, the bytes
/// it counts in its owner's quota), then the encoded event.
pub fn record(t: &Timer) -> Vec<u8> {
    let mut r = format!("{}:{}:", t.due_ms, bytes(&t.key, &t.event)).into_bytes();
    r.extend(crate::store::codec::encode(&t.event));
    r
}

/// The timer `key` a [`record`] describes, and its quota bytes; the
/// reason when it is not one.
pub fn from_record(key: &str, record: &[u8]) -> Result<(Timer, u64), String> {
    let mut parts = record.splitn(3, |b| *b == b':');
    let mut number = || {
        parts
            .next()
            .and_then(|d| std::str::from_utf8(d).ok())
            .and_then(|d| d.parse::<u64>().ok())
    };
    let due_ms = number().ok_or("no due time")?;
    let size = number().ok_or("no size")?;
    let event = parts.next().ok_or("no event")?;
    let event = crate::store::codec::decode(0, event).map_err(|e| e.0)?;
    let timer = Timer {
        key: key.to_string(),
        due_ms,
        event,
    };
    Ok((timer, size))
}

/// Namespace of timer event ids (UUID v5).
const TIMER_IDS: uuid::Uuid = uuid::Uuid::from_u128(0x7d2e_90b4_1c3a_4e58_b6f0_28d9_4a17_c3e2);

/// The id of the event timer `key` of `plugin`, set while handling
/// `cause_id`, publishes: the same handling sets the same id, so a
/// batch handled again after a crash sets the timer it set before.
pub fn event_id(plugin: &str, cause_id: &str, key: &str) -> String {
    let name = format!("{plugin}\0{cause_id}\0{key}");
    uuid::Uuid::new_v5(&TIMER_IDS, name.as_bytes()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fired_timer_says_when_it_was_due_and_how_late_it_came() {
        let e = Event::new("saga.timeout", None, b"{}".to_vec()).expect("event");
        let f = fired(fired(e, 1_000, 1_250, true), 1_000, 1_300, true);
        let ext = |k: &str| {
            f.extensions
                .iter()
                .filter(|(n, _)| n == k)
                .map(|(_, v)| v.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(ext(SCHEDULED_AT), vec!["1970-01-01T00:00:01.000Z"]);
        assert_eq!(ext(LATE_MS), vec!["300"]);
        assert_eq!(f.time, "1970-01-01T00:00:01.300Z");
        assert_eq!(event_id("p", "c", "k"), event_id("p", "c", "k"));
        assert_ne!(event_id("p", "c", "k"), event_id("p", "c", "j"));
    }
}
