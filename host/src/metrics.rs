//! The Prometheus metrics: one registry for the process, families labelled
//! by plugin, and the drop counter labelled by reason. Counters are cheap
//! atomics that the bus and the workers hold clones of; gauges that mirror
//! live state (queue depth) are refreshed when `/metrics` is scraped.
//!
//! Every event the host accepted and did not deliver is counted in
//! `plugbus_events_dropped_total{plugin, reason}`: nothing is dropped
//! silently.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// How late each owner's last fired timer was, in seconds.
pub type LatenessByOwner = Family<PluginLabels, Gauge<f64, std::sync::atomic::AtomicU64>>;

/// Labels of per-plugin series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PluginLabels {
    /// The plugin's name.
    pub plugin: String,
}

/// Labels of the drop counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DropLabels {
    /// The plugin that did not get the event.
    pub plugin: String,
    /// Why: `queue_full`, `rejected`, `retries_exhausted`, `shutdown`.
    pub reason: String,
}

/// Labels of the HTTP listener's refusals.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    /// Why: `headers`, `body` or `tls_handshake` (too slow), `unauthorized`
    /// (401: no or an unknown token), `forbidden` (403: a scope missing).
    pub reason: String,
}

type HistogramFamily = Family<PluginLabels, Histogram, fn() -> Histogram>;

/// Why an event was dropped for a plugin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// The plugin's queue stayed full past the publish timeout.
    QueueFull,
    /// The plugin rejected it (permanent failure).
    Rejected,
    /// Every attempt failed.
    RetriesExhausted,
    /// A follow-up event could not be queued.
    FollowUpQueueFull,
    /// The plugin's queue was full and its manifest says `overflow.policy =
    /// "drop"`.
    OverflowDrop,
}

impl DropReason {
    /// Every reason.
    pub const ALL: [DropReason; 5] = [
        DropReason::QueueFull,
        DropReason::Rejected,
        DropReason::RetriesExhausted,
        DropReason::FollowUpQueueFull,
        DropReason::OverflowDrop,
    ];
}

impl DropReason {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::QueueFull => "queue_full",
            DropReason::Rejected => "rejected",
            DropReason::RetriesExhausted => "retries_exhausted",
            DropReason::FollowUpQueueFull => "follow_up_queue_full",
            DropReason::OverflowDrop => "overflow_drop",
        }
    }
}

