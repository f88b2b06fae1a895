//! The flow nobody wrote down, as this host saw it while anyone looked
//! (and the recent past read back from the log when looking started:
//! `observe`):
//!
//! - `GET /v1/flow?window=SECONDS` (default 60, 1 to 60): topics and
//!   plugins as nodes; edges for subscriptions (topic → plugin, for each
//!   topic seen that a plugin's pattern matches, or the pattern itself
//!   when it matched none yet) and for observed publishes (plugin →
//!   topic, counted as follow-ups are committed), each with its rate over
//!   the window and, for publishes, the mean time from cause to follow-up.
//!   `revision` changes only when the set of nodes and edges does, so a
//!   page lays the graph out again only then.
//!
//! The catalog (`GET /v1/catalog`) is `super::catalog`.

use std::hash::{BuildHasher, Hash, Hasher};
use std::time::Duration;

use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use super::AppState;
use crate::observe::shape::Shape;
use crate::observe::stats::TopicView;
use crate::plugin::PluginStatus;
use plugbus_contract::topic::Pattern;

#[derive(serde::Deserialize)]
pub(super) struct FlowQuery {
    window: Option<u64>,
}

/// Each plugin with its parsed subscriptions.
pub(super) fn patterns(status: &[PluginStatus]) -> Vec<(&PluginStatus, Vec<Pattern>)> {
    status.iter().map(|p| (p, p.patterns())).collect()
}

/// The JSON Schema inferred from `topic`'s sampled payloads (none: no
/// sample is JSON), and how many samples were JSON.
pub(super) fn inferred(topic: &TopicView) -> (Option<Value>, usize) {
    let parsed: Vec<Value> = topic
        .samples
        .iter()
        .filter_map(|s| serde_json::from_slice(&s.data).ok())
        .collect();
    let schema = (!parsed.is_empty()).then(|| Shape::of(&parsed).schema());
    (schema, parsed.len())
}

pub(super) async fn flow(State(state): State<AppState>, Query(q): Query<FlowQuery>) -> Response {
    let window = Duration::from_secs(q.window.unwrap_or(60));
    let registry = state.registry.clone();
    let status = tokio::task::block_in_place(|| {
        state.observer.look();
        registry.status()
    });
    let snapshot = state.observer.snapshot(window);
    let subscribers = patterns(&status);
    let mut nodes: Vec<Value> = Vec::new();
    let mut edges: Vec<Value> = Vec::new();
    for t in &snapshot.topics {
        let by_outside = t.publishers.iter().any(|(p, _)| p.is_none());
        nodes.push(json!({
            "id": format!("topic:{}", t.topic), "kind": "topic", "name": t.topic,
            "rate": t.rate, "total": t.total, "from_outside": by_outside,
        }));
    }
    for (p, pats) in &subscribers {
        nodes.push(json!({
            "id": format!("plugin:{}", p.name), "kind": "plugin", "name": p.name,
            "state": p.state, "version": p.version, "handled": p.handled, "failed": p.failed,
            "queue_depth": p.queue_depth, "lag": p.lag,
        }));
        for pat in pats {
            let mut matched = false;
            for t in snapshot.topics.iter().filter(|t| pat.matches(&t.topic)) {
                matched = true;
                edges.push(json!({
                    "from": format!("topic:{}", t.topic), "to": format!("plugin:{}", p.name),
                    "kind": "subscribes", "pattern": pat.as_str(), "rate": t.rate,
                }));
            }
            if !matched {
                let id = format!("pattern:{}", pat.as_str());
                if !nodes.iter().any(|n| n["id"] == id.as_str()) {
                    nodes.push(json!({"id": id, "kind": "pattern", "name": pat.as_str(), "rate": 0.0, "total": 0}));
                }
                edges.push(json!({
                    "from": id, "to": format!("plugin:{}", p.name),
                    "kind": "subscribes", "pattern": pat.as_str(), "rate": 0.0,
                }));
            }
        }
    }
    for e in &snapshot.edges {
        edges.push(json!({
            "from": format!("plugin:{}", e.plugin), "to": format!("topic:{}", e.topic),
            "kind": "publishes", "rate": e.rate, "total": e.total, "latency_ms": e.latency_ms,
        }));
    }
    let mut h = foldhash::quality::FixedState::default().build_hasher();
    for n in &nodes {
        n["id"].as_str().hash(&mut h);
    }
    for e in &edges {
        (e["from"].as_str(), e["to"].as_str()).hash(&mut h);
    }
    Json(json!({
        "window_seconds": snapshot.window.as_secs(),
        "revision": format!("{:016x}", h.finish()),
        "nodes": nodes,
        "edges": edges,
        "untracked_events": snapshot.untracked,
    }))
    .into_response()
}
