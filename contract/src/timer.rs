//! Timers a plugin sets from a handler (`scheduler` in the WIT): their
//! keys, how far ahead they may be due, how many a plugin may keep, and
//! the words a refused one gets, the same on the host and in the SDK's
//! harness.
//!
//! The event a timer publishes is checked as a publish is
//! ([`crate::publish`]); what is here is the timer's own.

use std::fmt;

/// The longest timer key, in bytes.
pub const KEY_BYTES_MAX: usize = 256;
/// How far ahead a timer may be due by default, in ms (30 days); the
/// manifest's `limits.timer_delay_ms_max` sets it per plugin.
pub const DELAY_MS_MAX_DEFAULT: u64 = 30 * 24 * 3600 * 1000;
/// Timers a plugin may keep set by default; `limits.timers_max` sets it.
pub const TIMERS_MAX_DEFAULT: u64 = 100_000;
/// Timer changes (sets and cancels) one `handle` call may make, per event
/// in its batch.
pub const CHANGES_PER_EVENT_MAX: usize = 64;

/// When a timer is due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum When {
    /// At this Unix time, in ms.
    AtMs(u64),
    /// This many ms after the call.
    AfterMs(u64),
}

impl When {
    /// The Unix time, in ms, it is due at, for a call at `now_ms`.
    pub fn due_ms(self, now_ms: u64) -> u64 {
        match self {
            When::AtMs(at) => at,
            When::AfterMs(after) => now_ms.saturating_add(after),
        }
    }
}

/// Why a timer change was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// The key is empty.
    EmptyKey,
    /// The key is too long.
    KeyTooLong(usize),
    /// Due further ahead than the plugin may set.
    TooFarAhead {
        /// The key.
        key: String,
        /// How far ahead it is due, in ms.
        in_ms: u64,
        /// How far ahead the plugin may set one, in ms.
        max_ms: u64,
    },
    /// Too many changes in this call.
    TooManyChanges,
    /// The plugin keeps as many timers as it may.
    TooMany {
        /// How many it may keep.
        max: u64,
    },
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refused::EmptyKey => write!(f, "the timer key is empty; name the timer, e.g. `payment-timeout`"),
            Refused::KeyTooLong(n) => write!(
                f,
                "the timer key is {n} bytes, over the limit of {KEY_BYTES_MAX}"
            ),
            Refused::TooFarAhead { key, in_ms, max_ms } => write!(
                f,
                "timer `{key}` is due in {in_ms} ms, further ahead than the plugin may set one ({max_ms} ms, limits.timer_delay_ms_max in its manifest)"
            ),
            Refused::TooManyChanges => write!(
                f,
                "more than {CHANGES_PER_EVENT_MAX} timer changes per handled event"
            ),
            Refused::TooMany { max } => write!(
                f,
                "the plugin keeps {max} timers, as many as it may (limits.timers_max in its manifest); cancel timers it no longer needs"
            ),
        }
    }
}

impl std::error::Error for Refused {}

/// Check a timer key.
pub fn check_key(key: &str) -> Result<(), Refused> {
    if key.is_empty() {
        return Err(Refused::EmptyKey);
    }
    if key.len() > KEY_BYTES_MAX {
        return Err(Refused::KeyTooLong(key.len()));
    }
    Ok(())
}

/// Check setting timer `key` due at `due_ms`, called at `now_ms`, for a
/// plugin that may set one at most `max_ms` ahead, with `changes` timer
/// changes made for a batch of `batch_len` events so far. A time already
/// past is due at once.
pub fn check_set(
    key: &str,
    due_ms: u64,
    now_ms: u64,
    max_ms: u64,
    (changes, batch_len): (usize, usize),
) -> Result<(), Refused> {
    check_key(key)?;
    check_changes(changes, batch_len)?;
    let in_ms = due_ms.saturating_sub(now_ms);
    if in_ms > max_ms {
        return Err(Refused::TooFarAhead {
            key: key.to_string(),
            in_ms,
            max_ms,
        });
    }
    Ok(())
}

/// Check one more timer change, with `changes` made for a batch of
/// `batch_len` events so far.
pub fn check_changes(changes: usize, batch_len: usize) -> Result<(), Refused> {
    if changes >= batch_len.max(1) * CHANGES_PER_EVENT_MAX {
        return Err(Refused::TooManyChanges);
    }
    Ok(())
}

/// Check that a plugin keeping `set` timers (counting the call's) may set
/// one more, under its limit of `max`.
pub fn check_count(set: u64, max: u64) -> Result<(), Refused> {
    if set >= max {
        return Err(Refused::TooMany { max });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_timer_is_refused_for_its_key_its_time_and_its_count() {
        assert_eq!(check_key(""), Err(Refused::EmptyKey));
        assert!(check_key(&"k".repeat(KEY_BYTES_MAX)).is_ok());
        assert_eq!(
            check_key(&"k".repeat(KEY_BYTES_MAX + 1)),
            Err(Refused::KeyTooLong(KEY_BYTES_MAX + 1))
        );
        assert!(check_set("t", 1_000 + 500, 1_000, 500, (0, 1)).is_ok());
        // Past: due at once.
        assert!(check_set("t", 10, 1_000, 500, (0, 1)).is_ok());
        assert!(matches!(
            check_set("t", 1_000 + 501, 1_000, 500, (0, 1)),
            Err(Refused::TooFarAhead { in_ms: 501, .. })
        ));
        assert_eq!(
            check_set("t", 0, 0, 1, (CHANGES_PER_EVENT_MAX, 1)),
            Err(Refused::TooManyChanges)
        );
        assert!(check_count(9, 10).is_ok());
        assert_eq!(check_count(10, 10), Err(Refused::TooMany { max: 10 }));
        assert_eq!(When::AfterMs(5).due_ms(10), 15);
        assert_eq!(When::AtMs(5).due_ms(10), 5);
        assert_eq!(When::AfterMs(u64::MAX).due_ms(10), u64::MAX);
    }
}
