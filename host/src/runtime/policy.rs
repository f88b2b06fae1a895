//! What a plugin may do beyond handling its events: which topics it may
//! publish to and how fast ([`PublishPolicy`]), and how much it may write to
//! stdout and stderr ([`RateLimit`] on lines). Both are shared by every
//! instance of one plugin, so re-instantiating after a trap does not reset
//! them. A publish refused here reaches the plugin as
//! `publish-error::denied` with the reason.

use std::sync::Mutex;
use std::time::Instant;

use prometheus_client::metrics::counter::Counter;

use crate::topic::Pattern;

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
        let rate = f64::from(per_s);
        let mut bucket = self.bucket.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let (tokens, at) = *bucket;
        let tokens = (tokens + now.duration_since(at).as_secs_f64() * rate).min(rate.max(1.0));
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

impl Default for RateLimit {
    fn default() -> Self {
        RateLimit::new(Some(super::OUTPUT_LINES_PER_S_DEFAULT), Counter::default())
    }
}

/// The topics a plugin may publish to, and how many follow-up events a
/// second. Deny wins over allow; no allow list allows every topic.
#[derive(Debug)]
pub struct PublishPolicy {
    /// Patterns allowed (`None`: all).
    pub allow: Option<Vec<Pattern>>,
    /// Patterns refused even when allowed.
    pub deny: Vec<Pattern>,
    /// Follow-up events per second.
    pub rate: RateLimit,
}

impl Default for PublishPolicy {
    /// Every topic, at any rate.
    fn default() -> Self {
        PublishPolicy {
            allow: None,
            deny: Vec::new(),
            rate: RateLimit::new(None, Counter::default()),
        }
    }
}

impl PublishPolicy {
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
        if !self.rate.take() {
            return Err(format!(
                "publish rate limit of {} events/s reached (publish.rate_events_per_s_max); return a retry to publish later",
                self.rate.per_s().unwrap_or(0)
            ));
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
}
