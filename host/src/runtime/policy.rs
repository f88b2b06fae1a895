//! What a plugin may do beyond handling its events: which topics it may
//! publish to and how fast ([`PublishPolicy`]), and how much it may write to
//! stdout and stderr ([`RateLimit`] on lines). Both are shared by every
//! instance of one plugin, so re-instantiating after a trap does not reset
//! them. A publish refused here (a topic not allowed, a chain over its
//! budget) reaches the plugin as `publish-error::denied` with the reason.
//!
//! The publish rate never refuses: a publish over it is taken on credit
//! ([`RateLimit::charge`]) and the plugin's worker holds its next delivery
//! until the debt is paid ([`RateLimit::owed`]), so a plugin over its rate
//! is slowed down, never made to fail and retry.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use prometheus_client::metrics::counter::Counter;

use super::chains::{Chains, CHAIN_EVENTS_MAX_DEFAULT};
use plugbus_contract::topic::Pattern;

/// A token bucket: up to `per_s` a second, with a burst of one second's
/// worth. Refusals are counted.
#[derive(Debug)]
pub struct RateLimit {
    per_s: Option<u32>,
    bucket: Mutex<(f64, Instant)>,
    refused: Counter,
}

impl RateLimit {
    /// At most `per_s` a second (`None`: no limit); refusals go to `refused`.
    pub fn new(per_s: Option<u32>, refused: Counter) -> RateLimit {
        RateLimit {
            per_s,
            bucket: Mutex::new((f64::from(per_s.unwrap_or(0)), Instant::now())),
            refused,
        }
    }

    /// The limit, per second (`None`: none).
    pub fn per_s(&self) -> Option<u32> {
        self.per_s
    }

    /// How many were refused so far.
    pub fn refused(&self) -> u64 {
        self.refused.get()
    }

    /// Take one token: false (and counted) when there is none.
    pub fn take(&self) -> bool {
        let Some(per_s) = self.per_s else {
            return true;
        };
        let (mut bucket, tokens, now) = self.refilled(per_s);
        if tokens >= 1.0 {
            *bucket = (tokens - 1.0, now);
            true
        } else {
            *bucket = (tokens, now);
            self.refused.inc();
            false
        }
    }
}

impl RateLimit {
    /// Take one token on credit: the bucket may go below empty, and what is
    /// owed is paid back at the rate ([`RateLimit::owed`]). Counted in
    /// `refused` when there was no token (the publish made a debt).
    pub fn charge(&self) {
        let Some(per_s) = self.per_s else {
            return;
        };
        let (mut bucket, tokens, now) = self.refilled(per_s);
        if tokens < 1.0 {
            self.refused.inc();
        }
        *bucket = (tokens - 1.0, now);
    }

    /// How long until what was taken on credit is paid back (zero when
    /// nothing is owed).
    pub fn owed(&self) -> std::time::Duration {
        let Some(per_s) = self.per_s else {
            return std::time::Duration::ZERO;
        };
        let (_bucket, tokens, _) = self.refilled(per_s);
        if tokens >= 0.0 {
            return std::time::Duration::ZERO;
        }
        std::time::Duration::from_secs_f64(-tokens / f64::from(per_s))
    }

    /// The bucket, locked, with its tokens as of now (refilled at `per_s`
    /// since it was last touched, up to a second's worth) and that now.
    fn refilled(&self, per_s: u32) -> (std::sync::MutexGuard<'_, (f64, Instant)>, f64, Instant) {
        let rate = f64::from(per_s);
        let bucket = self.bucket.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let (tokens, at) = *bucket;
        let tokens = (tokens + now.duration_since(at).as_secs_f64() * rate).min(rate.max(1.0));
        (bucket, tokens, now)
    }
}

impl Default for RateLimit {
    fn default() -> Self {
        RateLimit::new(Some(super::OUTPUT_LINES_PER_S_DEFAULT), Counter::default())
    }
}

/// The topics a plugin may publish to, how many follow-up events a second,
/// and how many a causal chain may have. Deny wins over allow; no allow
/// list allows every topic.
#[derive(Debug)]
pub struct PublishPolicy {
    /// Patterns allowed (`None`: all).
    pub allow: Option<Vec<Pattern>>,
    /// Patterns refused even when allowed.
    pub deny: Vec<Pattern>,
    /// Follow-up events per second: over it, deliveries are held (never a
    /// refused publish).
    pub rate: RateLimit,
    /// Follow-up events one causal chain may have (`publish.chain_events_max`).
    pub chain_events_max: u64,
    /// The chains' counts, shared by every plugin of the host.
    pub chains: Arc<Chains>,
    /// Publishes refused for a chain's budget.
    pub chain_refused: Counter,
    /// The last chain refused: its correlation id, when, and its count.
    pub storm: Mutex<Option<Storm>>,
    /// The topics' declared schemas: a follow-up must fit its topic's.
    pub schemas: Arc<crate::schema::Schemas>,
}

