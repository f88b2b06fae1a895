//! W3C Trace Context on events: the CloudEvents distributed-tracing
//! extension attributes `traceparent` and `tracestate`. An event keeps the
//! trace context it was published with, as an extension attribute; one
//! published over HTTP without it takes the request's `traceparent` and
//! `tracestate` headers; the events a plugin publishes while handling it
//! carry the same context on (the extension carries the trace's starting
//! context, not each hop's: CloudEvents distributed-tracing extension).
//!
//! An attribute that is not valid Trace Context is refused, naming it; a
//! header that is not is ignored, as W3C Trace Context says a receiver
//! must (§3.2.2: "the vendor MUST ignore the traceparent when the parent-id
//! is invalid"), and the event is published without one.

use super::{Event, EventError};

/// The extension attribute (and HTTP header) holding the trace's parent.
pub const TRACEPARENT: &str = "traceparent";
/// The extension attribute (and HTTP header) holding vendors' trace state.
pub const TRACESTATE: &str = "tracestate";
/// The longest `tracestate` kept (W3C: 512 characters at least, 32 list
/// members).
const TRACESTATE_BYTES_MAX: usize = 512;

/// Why a `traceparent` value is not W3C Trace Context, or `None` if it is:
/// `VERSION-TRACEID-PARENTID-FLAGS`, lower-case hex of 2, 32, 16 and 2
/// digits, the ids not all zeros, the version not `ff` (a later version
/// may add fields after a `-`).
pub fn traceparent_problem(value: &str) -> Option<&'static str> {
    let b = value.as_bytes();
    let hex = |s: &[u8]| s.iter().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'));
    if b.len() < 55 || b[2] != b'-' || b[35] != b'-' || b[52] != b'-' {
        return Some("is not VERSION-TRACEID-PARENTID-FLAGS (2, 32, 16 and 2 lower-case hex digits, e.g. 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01)");
    }
    let (version, trace, parent, flags) = (&b[0..2], &b[3..35], &b[36..52], &b[53..55]);
    if !(hex(version) && hex(trace) && hex(parent) && hex(flags)) {
        return Some("must be lower-case hex digits and dashes (W3C Trace Context)");
    }
    if version == b"ff" {
        return Some("has version ff, which W3C Trace Context forbids");
    }
    if version == b"00" && b.len() != 55 {
        return Some("is longer than a version-00 traceparent (55 characters)");
    }
    if b.len() > 55 && b[55] != b'-' {
        return Some("has trailing characters that are not a further `-` field");
    }
    if trace.iter().all(|c| *c == b'0') {
        return Some("has an all-zero trace id, which W3C Trace Context forbids");
    }
    if parent.iter().all(|c| *c == b'0') {
        return Some("has an all-zero parent id, which W3C Trace Context forbids");
    }
    None
}

/// Why a `tracestate` value is not kept, or `None`.
pub fn tracestate_problem(value: &str) -> Option<&'static str> {
    if value.len() > TRACESTATE_BYTES_MAX {
        return Some("is longer than 512 characters");
    }
    if !value.bytes().all(|c| (0x20..0x7f).contains(&c)) {
        return Some("must be printable ASCII (W3C Trace Context list members)");
    }
    None
}

impl Event {
    /// An extension attribute's value.
    pub fn extension(&self, name: &str) -> Option<&str> {
        self.extensions
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The event's W3C `traceparent`, if it has one.
    pub fn traceparent(&self) -> Option<&str> {
        self.extension(TRACEPARENT)
    }

    /// Refuse a `traceparent` or `tracestate` attribute that is not W3C
    /// Trace Context, or a `tracestate` without a `traceparent`.
    pub(super) fn check_trace(&self) -> Result<(), EventError> {
        let bad = |name: &str, problem: &str| EventError::BadAttribute {
            name: name.to_string(),
            problem: format!("{problem}; fix it or leave the attribute out"),
        };
        if let Some(tp) = self.traceparent() {
            if let Some(problem) = traceparent_problem(tp) {
                return Err(bad(TRACEPARENT, problem));
            }
        }
        if let Some(ts) = self.extension(TRACESTATE) {
            if self.traceparent().is_none() {
                return Err(bad(TRACESTATE, "is given without a traceparent"));
            }
            if let Some(problem) = tracestate_problem(ts) {
                return Err(bad(TRACESTATE, problem));
            }
        }
        Ok(())
    }

    /// Take the trace context of the request that published this event
    /// (its `traceparent` and `tracestate` headers), unless the event has
    /// its own. A header that is not valid Trace Context is ignored.
    pub fn adopt_trace(&mut self, traceparent: Option<&str>, tracestate: Option<&str>) {
        let Some(tp) = traceparent.map(str::trim) else {
            return;
        };
        if self.traceparent().is_some() || traceparent_problem(tp).is_some() {
            return;
        }
        self.extensions.push((TRACEPARENT.into(), tp.to_string()));
        if let Some(ts) = tracestate.map(str::trim) {
            if !ts.is_empty() && tracestate_problem(ts).is_none() {
                self.extensions.push((TRACESTATE.into(), ts.to_string()));
            }
        }
    }

    /// Carry `cause`'s trace context on to this event, published while
    /// handling it, unless it has its own.
    pub fn continue_trace(&mut self, cause: &Event) {
        if self.traceparent().is_some() {
            return;
        }
        for name in [TRACEPARENT, TRACESTATE] {
            if let Some(v) = cause.extension(name) {
                self.extensions.push((name.into(), v.to_string()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_w3c_traceparent_is_accepted_and_bad_ones_are_named() {
        assert_eq!(traceparent_problem(GOOD), None);
        assert_eq!(
            traceparent_problem("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra"),
            None,
            "a later version may add fields"
        );
        for (bad, why) in [
            ("", "VERSION-TRACEID"),
            (
                "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
                "lower-case",
            ),
            (
                "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                "version ff",
            ),
            (
                "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
                "all-zero trace",
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
                "all-zero parent",
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
                "longer",
            ),
        ] {
            let problem = traceparent_problem(bad).unwrap_or_default();
            assert!(problem.contains(why), "{bad}: {problem}");
        }
    }

    fn event() -> Event {
        Event::new("order.placed", None, b"{}".to_vec()).expect("event")
    }

    #[test]
    fn headers_are_adopted_only_when_valid_and_the_event_has_none() {
        let mut e = event();
        e.adopt_trace(Some(GOOD), Some("vendor=x"));
        assert_eq!(e.traceparent(), Some(GOOD));
        assert_eq!(e.extension(TRACESTATE), Some("vendor=x"));
        let mut own = event();
        let other = "00-11111111111111111111111111111111-2222222222222222-00";
        own.extensions.push((TRACEPARENT.into(), other.into()));
        own.adopt_trace(Some(GOOD), None);
        assert_eq!(own.traceparent(), Some(other), "the event's own wins");
        let mut ignored = event();
        ignored.adopt_trace(Some("garbage"), Some("vendor=x"));
        assert_eq!(ignored.traceparent(), None);
        assert_eq!(ignored.extension(TRACESTATE), None);
    }

    #[test]
    fn follow_ups_carry_the_cause_s_trace_on() {
        let mut cause = event();
        cause.adopt_trace(Some(GOOD), Some("vendor=x"));
        let mut follow = event();
        follow.continue_trace(&cause);
        assert_eq!(follow.traceparent(), Some(GOOD));
        assert_eq!(follow.extension(TRACESTATE), Some("vendor=x"));
        let mut untraced = event();
        untraced.continue_trace(&event());
        assert!(untraced.extensions.is_empty());
    }
}
