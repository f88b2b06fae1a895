//! The fixture events of a project (`events/*.json`) run through its built
//! plugin in the real runtime: each event in one `handle` call, in file
//! order, state kept between them only for acked events (as the host
//! commits it), and what the plugin did compared with what the fixture
//! expects.
//!
//! A fixture file holds one CloudEvent (structured JSON, as `POST
//! /v1/events` takes it) or a list of them. `specversion`, `id` and `source`
//! may be left out. One extra key is plugbus's own and is removed before the
//! event is parsed: `"expect": {"outcome": "ack" | "retry" | "reject",
//! "publishes": [TOPIC, ...]}` (default: acked, any follow-ups).

use plugbus_contract::ack;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use super::build::{fail, Loaded};
use super::{io_error, AuthorError};
use crate::event::Event;
use crate::plugin::manifest::Manifest;
use crate::runtime::{kv, CallMode, Outcome};

/// What a fixture expects of the plugin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expect {
    /// `ack`, `retry` or `reject`.
    pub outcome: String,
    /// The topics of the follow-ups, in order, if given.
    pub publishes: Option<Vec<String>>,
}

/// One fixture event and what it expects.
#[derive(Debug, Clone)]
pub struct Fixture {
    /// The file it came from.
    pub file: PathBuf,
    /// The event.
    pub event: Event,
    /// What the plugin should do with it.
    pub expect: Expect,
}

/// What the plugin did with one fixture event.
#[derive(Debug, Clone)]
pub struct Ran {
    /// The fixture.
    pub fixture: Fixture,
    /// `ack`, `retry: why` or `reject: why`.
    pub outcome: String,
    /// Its follow-ups, kept if acked.
    pub published: Vec<Event>,
    /// State written (kept if acked): key and new value (`None`: deleted).
    pub writes: Vec<(String, Option<Vec<u8>>)>,
    /// How it differs from what the fixture expects (none: as expected).
    pub unexpected: Option<String>,
}

/// Read the fixtures of `files`, in order.
pub fn load(files: &[PathBuf]) -> Result<Vec<Fixture>, AuthorError> {
    let mut out = Vec::new();
    for file in files {
        let bad = |reason: String| AuthorError::Fixture {
            file: file.clone(),
            reason,
        };
        let text = std::fs::read_to_string(file).map_err(io_error(file))?;
        let json: Value =
            serde_json::from_str(&text).map_err(|e| bad(format!("is not JSON: {e}")))?;
        let items = match json {
            Value::Array(items) => items,
            one => vec![one],
        };
        for (i, mut item) in items.into_iter().enumerate() {
            let at = |reason: String| bad(format!("event [{i}]: {reason}"));
            let obj = item
                .as_object_mut()
                .ok_or_else(|| at("is not a JSON object (a CloudEvent)".to_string()))?;
            let expect = expect_of(obj.remove("expect")).map_err(at)?;
            obj.entry("specversion").or_insert_with(|| "1.0".into());
            obj.entry("id")
                .or_insert_with(|| crate::event::new_id().into());
            obj.entry("source")
                .or_insert_with(|| "/plugbus/fixtures".into());
            let bytes = serde_json::to_vec(&item).unwrap_or_default();
            let event = Event::parse_structured(&bytes).map_err(|e| at(e.to_string()))?;
            out.push(Fixture {
                file: file.clone(),
                event,
                expect,
            });
        }
    }
    Ok(out)
}

fn expect_of(v: Option<Value>) -> Result<Expect, String> {
    let mut expect = Expect {
        outcome: "ack".to_string(),
        publishes: None,
    };
    let Some(v) = v else { return Ok(expect) };
    let obj = v.as_object().ok_or(
        "`expect` must be an object like {\"outcome\": \"ack\", \"publishes\": [\"topic\"]}",
    )?;
    for (k, v) in obj {
        match (k.as_str(), v) {
            ("outcome", Value::String(o)) if ["ack", "retry", "reject"].contains(&o.as_str()) => {
                expect.outcome = o.clone();
            }
            ("outcome", other) => {
                return Err(format!(
                    "`expect.outcome` is {other}; use \"ack\", \"retry\" or \"reject\""
                ))
            }
            ("publishes", Value::Array(topics)) => {
                expect.publishes = Some(
                    topics
                        .iter()
                        .map(|t| t.as_str().map(str::to_string))
                        .collect::<Option<Vec<_>>>()
                        .ok_or("`expect.publishes` must be a list of topics")?,
                );
            }
            (other, _) => {
                return Err(format!(
                    "`expect.{other}` is not known; use `outcome` and `publishes`"
                ))
            }
        }
    }
    Ok(expect)
}

