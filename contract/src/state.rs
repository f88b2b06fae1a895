//! A plugin's state: key and value limits, counters, and the words a
//! refused write gets, the same on the host and in the SDK's harness.
//!
//! The state quota (`limits.state_bytes_max`) is the host's: it depends
//! on the manifest and on what is stored.

use std::fmt;

/// The longest key, in bytes (an empty key is a key).
pub const KEY_BYTES_MAX: usize = 1024;
/// The largest value, in bytes.
pub const VALUE_BYTES_MAX: usize = 1 << 20;
/// What one call may write, keys and values, in bytes.
pub const CALL_WRITE_BYTES_MAX: usize = 16 << 20;

/// Why a state operation was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// The key is too long.
    KeyTooLong(usize),
    /// The value is too large.
    ValueTooLarge {
        /// The key.
        key: String,
        /// The value's length.
        bytes: usize,
    },
    /// The call wrote too much.
    CallTooLarge(usize),
    /// Incrementing a value that is not a counter.
    NotACounter(String),
    /// The counter would overflow.
    Overflow {
        /// The key.
        key: String,
        /// Its value.
        now: i64,
        /// What was to be added.
        delta: i64,
    },
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refused::KeyTooLong(n) => {
                write!(f, "the key is {n} bytes, over the limit of {KEY_BYTES_MAX}")
            }
            Refused::ValueTooLarge { key, bytes } => write!(
                f,
                "the value of `{key}` is {bytes} bytes, over the limit of {VALUE_BYTES_MAX}"
            ),
            Refused::CallTooLarge(n) => write!(
                f,
                "this call has written {n} bytes, the limit per call is {CALL_WRITE_BYTES_MAX}"
            ),
            Refused::NotACounter(key) => write!(
                f,
                "`{key}` does not hold a number (as decimal text), so it cannot be incremented"
            ),
            Refused::Overflow { key, now, delta } => {
                write!(f, "`{key}` would overflow: {now} + {delta}")
            }
        }
    }
}

impl std::error::Error for Refused {}

/// Check a key a plugin gave.
pub fn check_key(key: &str) -> Result<(), Refused> {
    if key.len() > KEY_BYTES_MAX {
        return Err(Refused::KeyTooLong(key.len()));
    }
    Ok(())
}

/// Check a write of `value_bytes` at `key` in a call that has written
/// `written` bytes so far.
pub fn check_write(key: &str, value_bytes: usize, written: usize) -> Result<(), Refused> {
    check_key(key)?;
    if value_bytes > VALUE_BYTES_MAX {
        return Err(Refused::ValueTooLarge {
            key: key.to_string(),
            bytes: value_bytes,
        });
    }
    if written.saturating_add(key.len() + value_bytes) > CALL_WRITE_BYTES_MAX {
        return Err(Refused::CallTooLarge(written));
    }
    Ok(())
}

/// A counter's value: decimal text (what `increment` writes, readable as
/// JSON), or 8 bytes little-endian (what some SDKs write).
pub fn parse_counter(bytes: &[u8]) -> Option<i64> {
    std::str::from_utf8(bytes)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .or_else(|| <[u8; 8]>::try_from(bytes).ok().map(i64::from_le_bytes))
}

/// The value `increment(key, delta)` leaves over `held` (none: 0), as it
/// is stored (decimal text).
pub fn increment(key: &str, held: Option<&[u8]>, delta: i64) -> Result<(i64, Vec<u8>), Refused> {
    let now = match held {
        None => 0,
        Some(bytes) => parse_counter(bytes).ok_or_else(|| Refused::NotACounter(key.to_string()))?,
    };
    let next = now.checked_add(delta).ok_or_else(|| Refused::Overflow {
        key: key.to_string(),
        now,
        delta,
    })?;
    Ok((next, next.to_string().into_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_read_as_decimal_text_or_little_endian() {
        assert_eq!(parse_counter(b"42"), Some(42));
        assert_eq!(parse_counter(b" -7\n"), Some(-7));
        assert_eq!(parse_counter(&5i64.to_le_bytes()), Some(5));
        assert_eq!(parse_counter(b"x"), None);
        assert_eq!(increment("n", Some(b"41"), 1).map(|(n, _)| n), Ok(42));
        assert_eq!(
            increment("n", Some(b"oops"), 1),
            Err(Refused::NotACounter("n".into()))
        );
        assert!(matches!(
            increment("n", Some(i64::MAX.to_string().as_bytes()), 1),
            Err(Refused::Overflow { .. })
        ));
    }

    #[test]
    fn writes_have_limits() {
        assert_eq!(check_write("", 0, 0), Ok(()));
        assert_eq!(
            check_write(&"k".repeat(KEY_BYTES_MAX + 1), 0, 0),
            Err(Refused::KeyTooLong(KEY_BYTES_MAX + 1))
        );
        assert!(matches!(
            check_write("k", VALUE_BYTES_MAX + 1, 0),
            Err(Refused::ValueTooLarge { .. })
        ));
        assert_eq!(
            check_write("k", 10, CALL_WRITE_BYTES_MAX),
            Err(Refused::CallTooLarge(CALL_WRITE_BYTES_MAX))
        );
    }
}
