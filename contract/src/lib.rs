//! The rules a plugbus host and a plugin SDK must agree on, in one place:
//! both the host and `plugbus-sdk` (and through it the SDK's native test
//! harness) call this crate, so the rules cannot drift apart; plugbus's
//! own tests hold the Python helper (`plugbus.py`) against it.
//!
//! - [`batch`]: how a batch of events is laid out when it crosses into the
//!   sandbox (the layout the WIT documents on `record batch`).
//! - [`ack`]: what a handled batch keeps: state writes and follow-ups only
//!   for acked events, a failing batch with writes handled again one event
//!   at a time.
//! - [`topic`]: topics and subscription patterns.
//! - [`publish`]: what a plugin may publish from a handler, and the words
//!   a refused publish gets.
//! - [`state`]: the key and value limits of a plugin's state, counters, and
//!   the words a refused write gets.
//! - [`timer`]: timer keys, how far ahead and how many, and the words a
//!   refused timer gets.
//!
//! It has no runtime and no I/O: it is built into every Rust plugin.

pub mod ack;
pub mod batch;
pub mod publish;
pub mod state;
pub mod timer;
pub mod topic;

/// The longest id, source or subject an event may have, in bytes.
pub const ATTRIBUTE_BYTES_MAX: usize = 1024;

/// The longest prefix of `s` of at most `max_bytes` bytes that ends on a
/// character boundary (for cutting text a user or plugin controls).
pub fn prefix_at_char(s: &str, max_bytes: usize) -> &str {
    if s.len() <= max_bytes {
        return s;
    }
    let mut end = max_bytes;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_prefix_ends_on_a_character() {
        assert_eq!(super::prefix_at_char("héllo", 2), "h");
        assert_eq!(super::prefix_at_char("héllo", 3), "hé");
        assert_eq!(super::prefix_at_char("abc", 10), "abc");
    }
}
