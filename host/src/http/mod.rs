//! The HTTP API (axum): the router, the errors every route answers with,
//! health, readiness and metrics. Rooms: `ingress` (publishing), `admin`
//! (plugins, the audit, the log, dead letters, state, replay), `stream`,
//! `flow`, `trace`, `backup`, `console`, and the listener's `serve`, `auth`
//! and `tls`.
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
//!   `GET /v1/flow` (`http::flow`) and `GET /v1/catalog` (`http::catalog`), and the
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

mod admin;
mod asyncapi;
pub mod auth;
mod backup;
mod catalog;
pub mod console;
mod flow;
mod ingress;
pub mod reload;
mod schemas;
pub mod serve;
mod stream;
pub mod tls;
mod trace;

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde_json::json;

use crate::backend::BackendError;
use crate::bus::PublishError;
use crate::dispatch::{Dispatch, DispatchError};
use crate::event::EventError;
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
    /// A `deliverat` that is not a time, or too far ahead.
    #[error("{0}")]
    DeliverAt(String),
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
    /// An event's data does not fit its topic's schema.
    #[error("{0}")]
    Invalid(Box<crate::schema::Violation>),
    /// A schema was not taken.
    #[error("{0}")]
    Schema(crate::schema::SchemaError),
    /// No schema declared for the topic.
    #[error("no schema is declared for topic `{0}`; GET /v1/schemas lists them, PUT /v1/schemas/{0} declares one")]
    NoSchema(String),
}

impl IntoResponse for IngressError {
    fn into_response(self) -> Response {
        let status = match &self {
            IngressError::BadEvent(_)
            | IngressError::Body(_)
            | IngressError::EmptyBatch
            | IngressError::DeliverAt(_)
            | IngressError::BadSelection(_)
            | IngressError::BadQuery(_)
            | IngressError::Invalid(_) => StatusCode::BAD_REQUEST,
            IngressError::Schema(crate::schema::SchemaError::Io { .. }) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
            IngressError::Schema(_) => StatusCode::BAD_REQUEST,
            IngressError::NoSchema(_) => StatusCode::NOT_FOUND,
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
            IngressError::Publish(DispatchError::Backend(BackendError::Unavailable { .. })) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            IngressError::Publish(DispatchError::Backend(BackendError::NotOffered { .. })) => {
                StatusCode::NOT_IMPLEMENTED
            }
            IngressError::Publish(DispatchError::Backend(_)) => StatusCode::BAD_GATEWAY,
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
        .route("/v1/events", post(ingress::publish_cloudevents))
        .route("/v1/events/{type}", post(ingress::publish_plain))
        .route("/v1/plugins", get(admin::plugins))
        .route("/v1/plugins/{plugin}/replay", post(admin::replay))
        .route("/v1/plugins/{plugin}/kv", get(admin::kv_list))
        .route("/v1/plugins/{plugin}/kv/{key}", get(admin::kv_get))
        .route("/v1/log", get(admin::log_read))
        .route("/v1/log/{sequence}", get(admin::log_get))
        .route("/v1/trace/{correlationid}", get(trace::trace))
        .route("/v1/stream", get(stream::stream))
        .route("/v1/flow", get(flow::flow))
        .route("/v1/catalog", get(catalog::catalog))
        .route("/v1/asyncapi.json", get(asyncapi::asyncapi))
        .route("/v1/schemas", get(schemas::list))
        .route("/v1/schemas/{topic}", get(schemas::get).put(schemas::put))
        .route(
            "/v1/schemas/{topic}/upcasters/{from}",
            put(schemas::put_upcaster),
        )
        .route("/v1/dead", get(admin::dead_list))
        .route("/v1/dead/{plugin}", get(admin::dead_list_plugin))
        .route("/v1/dead/{plugin}/{sequence}", get(admin::dead_show))
        .route("/v1/dead/{plugin}/redrive", post(admin::dead_redrive))
        .route("/v1/dead/{plugin}/purge", post(admin::dead_purge))
        .route("/console", get(console::root))
        .route("/console/", get(console::index))
        .route("/console/{*path}", get(console::file))
        .route("/v1/openapi.json", get(openapi))
        .route("/v1/audit", get(admin::audit))
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

#[cfg(test)]
mod openapi_tests {
    /// Every route the router serves is in the OpenAPI document, with its
    /// method, and the document names no route that is not served.
    #[test]
    fn the_openapi_document_covers_every_route() {
        let doc: serde_json::Value = serde_json::from_str(super::OPENAPI).expect("JSON");
        let paths = doc["paths"].as_object().expect("paths");
        // One route a line, also where rustfmt wrapped its arguments.
        let source = include_str!("mod.rs");
        let mut lines: Vec<String> = Vec::new();
        for line in source.lines().map(str::trim) {
            match lines.last_mut() {
                Some(open) if open.starts_with(".route(") && !open.ends_with(')') => {
                    open.push_str(line);
                    if open.ends_with(',') {
                        open.push(' ');
                    }
                }
                _ => lines.push(line.to_string()),
            }
        }
        let mut served = Vec::new();
        for line in lines.iter().map(|l| l.trim_end_matches(',').trim()) {
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
