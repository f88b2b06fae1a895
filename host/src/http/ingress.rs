//! Publishing: `POST /v1/events/{type}` (a JSON body as an event's data)
//! and `POST /v1/events` (CloudEvents, structured, batch or binary). A
//! body is read within its size and time bounds, validated whole, checked
//! against the token's topics, then published; nothing of a request that
//! fails is published.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Buf;
use http_body_util::BodyExt;
use serde_json::json;

use super::{auth, AppState, IngressError, CE_BATCH_JSON, CE_JSON};
use crate::event::Event;
use crate::timer::Timer;

/// Past the limit, this much more of a body is read and thrown away before
/// answering 413, so that a client still sending gets the answer instead of
/// a reset connection. Beyond it the connection is simply closed.
const DRAIN_BYTES_MAX: usize = 8 << 20;

/// Read a request's body of at most `limit` bytes within the state's
/// `body_timeout` (408 past it, counted, and the connection closed).
pub(super) async fn read_body(
    state: &AppState,
    body: Body,
    headers: &HeaderMap,
    limit: usize,
) -> Result<Bytes, IngressError> {
    match tokio::time::timeout(state.body_timeout, read_body_within(body, headers, limit)).await {
        Ok(read) => read,
        Err(_) => {
            state.metrics.http_refused("body").inc();
            Err(IngressError::BodyTimeout(state.body_timeout.as_millis()))
        }
    }
}

async fn read_body_within(
    body: Body,
    headers: &HeaderMap,
    limit: usize,
) -> Result<Bytes, IngressError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        drain(body).await;
        return Err(IngressError::TooLarge(limit));
    }
    let mut body = body;
    let mut buf = bytes::BytesMut::new();
    loop {
        match body.frame().await {
            None => return Ok(buf.freeze()),
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    if buf.len() + data.len() > limit {
                        drain(body).await;
                        return Err(IngressError::TooLarge(limit));
                    }
                    buf.extend_from_slice(&data);
                }
            }
            Some(Err(e)) => return Err(IngressError::Body(e.to_string())),
        }
    }
}

/// Read and discard up to [`DRAIN_BYTES_MAX`] of `body`.
async fn drain<B>(mut body: B)
where
    B: http_body::Body + Unpin,
{
    let mut seen = 0usize;
    while let Some(Ok(frame)) = body.frame().await {
        seen += frame.data_ref().map_or(0, |d| d.remaining());
        if seen > DRAIN_BYTES_MAX {
            break;
        }
    }
}

fn content_type(headers: &HeaderMap) -> Option<String> {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|s| s.to_string())
}

