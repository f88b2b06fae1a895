//! `GET /v1/asyncapi.json`: the host's AsyncAPI 3.0 document
//! (`schema::asyncapi`), from the topics' schemas, the running plugins'
//! declarations and subscriptions, and the catalog of what was seen.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::AppState;
use crate::schema::asyncapi::{document, Channel};

pub(super) async fn asyncapi(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let registry = state.registry.clone();
    let status = tokio::task::block_in_place(|| {
        state.observer.look();
        registry.status()
    });
    let snapshot = state.observer.snapshot(Duration::from_secs(60));
    let mut channels: BTreeMap<String, Channel> = BTreeMap::new();
    for t in &snapshot.topics {
        let c = channel(&mut channels, &t.topic);
        c.inferred = super::flow::inferred(t).0;
        for (publisher, _) in &t.publishers {
            match publisher {
                Some(p) => c.senders.push(p.clone()),
                None => c.from_outside = true,
            }
        }
    }
    for contract in registry.schemas().list() {
        channel(&mut channels, &contract.topic).schemas.push((
            contract.major,
            contract.schema.clone(),
            "the topic".into(),
        ));
    }
    for (plugin, declared) in registry.declarations() {
        for (topic, contract) in &declared.publishes {
            let c = channel(&mut channels, topic);
            c.senders.push(plugin.clone());
            c.schemas
                .push((contract.major, contract.schema.clone(), plugin.clone()));
        }
    }
    let subscribers = super::flow::patterns(&status);
    for c in channels.values_mut() {
        c.receivers = subscribers
            .iter()
            .filter(|(_, pats)| pats.iter().any(|pat| pat.matches(&c.topic)))
            .map(|(p, _)| p.name.clone())
            .collect();
        c.senders.sort();
        c.senders.dedup();
    }
    let host = headers
        .get(axum::http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("localhost");
    let all: Vec<Channel> = channels.into_values().collect();
    Json(document(env!("CARGO_PKG_VERSION"), host, "http", &all)).into_response()
}

/// `topic`'s channel in `channels`, made if new.
fn channel<'a>(channels: &'a mut BTreeMap<String, Channel>, topic: &str) -> &'a mut Channel {
    channels
        .entry(topic.to_string())
        .or_insert_with(|| Channel {
            topic: topic.to_string(),
            ..Channel::default()
        })
}
