//! The ack rule: what a handled batch keeps.
//!
//! A plugin's state writes and follow-up events count only for events it
//! acked. Follow-ups are published per cause, so those of acked events
//! are kept and the others dropped. State writes cannot be told apart by
//! event: a batch's writes are kept only when every event was acked, and
//! a batch of several events that did not all ack and wrote state is
//! handled again one event at a time, so that only acked events' writes
//! are kept (a one-event batch that failed keeps nothing).

/// What becomes of a handled batch, by [`settle`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settlement {
    /// Keep the batch's state writes and every follow-up (all acked).
    KeepAll,
    /// Drop the batch's state writes; keep the follow-ups of acked events.
    KeepAckedFollowUps,
    /// Keep nothing of this call: handle the events again one at a time.
    OneAtATime,
}

/// The rule: `acked` says for each event of the batch, in order, whether
/// the plugin acked it; `wrote_state` whether the call wrote state.
pub fn settle(acked: &[bool], wrote_state: bool) -> Settlement {
    if acked.iter().all(|a| *a) {
        Settlement::KeepAll
    } else if wrote_state && acked.len() > 1 {
        Settlement::OneAtATime
    } else {
        Settlement::KeepAckedFollowUps
    }
}

impl Settlement {
    /// Whether the call's state writes are kept.
    pub fn keeps_writes(self) -> bool {
        self == Settlement::KeepAll
    }

    /// Whether a follow-up published for an event with this outcome
    /// (`cause_acked`) is kept.
    pub fn keeps_follow_up(self, cause_acked: bool) -> bool {
        self != Settlement::OneAtATime && cause_acked
    }
}

/// The cases every implementation of the rule is tested with: (acked,
/// wrote state, settlement).
pub const CASES: &[(&[bool], bool, Settlement)] = &[
    (&[true], false, Settlement::KeepAll),
    (&[true], true, Settlement::KeepAll),
    (&[false], true, Settlement::KeepAckedFollowUps),
    (&[false], false, Settlement::KeepAckedFollowUps),
    (&[true, true, true], true, Settlement::KeepAll),
    (&[true, false, true], false, Settlement::KeepAckedFollowUps),
    (&[true, false, true], true, Settlement::OneAtATime),
    (&[false, false], true, Settlement::OneAtATime),
    (&[false, false], false, Settlement::KeepAckedFollowUps),
    (&[], false, Settlement::KeepAll),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cases_hold() {
        for (acked, wrote, want) in CASES {
            assert_eq!(settle(acked, *wrote), *want, "{acked:?} wrote {wrote}");
        }
    }

    #[test]
    fn a_failed_cause_never_keeps_its_follow_ups() {
        for (acked, wrote, _) in CASES {
            let s = settle(acked, *wrote);
            assert!(!s.keeps_follow_up(false));
            assert!(!s.keeps_writes() || acked.iter().all(|a| *a));
        }
    }
}
