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
//! They count follow-ups as they are published, so a batch handled again
//! after a retry counts its follow-ups again.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Follow-up events one causal chain may have by default.
pub const CHAIN_EVENTS_MAX_DEFAULT: u64 = 1000;

/// A chain not added to for this long is forgotten.
pub const CHAIN_IDLE: Duration = Duration::from_secs(600);

/// Chains tracked before idle ones are swept.
const CHAINS_TRACKED_MAX: usize = 100_000;

/// The follow-up counts of the chains seen lately, shared by every plugin.
#[derive(Debug, Default)]
pub struct Chains {
    counts: Mutex<HashMap<String, (u64, Instant)>>,
}

impl Chains {
    /// Count one more follow-up in `chain` if it has had fewer than `max`:
    /// `Ok` with the new count, or `Err` with the count it has reached.
    pub fn take(&self, chain: &str, max: u64) -> Result<u64, u64> {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if counts.len() >= CHAINS_TRACKED_MAX && !counts.contains_key(chain) {
            counts.retain(|_, (_, seen)| now.duration_since(*seen) < CHAIN_IDLE);
            if counts.len() >= CHAINS_TRACKED_MAX {
                // Every chain is recent: forget the older half.
                let mut seen: Vec<Instant> = counts.values().map(|(_, t)| *t).collect();
                seen.sort_unstable();
                let cut = seen[seen.len() / 2];
                counts.retain(|_, (_, t)| *t > cut);
            }
        }
        // A chain's key is allocated once, when it is first seen.
        if !counts.contains_key(chain) {
            counts.insert(chain.to_string(), (0, now));
        }
        let Some(entry) = counts.get_mut(chain) else {
            return Err(0);
        };
        if now.duration_since(entry.1) >= CHAIN_IDLE {
            entry.0 = 0;
        }
        entry.1 = now;
        if entry.0 >= max {
            return Err(entry.0);
        }
        entry.0 += 1;
        Ok(entry.0)
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
