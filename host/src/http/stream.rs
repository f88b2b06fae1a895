//! `GET /v1/stream`: one server-sent-events stream per page, multiplexing
//!
//! - `tail` (id = the event's log sequence): events as they are committed,
//!   filtered before they are queued (`topic=order.*,inventory.>`,
//!   `correlationid`, `subject`, `ext=NAME=VALUE`, `plugin=NAME` for what
//!   it consumes or published) at up to `rate` a second (default 200,
//!   most 5000), from a bounded queue: what it misses is counted, never
//!   waited for (`tail=0` turns the tail off);
//! - `missed`: every second it changed, what the tail left out
//!   (`queue_full`, `rate_cap`) and, on a resume, `backlog_skipped`;
//! - `rates` every second (`rates=0` turns it off): counts since start per
//!   plugin (handled, failed, retried, dead-lettered, queue depth, lag),
//!   events published, and each topic's rate over the last 10 s;
//! - `plugin` when a plugin appears or its state, version, file or error
//!   changes (all of them at the start), `plugin_gone` when one leaves.
//!
//! A client that reconnects with `Last-Event-ID` (or `?from=SEQ`) gets the
//! events after it from the log first (at most [`BACKLOG_EVENTS`]), then
//! the live tail without repeats. The stream starts with `hello`.

use std::collections::HashMap;
use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::{AppState, IngressError};
use crate::event::Event;
use crate::observe::tail::{Filter, RATE_DEFAULT, RATE_MAX};
use crate::plugin::PluginStatus;
use plugbus_contract::topic::Pattern;

/// Events sent from the log on a resume, at most.
pub const BACKLOG_EVENTS: usize = 1000;
/// How often rates, plugin changes and missed counts are sent.
const TICK: Duration = Duration::from_secs(1);
/// The window of the topic rates in `rates`.
const RATES_WINDOW: Duration = Duration::from_secs(10);
/// SSE frames waiting for a slow reader, at most: past it the task waits
/// and the tail's own queue fills (and counts).
const FRAMES_QUEUED: usize = 64;

#[derive(serde::Deserialize, Default)]
pub(super) struct StreamQuery {
    tail: Option<u8>,
    topic: Option<String>,
    correlationid: Option<String>,
    subject: Option<String>,
    ext: Option<String>,
    plugin: Option<String>,
    rate: Option<u32>,
    from: Option<u64>,
    rates: Option<u8>,
    plugins: Option<u8>,
}

/// The filter a query asks for, or the 400 naming what is wrong.
fn filter_of(q: &StreamQuery, state: &AppState) -> Result<Filter, IngressError> {
    let bad = IngressError::BadQuery;
    let mut topics = Vec::new();
    for p in q.topic.iter().flat_map(|t| t.split(',')).map(str::trim) {
        if p.is_empty() {
            continue;
        }
        topics.push(Pattern::parse(p).map_err(|e| bad(format!("query parameter `topic`: {e}")))?);
    }
    if let Some(plugin) = &q.plugin {
        // A broker's position is asked for: off the async thread.
        let status = tokio::task::block_in_place(|| state.registry.status());
        let Some(p) = status.iter().find(|s| &s.name == plugin) else {
            return Err(IngressError::NoPlugin(plugin.clone()));
        };
        if !topics.is_empty() {
            return Err(bad(
                "query parameters `topic` and `plugin` cannot be combined: `plugin` stands for its subscriptions".into(),
            ));
        }
        topics = p.patterns();
    }
    let extension = match &q.ext {
        None => None,
        Some(e) => match e.split_once('=') {
            Some((k, v)) if !k.is_empty() => Some((k.to_string(), v.to_string())),
            _ => {
                return Err(bad(format!(
                    "query parameter `ext` is `{e}`; give an extension attribute as NAME=VALUE, e.g. ext=tenant=acme"
                )))
            }
        },
    };
    Ok(Filter {
        topics,
        correlationid: q.correlationid.clone(),
        subject: q.subject.clone(),
        extension,
        plugin: q.plugin.clone(),
    })
}

