//! The schema API: `GET /v1/schemas` (every topic's contract),
//! `GET /v1/schemas/{topic}`, `PUT /v1/schemas/{topic}?major=N&mode=M`
//! (the body is the JSON Schema). The registry is `crate::schema`.

use axum::extract::{Path, Query, Request, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use super::ingress::read_body;
use super::{AppState, IngressError};
use crate::schema::{Mode, SCHEMA_BYTES_MAX};

/// What `PUT` reads from its query.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PutQuery {
    major: Option<u32>,
    mode: Option<String>,
}

pub(super) async fn list(State(state): State<AppState>) -> Json<serde_json::Value> {
    let all: Vec<serde_json::Value> = state
        .registry
        .schemas()
        .list()
        .iter()
        .map(|c| c.describe())
        .collect();
    Json(json!({ "schemas": all }))
}

pub(super) async fn get(
    State(state): State<AppState>,
    Path(topic): Path<String>,
) -> Result<Response, IngressError> {
    let contract = state
        .registry
        .schemas()
        .get(&topic)
        .ok_or_else(|| IngressError::NoSchema(topic.clone()))?;
    Ok(Json(contract.describe()).into_response())
}

pub(super) async fn put(
    State(state): State<AppState>,
    Path(topic): Path<String>,
    Query(query): Query<PutQuery>,
    request: Request,
) -> Result<Response, IngressError> {
    let (parts, body) = request.into_parts();
    let body = read_body(&state, body, &parts.headers, SCHEMA_BYTES_MAX + 1).await?;
    let mode = query
        .mode
        .as_deref()
        .map(str::parse::<Mode>)
        .transpose()
        .map_err(IngressError::Schema)?;
    let schemas = state.registry.schemas().clone();
    let contract = tokio::task::block_in_place(|| schemas.put(&topic, &body, query.major, mode))
        .map_err(IngressError::Schema)?;
    Ok(Json(contract.describe()).into_response())
}
