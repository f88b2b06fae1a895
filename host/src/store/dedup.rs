//! Duplicate detection for the log's committer: the ids appended within
//! the duplicate window, remembered compactly.
//!
//! An id is remembered as a 64-bit hash (seeded per process, so
//! publishers cannot aim at collisions) with the sequence it was appended
//! at: about 30 bytes per id instead of the id itself, so that the window
//! fits a device (at [`DEDUP_IDS_MAX`], 15-25 MiB). A hash that matches is
//! only a candidate: the caller checks the id of the event at that
//! sequence, so a collision can cost a duplicate stored twice (delivered
//! again, as at-least-once allows), never an event refused as a duplicate
//! of another.

use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasher;
use std::time::{Duration, Instant};

/// The most ids remembered; past it the oldest are forgotten early (under a
/// very high rate the window is shorter: at 100,000 events a second, 5 s).
pub const DEDUP_IDS_MAX: usize = 500_000;

/// Appends within this long of each other share one time of arrival (the
/// earlier one), so that the order of arrival costs a hash per id.
const COALESCE: Duration = Duration::from_millis(100);

/// Recently appended ids (as hashes) and their sequences.
pub(super) struct Dedup {
    window: Duration,
    max: usize,
    hasher: foldhash::fast::RandomState,
    /// Hash of an id → the sequence it was appended at.
    seen: HashMap<u64, u64, foldhash::fast::RandomState>,
    /// The hashes in `seen`, oldest first.
    order: VecDeque<u64>,
    /// When runs of `order` arrived: (time, how many), oldest first.
    arrivals: VecDeque<(Instant, usize)>,
}

impl Dedup {
    /// Remember ids for `window` (zero: no detection), at most `max`.
    pub(super) fn new(window: Duration, max: usize) -> Dedup {
        Dedup {
            window,
            max,
            hasher: foldhash::fast::RandomState::default(),
            seen: HashMap::default(),
            order: VecDeque::new(),
            arrivals: VecDeque::new(),
        }
    }

    /// Whether duplicates are detected at all.
    pub(super) fn is_on(&self) -> bool {
        !self.window.is_zero()
    }

    /// The hash an id is remembered by.
    pub(super) fn hash(&self, id: &str) -> u64 {
        self.hasher.hash_one(id)
    }

    /// The sequence of a remembered event with hash `h`, if `same(sequence)`
    /// says that event's id is the one being looked for.
    pub(super) fn find(&self, h: u64, same: impl FnOnce(u64) -> bool) -> Option<u64> {
        let &seq = self.seen.get(&h)?;
        same(seq).then_some(seq)
    }

    /// Remember ids (by hash) appended at `at`, with their sequences.
    pub(super) fn insert(&mut self, at: Instant, ids: impl IntoIterator<Item = (u64, u64)>) {
        if !self.is_on() {
            return;
        }
        let mut added = 0;
        for (h, seq) in ids {
            // A colliding hash takes the newer sequence: the older event's
            // duplicates are then stored again, never refused wrongly.
            if self.seen.insert(h, seq).is_none() {
                self.order.push_back(h);
                added += 1;
            }
        }
        match self.arrivals.back_mut() {
            Some((last, n)) if at.saturating_duration_since(*last) < COALESCE => *n += added,
            _ if added == 0 => {}
            _ => self.arrivals.push_back((at, added)),
        }
        debug_assert_eq!(
            self.arrivals.iter().map(|(_, n)| n).sum::<usize>(),
            self.order.len()
        );
    }

    /// Forget ids older than the window, and the oldest past `max`.
    pub(super) fn evict(&mut self, now: Instant) {
        while let Some(&(at, n)) = self.arrivals.front() {
            let expired = now.saturating_duration_since(at) > self.window;
            let over = self.order.len().saturating_sub(self.max);
            if !expired && over == 0 {
                break;
            }
            let take = if expired { n } else { over.min(n) };
            for h in self.order.drain(..take) {
                self.seen.remove(&h);
            }
            match self.arrivals.front_mut() {
                Some((_, left)) if *left > take => *left -= take,
                _ => {
                    self.arrivals.pop_front();
                }
            }
        }
    }

    /// How many ids are remembered.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.seen.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_remembered_id_is_found_only_when_its_event_is_the_same() {
        let mut d = Dedup::new(Duration::from_secs(60), 10);
        let now = Instant::now();
        let h = d.hash("order-1");
        d.insert(now, [(h, 7)]);
        assert_eq!(d.find(h, |seq| seq == 7), Some(7));
        assert_eq!(d.find(h, |_| false), None, "a collision is not a duplicate");
        assert_eq!(d.find(d.hash("order-2"), |_| true), None);
    }

    #[test]
    fn ids_are_forgotten_after_the_window_and_past_the_most() {
        let window = Duration::from_secs(60);
        let mut d = Dedup::new(window, 5);
        let t0 = Instant::now();
        d.insert(
            t0,
            (0..3)
                .map(|i| (d.hash(&format!("a{i}")), i))
                .collect::<Vec<_>>(),
        );
        let t1 = t0 + Duration::from_secs(1);
        d.insert(
            t1,
            (3..6)
                .map(|i| (d.hash(&format!("a{i}")), i))
                .collect::<Vec<_>>(),
        );
        d.evict(t1);
        assert_eq!(d.len(), 5, "the oldest past the most is forgotten");
        assert_eq!(d.find(d.hash("a0"), |_| true), None);
        assert_eq!(d.find(d.hash("a1"), |_| true), Some(1));
        d.evict(t0 + window + Duration::from_millis(500));
        assert_eq!(d.len(), 3, "the first arrivals are past the window");
        d.evict(t1 + window + Duration::from_millis(1));
        assert_eq!(d.len(), 0);
    }

    #[test]
    fn a_zero_window_remembers_nothing() {
        let mut d = Dedup::new(Duration::ZERO, 5);
        let h = d.hash("x");
        d.insert(Instant::now(), [(h, 1)]);
        assert!(!d.is_on());
        assert_eq!(d.len(), 0);
    }
}
