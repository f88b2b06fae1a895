//! `GET /v1/trace/{correlationid}`: every event of one causal chain still
//! in the log (the chain of an order: `order.placed` → what the plugins
//! published while handling it → …), in log order, each with the plugin
//! that published it and how long after its cause it was published (the
//! cause's queueing and handling), read from the store's chain index.
//! `?limit=N` (default and most 1000, a chain's default budget).

use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use super::admin::{backend_error, backend_of};
use super::{AppState, IngressError};
use crate::event::Event;

/// The most events one answer holds.
const TRACE_EVENTS_MAX: usize = 1000;

#[derive(serde::Deserialize)]
pub(super) struct TraceQuery {
    limit: Option<usize>,
}

pub(super) async fn trace(
    State(state): State<AppState>,
    Path(correlationid): Path<String>,
    Query(q): Query<TraceQuery>,
) -> Result<Response, IngressError> {
    let backend = backend_of(&state)?;
    let limit = q
        .limit
        .unwrap_or(TRACE_EVENTS_MAX)
        .clamp(1, TRACE_EVENTS_MAX);
    let events = tokio::task::block_in_place(|| backend.chain(&correlationid, limit + 1))
        .map_err(backend_error)?;
    if events.is_empty() {
        return Err(IngressError::NoChain(correlationid));
    }
    let truncated = events.len() > limit;
    let events = &events[..events.len().min(limit)];
    let consumers = consumers(&state, events)?;
    let out: Vec<serde_json::Value> = events
        .iter()
        .map(|e| {
            let mut v = hop(e, events);
            v["deliveries"] = deliveries(e, &consumers);
            v
        })
        .collect();
    Ok(Json(json!({
        "correlationid": correlationid,
        "events": out,
        "truncated": truncated,
    }))
    .into_response())
}

/// A plugin that consumes some of a chain's topics: its patterns, how far
/// it has finished, and its dead letters among the chain's events.
struct Consumer {
    name: String,
    patterns: Vec<plugbus_contract::topic::Pattern>,
    cursors: Vec<crate::store::progress::Cursor>,
    /// How far it has finished, as its workers last reported (a stored
    /// cursor moves only with the next change it must keep).
    cursor: u64,
    state: String,
    dead: std::collections::HashMap<u64, (u32, String)>,
}

fn consumers(state: &AppState, chain: &[Event]) -> Result<Vec<Consumer>, IngressError> {
    let backend = backend_of(state)?;
    let status = tokio::task::block_in_place(|| state.registry.status());
    let mut out = Vec::new();
    for p in status {
        let patterns = p.patterns();
        if !chain
            .iter()
            .any(|e| patterns.iter().any(|pat| pat.matches(&e.topic)))
        {
            continue;
        }
        let letters =
            tokio::task::block_in_place(|| backend.dead_letters(&p.name)).map_err(backend_error)?;
        let cursors =
            tokio::task::block_in_place(|| backend.cursors(&p.name)).map_err(backend_error)?;
        let dead = letters
            .into_iter()
            .filter(|l| chain.iter().any(|e| e.sequence == l.event.sequence))
            .map(|l| (l.event.sequence, (l.attempts, l.error)))
            .collect();
        out.push(Consumer {
            name: p.name,
            patterns,
            cursors,
            cursor: p.cursor,
            state: p.state,
            dead,
        });
    }
    Ok(out)
}

/// What became of `event` in each plugin that consumes its topic:
/// `handled` (acknowledged; its follow-ups are the chain's next events),
/// `dead_letter` (with the attempts and the last error), `retrying` (with
/// the attempt due next) or `pending` (not reached yet, or being handled).
fn deliveries(event: &Event, consumers: &[Consumer]) -> serde_json::Value {
    let seq = event.sequence;
    let out: Vec<serde_json::Value> = consumers
        .iter()
        .filter(|c| c.patterns.iter().any(|p| p.matches(&event.topic)))
        .map(|c| {
            let retry = c
                .cursors
                .iter()
                .flat_map(|cur| cur.pending.iter())
                .find(|(s, _)| *s == seq);
            let reached = c.cursor >= seq
                || (!c.cursors.is_empty() && c.cursors.iter().all(|cur| cur.through >= seq));
            match (c.dead.get(&seq), retry) {
                (Some((attempts, error)), _) => json!({
                    "plugin": c.name, "outcome": "dead_letter", "attempts": attempts, "error": error,
                }),
                (None, Some((_, next))) => json!({
                    "plugin": c.name, "outcome": "retrying", "attempts": next.saturating_sub(1),
                }),
                (None, None) if reached => json!({"plugin": c.name, "outcome": "handled"}),
                (None, None) => json!({"plugin": c.name, "outcome": "pending", "plugin_state": c.state}),
            }
        })
        .collect();
    json!(out)
}

/// `event` as JSON, with the plugin that published it (none for an event
/// from outside) and the milliseconds from its cause's `time` to its own.
fn hop(event: &Event, chain: &[Event]) -> serde_json::Value {
    let mut v = super::stream::event_json(event);
    let cause = event
        .causationid
        .as_deref()
        .and_then(|id| chain.iter().find(|c| c.id == id));
    let millis = |t: &str| {
        humantime::parse_rfc3339_weak(t)
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_secs_f64() * 1000.0)
    };
    v["after_cause_ms"] = json!(cause.and_then(|c| Some(millis(&event.time)? - millis(&c.time)?)));
    v
}
