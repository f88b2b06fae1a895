//! What a plugin may publish from a handler, checked the same way by the
//! host and by the SDK's test harness, with the same words.
//!
//! The host checks more than this (the plugin's `publishes` policy, its
//! chain budget and the hop limit, which depend on its manifest and the
//! chain); what is here depends only on the call.

use std::fmt;

use crate::topic::validate_topic;
use crate::ATTRIBUTE_BYTES_MAX;

/// The largest follow-up event a plugin may publish, in bytes of data.
pub const PUBLISH_DATA_BYTES_MAX: usize = 1 << 20;
/// Follow-up events one `handle` call may publish, per event in its batch.
pub const PUBLISHES_PER_EVENT_MAX: usize = 64;

/// Why a publish was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// The cause index is not in the batch being handled.
    UnknownCause {
        /// The index given.
        cause: u32,
        /// Events in the batch.
        batch_len: usize,
    },
    /// Not a topic.
    Topic(crate::topic::TopicError),
    /// Too many follow-ups in this call.
    TooMany,
    /// The data is too large.
    DataTooLarge(usize),
    /// The subject is too long.
    SubjectTooLong,
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refused::UnknownCause { cause, batch_len } => write!(
                f,
                "index {cause} is not in the batch being handled ({batch_len} events); pass the index of the event you are handling"
            ),
            Refused::Topic(e) => e.fmt(f),
            Refused::TooMany => write!(
                f,
                "more than {PUBLISHES_PER_EVENT_MAX} follow-up events per handled event"
            ),
            Refused::DataTooLarge(n) => write!(
                f,
                "data is {n} bytes, over the limit of {PUBLISH_DATA_BYTES_MAX}"
            ),
            Refused::SubjectTooLong => {
                write!(f, "subject is longer than {ATTRIBUTE_BYTES_MAX} bytes")
            }
        }
    }
}

impl std::error::Error for Refused {}

impl From<crate::topic::TopicError> for Refused {
    fn from(e: crate::topic::TopicError) -> Refused {
        Refused::Topic(e)
    }
}

impl Refused {
    /// Whether the cause index was wrong (the WIT's `unknown-cause`), as
    /// opposed to the event (`invalid`).
    pub fn is_unknown_cause(&self) -> bool {
        matches!(self, Refused::UnknownCause { .. })
    }
}

/// One publish of a call.
#[derive(Debug, Clone, Copy)]
pub struct Publish<'a> {
    /// The index in the batch of the event being handled.
    pub cause: u32,
    /// The topic.
    pub topic: &'a str,
    /// The subject.
    pub subject: Option<&'a str>,
    /// The data's length.
    pub data_bytes: usize,
}

/// Check that `cause` is an index of the batch being handled.
pub fn check_cause(cause: u32, batch_len: usize) -> Result<(), Refused> {
    if cause as usize >= batch_len {
        return Err(Refused::UnknownCause { cause, batch_len });
    }
    Ok(())
}

/// Check `p` in a call handling `batch_len` events that has already
/// published `published` follow-ups.
pub fn check(p: &Publish<'_>, batch_len: usize, published: usize) -> Result<(), Refused> {
    check_cause(p.cause, batch_len)?;
    validate_topic(p.topic)?;
    check_limits(p, batch_len, published)
}

/// [`check`] without the cause and the topic, for a caller that checked
/// them already (the host checks its publish policy in between).
pub fn check_limits(p: &Publish<'_>, batch_len: usize, published: usize) -> Result<(), Refused> {
    if published >= batch_len.saturating_mul(PUBLISHES_PER_EVENT_MAX) {
        return Err(Refused::TooMany);
    }
    if p.data_bytes > PUBLISH_DATA_BYTES_MAX {
        return Err(Refused::DataTooLarge(p.data_bytes));
    }
    if p.subject.is_some_and(|s| s.len() > ATTRIBUTE_BYTES_MAX) {
        return Err(Refused::SubjectTooLong);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(cause: u32, topic: &str) -> Publish<'_> {
        Publish {
            cause,
            topic,
            subject: None,
            data_bytes: 2,
        }
    }

    #[test]
    fn the_limits_are_named() {
        assert_eq!(check(&p(0, "order.shipped"), 1, 0), Ok(()));
        assert!(check(&p(1, "order.shipped"), 1, 0).is_err_and(|e| e.is_unknown_cause()));
        assert!(matches!(
            check(&p(0, "order.*"), 1, 0),
            Err(Refused::Topic(_))
        ));
        assert_eq!(check(&p(0, "a"), 2, 128), Err(Refused::TooMany));
        let big = Publish {
            data_bytes: PUBLISH_DATA_BYTES_MAX + 1,
            ..p(0, "a")
        };
        assert!(check(&big, 1, 0).is_err_and(|e| e.to_string().contains("over the limit")));
        let long = "s".repeat(ATTRIBUTE_BYTES_MAX + 1);
        let subject = Publish {
            subject: Some(&long),
            ..p(0, "a")
        };
        assert_eq!(check(&subject, 1, 0), Err(Refused::SubjectTooLong));
    }
}
