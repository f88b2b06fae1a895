//! The budget of a causal chain: how many follow-up events may be published
//! under one correlation id, by every plugin together. An event storm (a
//! plugin that publishes several follow-ups for each event it handles and
//! consumes its own output, or two plugins feeding each other) grows without
//! bound however low the hop limit, since fan-out multiplies at each hop;
//! the budget stops it at a fixed number of events per chain. Past it, a
//! publish is refused (`publish-error::denied`, naming the budget and the
//! chain) and counts as an offence of the plugin.
//!
//! Counts live in memory, for the chains seen in the last
//! [`CHAIN_IDLE`]; a chain idle longer, or a restart, starts from zero.
//! A chain is known by a 64-bit hash of its id (seeded per process), its
//! count and when it was last added to: 16 bytes, so that tracking the
//! most chains fits a device (two chains sharing a hash, about one in
//! 10^10 at the most tracked, would share one budget).
//! They count follow-ups as they are published, so a batch handled again
//! after a retry counts its follow-ups again.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Follow-up events one causal chain may have by default.
pub const CHAIN_EVENTS_MAX_DEFAULT: u64 = 1000;

/// A chain not added to for this long is forgotten.
pub const CHAIN_IDLE: Duration = Duration::from_secs(600);

/// Chains tracked before idle ones are swept.
const CHAINS_TRACKED_MAX: usize = 100_000;

/// The follow-up counts of the chains seen lately, shared by every plugin.
#[derive(Debug)]
pub struct Chains {
    started: Instant,
    hasher: foldhash::fast::RandomState,
    /// A chain's hash → (its count, when last added to: seconds since
    /// `started`).
    counts: Mutex<HashMap<u64, (u32, u32), foldhash::fast::RandomState>>,
}

impl Default for Chains {
    fn default() -> Self {
        Chains {
            started: Instant::now(),
            hasher: foldhash::fast::RandomState::default(),
            counts: Mutex::default(),
        }
    }
}

impl Chains {
    /// Count one more follow-up in `chain` if it has had fewer than `max`:
    /// `Ok` with the new count, or `Err` with the count it has reached.
    pub fn take(&self, chain: &str, max: u64) -> Result<u64, u64> {
        let key = self.hasher.hash_one(chain);
        let now = u32::try_from(self.started.elapsed().as_secs()).unwrap_or(u32::MAX);
        let idle = CHAIN_IDLE.as_secs() as u32;
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        if counts.len() >= CHAINS_TRACKED_MAX && !counts.contains_key(&key) {
            counts.retain(|_, (_, seen)| now.saturating_sub(*seen) < idle);
            if counts.len() >= CHAINS_TRACKED_MAX {
                // Every chain is recent: forget the older half.
                let mut seen: Vec<u32> = counts.values().map(|(_, t)| *t).collect();
                let mid = seen.len() / 2;
                let (_, &mut cut, _) = seen.select_nth_unstable(mid);
                // At least the middle one goes.
                counts.retain(|_, (_, t)| *t > cut);
            }
        }
        let entry = counts.entry(key).or_insert((0, now));
        if now.saturating_sub(entry.1) >= idle {
            entry.0 = 0;
        }
        entry.1 = now;
        if u64::from(entry.0) >= max {
            return Err(u64::from(entry.0));
        }
        entry.0 = entry.0.saturating_add(1);
        Ok(u64::from(entry.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chain_is_refused_past_its_budget_and_others_are_not() {
        let chains = Chains::default();
        for i in 1..=5 {
            assert_eq!(chains.take("order-1", 5), Ok(i));
        }
        assert_eq!(chains.take("order-1", 5), Err(5));
        assert_eq!(chains.take("order-1", 5), Err(5), "still refused");
        assert_eq!(chains.take("order-1", 6), Ok(6), "a larger budget");
        assert_eq!(chains.take("order-2", 5), Ok(1), "chains are apart");
    }

    #[test]
    fn tracking_is_bounded() {
        let chains = Chains::default();
        for i in 0..CHAINS_TRACKED_MAX + 10 {
            let _ = chains.take(&format!("c{i}"), 1);
        }
        let tracked = chains.counts.lock().map(|c| c.len()).unwrap_or(0);
        assert!(tracked <= CHAINS_TRACKED_MAX, "{tracked}");
    }
}