pub(super) async fn stream(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<StreamQuery>,
) -> Result<Response, IngressError> {
    let filter = filter_of(&q, &state)?;
    let rate = q.rate.unwrap_or(RATE_DEFAULT);
    if rate == 0 || rate > RATE_MAX {
        return Err(IngressError::BadQuery(format!(
            "query parameter `rate` is {rate}; ask for 1 to {RATE_MAX} events a second"
        )));
    }
    let resume = q.from.or_else(|| {
        headers
            .get("last-event-id")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse().ok())
    });
    let (tx, mut rx) = tokio::sync::mpsc::channel::<SseEvent>(FRAMES_QUEUED);
    let options = Options {
        tail: q.tail != Some(0),
        rates: q.rates != Some(0),
        plugins: q.plugins != Some(0),
        rate,
        resume,
    };
    tokio::spawn(feed(state, filter, options, tx));
    let frames = futures_util::stream::poll_fn(move |cx| {
        rx.poll_recv(cx).map(|f| f.map(Ok::<_, Infallible>))
    });
    Ok(Sse::new(frames)
        .keep_alive(KeepAlive::default())
        .into_response())
}

struct Options {
    tail: bool,
    rates: bool,
    plugins: bool,
    rate: u32,
    resume: Option<u64>,
}

type Frames = tokio::sync::mpsc::Sender<SseEvent>;

