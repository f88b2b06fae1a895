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

use super::{backend_error, backend_of, AppState, IngressError};
use crate::event::Event;

/// The most events one answer holds.
const TRACE_EVENTS_MAX: usize = 1000;
/// The `source` prefix of events a plugin published.
const PLUGIN_SOURCE: &str = "plugbus/plugin/";

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
    let out: Vec<serde_json::Value> = events.iter().map(|e| hop(e, events)).collect();
    Ok(Json(json!({
        "correlationid": correlationid,
        "events": out,
        "truncated": truncated,
    }))
    .into_response())
}

/// `event` as JSON, with the plugin that published it (none for an event
/// from outside) and the milliseconds from its cause's `time` to its own.
fn hop(event: &Event, chain: &[Event]) -> serde_json::Value {
    let mut v = event.to_json();
    v["hops"] = json!(event.hops);
    v["published_by"] = json!(event.source.strip_prefix(PLUGIN_SOURCE));
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
