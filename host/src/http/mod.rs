//! HTTP ingress (axum): publishing events, plugin status, health, metrics.
//!
//! - `POST /v1/events/{type}` with a JSON body: the body is the data, the
//!   host fills every attribute.
//! - `POST /v1/events` with a CloudEvent: structured mode
//!   (`application/cloudevents+json`), batch mode
//!   (`application/cloudevents-batch+json`) or binary mode (`ce-*` headers,
//!   any content type).
//! - `GET /v1/plugins`, `GET /v1/audit` (every plugin's events accounted
//!   for: `crate::audit`), `GET /healthz` (liveness), `GET /readyz` (503
//!   naming why the host is not doing its work), `GET /metrics`, and the OpenAPI
//!   document of all of it at `GET /v1/openapi.json`.
//! - What the host sees of its flow: `GET /v1/stream` (server-sent
//!   events: live tail, rates, plugin changes; `http::stream`),
//!   `GET /v1/flow` and `GET /v1/catalog` (`http::flow`), and the
//!   operator console at `/console/` (`http::console`), a client of these.
//! - The log (durable mode): `GET /v1/log?from=SEQ&limit=N` (default: the
//!   last 20), `GET /v1/log/{sequence}`; `POST /v1/plugins/{name}/replay`
//!   with `{"from_sequence": N}` or `{"from_time": "RFC 3339"}`, and
//!   `"reset_state": true` to empty the plugin's bucket first;
//!   `GET /v1/trace/{correlationid}`: one causal chain (`http::trace`).
//! - Plugin state: `GET /v1/plugins/{name}/kv` (keys and values, paged with
//!   `?after=KEY&limit=N`), `GET /v1/plugins/{name}/kv/{key}`. Values are
//!   shown as stored: JSON when they are JSON, else text, else base64.
//! - Dead letters (durable mode): `GET /v1/dead[/{plugin}[/{sequence}]]`,
//!   `POST /v1/dead/{plugin}/redrive` and `/purge` with a selection
//!   (`{"sequences": [..]}`, `{"topic": "order.*"}` or `{"all": true}`).
//!
//! With a token file (`http::auth`) every route but `/healthz` needs a
//! bearer token with the scope its effect needs (401 without one, 403
//! naming the scope), and a publish token limited to topic patterns may
//! publish only to those. The listener's bounds (connections, slow
//! clients) and TLS live in `http::serve` and `http::tls`.
//!
//! A request is validated whole before anything is published, so a bad
//! request publishes nothing: 400 names the attribute or the JSON position,
//! 413 the size limit, 415 the content types accepted. A full plugin queue
//! answers 503 naming the plugin (with `Retry-After`); in durable mode a
//! full disk answers 507 naming the data directory, and any other store
//! failure 500. Successful publishes answer 202 with the sequence numbers
//! given, in durable mode only once the events are stored under the fsync
//! policy.

pub mod auth;
mod backup;
pub mod console;
mod flow;
pub mod reload;
pub mod serve;
mod stream;
pub mod tls;
mod trace;

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Buf;
use http_body_util::BodyExt;
use serde_json::json;

use crate::backend::BackendError;
use crate::bus::PublishError;
use crate::dispatch::{Dispatch, DispatchError};
use crate::event::{Event, EventError};
use crate::metrics::Metrics;
use crate::plugin::Registry;
use crate::store::StoreError;

/// The default `body_bytes_max`: 1 MiB.
pub const BODY_BYTES_MAX_DEFAULT: usize = 1 << 20;

/// Content type of one structured-mode CloudEvent.
pub const CE_JSON: &str = "application/cloudevents+json";
/// Content type of a batch of CloudEvents.
pub const CE_BATCH_JSON: &str = "application/cloudevents-batch+json";

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    /// Where published events go.
    pub dispatch: Dispatch,
    /// The plugins.
    pub registry: Arc<Registry>,
    /// The metrics.
    pub metrics: Arc<Metrics>,
    /// Largest request body accepted, in bytes.
    pub body_bytes_max: usize,
    /// Time a request's body may take to arrive.
    pub body_timeout: std::time::Duration,
    /// Who may do what (`None`: anyone, anything).
    pub tokens: Option<Arc<auth::Tokens>>,
    /// What the host saw of its flow: the live tail, the flow graph, the
    /// catalog.
    pub observer: Arc<crate::observe::Observer>,
}

