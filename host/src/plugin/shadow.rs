//! The shadow run of a new version before it replaces the running one:
//! one more instance of it handles the last events the plugin would have
//! received (up to [`SHADOW_EVENTS`] of its subscriptions among the last
//! [`SCAN_EVENTS`] of the log, one read), each in a call of its own, as the running
//! version reads them (upcast to the majors it declares), reading the
//! plugin's committed state. Nothing it does is kept: its state writes,
//! follow-ups and timers are dropped with the instance.
//!
//! What it would publish is held against every running consumer's
//! declared reader schema of that topic (the topic's own schema and the
//! version's own writer schema are checked by the publish call itself, so
//! a follow-up that breaks them is refused inside the run). A follow-up
//! that does not fit refuses the swap, as a declared misfit does, naming
//! the event, the consumer, the topic and the field, unless the host runs
//! with `--accept-incompatible`. Events the version did not ack are told
//! in the log (its state may differ from a real run's), not refused.

use std::time::Duration;

use super::*;
use crate::event::{Chunk, Event};
use crate::runtime::{CallMode, Outcome, PluginInstance};
use crate::schema::Violation;

/// Events a new version handles in its shadow run, at most.
pub const SHADOW_EVENTS: usize = 100;
/// The newest events of the log searched for them (one read; on a
/// broker, one request).
pub const SCAN_EVENTS: u64 = 1_000;

/// A follow-up of the shadow run that a running consumer cannot read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShadowMisfit {
    /// The plugin and its new version.
    pub plugin: String,
    /// See `plugin`.
    pub version: String,
    /// The event it handled (id and topic) when it published the follow-up.
    pub cause: (String, String),
    /// The consumer that could not read it.
    pub consumer: String,
    /// Where the follow-up breaks the consumer's reader schema.
    pub violation: Violation,
}

impl std::fmt::Display for ShadowMisfit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let v = &self.violation;
        write!(
            f,
            "{} {} does not fit in its shadow run: handling event {} (`{}`) it would publish `{}` that `{}` cannot read (major {}): `{}` at `{}`: {}; publish what the reader needs, or run the host with --accept-incompatible",
            self.plugin,
            self.version,
            self.cause.0,
            self.cause.1,
            v.topic,
            self.consumer,
            v.major,
            v.keyword,
            crate::schema::place(&v.pointer),
            v.message
        )
    }
}

/// What a shadow run did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Shadowed {
    /// Events handled.
    pub events: usize,
    /// Of those, acked.
    pub acked: usize,
    /// Follow-ups it would have published.
    pub published: usize,
    /// The first event not acked, and why.
    pub first_failure: Option<String>,
}

impl Registry {
    /// Run `instance`, the new version `version` of `running`, in its
    /// shadow (see the module docs): the first follow-up a running
    /// consumer cannot read, as an error unless the host accepts
    /// incompatible versions.
    pub(super) fn shadow(
        &self,
        running: &RunningPlugin,
        instance: PluginInstance,
        patterns: &[Pattern],
        version: &str,
    ) -> Result<Shadowed, PluginError> {
        // Only a running plugin's declared reader can refuse a follow-up:
        // with none, the run could not refuse anything.
        let others = self.others(&running.name);
        if others.iter().all(|o| o.declared().consumes.is_empty()) {
            return Ok(Shadowed::default());
        }
        let events = self.last_events(patterns);
        let (shadowed, misfit) = run_shadow(running, &others, instance, events, version);
        if shadowed.events > 0 {
            tracing::info!(
                plugin = %running.name,
                version,
                events = shadowed.events,
                acked = shadowed.acked,
                published = shadowed.published,
                "shadow run of the new version{}",
                shadowed
                    .first_failure
                    .as_ref()
                    .map(|f| format!("; not acked: {f} (its state may differ from a real run's)"))
                    .unwrap_or_default()
            );
        }
        match misfit {
            None => Ok(shadowed),
            Some(m) if self.settings.accept_incompatible => {
                tracing::warn!(plugin = %running.name, "{m} (--accept-incompatible: swapped in anyway)");
                Ok(shadowed)
            }
            Some(m) => Err(PluginError::ShadowMisfit(Box::new(m))),
        }
    }

    /// Up to [`SHADOW_EVENTS`] of the newest events that `patterns`
    /// match, oldest first (none where the backend keeps no log).
    fn last_events(&self, patterns: &[Pattern]) -> Vec<std::sync::Arc<Event>> {
        let backend = self.backend();
        let Ok(head) = backend.head() else {
            return Vec::new();
        };
        let from = head.saturating_sub(SCAN_EVENTS - 1).max(1);
        let Ok(page) = backend.read(from, SCAN_EVENTS as usize) else {
            return Vec::new();
        };
        let mut found: Vec<std::sync::Arc<Event>> = page
            .into_iter()
            .filter(|e| patterns.iter().any(|p| p.matches(&e.topic)))
            .map(std::sync::Arc::new)
            .collect();
        let keep = found.len().saturating_sub(SHADOW_EVENTS);
        found.split_off(keep)
    }
}

/// Each of `events` through `instance`, one per call; the first
/// follow-up a running consumer cannot read.
fn run_shadow(
    running: &RunningPlugin,
    others: &[Arc<RunningPlugin>],
    mut instance: PluginInstance,
    events: Vec<std::sync::Arc<Event>>,
    version: &str,
) -> (Shadowed, Option<ShadowMisfit>) {
    let limits = &running.settings.limits;
    let budget = Duration::from_millis(limits.deadline_ms);
    let declared = instance.declared().clone();
    let schemas = &running.settings.publish.schemas;
    let mut done = Shadowed::default();
    for event in events {
        let chunk: Chunk = crate::schema::upcast::as_read(
            std::sync::Arc::from(vec![event.clone()]),
            &declared,
            schemas,
        );
        let result = runtime::with_native_stack(limits.stack_bytes_max, || {
            instance.handle(&chunk, 0..1, &[1], CallMode::Background, budget)
        });
        done.events += 1;
        let r = match result {
            Ok(r) => r,
            Err(e) => {
                // A trapped instance is not called again.
                done.first_failure
                    .get_or_insert_with(|| format!("{} trapped: {e}", event.id));
                break;
            }
        };
        match r.outcomes.first() {
            Some(Outcome::Ack) => done.acked += 1,
            other => {
                done.first_failure.get_or_insert_with(|| {
                    format!("{}: {}", event.id, runtime::outcome_words(other))
                });
            }
        }
        for (_, follow) in &r.published {
            done.published += 1;
            if let Some((consumer, violation)) = unreadable(others, follow) {
                let misfit = ShadowMisfit {
                    plugin: running.name.clone(),
                    version: version.to_string(),
                    cause: (event.id.clone(), event.topic.clone()),
                    consumer,
                    violation,
                };
                return (done, Some(misfit));
            }
        }
    }
    (done, None)
}

/// The first of `others` (the running plugins but the one shadowed)
/// whose declared reader schema `follow` breaks, and where.
fn unreadable(others: &[Arc<RunningPlugin>], follow: &Event) -> Option<(String, Violation)> {
    others.iter().find_map(|other| {
        let theirs = other.declared();
        let reader = theirs.consumes.get(&follow.topic)?;
        other.consumes(&follow.topic).then_some(())?;
        let v = reader.violation(&follow.data)?;
        Some((other.name.clone(), v))
    })
}