/// A causal chain that reached its budget.
#[derive(Debug, Clone, PartialEq)]
pub struct Storm {
    /// The chain's correlation id.
    pub correlation_id: String,
    /// Follow-up events it had.
    pub events: u64,
    /// When a publish in it was last refused.
    pub at: Instant,
}

impl Default for PublishPolicy {
    /// Every topic, at any rate, with the default chain budget.
    fn default() -> Self {
        PublishPolicy {
            allow: None,
            deny: Vec::new(),
            rate: RateLimit::new(None, Counter::default()),
            chain_events_max: CHAIN_EVENTS_MAX_DEFAULT,
            chains: Arc::default(),
            schemas: Arc::default(),
            chain_refused: Counter::default(),
            storm: Mutex::new(None),
        }
    }
}

impl PublishPolicy {
    /// Count one more follow-up in the chain `correlation_id`, or refuse it
    /// past the budget, naming the budget and the chain.
    pub fn take_chain(&self, correlation_id: &str) -> Result<(), String> {
        match self.chains.take(correlation_id, self.chain_events_max) {
            Ok(_) => Ok(()),
            Err(events) => {
                self.chain_refused.inc();
                let mut storm = self.storm.lock().unwrap_or_else(|p| p.into_inner());
                if storm
                    .as_ref()
                    .is_none_or(|s| s.correlation_id != correlation_id)
                {
                    tracing::warn!(correlation_id, events, budget = self.chain_events_max, "an event storm: a causal chain reached its budget of follow-up events; further follow-ups in it are refused");
                }
                *storm = Some(Storm {
                    correlation_id: correlation_id.to_string(),
                    events,
                    at: Instant::now(),
                });
                Err(format!(
                    "the causal chain {correlation_id} has had {events} follow-up events, its budget (publish.chain_events_max, default {CHAIN_EVENTS_MAX_DEFAULT}); no more are published in it. Is a plugin publishing several events for each one it handles, in a loop?"
                ))
            }
        }
    }

    /// May the plugin publish to `topic` now? The refusal says why and
    /// names the manifest key.
    pub fn check(&self, topic: &str) -> Result<(), String> {
        if let Some(p) = self.deny.iter().find(|p| p.matches(topic)) {
            return Err(format!(
                "publishing to `{topic}` is denied by the plugin's manifest (publish.deny `{p}`)"
            ));
        }
        if let Some(allow) = &self.allow {
            if !allow.iter().any(|p| p.matches(topic)) {
                return Err(format!(
                    "publishing to `{topic}` is not allowed by the plugin's manifest (publish.allow: {})",
                    if allow.is_empty() {
                        "nothing".to_string()
                    } else {
                        allow
                            .iter()
                            .map(|p| format!("`{p}`"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    }
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pats(p: &[&str]) -> Vec<Pattern> {
        p.iter()
            .map(|s| Pattern::parse(s).expect("pattern"))
            .collect()
    }

    #[test]
    fn deny_wins_over_allow_and_no_allow_list_allows_all() {
        let open = PublishPolicy::default();
        assert!(open.check("anything.at.all").is_ok());
        let p = PublishPolicy {
            allow: Some(pats(&["inventory.>"])),
            deny: pats(&["inventory.secret"]),
            ..PublishPolicy::default()
        };
        assert!(p.check("inventory.reserved").is_ok());
        let e = p.check("inventory.secret").expect_err("denied");
        assert!(e.contains("publish.deny"), "{e}");
        let e = p.check("order.placed").expect_err("not allowed");
        assert!(
            e.contains("publish.allow") && e.contains("inventory.>"),
            "{e}"
        );
    }

    #[test]
    fn a_rate_limit_refuses_past_its_burst_and_counts() {
        let limit = RateLimit::new(Some(5), Counter::default());
        let taken = (0..20).filter(|_| limit.take()).count();
        assert!((5..=6).contains(&taken), "{taken}");
        assert!(limit.refused() >= 14);
        assert!(RateLimit::new(None, Counter::default()).take());
    }

    #[test]
    fn a_publish_rate_is_owed_never_refused() {
        let limit = RateLimit::new(Some(100), Counter::default());
        for _ in 0..300 {
            limit.charge();
        }
        // 100 in the burst, 200 on credit: about two seconds owed.
        let owed = limit.owed();
        assert!(
            owed > std::time::Duration::from_millis(1500)
                && owed <= std::time::Duration::from_secs(2),
            "{owed:?}"
        );
        assert!(limit.refused() >= 199, "{}", limit.refused());
        let open = RateLimit::new(None, Counter::default());
        open.charge();
        assert!(open.owed().is_zero());
        // A publish check never looks at the rate.
        let p = PublishPolicy {
            rate: limit,
            ..PublishPolicy::default()
        };
        assert!(p.check("inventory.reserved").is_ok());
    }
}