fn base_type(ct: &str) -> String {
    ct.split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

/// Publish `events`, all or none: a token limited to topic patterns must
/// be allowed every topic of the request.
async fn publish(
    state: &AppState,
    principal: Option<&Arc<auth::Principal>>,
    headers: &HeaderMap,
    mut events: Vec<Event>,
) -> Result<Response, IngressError> {
    // The request's W3C trace context, for events without their own.
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(traceparent) = header(crate::event::TRACEPARENT) {
        let tracestate = header(crate::event::TRACESTATE);
        for event in &mut events {
            event.adopt_trace(Some(traceparent), tracestate);
        }
    }
    if let Some(principal) = principal {
        for event in &events {
            principal
                .may_publish(&event.topic)
                .map_err(IngressError::TopicForbidden)?;
        }
    }
    // Each event's data fits its topic's schema, or nothing of the
    // request is published.
    let schemas = state.registry.schemas();
    for event in &mut events {
        schemas
            .check(&event.topic, &event.data, "ingress")
            .map_err(IngressError::Invalid)?;
        schemas.stamp(event);
    }
    let (later, mut events) = scheduled(events)?;
    if !later.is_empty() {
        // Kept first: a request is scheduled whole or not at all.
        let answer = scheduled_answer(&later, events.is_empty());
        state.dispatch.schedule_async(later).await?;
        if events.is_empty() {
            return Ok((StatusCode::ACCEPTED, Json(answer)).into_response());
        }
    }
    let single = (events.len() == 1).then(|| events[0].id.clone());
    // With OTLP export, each event's publish span becomes its context.
    let spans = crate::telemetry::get().map(|t| t.publishing(&mut events));
    let published = state.dispatch.publish_async(events).await;
    if let Some(spans) = spans {
        spans.end(published.as_ref().map(|_| ()).map_err(|e| e.to_string()));
    }
    let published = published?;
    let body = match single {
        Some(id) => json!({ "accepted": 1, "id": id, "sequence": published.first_sequence,
                            "duplicate": published.duplicates > 0 }),
        None => json!({ "accepted": published.count, "first_sequence": published.first_sequence,
                        "duplicates": published.duplicates }),
    };
    Ok((StatusCode::ACCEPTED, Json(body)).into_response())
}

/// The events that ask to be delivered later (`deliverat`), as timers keyed
/// by their ids (so that a request sent again replaces its own), and the
/// others.
fn scheduled(events: Vec<Event>) -> Result<(Vec<Timer>, Vec<Event>), IngressError> {
    let asks = |e: &Event| {
        e.extensions
            .iter()
            .any(|(k, _)| k == crate::timer::DELIVER_AT)
    };
    if !events.iter().any(asks) {
        return Ok((Vec::new(), events));
    }
    let now = crate::timer::now_ms();
    let max = plugbus_contract::timer::DELAY_MS_MAX_DEFAULT;
    let (mut later, mut at_once) = (Vec::new(), Vec::with_capacity(events.len()));
    for event in events {
        match crate::timer::deliver_at(&event, now, max).map_err(IngressError::DeliverAt)? {
            Some(due_ms) => later.push(Timer {
                key: event.id.clone(),
                due_ms,
                event,
            }),
            None => at_once.push(event),
        }
    }
    Ok((later, at_once))
}

/// The answer to scheduled events: a scheduled event gets its sequence
/// when it enters the log, at its time.
fn scheduled_answer(later: &[Timer], only: bool) -> serde_json::Value {
    match (later, only) {
        ([one], true) => json!({ "accepted": 1, "id": one.event.id,
                                 "scheduled": crate::timer::rfc3339(one.due_ms) }),
        _ => json!({ "accepted": later.len(), "scheduled": later.len() }),
    }
}

pub(super) async fn publish_plain(
    State(state): State<AppState>,
    Path(topic): Path<String>,
    request: Request,
) -> Result<Response, IngressError> {
    let (parts, body) = request.into_parts();
    if let Some(ct) = content_type(&parts.headers) {
        let base = base_type(&ct);
        if base != "application/json" && !base.ends_with("+json") {
            return Err(IngressError::UnsupportedType(ct));
        }
    }
    let body = read_body(&state, body, &parts.headers, state.body_bytes_max).await?;
    let event = Event::from_plain_json(&topic, &body)?;
    publish(&state, parts.extensions.get(), &parts.headers, vec![event]).await
}

pub(super) async fn publish_cloudevents(
    State(state): State<AppState>,
    request: Request,
) -> Result<Response, IngressError> {
    let (parts, body) = request.into_parts();
    let ct = content_type(&parts.headers);
    let base = ct.as_deref().map(base_type);
    let binary = parts.headers.contains_key("ce-specversion");
    let body = read_body(&state, body, &parts.headers, state.body_bytes_max).await?;
    let events = match base.as_deref() {
        Some(CE_JSON) => vec![Event::parse_structured(&body)?],
        Some(CE_BATCH_JSON) => {
            let events = Event::parse_batch(&body)?;
            if events.is_empty() {
                return Err(IngressError::EmptyBatch);
            }
            events
        }
        _ if binary => {
            let attributes = parts
                .headers
                .iter()
                .filter_map(|(name, value)| {
                    let attr = name.as_str().strip_prefix("ce-")?;
                    Some((attr.to_string(), value.to_str().ok()?.to_string()))
                })
                .collect();
            vec![Event::from_binary(attributes, ct, body.to_vec())?]
        }
        _ => {
            return Err(IngressError::UnsupportedType(
                ct.unwrap_or_else(|| "(none)".into()),
            ))
        }
    };
    publish(&state, parts.extensions.get(), &parts.headers, events).await
}
