//! `GET /v1/catalog`: every topic seen or declared, and for each
//!
//! - what was seen ([`crate::observe`]): events counted, rate, who
//!   published them, the newest payload, the JSON Schema inferred from the
//!   sampled recent payloads, and the majors (`dataschema`) they carried;
//! - what was declared ([`crate::schema`]): the topic's schema, major and
//!   mode, its upcasters, and each running plugin's reader and writer
//!   schemas, each with how many of the sampled payloads fit it and where
//!   the first that does not breaks it;
//! - who broke which contract: refusals and warnings by producer, with
//!   the last violation.
//!
//! The counts cover what `coverage` says (the observer counts while
//! anyone looks, from the recent past read back when looking started),
//! not every event of the log; the violations every check since this
//! host started.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use super::flow::{inferred, patterns};
use super::AppState;
use crate::observe::stats::{Coverage, TopicView};
use crate::schema::{Contract, Declared};

pub(super) async fn catalog(State(state): State<AppState>) -> Response {
    let registry = state.registry.clone();
    let status = tokio::task::block_in_place(|| {
        state.observer.look();
        registry.status()
    });
    let snapshot = state.observer.snapshot(Duration::from_secs(60));
    let subscribers = patterns(&status);
    let schemas = registry.schemas();
    let declarations = registry.declarations();
    let mut names: BTreeSet<String> = snapshot.topics.iter().map(|t| t.topic.clone()).collect();
    names.extend(schemas.list().iter().map(|c| c.topic.clone()));
    for (_, d) in &declarations {
        names.extend(d.consumes.keys().chain(d.publishes.keys()).cloned());
    }
    let topics: Vec<Value> = names
        .iter()
        .map(|name| {
            let seen = snapshot.topics.iter().find(|t| &t.topic == name);
            let consumers: Vec<&str> = subscribers
                .iter()
                .filter(|(_, pats)| pats.iter().any(|p| p.matches(name)))
                .map(|(p, _)| p.name.as_str())
                .collect();
            let mut topic = observed(name, seen);
            topic["consumers"] = json!(consumers);
            topic["declared"] = declared(
                schemas.get(name),
                schemas.upcasters_of(name),
                &declarations,
                name,
                seen,
            );
            topic["violations"] = json!(schemas.violations().of(name));
            topic
        })
        .collect();
    Json(json!({
        "topics": topics,
        "untracked_events": snapshot.untracked,
        "untracked_violations": schemas.violations().untracked(),
        "coverage": coverage(&snapshot.coverage),
    }))
    .into_response()
}

/// What the counts cover.
fn coverage(c: &Coverage) -> Value {
    json!({
        "events": c.events,
        "from_sequence": c.from.as_ref().map(|(s, _)| s),
        "from_time": c.from.as_ref().map(|(_, t)| t),
        "through_sequence": (c.events > 0).then_some(c.through),
        "uncounted": c.uncounted(),
    })
}

/// What was seen of `name` (nothing yet: zeros).
fn observed(name: &str, seen: Option<&TopicView>) -> Value {
    let Some(t) = seen else {
        return json!({
            "topic": name, "events": 0, "rate": 0.0, "publishers": [], "example": null,
            "schema": null, "samples": 0, "json_samples": 0, "majors": [],
        });
    };
    let publishers: Vec<Value> = t
        .publishers
        .iter()
        .map(|(p, n)| json!({"plugin": p, "events": n}))
        .collect();
    let (schema, json_samples) = inferred(t);
    let example = t.samples.last().map(|s| {
        let data = serde_json::from_slice::<Value>(&s.data)
            .unwrap_or_else(|_| json!(String::from_utf8_lossy(&s.data)));
        json!({"sequence": s.sequence, "id": s.id, "time": s.time,
               "datacontenttype": s.datacontenttype, "data": data})
    });
    let majors: Vec<Value> = t
        .majors
        .iter()
        .map(|(m, n)| json!({"major": m, "events": n}))
        .collect();
    json!({
        "topic": t.topic, "events": t.total, "rate": t.rate,
        "first_seen": t.first_seen, "last_seen": t.last_seen,
        "publishers": publishers, "example": example,
        "schema": schema, "samples": t.samples.len(), "json_samples": json_samples,
        "majors": majors,
    })
}

/// Every schema declared for `topic`: its own, and each running plugin's
/// as reader or writer, each held against the sampled payloads.
fn declared(
    own: Option<Arc<Contract>>,
    upcasters: Vec<u32>,
    declarations: &[(String, Arc<Declared>)],
    topic: &str,
    seen: Option<&TopicView>,
) -> Value {
    let mut readers = Vec::new();
    let mut writers = Vec::new();
    for (plugin, d) in declarations {
        if let Some(c) = d.consumes.get(topic) {
            readers.push(held(c, Some(plugin), seen));
        }
        if let Some(c) = d.publishes.get(topic) {
            writers.push(held(c, Some(plugin), seen));
        }
    }
    json!({
        "topic": own.as_deref().map(|c| {
            let mut v = held(c, None, seen);
            v["mode"] = json!(c.mode.as_str());
            v
        }),
        "upcasters_from": upcasters,
        "readers": readers,
        "writers": writers,
    })
}

/// `contract` (declared by `plugin`, or the topic's own) against the
/// sampled payloads: how many fit, and where the first that does not
/// breaks it.
fn held(contract: &Contract, plugin: Option<&String>, seen: Option<&TopicView>) -> Value {
    let samples = seen.map(|t| t.samples.as_slice()).unwrap_or_default();
    let misfits: Vec<_> = samples
        .iter()
        .filter_map(|s| contract.violation(&s.data))
        .collect();
    json!({
        "plugin": plugin,
        "major": contract.major,
        "schema": contract.schema,
        "sampled": samples.len(),
        "fit": samples.len() - misfits.len(),
        "first_misfit": misfits.first().map(|v| json!({
            "pointer": v.pointer, "keyword": v.keyword, "message": v.message,
        })),
    })
}
