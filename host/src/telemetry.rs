//! OTLP export (HTTP/protobuf) of the spans of each event's life, after
//! the OpenTelemetry messaging conventions: a `publish TOPIC` span (kind
//! PRODUCER) when an event is accepted, whose context becomes the event's
//! `traceparent` (its creation context: a child of the context the event
//! or the request came with), and a `process TOPIC` span (CONSUMER) for
//! each plugin that handled it, with the creation context as its parent
//! and as a link. A plugin's follow-ups get PRODUCER spans that are
//! children of the process span they were published in, so a whole chain
//! is one trace.
//!
//! Off unless `--otlp URL` (or `OTEL_EXPORTER_OTLP_ENDPOINT`) is given:
//! then [`get`] answers, otherwise every caller pays one atomic load.
//! Spans are batched and sent by the SDK's own thread; an unreachable
//! collector costs dropped spans, never a wait on the delivery path.

use std::str::FromStr;
use std::sync::{Arc, OnceLock};
use std::time::SystemTime;

use opentelemetry::trace::{
    Link, Span, SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags, TraceId,
    TraceState, Tracer, TracerProvider,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};

use crate::event::{Event, TRACEPARENT, TRACESTATE};

/// The value of `messaging.system`.
const SYSTEM: &str = "plugbus";

/// Why export could not start.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// The endpoint is not an http(s) URL.
    #[error("--otlp `{0}` is not an http:// or https:// URL; give the collector's OTLP/HTTP address, e.g. http://127.0.0.1:4318")]
    BadEndpoint(String),
    /// The exporter could not be built.
    #[error("cannot set up OTLP export to {endpoint}: {reason}")]
    Exporter {
        /// Where to.
        endpoint: String,
        /// The SDK's reason.
        reason: String,
    },
}

/// The exporter of this process.
pub struct Telemetry {
    provider: SdkTracerProvider,
    tracer: opentelemetry_sdk::trace::SdkTracer,
    /// Where spans go (`…/v1/traces`).
    pub endpoint: String,
}

static TELEMETRY: OnceLock<Telemetry> = OnceLock::new();

/// Whether a plugin's batches run in a `batch` tracing span naming the
/// plugin, its sequences and its chain (for `--log-format json`).
static BATCH_SPANS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Run batches in `batch` spans from now on.
pub fn log_batch_spans() {
    BATCH_SPANS.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// The `batch` span for a plugin's batch, when log lines carry them: its
/// plugin, first sequence and size, and the correlation and trace ids
/// when all its events are of one chain.
pub fn batch_span(plugin: &str, batch: &[Arc<Event>]) -> tracing::Span {
    if !BATCH_SPANS.load(std::sync::atomic::Ordering::Relaxed) || batch.is_empty() {
        return tracing::Span::none();
    }
    let first = &batch[0];
    let one_chain = batch.iter().all(|e| e.chain_id() == first.chain_id());
    let trace_id = |e: &Event| {
        e.traceparent()
            .and_then(|t| t.split('-').nth(1))
            .map(str::to_string)
    };
    let span = tracing::info_span!(
        "batch",
        plugin,
        first_sequence = first.sequence,
        events = batch.len(),
        correlationid = tracing::field::Empty,
        trace_id = tracing::field::Empty,
    );
    if one_chain {
        span.record("correlationid", first.chain_id());
        if let Some(t) = trace_id(first) {
            span.record("trace_id", t.as_str());
        }
    }
    span
}

/// The exporter, when `--otlp` started one.
pub fn get() -> Option<&'static Telemetry> {
    TELEMETRY.get()
}

/// The traces URL for a collector's base `url` (as
/// `OTEL_EXPORTER_OTLP_ENDPOINT` gives it): `/v1/traces` is added unless
/// the URL already names it.
pub fn traces_url(url: &str) -> Result<String, TelemetryError> {
    let url = url.trim();
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(TelemetryError::BadEndpoint(url.to_string()));
    }
    if url.trim_end_matches('/').ends_with("/v1/traces") {
        return Ok(url.to_string());
    }
    Ok(format!("{}/v1/traces", url.trim_end_matches('/')))
}