/// Run `fixtures` through the built plugin `wasm` of plugin `name`, loaded
/// under `manifest` (compiled into `cache_dir`).
pub fn run(
    name: &str,
    wasm: &Path,
    manifest: &Manifest,
    cache_dir: Option<PathBuf>,
    fixtures: Vec<Fixture>,
) -> Result<Vec<Ran>, AuthorError> {
    let loaded = Loaded::new(wasm, manifest, cache_dir)?;
    let limits = loaded.limits().clone();
    let backend = kv::Backend::default();
    // A fresh instance, as the host makes one at start and after a trap.
    let start = || {
        loaded
            .instantiate(backend.clone())
            .map(|(instance, _)| instance)
    };
    let mut instance = start()?;
    let budget = Duration::from_millis(limits.deadline_ms);
    let mut out = Vec::new();
    for (i, fixture) in fixtures.into_iter().enumerate() {
        let mut event = fixture.event.clone();
        event.sequence = i as u64 + 1;
        let chunk: crate::event::Chunk = Arc::from(vec![Arc::new(event)]);
        let result = crate::runtime::with_native_stack(limits.stack_bytes_max, || {
            instance.handle(&chunk, 0..1, &[1], CallMode::Background, budget)
        });
        let (outcome, published, writes) = match result {
            Ok(r) => {
                let outcome = r.outcomes.into_iter().next();
                let acked = matches!(outcome, Some(Outcome::Ack));
                // One event per call: the rule never asks for one at a time.
                let settlement = ack::settle(&[acked], !r.writes.is_empty());
                let writes: Vec<_> = r.writes.clone().into_iter().collect();
                if settlement.keeps_writes() {
                    backend.apply(name, r.writes).map_err(|e| fail(wasm, e))?;
                }
                let text = crate::runtime::outcome_words(outcome.as_ref());
                let published = r
                    .published
                    .into_iter()
                    .filter(|_| settlement.keeps_follow_up(acked))
                    .map(|(_, e)| e)
                    .collect();
                (text, published, writes)
            }
            Err(e) => {
                // A trap: the host would retry the event on a fresh instance.
                instance = start()?;
                (format!("retry: {e}"), Vec::new(), Vec::new())
            }
        };
        let unexpected = compare(&fixture.expect, &outcome, &published);
        out.push(Ran {
            fixture,
            outcome,
            published,
            writes,
            unexpected,
        });
    }
    Ok(out)
}

fn compare(expect: &Expect, outcome: &str, published: &[Event]) -> Option<String> {
    let kind = outcome.split(':').next().unwrap_or_default();
    if kind != expect.outcome {
        return Some(format!("expected {}, got {outcome}", expect.outcome));
    }
    if let Some(topics) = &expect.publishes {
        let got: Vec<&str> = published.iter().map(|e| e.topic.as_str()).collect();
        if got != topics.iter().map(String::as_str).collect::<Vec<_>>() {
            return Some(format!("expected follow-ups {topics:?}, got {got:?}"));
        }
    }
    None
}

/// Print what the plugin did with one fixture event.
pub fn describe(ran: &Ran, out: &mut dyn std::io::Write) {
    let e = &ran.fixture.event;
    let mark = if ran.unexpected.is_some() {
        "FAIL"
    } else {
        "ok"
    };
    let _ = writeln!(
        out,
        "{mark:4} {} {} ({}): {}",
        ran.fixture
            .file
            .file_name()
            .map(|f| f.to_string_lossy())
            .unwrap_or_default(),
        e.topic,
        e.id,
        ran.outcome
    );
    for p in &ran.published {
        let _ = writeln!(
            out,
            "       published {} {}",
            p.topic,
            String::from_utf8_lossy(&p.data)
        );
    }
    if ran.outcome == "ack" {
        for (k, v) in &ran.writes {
            match v {
                Some(v) => {
                    let _ = writeln!(out, "       state {k} = {}", String::from_utf8_lossy(v));
                }
                None => {
                    let _ = writeln!(out, "       state {k} deleted");
                }
            }
        }
    }
    if let Some(why) = &ran.unexpected {
        let _ = writeln!(out, "       {why}");
    }
}
