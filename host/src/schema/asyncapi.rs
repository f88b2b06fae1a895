//! The AsyncAPI 3.0 document of a host, generated from what it knows: one
//! channel per topic (seen in the catalog, given a schema, or declared by
//! a plugin that publishes it), one message per known major of its
//! schema (else the shape the catalog inferred, marked so), and one
//! operation per plugin and topic it receives or sends. The HTTP ingress
//! is its server. This room owns the document's shape; the HTTP API
//! gathers the facts.

use serde_json::{json, Map, Value};

/// What is known of one topic.
#[derive(Debug, Clone, Default)]
pub struct Channel {
    /// The topic.
    pub topic: String,
    /// Declared schemas: (major, schema, who declared it).
    pub schemas: Vec<(u32, Value, String)>,
    /// The shape inferred from the events seen, if any were.
    pub inferred: Option<Value>,
    /// Plugins that publish it (declared or seen).
    pub senders: Vec<String>,
    /// Plugins whose subscriptions match it.
    pub receivers: Vec<String>,
    /// Whether events of it came from outside (the ingress).
    pub from_outside: bool,
}

/// A channel's or message's id: the topic's characters AsyncAPI keys
/// allow (`[\w\d.\-_]`), others as `_`.
fn id(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The document for a host of version `version` listening at `host`
/// (`HOST:PORT`, over `protocol` `http` or `https`).
pub fn document(version: &str, host: &str, protocol: &str, channels: &[Channel]) -> Value {
    let mut chans = Map::new();
    let mut operations = Map::new();
    let mut messages = Map::new();
    for c in channels {
        let cid = id(&c.topic);
        let mut own = Map::new();
        for (major, schema, by) in &c.schemas {
            let mid = format!("{cid}.v{major}.{}", id(by));
            messages.insert(
                mid.clone(),
                json!({
                    "name": c.topic, "title": format!("{} (major {major})", c.topic),
                    "summary": format!("declared by {by}"),
                    "contentType": "application/json",
                    "payload": {"schemaFormat": "application/schema+json;version=draft-07", "schema": schema},
                    "correlationId": {"$ref": "#/components/correlationIds/chain"},
                    "x-plugbus-major": major,
                    "x-plugbus-dataschema": format!("/v1/schemas/{}/{major}", c.topic),
                }),
            );
            own.insert(
                mid.clone(),
                json!({"$ref": format!("#/components/messages/{mid}")}),
            );
        }
        if c.schemas.is_empty() {
            let mid = format!("{cid}.observed");
            let mut message = json!({
                "name": c.topic, "contentType": "application/json",
                "summary": "no schema declared: the shape inferred from the events seen",
                "correlationId": {"$ref": "#/components/correlationIds/chain"},
            });
            if let Some(shape) = &c.inferred {
                message["payload"] = shape.clone();
                message["x-plugbus-inferred"] = json!(true);
            }
            messages.insert(mid.clone(), message);
            own.insert(
                mid.clone(),
                json!({"$ref": format!("#/components/messages/{mid}")}),
            );
        }
        let refs: Vec<Value> = own
            .keys()
            .map(|m| json!({"$ref": format!("#/channels/{cid}/messages/{m}")}))
            .collect();
        chans.insert(
            cid.clone(),
            json!({
                "address": c.topic,
                "title": c.topic,
                "messages": own,
                "servers": [{"$ref": "#/servers/ingress"}],
                "x-plugbus-from-outside": c.from_outside,
            }),
        );
        for (action, plugins) in [("receive", &c.receivers), ("send", &c.senders)] {
            for p in plugins {
                operations.insert(
                    format!("{}.{action}.{cid}", id(p)),
                    json!({
                        "action": action,
                        "channel": {"$ref": format!("#/channels/{cid}")},
                        "summary": format!("{p} {action}s {}", c.topic),
                        "messages": refs,
                    }),
                );
            }
        }
    }
    json!({
        "asyncapi": "3.0.0",
        "info": {
            "title": "plugbus",
            "version": version,
            "description": "The topics of this plugbus host: who publishes and consumes each, and the schemas of their data (declared, else inferred from the events seen). Events are CloudEvents 1.0; a topic is the event's type.",
        },
        "defaultContentType": "application/json",
        "servers": {
            "ingress": {
                "host": host,
                "protocol": protocol,
                "pathname": "/v1/events",
                "description": "POST a CloudEvent (or its data to /v1/events/{topic}) to publish",
            }
        },
        "channels": chans,
        "operations": operations,
        "components": {
            "messages": messages,
            "correlationIds": {
                "chain": {"location": "$message.header#/correlationid",
                          "description": "the id of the event that started the causal chain"}
            }
        },
    })
}

#[cfg(test)]
mod tests;