/// All of plugbus's metrics.
pub struct Metrics {
    registry: Registry,
    /// Every family registered: its name, type and help, for the reference
    /// page (the registry does not list them before they have series).
    families: Vec<Described>,
    /// Events accepted by the bus.
    pub published: Counter,
    /// Events accepted that matched no subscription.
    pub unrouted: Counter,
    /// Events handled with outcome ack.
    pub handled: Family<PluginLabels, Counter>,
    /// Failed attempts (retry outcome, reject, trap, deadline).
    pub failed: Family<PluginLabels, Counter>,
    /// Re-deliveries scheduled.
    pub retried: Family<PluginLabels, Counter>,
    /// Instance resets after a trap.
    pub traps: Family<PluginLabels, Counter>,
    /// Events dropped, by plugin and reason.
    pub dropped: Family<DropLabels, Counter>,
    /// Events moved to dead letters (durable mode).
    pub dead_lettered: Family<PluginLabels, Counter>,
    /// Events in the log (its last sequence), durable mode.
    pub log_events: Gauge,
    /// Bytes the store takes on disk, durable mode.
    pub log_bytes: Gauge,
    /// Bytes free on the data directory's file system, durable mode.
    pub disk_free_bytes: Gauge,
    /// Bytes the store keeps free there (its reserve), durable mode.
    pub disk_reserve_bytes: Gauge,
    /// Seconds per fsync of the store.
    pub fsync_seconds: Histogram,
    /// Timers whose events were published.
    pub timers_fired: Counter,
    /// Seconds from a timer's due time to its event's append.
    pub timer_lateness_seconds: Histogram,
    /// How late each owner's last fired timer was, in seconds.
    pub timer_last_lateness_seconds: LatenessByOwner,
    /// Timers set, by owner (`""`: publishers' `deliverat`).
    pub timers_pending: Family<PluginLabels, Gauge>,
    /// Events checked against their topic's schema, by topic and outcome.
    pub schema_checks: Family<crate::schema::CheckLabels, Counter>,
    /// Timer cancels committed, by plugin.
    pub timers_cancelled: Family<PluginLabels, Counter>,
    /// Events in the log a plugin has yet to finish, durable mode.
    pub lag: Family<PluginLabels, Gauge>,
    /// On a broker: events handed out to a plugin's hosts, not settled.
    pub broker_pending: Family<PluginLabels, Gauge>,
    /// On a broker: 1 while its last call went through, else 0.
    pub broker_connected: Gauge,
    /// Events waiting in each plugin's queue.
    pub queue_depth: Family<PluginLabels, Gauge>,
    /// Seconds per `handle` call (one batch).
    pub handle_seconds: HistogramFamily,
    /// Events per `handle` call.
    pub batch_events: HistogramFamily,
    /// Seconds from an event's acceptance to its ack by a plugin.
    pub delivery_seconds: HistogramFamily,
    /// New versions of a plugin's file swapped in.
    pub swaps: Family<PluginLabels, Counter>,
    /// Events a plugin's cursor moved past that are neither handled, dead,
    /// dropped by its policy nor pending, as of the last audit.
    pub unaccounted: Family<PluginLabels, Gauge>,
    /// Panics of a plugin's worker threads (caught; delivery goes on).
    pub worker_deaths: Family<PluginLabels, Counter>,
    /// Batches handled again in halves after running past their deadline.
    pub batch_splits: Family<PluginLabels, Counter>,
    /// Seconds a plugin's delivery stopped for a swap: from the swap to the
    /// new version's first `handle` call, less time spent waiting for
    /// events.
    pub swap_pause_seconds: HistogramFamily,
    /// Plugin files (new or changed) that failed to load or to `init`.
    pub reload_failures: Family<PluginLabels, Counter>,
    /// Times a plugin was quarantined for failing every event.
    pub quarantines: Family<PluginLabels, Counter>,
    /// Lines of guest stdout/stderr and log calls dropped by the rate limit.
    pub output_dropped: Family<PluginLabels, Counter>,
    /// Publishes refused by the plugin's publish rate limit.
    pub publish_throttled: Family<PluginLabels, Counter>,
    /// Batches a plugin's calls ran at low CPU priority for misbehaving.
    pub low_priority_batches: Family<PluginLabels, Counter>,
    /// Batches a plugin's calls ran in the background (on a thread of the
    /// yielding to the host's foreground calls): heavy, misbehaving, or cut in the foreground.
    pub background_batches: Family<PluginLabels, Counter>,
    /// Follow-up publishes refused because their causal chain reached its
    /// budget (an event storm).
    pub chain_refused: Family<PluginLabels, Counter>,
    /// State writes refused by the plugin's state quota.
    pub state_refused: Family<PluginLabels, Counter>,
    /// Bytes of state (keys and values) a plugin keeps.
    pub state_bytes: Family<PluginLabels, Gauge>,
    /// HTTP connections open now.
    pub http_connections_open: Gauge,
    /// HTTP connections closed at once because `--connections-max` were
    /// open.
    pub http_connections_refused: Counter,
    /// HTTP requests or connections refused: too slow, or not authorized.
    pub http_refused: Family<HttpLabels, Counter>,
    /// Live tail clients connected (`GET /v1/stream`).
    pub tail_clients: Gauge,
    /// Events a live tail client did not get: `queue_full` (it read too
    /// slowly) or `rate_cap` (sampled down to its rate).
    pub tail_dropped: Family<ReasonLabels, Counter>,
}

/// Labels of a counter by reason only.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    /// Why.
    pub reason: String,
}

fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.000_005, 2.5, 14))
}

