//! The schema API: `GET /v1/schemas` (every topic's contract),
//! `GET /v1/schemas/{topic}`, `PUT /v1/schemas/{topic}?major=N&mode=M`
//! (the body is the JSON Schema), `PUT /v1/schemas/{topic}/upcasters/{from}`
//! (the body is the upcaster's rules, `crate::schema::upcast`). The
//! registry is `crate::schema`.

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
    let schemas = state.registry.schemas();
    let all: Vec<serde_json::Value> = schemas
        .list()
        .iter()
        .map(|c| described(schemas, c))
        .collect();
    Json(json!({ "schemas": all }))
}

/// A contract as the API shows it, with the majors its upcasters start
/// from.
fn described(schemas: &crate::schema::Schemas, c: &crate::schema::Contract) -> serde_json::Value {
    let mut d = c.describe();
    d["upcasters_from"] = json!(schemas.upcasters_of(&c.topic));
    d
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
    Ok(Json(described(state.registry.schemas(), &contract)).into_response())
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

pub(super) async fn put_upcaster(
    State(state): State<AppState>,
    Path((topic, from)): Path<(String, u32)>,
    request: Request,
) -> Result<Response, IngressError> {
    let (parts, body) = request.into_parts();
    let body = read_body(&state, body, &parts.headers, SCHEMA_BYTES_MAX + 1).await?;
    let schemas = state.registry.schemas().clone();
    let upcaster = tokio::task::block_in_place(|| schemas.put_upcaster(&topic, from, &body))
        .map_err(IngressError::Schema)?;
    Ok(
        Json(json!({"topic": topic, "from": from, "to": from + 1, "rules": upcaster.rules}))
            .into_response(),
    )
}