/// Why a request was refused; each maps to one status code.
#[derive(Debug, thiserror::Error)]
pub enum IngressError {
    /// The event or body is malformed.
    #[error("{0}")]
    BadEvent(#[from] EventError),
    /// The body is over `body_bytes_max`.
    #[error("the request body is larger than body_bytes_max ({0} bytes); send smaller batches, or start plugbus with a larger --body-bytes-max")]
    TooLarge(usize),
    /// The content type is not one we read.
    #[error("content type `{0}` is not supported; send application/json to POST /v1/events/{{type}}, or to POST /v1/events a CloudEvent as application/cloudevents+json, a batch as application/cloudevents-batch+json, or binary mode with ce-specversion, ce-id, ce-source and ce-type headers")]
    UnsupportedType(String),
    /// The body could not be read.
    #[error("the request body could not be read: {0}")]
    Body(String),
    /// The body did not arrive in time.
    #[error("the request body did not arrive within {0} ms (--body-timeout-ms); send it at once, or in smaller requests")]
    BodyTimeout(u128),
    /// A batch with no events.
    #[error("the batch is empty; send at least one event")]
    EmptyBatch,
    /// Dead letters, the log and replay exist only in durable mode.
    #[error("the log and dead letters are kept only in durable mode or on a broker; this host runs with --memory")]
    NoStore,
    /// A selection of dead letters that is not one.
    #[error("{0}")]
    BadSelection(String),
    /// A query parameter that is not one the route reads.
    #[error("{0}")]
    BadQuery(String),
    /// A replay request that is not one, or a plugin that cannot replay.
    #[error("{0}")]
    Replay(String),
    /// No such event in the log.
    #[error("the log has no event with sequence {0}")]
    NoEvent(u64),
    /// The event was lost to damage (`plugbus repair` recorded it).
    #[error("sequence {0} was lost to damage: `plugbus repair` {repair} cut out sequences {from}..={to} ({reason}); the log goes on at {next}", repair = .1.repair, from = .1.from, to = .1.to, reason = .1.reason, next = .1.to + 1)]
    Lost(u64, crate::store::lost::LostRange),
    /// No event of such a chain in the log.
    #[error("no chain `{0}` is indexed: a chain's id is the id of the event that started it (the `correlationid` of the others), and it is indexed from its first follow-up on; an event nothing was published from is read with GET /v1/log/{{sequence}}, and events trimmed from the log leave their chains")]
    NoChain(String),
    /// No such plugin.
    #[error("there is no plugin named `{0}`; `plugbus plugins` lists them")]
    NoPlugin(String),
    /// No such key in a plugin's state.
    #[error("plugin `{0}` has no key `{1}` in its state")]
    NoKey(String, String),
    /// The plugin's state could not be read.
    #[error("cannot read the state of plugin `{0}`: {1}")]
    State(String, String),
    /// No such dead letter.
    #[error("plugin `{0}` has no dead letter with sequence {1}")]
    NoLetter(String, u64),
    /// Backpressure, or the store refused.
    #[error("{0}")]
    Publish(#[from] DispatchError),
    /// The token may not publish to a topic of the request.
    #[error("{0}")]
    TopicForbidden(String),
}

impl IntoResponse for IngressError {
    fn into_response(self) -> Response {
        let status = match &self {
            IngressError::BadEvent(_)
            | IngressError::Body(_)
            | IngressError::EmptyBatch
            | IngressError::BadSelection(_)
            | IngressError::BadQuery(_) => StatusCode::BAD_REQUEST,
            IngressError::NoStore => StatusCode::CONFLICT,
            IngressError::NoLetter(..)
            | IngressError::NoEvent(_)
            | IngressError::NoChain(_)
            | IngressError::NoPlugin(_)
            | IngressError::NoKey(..) => StatusCode::NOT_FOUND,
            IngressError::Lost(..) => StatusCode::GONE,
            IngressError::State(..) => StatusCode::INTERNAL_SERVER_ERROR,
            IngressError::Replay(_) => StatusCode::BAD_REQUEST,
            IngressError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            IngressError::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            IngressError::TopicForbidden(_) => StatusCode::FORBIDDEN,
            IngressError::UnsupportedType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            IngressError::Publish(DispatchError::Busy(_))
            | IngressError::Publish(DispatchError::Store(StoreError::Closed)) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            IngressError::Publish(DispatchError::Store(StoreError::DiskFull { .. })) => {
                StatusCode::INSUFFICIENT_STORAGE
            }
            IngressError::Publish(DispatchError::Store(_)) => StatusCode::INTERNAL_SERVER_ERROR,
            IngressError::Publish(DispatchError::Broker(BackendError::Unavailable { .. })) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            IngressError::Publish(DispatchError::Broker(BackendError::NotOffered { .. })) => {
                StatusCode::NOT_IMPLEMENTED
            }
            IngressError::Publish(DispatchError::Broker(_)) => StatusCode::BAD_GATEWAY,
        };
        let mut body = json!({ "error": self.to_string() });
        if let IngressError::Publish(DispatchError::Busy(PublishError::QueueFull {
            plugin,
            accepted,
            ..
        })) = &self
        {
            body["plugin"] = json!(plugin);
            body["accepted"] = json!(accepted);
        }
        let mut response = (status, Json(body)).into_response();
        if status == StatusCode::REQUEST_TIMEOUT {
            // The rest of the body may never come: do not wait for it.
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        if status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

/// The router.
pub fn router(state: AppState) -> Router {
    let guard = auth::AuthState {
        tokens: state.tokens.clone(),
        metrics: state.metrics.clone(),
    };
    Router::new()
        .route("/v1/events", post(publish_cloudevents))
        .route("/v1/events/{type}", post(publish_plain))
        .route("/v1/plugins", get(plugins))
        .route("/v1/plugins/{plugin}/replay", post(replay))
        .route("/v1/plugins/{plugin}/kv", get(kv_list))
        .route("/v1/plugins/{plugin}/kv/{key}", get(kv_get))
        .route("/v1/log", get(log_read))
        .route("/v1/log/{sequence}", get(log_get))
        .route("/v1/trace/{correlationid}", get(trace::trace))
        .route("/v1/stream", get(stream::stream))
        .route("/v1/flow", get(flow::flow))
        .route("/v1/catalog", get(flow::catalog))
        .route("/v1/dead", get(dead_list))
        .route("/v1/dead/{plugin}", get(dead_list_plugin))
        .route("/v1/dead/{plugin}/{sequence}", get(dead_show))
        .route("/v1/dead/{plugin}/redrive", post(dead_redrive))
        .route("/v1/dead/{plugin}/purge", post(dead_purge))
        .route("/console", get(console::root))
        .route("/console/", get(console::index))
        .route("/console/{*path}", get(console::file))
        .route("/v1/openapi.json", get(openapi))
        .route("/v1/audit", get(audit))
        .route("/v1/backup", post(backup::backup))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        // Bodies are read with our own limit, below, to answer 413 with a
        // message that names the limit.
        .layer(DefaultBodyLimit::disable())
        .route_layer(axum::middleware::from_fn_with_state(guard, auth::authorize))
        .with_state(state)
}

/// Past the limit, this much more of a body is read and thrown away before
/// answering 413, so that a client still sending gets the answer instead of
/// a reset connection. Beyond it the connection is simply closed.
const DRAIN_BYTES_MAX: usize = 8 << 20;

/// Read a request's body of at most `limit` bytes within the state's
/// `body_timeout` (408 past it, counted, and the connection closed).
async fn read_body(
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

async fn publish_plain(
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

async fn publish_cloudevents(
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

async fn plugins(State(state): State<AppState>) -> Response {
    let registry = state.registry.clone();
    let (plugins, backend) =
        tokio::task::block_in_place(|| (registry.status(), registry.backend_status()));
    Json(json!({ "plugins": plugins, "backend": backend })).into_response()
}

/// The OpenAPI document of this API (`host/api/openapi.json`).
pub const OPENAPI: &str = include_str!("../../api/openapi.json");

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

async fn healthz(State(state): State<AppState>) -> Response {
    let status = state.registry.status();
    let running = status.iter().filter(|p| p.state == "running").count();
    Json(json!({ "status": "ok", "plugins_running": running, "plugins_failed": status.len() - running }))
        .into_response()
}

/// Every running plugin's accounts (`crate::audit`): 200 with them,
/// `unaccounted` the total; 501 in memory mode. On NATS a busy plugin is
/// not checked (`checked: false`, see `backend::nats::accounts`).
async fn audit(State(state): State<AppState>) -> Result<Response, IngressError> {
    let registry = state.registry.clone();
    let audits = tokio::task::block_in_place(|| registry.audit()).map_err(backend_error)?;
    let unaccounted: i64 = audits.iter().map(|a| a.unaccounted.abs()).sum();
    Ok(Json(json!({ "plugins": audits, "unaccounted": unaccounted })).into_response())
}

/// Readiness: 503 naming every reason the host is not doing its work (a
/// plugin failed, quarantined or whose worker panicked lately, the disk
/// inside its reserve, the broker unreachable); `/healthz` is liveness.
async fn readyz(State(state): State<AppState>) -> Response {
    let registry = state.registry.clone();
    let reasons = tokio::task::block_in_place(|| registry.not_ready());
    if reasons.is_empty() {
        return Json(json!({ "status": "ready" })).into_response();
    }
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(json!({ "status": "not ready", "reasons": reasons })),
    )
        .into_response()
}

async fn metrics(State(state): State<AppState>) -> Response {
    state.registry.refresh_gauges();
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
        .into_response()
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
fn backend_of(state: &AppState) -> Result<Arc<dyn crate::backend::Backend>, IngressError> {
    state
        .registry
        .backend()
        .filter(|b| b.capabilities().durable)
        .ok_or(IngressError::NoStore)
}

fn backend_error(e: crate::backend::BackendError) -> IngressError {
    match e {
        crate::backend::BackendError::Store(e) => IngressError::Publish(DispatchError::Store(e)),
        crate::backend::BackendError::Busy(e) => IngressError::Publish(DispatchError::Busy(e)),
        other => IngressError::Publish(DispatchError::Broker(other)),
    }
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

async fn dead_list(State(state): State<AppState>) -> Result<Response, IngressError> {
    let names = state.registry.names();
    letters(&state, names)
}

async fn dead_list_plugin(
    State(state): State<AppState>,
    Path(plugin): Path<String>,
) -> Result<Response, IngressError> {
    letters(&state, vec![plugin])
}

async fn dead_show(
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

async fn dead_redrive(
    State(state): State<AppState>,
    Path(plugin): Path<String>,
    request: Request,
) -> Result<Response, IngressError> {
    let backend = backend_of(&state)?;
    let which = selection(&state, request).await?;
    let n =
        tokio::task::block_in_place(|| backend.redrive(&plugin, &which)).map_err(backend_error)?;
    Ok(Json(json!({ "redriven": n })).into_response())
}

async fn dead_purge(
    State(state): State<AppState>,
    Path(plugin): Path<String>,
    request: Request,
) -> Result<Response, IngressError> {
    let backend = backend_of(&state)?;
    let which = selection(&state, request).await?;
    let n =
        tokio::task::block_in_place(|| backend.purge(&plugin, &which)).map_err(backend_error)?;
    Ok(Json(json!({ "purged": n })).into_response())
}

#[derive(serde::Deserialize)]
struct LogQuery {
    from: Option<u64>,
    limit: Option<usize>,
}

async fn log_read(
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

async fn log_get(
    State(state): State<AppState>,
    Path(sequence): Path<u64>,
) -> Result<Response, IngressError> {
    let backend = backend_of(&state)?;
    let event = tokio::task::block_in_place(|| backend.read(sequence, 1))
        .map_err(backend_error)?
        .into_iter()
        .find(|e| e.sequence == sequence);
    let Some(event) = event else {
        if let crate::dispatch::Dispatch::Durable(log) = &state.dispatch {
            let lost = tokio::task::block_in_place(|| log.store().lost_at(sequence));
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
struct KvQuery {
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

async fn kv_list(
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

async fn kv_get(
    State(state): State<AppState>,
    Path((plugin, key)): Path<(String, String)>,
) -> Result<Response, IngressError> {
    let bucket = state_of(&state, &plugin)?;
    let value = tokio::task::block_in_place(|| bucket.get(&plugin, &key))
        .map_err(|e| IngressError::State(plugin.clone(), e))?
        .ok_or_else(|| IngressError::NoKey(plugin.clone(), key.clone()))?;
    Ok(Json(json!({ "plugin": plugin, "key": key, "value": shown(&value) })).into_response())
}

async fn replay(
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

#[cfg(test)]
mod openapi_tests {
    /// Every route the router serves is in the OpenAPI document, with its
    /// method, and the document names no route that is not served.
    #[test]
    fn the_openapi_document_covers_every_route() {
        let doc: serde_json::Value = serde_json::from_str(super::OPENAPI).expect("JSON");
        let paths = doc["paths"].as_object().expect("paths");
        let source = include_str!("mod.rs");
        let mut served = Vec::new();
        for line in source.lines().map(str::trim) {
            let Some(rest) = line.strip_prefix(".route(\"") else {
                continue;
            };
            let (path, handler) = rest.split_once("\", ").expect("a route line");
            let method = handler.split('(').next().unwrap_or_default();
            if path.starts_with("/console") && path != "/console/" {
                continue;
            }
            served.push(path.to_string());
            assert!(
                paths.get(path).and_then(|p| p.get(method)).is_some(),
                "{method} {path} is served but not in host/api/openapi.json"
            );
        }
        for path in paths.keys() {
            assert!(
                served.contains(path),
                "{path} is in openapi.json but not served"
            );
        }
    }
}