/// Start exporting to the collector at `url`, sampling new traces at
/// `ratio` (traces that come with a context follow its sampled flag).
pub fn start(url: &str, ratio: f64) -> Result<&'static Telemetry, TelemetryError> {
    let endpoint = traces_url(url)?;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
        .with_endpoint(endpoint.clone())
        .build()
        .map_err(|e| TelemetryError::Exporter {
            endpoint: endpoint.clone(),
            reason: e.to_string(),
        })?;
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(
            std::env::var("OTEL_SERVICE_NAME").unwrap_or_else(|_| "plugbus".to_string()),
        )
        .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
        .build();
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            ratio,
        ))))
        .with_resource(resource)
        .build();
    let tracer = provider.tracer("plugbus");
    let _ = TELEMETRY.set(Telemetry {
        provider,
        tracer,
        endpoint,
    });
    TELEMETRY.get().ok_or_else(|| TelemetryError::Exporter {
        endpoint: url.to_string(),
        reason: "started twice".into(),
    })
}

/// Send what is batched and stop (at the end of `plugbus run`).
pub fn shutdown() {
    if let Some(t) = get() {
        if let Err(e) = t.provider.shutdown() {
            tracing::warn!("OTLP export did not finish cleanly: {e}");
        }
    }
}

/// The span context an event's `traceparent` names.
fn context_of(event: &Event) -> Option<SpanContext> {
    let tp = event.traceparent()?;
    let mut parts = tp.split('-');
    let (_version, trace, span, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let state = event
        .extension(TRACESTATE)
        .and_then(|s| TraceState::from_str(s).ok())
        .unwrap_or_default();
    let sc = SpanContext::new(
        TraceId::from_hex(trace).ok()?,
        SpanId::from_hex(span).ok()?,
        TraceFlags::new(u8::from_str_radix(flags, 16).ok()?),
        true,
        state,
    );
    sc.is_valid().then_some(sc)
}

/// Write `sc` as `event`'s trace context.
fn set_context(event: &mut Event, sc: &SpanContext) {
    let tp = format!(
        "00-{}-{}-{:02x}",
        sc.trace_id(),
        sc.span_id(),
        sc.trace_flags().to_u8()
    );
    event
        .extensions
        .retain(|(k, _)| k != TRACEPARENT && k != TRACESTATE);
    event.extensions.push((TRACEPARENT.into(), tp));
    let state = sc.trace_state().header();
    if !state.is_empty() {
        event.extensions.push((TRACESTATE.into(), state));
    }
}

fn message_attributes(event: &Event, operation: &'static str) -> Vec<KeyValue> {
    let mut a = vec![
        KeyValue::new("messaging.system", SYSTEM),
        KeyValue::new("messaging.operation.type", operation),
        KeyValue::new("messaging.operation.name", operation),
        KeyValue::new("messaging.destination.name", event.topic.clone()),
        KeyValue::new("messaging.message.id", event.id.clone()),
        KeyValue::new("cloudevents.event_id", event.id.clone()),
        KeyValue::new("cloudevents.event_source", event.source.clone()),
        KeyValue::new("cloudevents.event_type", event.topic.clone()),
        KeyValue::new(
            "messaging.message.conversation_id",
            event.chain_id().to_string(),
        ),
    ];
    if let Some(c) = &event.causationid {
        a.push(KeyValue::new("plugbus.causationid", c.clone()));
    }
    if let Some(s) = &event.subject {
        a.push(KeyValue::new("cloudevents.event_subject", s.clone()));
    }
    a
}

/// A plugin's outcome for one event, for its process span.
pub enum Handled<'a> {
    /// Acknowledged.
    Ack,
    /// To be retried, with why.
    Retry(&'a str),
    /// Rejected, with why.
    Reject(&'a str),
    /// The call failed (a trap, a deadline), with why.
    Failed(&'a str),
}

/// PRODUCER spans of events being published, ended with the answer.
pub struct Publishing {
    spans: Vec<opentelemetry_sdk::trace::Span>,
}

impl Publishing {
    /// The publish was answered: `Ok`, or why it was refused.
    pub fn end(self, result: Result<(), String>) {
        let now = SystemTime::now();
        for mut span in self.spans {
            if let Err(why) = &result {
                span.set_status(Status::error(why.clone()));
            }
            span.end_with_timestamp(now);
        }
    }
}

impl Telemetry {
    fn producer(
        &self,
        event: &mut Event,
        parent: &Context,
        start: SystemTime,
    ) -> opentelemetry_sdk::trace::Span {
        let span = self
            .tracer
            .span_builder(format!("publish {}", event.topic))
            .with_kind(SpanKind::Producer)
            .with_start_time(start)
            .with_attributes(message_attributes(event, "publish"))
            .start_with_context(&self.tracer, parent);
        set_context(event, span.span_context());
        span
    }

    /// PRODUCER spans for events accepted from outside, each a child of the
    /// context it came with (none: a new trace); each event's
    /// `traceparent` becomes its span's.
    pub fn publishing(&self, events: &mut [Event]) -> Publishing {
        let now = SystemTime::now();
        let spans = events
            .iter_mut()
            .map(|e| {
                let parent = context_of(e).map_or_else(Context::new, |sc| {
                    Context::new().with_remote_span_context(sc)
                });
                self.producer(e, &parent, now)
            })
            .collect();
        Publishing { spans }
    }

    /// CONSUMER spans for a batch `plugin` handled between `started` and
    /// `ended`, and PRODUCER spans for its follow-ups (`(index of the
    /// cause in the batch, event)`, whose `traceparent` they set).
    #[allow(clippy::too_many_arguments)]
    pub fn processed(
        &self,
        plugin: &str,
        version: &str,
        batch: &[Arc<Event>],
        outcomes: &[Handled<'_>],
        started: SystemTime,
        ended: SystemTime,
        follow_ups: &mut [(usize, Event)],
    ) {
        let mut contexts: Vec<Context> = Vec::with_capacity(batch.len());
        for (i, event) in batch.iter().enumerate() {
            let creation = context_of(event);
            let parent = creation.clone().map_or_else(Context::new, |sc| {
                Context::new().with_remote_span_context(sc)
            });
            let mut attributes = message_attributes(event, "process");
            attributes.push(KeyValue::new(
                "messaging.consumer.group.name",
                plugin.to_string(),
            ));
            attributes.push(KeyValue::new("plugbus.plugin.version", version.to_string()));
            attributes.push(KeyValue::new("plugbus.sequence", event.sequence as i64));
            attributes.push(KeyValue::new("plugbus.batch.events", batch.len() as i64));
            let mut builder = self
                .tracer
                .span_builder(format!("process {}", event.topic))
                .with_kind(SpanKind::Consumer)
                .with_start_time(started)
                .with_attributes(attributes);
            if let Some(sc) = creation {
                builder = builder.with_links(vec![Link::with_context(sc)]);
            }
            let mut span = builder.start_with_context(&self.tracer, &parent);
            let (outcome, error) = match outcomes.get(i) {
                Some(Handled::Ack) | None => ("ack", None),
                Some(Handled::Retry(why)) => ("retry", Some(*why)),
                Some(Handled::Reject(why)) => ("reject", Some(*why)),
                Some(Handled::Failed(why)) => ("failed", Some(*why)),
            };
            span.set_attribute(KeyValue::new("plugbus.outcome", outcome));
            if let Some(why) = error {
                span.set_status(Status::error(why.to_string()));
            }
            let cx = Context::new().with_remote_span_context(span.span_context().clone());
            span.end_with_timestamp(ended);
            contexts.push(cx);
        }
        for (cause, event) in follow_ups.iter_mut() {
            if let Some(parent) = contexts.get(*cause) {
                let mut span = self.producer(event, parent, ended);
                span.set_attribute(KeyValue::new("plugbus.published_by", plugin.to_string()));
                span.end_with_timestamp(ended);
            }
        }
    }

    /// Send every finished span now (tests, shutdown).
    pub fn flush(&self) {
        if let Err(e) = self.provider.force_flush() {
            tracing::debug!("OTLP flush: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_traces_url_is_the_collector_s_base_and_v1_traces() {
        assert_eq!(
            traces_url("http://127.0.0.1:4318").expect("url"),
            "http://127.0.0.1:4318/v1/traces"
        );
        assert_eq!(
            traces_url("http://c:4318/").expect("url"),
            "http://c:4318/v1/traces"
        );
        assert_eq!(
            traces_url("https://c/v1/traces").expect("url"),
            "https://c/v1/traces"
        );
        let e = traces_url("127.0.0.1:4318").expect_err("no scheme");
        assert!(e.to_string().contains("http://"), "{e}");
    }

    #[test]
    fn an_event_s_context_is_read_and_written_as_w3c_trace_context() {
        let mut e = Event::new("order.placed", None, b"{}".to_vec()).expect("event");
        e.adopt_trace(
            Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
            Some("k=v"),
        );
        let sc = context_of(&e).expect("context");
        assert!(sc.is_sampled());
        assert_eq!(sc.span_id().to_string(), "00f067aa0ba902b7");
        let mut other = Event::new("x.y", None, b"{}".to_vec()).expect("event");
        set_context(&mut other, &sc);
        assert_eq!(other.traceparent(), e.traceparent());
        assert_eq!(other.extension(TRACESTATE), Some("k=v"));
    }
}