/// Feed one client until it goes.
async fn feed(state: AppState, filter: Filter, o: Options, tx: Frames) {
    // Subscribed before the backlog is read, so nothing falls between.
    let mut sub = o
        .tail
        .then(|| tokio::task::block_in_place(|| state.observer.subscribe(filter.clone(), o.rate)));
    let mode = match state.dispatch.backend().capabilities() {
        c if !c.durable => "memory",
        c if c.shared => "broker",
        _ => "durable",
    };
    let mut sent_through = broker_head(&state, &o).await;
    let mut backlog_skipped = 0u64;
    let hello = json!({"mode": mode, "rate": o.rate, "tail": o.tail, "resume_from": o.resume});
    if send(&tx, "hello", None, hello.to_string()).await.is_err() {
        return;
    }
    if let (true, Some(after)) = (o.tail, o.resume) {
        match backlog(&state, &filter, after).await {
            Ok((events, skipped)) => {
                backlog_skipped = skipped;
                for e in events {
                    sent_through = e.sequence;
                    if send_event(&tx, &e).await.is_err() {
                        return;
                    }
                }
            }
            Err(e) => {
                let why = json!({"error": e.to_string()}).to_string();
                let _ = send(&tx, "error", None, why).await;
            }
        }
    }
    let mut tick = tokio::time::interval(TICK);
    let mut told = (0u64, 0u64, 0u64);
    let mut known: HashMap<String, String> = HashMap::new();
    loop {
        let next = async {
            match sub.as_mut() {
                Some(s) => s.events.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = tx.closed() => return,
            () = state.observer.closed() => return,
            e = next => {
                let Some(e) = e else { return };
                if e.sequence <= sent_through {
                    continue;
                }
                if send_event(&tx, &e).await.is_err() {
                    return;
                }
            }
            _ = tick.tick() => {
                let missed = sub.as_ref().map(|s| &s.missed);
                if on_tick(&state, &o, &tx, missed, backlog_skipped, &mut told, &mut known).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// On a broker, a tail starts at the head as it is now, read before
/// `hello` (the broker's log is read back from before the head when
/// someone starts looking): what is published after `hello` is sent.
async fn broker_head(state: &AppState, o: &Options) -> u64 {
    let b = state.dispatch.backend().clone();
    if !o.tail || o.resume.is_some() || !b.capabilities().shared {
        return 0;
    }
    match tokio::task::spawn_blocking(move || b.head()).await {
        Ok(Ok(head)) => head,
        _ => 0,
    }
}

/// Every tick: what the client missed (when it changed), then plugin
/// changes and rates if it asked for them. Err: the client is gone.
async fn on_tick(
    state: &AppState,
    o: &Options,
    tx: &Frames,
    missed: Option<&std::sync::Arc<crate::observe::tail::Missed>>,
    backlog_skipped: u64,
    told: &mut (u64, u64, u64),
    known: &mut HashMap<String, String>,
) -> Result<(), ()> {
    if let Some(missed) = missed {
        let now = (
            missed.queue_full.load(std::sync::atomic::Ordering::Relaxed),
            missed.rate_cap.load(std::sync::atomic::Ordering::Relaxed),
            backlog_skipped,
        );
        if now != *told {
            *told = now;
            let m = json!({"queue_full": now.0, "rate_cap": now.1, "backlog_skipped": now.2});
            if send(tx, "missed", None, m.to_string()).await.is_err() {
                return Err(());
            }
        }
    }
    if !(o.rates || o.plugins) {
        return Ok(());
    }
    if o.rates {
        // Topic rates are counted while someone watches them.
        tokio::task::block_in_place(|| state.observer.look());
    }
    let registry = state.registry.clone();
    let Ok(status) = tokio::task::spawn_blocking(move || registry.status()).await else {
        return Err(());
    };
    if o.plugins && plugin_changes(tx, &status, known).await.is_err() {
        return Err(());
    }
    if o.rates
        && send(tx, "rates", None, rates(state, &status).to_string())
            .await
            .is_err()
    {
        return Err(());
    }
    Ok(())
}

async fn send(tx: &Frames, kind: &str, id: Option<u64>, data: String) -> Result<(), ()> {
    let mut frame = SseEvent::default().event(kind).data(data);
    if let Some(id) = id {
        frame = frame.id(id.to_string());
    }
    tx.send(frame).await.map_err(|_| ())
}

async fn send_event(tx: &Frames, e: &Event) -> Result<(), ()> {
    send(tx, "tail", Some(e.sequence), event_json(e).to_string()).await
}

/// An event as the tail and the trace show it: its CloudEvent JSON, with
/// its sequence, hops and the plugin that published it.
pub(super) fn event_json(e: &Event) -> serde_json::Value {
    let mut v = e.to_json();
    v["hops"] = json!(e.hops);
    v["published_by"] = json!(e.published_by());
    v
}

/// The events after `after` that `filter` wants, from the log, and how
/// many more there were than [`BACKLOG_EVENTS`] read.
async fn backlog(
    state: &AppState,
    filter: &Filter,
    after: u64,
) -> Result<(Vec<Event>, u64), IngressError> {
    let backend = super::admin::backend_of(state)?;
    let filter = filter.clone();
    let read = tokio::task::spawn_blocking(move || {
        let head = backend.head()?;
        let mut out = Vec::new();
        let mut next = after + 1;
        let mut scanned = 0usize;
        while next <= head && scanned < BACKLOG_EVENTS * 10 && out.len() < BACKLOG_EVENTS {
            let page = backend.read(next, 256)?;
            let Some(last) = page.last().map(|e| e.sequence) else {
                break;
            };
            scanned += page.len();
            next = last + 1;
            out.extend(page.into_iter().filter(|e| filter.wants(e)));
        }
        out.truncate(BACKLOG_EVENTS);
        let through = out.last().map_or(next.saturating_sub(1), |e| e.sequence);
        Ok::<_, crate::backend::BackendError>((out, head.saturating_sub(through.max(after))))
    })
    .await
    .map_err(|_| IngressError::Publish(crate::store::StoreError::Closed.into()))?;
    read.map_err(super::admin::backend_error)
}

/// Send `plugin` for each plugin new or changed since `known`, and
/// `plugin_gone` for each no longer there.
async fn plugin_changes(
    tx: &Frames,
    status: &[PluginStatus],
    known: &mut HashMap<String, String>,
) -> Result<(), ()> {
    for p in status {
        let fingerprint = format!(
            "{}\0{}\0{}\0{}\0{:?}",
            p.state, p.version, p.content_hash, p.tier, p.error
        );
        if known.get(&p.name) != Some(&fingerprint) {
            known.insert(p.name.clone(), fingerprint);
            let v = serde_json::to_string(p).unwrap_or_default();
            send(tx, "plugin", None, v).await?;
        }
    }
    let gone: Vec<String> = known
        .keys()
        .filter(|k| !status.iter().any(|p| &p.name == *k))
        .cloned()
        .collect();
    for name in gone {
        known.remove(&name);
        send(tx, "plugin_gone", None, json!({ "name": name }).to_string()).await?;
    }
    Ok(())
}

fn rates(state: &AppState, status: &[PluginStatus]) -> serde_json::Value {
    let snapshot = state.observer.snapshot(RATES_WINDOW);
    let at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let plugins: Vec<serde_json::Value> = status
        .iter()
        .map(|p| {
            let dead = state
                .metrics
                .dead_lettered
                .get_or_create(&crate::metrics::plugin(&p.name))
                .get();
            let dropped: u64 = crate::metrics::DropReason::ALL
                .iter()
                .map(|r| state.metrics.drop_counter(&p.name, *r).get())
                .sum();
            json!({
                "name": p.name, "state": p.state, "handled": p.handled, "failed": p.failed,
                "retried": p.retried, "dead_lettered": dead, "dropped": dropped,
                "queue_depth": p.queue_depth,
                "lag": p.lag, "cursor": p.cursor,
            })
        })
        .collect();
    let topics: Vec<serde_json::Value> = snapshot
        .topics
        .iter()
        .map(|t| json!({"topic": t.topic, "rate": t.rate, "total": t.total}))
        .collect();
    json!({
        "at_ms": at,
        "published": state.metrics.published.get(),
        "plugins": plugins,
        "topics": topics,
        "window_seconds": RATES_WINDOW.as_secs(),
    })
}
