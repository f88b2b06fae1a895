//! The admin and read API: plugins and their state, the audit, the log,
//! dead letters (list, show, re-drive, purge) and replay. Each reads or
//! acts through the backend (or the store) on a blocking thread; memory
//! mode answers 409 where it keeps nothing.

use std::sync::Arc;

use axum::extract::{Path, Request, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use super::ingress::read_body;
use super::{AppState, IngressError};
use crate::dispatch::DispatchError;
use crate::event::Event;

pub(super) async fn plugins(State(state): State<AppState>) -> Response {
    let registry = state.registry.clone();
    let (plugins, backend) =
        tokio::task::block_in_place(|| (registry.status(), registry.backend_status()));
    Json(json!({ "plugins": plugins, "backend": backend })).into_response()
}

/// Every running plugin's accounts (`crate::audit`): 200 with them,
/// `unaccounted` the total; 501 in memory mode. On NATS a busy plugin is
/// not checked (`checked: false`, see `backend::nats::accounts`).
pub(super) async fn audit(State(state): State<AppState>) -> Result<Response, IngressError> {
    let registry = state.registry.clone();
    let audits = tokio::task::block_in_place(|| registry.audit()).map_err(backend_error)?;
    let unaccounted: i64 = audits.iter().map(|a| a.unaccounted.abs()).sum();
    Ok(Json(json!({ "plugins": audits, "unaccounted": unaccounted })).into_response())
}

fn letter_json(l: &crate::store::dead::DeadLetter, with_event: bool) -> serde_json::Value {
    let mut v = json!({
        "plugin": l.plugin,
        "sequence": l.event.sequence,
        "id": l.event.id,
        "type": l.event.topic,
        "attempts": l.attempts,
        "error": l.error,
        "dead_at": l.dead_at,
    });
    if with_event {
        v["event"] = l.event.to_json();
    }
    v
}

/// The backend, where it keeps a log and dead letters (not memory mode).
pub(super) fn backend_of(
    state: &AppState,
) -> Result<Arc<dyn crate::backend::Backend>, IngressError> {
    Some(state.registry.backend().clone())
        .filter(|b| b.capabilities().durable)
        .ok_or(IngressError::NoStore)
}

pub(super) fn backend_error(e: crate::backend::BackendError) -> IngressError {
    IngressError::Publish(DispatchError::from(e))
}

fn letters(state: &AppState, plugins: Vec<String>) -> Result<Response, IngressError> {
    let backend = backend_of(state)?;
    let mut out = Vec::new();
    for p in plugins {
        let found = tokio::task::block_in_place(|| backend.dead_letters(&p));
        for l in found.map_err(backend_error)? {
            out.push(letter_json(&l, false));
        }
    }
    Ok(Json(json!({ "dead_letters": out })).into_response())
}

pub(super) async fn dead_list(State(state): State<AppState>) -> Result<Response, IngressError> {
    let names = state.registry.names();
    letters(&state, names)
}

pub(super) async fn dead_list_plugin(
    State(state): State<AppState>,
    Path(plugin): Path<String>,
) -> Result<Response, IngressError> {
    letters(&state, vec![plugin])
}

pub(super) async fn dead_show(
    State(state): State<AppState>,
    Path((plugin, sequence)): Path<(String, u64)>,
) -> Result<Response, IngressError> {
    let backend = backend_of(&state)?;
    let letter = tokio::task::block_in_place(|| backend.dead_letters(&plugin))
        .map_err(backend_error)?
        .into_iter()
        .find(|l| l.event.sequence == sequence)
        .ok_or(IngressError::NoLetter(plugin, sequence))?;
    Ok(Json(letter_json(&letter, true)).into_response())
}

/// Which letters: `{"sequences": [..]}`, `{"topic": "order.*"}` or
/// `{"all": true}`.
async fn selection(
    state: &AppState,
    request: Request,
) -> Result<crate::store::dead::Selection, IngressError> {
    use crate::store::dead::Selection;
    let (parts, body) = request.into_parts();
    let body = read_body(state, body, &parts.headers, 64 << 10).await?;
    let v: serde_json::Value = serde_json::from_slice(&body)
        .map_err(|e| IngressError::BadSelection(format!("the body is not valid JSON: {e}")))?;
    let how = "say which: {\"sequences\": [3, 7]}, {\"topic\": \"order.*\"} or {\"all\": true}";
    if let Some(seqs) = v.get("sequences").and_then(|s| s.as_array()) {
        let seqs: Option<Vec<u64>> = seqs.iter().map(|s| s.as_u64()).collect();
        return seqs.map(Selection::Sequences).ok_or_else(|| {
            IngressError::BadSelection(format!("sequences must be whole numbers; {how}"))
        });
    }
    if let Some(topic) = v.get("topic").and_then(|t| t.as_str()) {
        return plugbus_contract::topic::Pattern::parse(topic)
            .map(Selection::Topic)
            .map_err(|e| IngressError::BadSelection(e.to_string()));
    }
    if v.get("all").and_then(|a| a.as_bool()) == Some(true) {
        return Ok(Selection::All);
    }
    Err(IngressError::BadSelection(how.to_string()))
}

pub(super) async fn dead_redrive(
    State(state): State<AppState>,
    Path(plugin): Path<String>,
    request: Request,
) -> Result<Response, IngressError> {
    on_selection(&state, &plugin, request, "redriven", |b, p, w| {
        b.redrive(p, w)
    })
    .await
}

pub(super) async fn dead_purge(
    State(state): State<AppState>,
    Path(plugin): Path<String>,
    request: Request,
) -> Result<Response, IngressError> {
    on_selection(&state, &plugin, request, "purged", |b, p, w| b.purge(p, w)).await
}

/// Apply `act` to the dead letters of `plugin` the request selects; the
/// answer counts them under `done`.
async fn on_selection(
    state: &AppState,
    plugin: &str,
    request: Request,
    done: &str,
    act: impl FnOnce(
        &dyn crate::backend::Backend,
        &str,
        &crate::store::dead::Selection,
    ) -> Result<usize, crate::backend::BackendError>,
) -> Result<Response, IngressError> {
    let backend = backend_of(state)?;
    let which = selection(state, request).await?;
    let n =
        tokio::task::block_in_place(|| act(&*backend, plugin, &which)).map_err(backend_error)?;
    Ok(Json(json!({ done: n })).into_response())
}

#[derive(serde::Deserialize)]
pub(super) struct LogQuery {
    from: Option<u64>,
    limit: Option<usize>,
}

pub(super) async fn log_read(
    State(state): State<AppState>,
    axum::extract::Query(q): axum::extract::Query<LogQuery>,
) -> Result<Response, IngressError> {
    let backend = backend_of(&state)?;
    let limit = q.limit.unwrap_or(20).clamp(1, 1000);
    let (events, head) = tokio::task::block_in_place(|| {
        let head = backend.head()?;
        let from = q
            .from
            .unwrap_or_else(|| head.saturating_sub(limit as u64 - 1).max(1));
        Ok((backend.read(from, limit)?, head))
    })
    .map_err(backend_error)?;
    let events: Vec<serde_json::Value> = events.iter().map(Event::to_json).collect();
    Ok(Json(json!({ "events": events, "last_sequence": head })).into_response())
}

pub(super) async fn log_get(
    State(state): State<AppState>,
    Path(sequence): Path<u64>,
) -> Result<Response, IngressError> {
    let backend = backend_of(&state)?;
    let event = tokio::task::block_in_place(|| backend.read(sequence, 1))
        .map_err(backend_error)?
        .into_iter()
        .find(|e| e.sequence == sequence);
    let Some(event) = event else {
        if let Some(store) = state.dispatch.backend().store() {
            let lost = tokio::task::block_in_place(|| store.lost_at(sequence));
            if let Ok(Some(range)) = lost {
                return Err(IngressError::Lost(sequence, range));
            }
        }
        return Err(IngressError::NoEvent(sequence));
    };
    Ok(Json(event.to_json()).into_response())
}

/// A stored value as JSON: itself when it is JSON, else a string when it
/// is text, else `{"base64": ...}`.
fn shown(value: &[u8]) -> serde_json::Value {
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(value) {
        return v;
    }
    match std::str::from_utf8(value) {
        Ok(text) => serde_json::Value::String(text.to_string()),
        Err(_) => {
            use base64::Engine;
            json!({ "base64": base64::engine::general_purpose::STANDARD.encode(value) })
        }
    }
}

#[derive(serde::Deserialize)]
pub(super) struct KvQuery {
    after: Option<String>,
    limit: Option<usize>,
}

/// Where `plugin`'s state is, or 404 naming it.
fn state_of(state: &AppState, plugin: &str) -> Result<crate::runtime::kv::Backend, IngressError> {
    state
        .registry
        .state_of(plugin)
        .ok_or_else(|| IngressError::NoPlugin(plugin.to_string()))
}

pub(super) async fn kv_list(
    State(state): State<AppState>,
    Path(plugin): Path<String>,
    axum::extract::Query(q): axum::extract::Query<KvQuery>,
) -> Result<Response, IngressError> {
    let bucket = state_of(&state, &plugin)?;
    let limit = q.limit.unwrap_or(1000).clamp(1, 10_000);
    let mut entries =
        tokio::task::block_in_place(|| bucket.list(&plugin, q.after.as_deref(), limit + 1))
            .map_err(|e| IngressError::State(plugin.clone(), e))?;
    let more = entries.len() > limit;
    entries.truncate(limit);
    let next = if more {
        entries.last().map(|(k, _)| k.clone())
    } else {
        None
    };
    let entries: Vec<serde_json::Value> = entries
        .iter()
        .map(|(k, v)| json!({ "key": k, "value": shown(v) }))
        .collect();
    Ok(Json(json!({ "plugin": plugin, "entries": entries, "next_after": next })).into_response())
}

pub(super) async fn kv_get(
    State(state): State<AppState>,
    Path((plugin, key)): Path<(String, String)>,
) -> Result<Response, IngressError> {
    let bucket = state_of(&state, &plugin)?;
    let value = tokio::task::block_in_place(|| bucket.get(&plugin, &key))
        .map_err(|e| IngressError::State(plugin.clone(), e))?
        .ok_or_else(|| IngressError::NoKey(plugin.clone(), key.clone()))?;
    Ok(Json(json!({ "plugin": plugin, "key": key, "value": shown(&value) })).into_response())
}

pub(super) async fn replay(
    State(state): State<AppState>,
    Path(plugin): Path<String>,
    request: Request,
) -> Result<Response, IngressError> {
    let backend = backend_of(&state)?;
    let (parts, body) = request.into_parts();
    let body = read_body(&state, body, &parts.headers, 64 << 10).await?;
    let how = "say where from: {\"from_sequence\": 1} or {\"from_time\": \"2026-11-23T10:00:00Z\"}";
    let v: serde_json::Value = serde_json::from_slice(&body)
        .map_err(|e| IngressError::Replay(format!("the body is not valid JSON: {e}; {how}")))?;
    let from = if let Some(seq) = v.get("from_sequence").and_then(|s| s.as_u64()) {
        seq.max(1)
    } else if let Some(t) = v.get("from_time").and_then(|t| t.as_str()) {
        let t = humantime::parse_rfc3339_weak(t).map_err(|_| {
            IngressError::Replay(format!(
                "`{t}` is not an RFC 3339 time, e.g. 2026-11-23T10:00:00Z"
            ))
        })?;
        tokio::task::block_in_place(|| backend.first_since(t)).map_err(backend_error)?
    } else {
        return Err(IngressError::Replay(how.to_string()));
    };
    let reset_state = match v.get("reset_state") {
        None => false,
        Some(b) => b.as_bool().ok_or_else(|| {
            IngressError::Replay("`reset_state` must be true or false".to_string())
        })?,
    };
    let registry = state.registry.clone();
    let status = tokio::task::spawn_blocking(move || registry.replay(&plugin, from, reset_state))
        .await
        .map_err(|e| IngressError::Replay(format!("replay failed: {e}")))?
        .map_err(|e| IngressError::Replay(e.to_string()))?;
    Ok(
        Json(json!({ "from_sequence": from, "reset_state": reset_state, "plugin": status }))
            .into_response(),
    )
}