fn batch_histogram() -> Histogram {
    Histogram::new(exponential_buckets(1.0, 2.0, 12))
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// A fresh registry with every family registered.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("plugbus");
        let mut families = Vec::new();
        let m = Metrics {
            registry: Registry::default(),
            families: Vec::new(),
            published: Counter::default(),
            unrouted: Counter::default(),
            handled: Family::default(),
            failed: Family::default(),
            retried: Family::default(),
            traps: Family::default(),
            dropped: Family::default(),
            dead_lettered: Family::default(),
            log_events: Gauge::default(),
            log_bytes: Gauge::default(),
            disk_free_bytes: Gauge::default(),
            disk_reserve_bytes: Gauge::default(),
            fsync_seconds: Histogram::new(exponential_buckets(0.000_05, 2.0, 14)),
            timers_fired: Counter::default(),
            timer_lateness_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
            timer_last_lateness_seconds: Family::default(),
            schema_checks: Family::default(),
            timers_pending: Family::default(),
            timers_cancelled: Family::default(),
            lag: Family::default(),
            broker_pending: Family::default(),
            broker_connected: Gauge::default(),
            queue_depth: Family::default(),
            handle_seconds: HistogramFamily::new_with_constructor(latency_histogram),
            batch_events: HistogramFamily::new_with_constructor(batch_histogram),
            delivery_seconds: HistogramFamily::new_with_constructor(latency_histogram),
            swaps: Family::default(),
            worker_deaths: Family::default(),
            unaccounted: Family::default(),
            batch_splits: Family::default(),
            swap_pause_seconds: HistogramFamily::new_with_constructor(latency_histogram),
            reload_failures: Family::default(),
            quarantines: Family::default(),
            output_dropped: Family::default(),
            publish_throttled: Family::default(),
            low_priority_batches: Family::default(),
            background_batches: Family::default(),
            chain_refused: Family::default(),
            state_refused: Family::default(),
            state_bytes: Family::default(),
            http_connections_open: Gauge::default(),
            http_connections_refused: Counter::default(),
            http_refused: Family::default(),
            tail_clients: Gauge::default(),
            tail_dropped: Family::default(),
        };
        register(
            &mut registry,
            &mut families,
            "plugin_background_batches",
            "Batches a plugin handled in the background, yielding to the host's foreground calls: calls of a plugin whose recent calls used 100 ms of CPU time or grew its memory by 16 MiB (such a call in the foreground is cut and run again there), and of a misbehaving one",
            m.background_batches.clone(),
        );
        register(
            &mut registry,
            &mut families,
            "plugin_low_priority_batches",
            "Batches a plugin handled throttled to a tenth of a core because it recently trapped, ran past its deadline, or was refused or cut",
            m.low_priority_batches.clone(),
        );
        register(
            &mut registry,
            &mut families,
            "plugin_quarantines",
            "Times a plugin was quarantined (delivery paused with growing backoff) for failing every event",
            m.quarantines.clone(),
        );
        register(
            &mut registry,
            &mut families,
            "plugin_output_dropped_lines",
            "Lines of a plugin's stdout, stderr and log dropped over limits.output_lines_per_s_max",
            m.output_dropped.clone(),
        );
        register(
            &mut registry,
            &mut families,
            "plugin_publish_throttled",
            "Publishes over a plugin's publish.rate_events_per_s_max, taken on credit (its deliveries are held until it is back under)",
            m.publish_throttled.clone(),
        );
        register(
            &mut registry,
            &mut families,
            "unaccounted_events",
            "Events of a plugin neither handled, dead, dropped by its policy nor pending, as of the last audit (GET /v1/audit, plugbus audit); anything but 0 is a lost event",
            m.unaccounted.clone(),
        );
        register(
            &mut registry,
            &mut families,
            "plugin_worker_deaths",
            "Panics of a plugin's worker: caught, its events in hand delivered again to a fresh instance",
            m.worker_deaths.clone(),
        );
        register(
            &mut registry,
            &mut families,
            "plugin_batch_splits",
            "Batches of more than one event that ran past their deadline and were handled again in halves (not a failed attempt)",
            m.batch_splits.clone(),
        );
        register(
            &mut registry,
            &mut families,
            "plugin_swaps",
            "New versions of a plugin's file swapped in at a batch boundary",
            m.swaps.clone(),
        );
        register(
            &mut registry,
            &mut families,
            "plugin_swap_pause_seconds",
            "Time a plugin's delivery stopped for a swap: from the swap to the new version's first handle call, less time waiting for events",
            m.swap_pause_seconds.clone(),
        );
        register(
            &mut registry,
            &mut families,
            "plugin_load_failures",
            "Plugin files (new or changed) that failed to load or to init; a running version keeps serving",
            m.reload_failures.clone(),
        );
        register(
            &mut registry,
            &mut families,
            "events_published",
            "Events accepted by the bus",
            m.published.clone(),
        );
        register(
            &mut registry,
            &mut families,
            "events_unrouted",
            "Accepted events no subscription matched",
            m.unrouted.clone(),
        );
        register(
            &mut registry,
            &mut families,
            "events_handled",
            "Events a plugin acknowledged",
            m.handled.clone(),
        );
        register(
            &mut registry,
            &mut families,
            "events_failed",
            "Failed delivery attempts (retry, reject, trap, deadline)",
            m.failed.clone(),
        );
        register(
            &mut registry,
            &mut families,
            "events_retried",
            "Re-deliveries scheduled",
            m.retried.clone(),
        );
        register(
            &mut registry,
            &mut families,
            "plugin_traps",
            "Instances dropped and re-made after a trap",
            m.traps.clone(),
        );
        register(
            &mut registry,
            &mut families,
            "events_dropped",
            "Events not delivered to a plugin, by reason",
            m.dropped.clone(),
        );
        register(
            &mut registry,
            &mut families,
            "log_events",
            "Events in the log (its last sequence)",
            m.log_events.clone(),
        );
        register(
            &mut registry,
            &mut families,
            "log_bytes",
            "Bytes the store takes on disk",
            m.log_bytes.clone(),
        );
        register(
            &mut registry,
            &mut families,
            "disk_free_bytes",
            "Bytes free on the data directory's file system (alert well above disk_reserve_bytes: inside it publishes are refused and deliveries wait)",
            m.disk_free_bytes.clone(),
        );
        register(
            &mut registry,
            &mut families,
            "disk_reserve_bytes",
            "Bytes the store keeps free on its file system for its own flushes",
            m.disk_reserve_bytes.clone(),
        );
        register(
            &mut registry,
            &mut families,
            "fsync_duration_seconds",
            "Time per fsync of the store",
            m.fsync_seconds.clone(),
        );
        register(
            &mut registry,
            &mut families,
            "timers_fired",
            "Timers whose events were published (each once, when due)",
            m.timers_fired.clone(),
        );
        register(
            &mut registry,
            &mut families,
            "timer_lateness_seconds",
            "Seconds from a timer's due time to its event's append (alert on the p99: timers fire late when the host is starved or was down)",
            m.timer_lateness_seconds.clone(),
        );
        register(
            &mut registry,
            &mut families,
            "timer_last_lateness_seconds",
            "How late each owner's last fired timer was (plugin; empty: publishers' deliverat)",
            m.timer_last_lateness_seconds.clone(),
        );
        register(
            &mut registry,
            &mut families,
            "schema_checks",
            "Events checked against their topic's declared schema, by topic and outcome (valid; invalid: refused; warned: accepted in mode warn)",
            m.schema_checks.clone(),
        );
        register(
            &mut registry,
            &mut families,
            "timers_pending",
            "Timers set and not yet fired, by owner (plugin; empty: publishers' deliverat)",
            m.timers_pending.clone(),
        );
        register(
            &mut registry,
            &mut families,
            "timers_cancelled",
            "Timer cancels committed, by plugin",
            m.timers_cancelled.clone(),
        );
        register(
            &mut registry,
            &mut families,
            "lag_events",
            "Events in the log a plugin has yet to finish",
            m.lag.clone(),
        );
        register(
            &mut registry,
            &mut families,
            "broker_pending_events",
            "Events handed out to a plugin's hosts and not yet settled (on a broker)",
            m.broker_pending.clone(),
        );
        register(
            &mut registry,
            &mut families,
            "broker_connected",
            "1 while the broker answers, else 0 (on a broker)",
            m.broker_connected.clone(),
        );
        register(
            &mut registry,
            &mut families,
            "delivery_latency_seconds",
            "Time from an event's acceptance (publish) to its ack by a plugin",
            m.delivery_seconds.clone(),
        );
        register(
            &mut registry,
            &mut families,
            "events_dead_lettered",
            "Events a plugin gave up on, kept as dead letters",
            m.dead_lettered.clone(),
        );
        register(
            &mut registry,
            &mut families,
            "queue_depth_events",
            "Events waiting in a plugin's queue",
            m.queue_depth.clone(),
        );
        register(
            &mut registry,
            &mut families,
            "handle_duration_seconds",
            "Time per handle call (one batch)",
            m.handle_seconds.clone(),
        );
        register(
            &mut registry,
            &mut families,
            "batch_events",
            "Events per handle call",
            m.batch_events.clone(),
        );
        register(
            &mut registry,
            &mut families,
            "plugin_chain_refused",
            "Follow-up publishes refused because their causal chain reached its budget (publish.chain_events_max): an event storm",
            m.chain_refused.clone(),
        );
        register(
            &mut registry,
            &mut families,
            "plugin_state_refused",
            "State writes refused by the plugin's quota (limits.state_bytes_max)",
            m.state_refused.clone(),
        );
        register(
            &mut registry,
            &mut families,
            "plugin_state_bytes",
            "Bytes of state (keys and values) a plugin keeps",
            m.state_bytes.clone(),
        );
        register(
            &mut registry,
            &mut families,
            "http_connections_open",
            "HTTP connections open",
            m.http_connections_open.clone(),
        );
        register(
            &mut registry,
            &mut families,
            "http_connections_refused",
            "HTTP connections closed at once because --connections-max were open",
            m.http_connections_refused.clone(),
        );
        register(
            &mut registry,
            &mut families,
            "http_refused",
            "HTTP requests and connections refused: too slow (headers, body, tls_handshake) or not authorized (unauthorized, forbidden)",
            m.http_refused.clone(),
        );
        register(
            &mut registry,
            &mut families,
            "tail_clients",
            "Live tail clients connected (GET /v1/stream)",
            m.tail_clients.clone(),
        );
        register(
            &mut registry,
            &mut families,
            "tail_dropped",
            "Events a live tail client did not get: queue_full (it read too slowly) or rate_cap (sampled down to the rate it asked for); publishers never wait for a tail",
            m.tail_dropped.clone(),
        );
        Metrics {
            registry,
            families,
            ..m
        }
    }

    /// The counter of HTTP refusals for `reason`.
    pub fn http_refused(&self, reason: &str) -> Counter {
        self.http_refused
            .get_or_create(&HttpLabels {
                reason: reason.to_string(),
            })
            .clone()
    }

    /// The counter for drops of `plugin`'s events for `reason`.
    pub fn drop_counter(&self, plugin: &str, reason: DropReason) -> Counter {
        self.dropped
            .get_or_create(&DropLabels {
                plugin: plugin.to_string(),
                reason: reason.as_str().to_string(),
            })
            .clone()
    }

    /// Every family registered: name, type and help.
    pub fn families(&self) -> &[Described] {
        &self.families
    }

    /// The exposition text.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.push_str("# encoding failed\n");
        }
        out
    }
}

/// A registered family, as the reference lists it: name (with the
/// `plugbus_` prefix), type, help.
pub type Described = (String, String, String);

/// Register `metric` as `name` in `registry`, and note it in `families`.
fn register<M>(
    registry: &mut Registry,
    families: &mut Vec<Described>,
    name: &str,
    help: &str,
    metric: M,
) where
    M: prometheus_client::registry::Metric + prometheus_client::encoding::EncodeMetric + Clone,
{
    let kind = format!("{:?}", metric.metric_type()).to_lowercase();
    families.push((format!("plugbus_{name}"), kind, help.to_string()));
    registry.register(name, help, metric);
}

/// Shorthand for per-plugin labels.
pub fn plugin(name: &str) -> PluginLabels {
    PluginLabels {
        plugin: name.to_string(),
    }
}
