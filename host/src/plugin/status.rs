//! What the operator sees of each plugin: its status (`plugbus plugins`,
//! `/v1/plugins`), its limits as applied, a storm it is in, its handling
//! rate, and the queue-depth gauges refreshed before a scrape.

use std::sync::atomic::Ordering;

use serde::Serialize;

use super::*;

/// The handled count at the last rate sample, and the rate then.
#[derive(Default)]
pub(super) struct RateSample {
    at: Option<std::time::Instant>,
    handled: u64,
    per_s: f64,
}

/// The bounds and policies a plugin runs under, as `/v1/plugins` shows
/// them (the host's settings with its manifest applied).
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct PluginLimits {
    /// Workers, each with its own instance.
    pub concurrency: usize,
    /// What picks an event's worker and what strict ordering holds back.
    pub ordering_key: String,
    /// `strict` or `none`.
    pub retry_ordering: String,
    /// Most events per `handle` call.
    pub batch_events_max: usize,
    /// Attempts before an event is given up on.
    pub max_attempts: u32,
    /// Wall-clock budget per call.
    pub deadline_ms: u64,
    /// Linear memory an instance may grow to.
    pub memory_bytes_max: usize,
    /// WebAssembly stack per call.
    pub stack_bytes_max: usize,
    /// `block` or `drop`.
    pub overflow: String,
    /// Follow-up events per second (none: no limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub publish_events_per_s_max: Option<u32>,
    /// Follow-up events one causal chain may have.
    #[serde(default)]
    pub chain_events_max: u64,
    /// State (keys and values) it may keep, in bytes.
    #[serde(default)]
    pub state_bytes_max: u64,
    /// Lines of stdout/stderr/log kept per second.
    pub output_lines_per_s_max: u32,
    /// Whether a `NAME.toml` manifest was applied.
    pub manifest: bool,
}

/// What `/v1/plugins` and `plugbus plugins` show for one plugin.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct PluginStatus {
    /// The plugin's name (file stem).
    pub name: String,
    /// The plugin file.
    pub file: String,
    /// `running`, `quarantined` (failing every event: delivery paused with
    /// growing backoff) or `failed` (did not load; `error` says why).
    pub state: String,
    /// Why it failed to load, when it did; for a running plugin, why the
    /// newest version of its file was not swapped in (the running version
    /// keeps serving).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The version the plugin reports.
    pub version: String,
    /// First 12 hex digits of the file's SHA-256.
    pub content_hash: String,
    /// Which compiler built the running code: `optimized` (Cranelift), or
    /// `baseline` (Winch) until the optimized build is swapped in.
    #[serde(default)]
    pub tier: String,
    /// Topic patterns it consumes.
    pub subscriptions: Vec<String>,
    /// Events acknowledged.
    pub handled: u64,
    /// Failed attempts.
    pub failed: u64,
    /// Re-deliveries scheduled.
    pub retried: u64,
    /// Events waiting in its queue.
    pub queue_depth: usize,
    /// Highest sequence it has finished with (its cursor).
    pub cursor: u64,
    /// Events in the log it has yet to finish (durable mode); on a broker,
    /// events not yet handed out to any host, as the broker counts them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lag: Option<u64>,
    /// On a broker: events handed out to its hosts and not yet settled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending: Option<u64>,
    /// On a broker: retries waiting in the broker for their time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting_retries: Option<u64>,
    /// How long delivery stopped for the last swap of a new version, in µs:
    /// from the swap (at a batch boundary) to the new version's first
    /// `handle` call, less time spent waiting for events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub swap_pause_us: Option<u64>,
    /// Events acked per second, over the time since the previous status.
    #[serde(default)]
    pub handled_per_s: f64,
    /// While quarantined: how long until delivery is tried again, in ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quarantine_ms: Option<u64>,
    /// Times it was quarantined.
    #[serde(default)]
    pub quarantines: u64,
    /// Timers it keeps set, where the backend keeps timers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timers: Option<u64>,
    /// When its next timer is due (RFC 3339), while it keeps one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timer_next_due: Option<String>,
    /// How late its last fired timer was, in ms (none fired since start).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timer_lateness_ms: Option<u64>,
    /// How much longer its calls run at low CPU priority, in ms, when they
    /// do: it trapped, ran past its deadline, had a publish refused or an
    /// outcome message cut within the last
    /// [`worker::LOW_PRIORITY_FOR`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub low_priority_ms: Option<u64>,
    /// How much longer its calls run in the background, in ms, when they
    /// do: a call of it ran past 100 ms or grew its memory by 16 MiB within
    /// the last [`worker::BACKGROUND_FOR`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub background_ms: Option<u64>,
    /// Bytes of state (keys and values) it keeps (running plugins).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_bytes: Option<u64>,
    /// The last causal chain in which its follow-ups were refused for the
    /// chain's budget (an event storm), within the last 10 minutes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storm: Option<StormStatus>,
    /// Why its deliveries are held, when they are (its publish rate).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held: Option<String>,
    /// The most events per call it runs at now (running plugins): its
    /// `batch_events_max`, or less after calls that ran past their deadline
    /// or were cut for using 100 ms of CPU.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_events: Option<usize>,
    /// Why `batch_events` is below `batch_events_max`, when it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_note: Option<String>,
    /// Panics of its workers (each caught, its events delivered again).
    #[serde(default)]
    pub worker_deaths: u64,
    /// The last panic of a worker, within the last 10 minutes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker_death: Option<String>,
    /// Its bounds and policies (running plugins).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<PluginLimits>,
}

impl PluginStatus {
    /// Its subscriptions, parsed (each was checked when the plugin loaded).
    pub fn patterns(&self) -> Vec<plugbus_contract::topic::Pattern> {
        self.subscriptions
            .iter()
            .filter_map(|s| plugbus_contract::topic::Pattern::parse(s).ok())
            .collect()
    }
}

/// An event storm a plugin took part in, as its status shows it.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct StormStatus {
    /// The chain's correlation id.
    pub correlation_id: String,
    /// Follow-up events the chain had when the last was refused.
    pub chain_events: u64,
    /// The plugin's follow-ups refused for chain budgets, in all.
    pub refused: u64,
    /// How long ago the last was refused, in ms.
    pub ago_ms: u64,
}

impl Registry {
    /// The status of every plugin, running and failed, by name.
    pub fn status(&self) -> Vec<PluginStatus> {
        let backend = self.dispatch.backend();
        let head = if backend.capabilities().durable {
            backend.head().ok()
        } else {
            None
        };
        let mut out: Vec<PluginStatus> = self
            .running
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|p| self.running_status(p, head))
            .collect();
        out.extend(
            self.failed
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .map(failed_status),
        );
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// A running plugin's status; `head`: the log's, where it has one.
    fn running_status(&self, p: &RunningPlugin, head: Option<u64>) -> PluginStatus {
        let release = p.release();
        let quarantine = p.quarantined();
        let error = p
            .reload_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .or_else(|| {
                quarantine.as_ref().map(|q| {
                    format!(
                        "quarantined for {} ms: failing every event (last: {}); delivery is tried again in {} ms, and a new version of the file is swapped in at once",
                        q.pause.as_millis(),
                        q.reason,
                        q.until.saturating_duration_since(std::time::Instant::now()).as_millis()
                    )
                })
            });
        let position = self.broker_position(&p.name);
        let cursor = position.map_or_else(|| p.cursor(), |b| b.delivered);
        let batch = p.conditions.batch_cap();
        let timers = Some(self.backend())
            .filter(|b| b.capabilities().timers)
            .and_then(|b| b.timer_usage(&p.name).ok());
        PluginStatus {
            name: p.name.clone(),
            file: p.file.display().to_string(),
            state: if quarantine.is_some() {
                "quarantined".into()
            } else {
                "running".into()
            },
            error,
            version: release.version,
            content_hash: release.content_hash,
            tier: release.tier.to_string(),
            subscriptions: p.subscriptions.clone(),
            handled: p.handled.get(),
            failed: p.failed.get(),
            retried: p.retried.get(),
            queue_depth: p.depth(),
            cursor,
            lag: position
                .map(|b| b.lag)
                .or_else(|| head.map(|h| h.saturating_sub(cursor))),
            pending: position.map(|b| b.pending),
            waiting_retries: position.map(|b| b.waiting),
            swap_pause_us: Some(p.last_swap_pause_us.load(Ordering::Acquire))
                .filter(|&us| us != u64::MAX),
            handled_per_s: p.handled_per_s(),
            quarantine_ms: quarantine.map(|q| {
                q.until
                    .saturating_duration_since(std::time::Instant::now())
                    .as_millis() as u64
            }),
            quarantines: p.quarantines.get(),
            timers: timers.map(|u| u.count),
            timer_next_due: timers
                .filter(|u| u.count > 0)
                .and_then(|_| self.backend().next_timer_due(&p.name).ok().flatten())
                .map(crate::timer::rfc3339),
            timer_lateness_ms: self
                .metrics
                .timer_last_lateness_seconds
                .get(&crate::metrics::plugin(&p.name))
                .map(|g| (g.get() * 1000.0).round() as u64),
            low_priority_ms: p.low_priority_until.left_ms(),
            background_ms: p.background_until.left_ms(),
            state_bytes: Some(p.settings.state.used()),
            storm: p.storm(),
            held: p.conditions.held(),
            batch_events: batch.as_ref().map(|b| b.0),
            batch_note: batch.and_then(|b| b.1),
            worker_deaths: p.conditions.deaths.get(),
            worker_death: p.conditions.death(),
            limits: Some(p.limits()),
        }
    }

    /// Every running plugin's accounts ([`crate::audit`]), by name; each
    /// also sets `plugbus_unaccounted_events`.
    pub fn audit(&self) -> Result<Vec<crate::audit::Audit>, crate::backend::BackendError> {
        let backend = self.backend();
        if !backend.capabilities().durable {
            return Err(crate::backend::BackendError::NotOffered {
                backend: "memory mode".into(),
                what: "the audit of plugins' events".into(),
                fix: "run with the embedded store (without --memory): memory mode keeps no log to count against".into(),
            });
        }
        let scopes: Vec<crate::audit::Scope> = self
            .running
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|p| crate::audit::Scope {
                plugin: p.name.clone(),
                // Checked when the plugin started.
                patterns: p
                    .subscriptions
                    .iter()
                    .filter_map(|s| plugbus_contract::topic::Pattern::parse(s).ok())
                    .collect(),
                key: p.settings.delivery.ordering_key.clone(),
                parts: p.settings.concurrency.max(1),
            })
            .collect();
        let mut out = backend.audit(&scopes)?;
        for audit in &out {
            self.metrics
                .unaccounted
                .get_or_create(&metrics::plugin(&audit.plugin))
                .set(audit.unaccounted);
        }
        out.sort_by(|a, b| a.plugin.cmp(&b.plugin));
        Ok(out)
    }

    /// Why the host is not ready (`/readyz`), one line each: plugins
    /// failed, quarantined or whose worker panicked in the last minute, the
    /// disk inside its reserve, the broker unreachable. Empty: ready.
    pub fn not_ready(&self) -> Vec<String> {
        // Read off the plugins directly: `status` would ask a broker for
        // every plugin's position and move the rate samples.
        let mut reasons: Vec<String> = self
            .failed
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|f| format!("plugin {} failed to load: {}", f.name, f.error))
            .collect();
        for p in self
            .running
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            if let Some(q) = p.quarantined() {
                reasons.push(format!(
                    "plugin {} is quarantined: failing every event (last: {})",
                    p.name, q.reason
                ));
            }
            if p.conditions.died_within(std::time::Duration::from_secs(60)) {
                reasons.push(format!(
                    "plugin {}: {}",
                    p.name,
                    p.conditions.death().unwrap_or_default()
                ));
            }
        }
        let backend = self.dispatch.backend();
        if let Some(store) = backend.store() {
            for (from, to) in store.noted_holes() {
                reasons.push(format!(
                    "the log has a hole at sequences {from}..={to} that no repair recorded (damage the storage engine cut away): stop the host and run `plugbus repair --data {}`",
                    store.dir().display()
                ));
            }
            if let Some((free, reserve)) = store.inside_reserve() {
                reasons.push(format!(
                    "the data directory's disk is inside its reserve: {free} bytes free, {reserve} kept for the store (--disk-reserve-bytes); publishing is refused and deliveries wait until there is room: free space there"
                ));
            }
        }
        if !backend.connected() {
            reasons.push("the broker does not answer; events wait until it is back".to_string());
        }
        reasons
    }

    /// Refresh the queue-depth gauges (before a scrape).
    pub fn refresh_gauges(&self) {
        // The log's head first: on a broker it also says whether the
        // broker answers, before each plugin's position is asked.
        let backend = self.dispatch.backend();
        let kept = backend.capabilities();
        let head = if kept.durable {
            backend.head().ok()
        } else {
            None
        };
        if let Some(head) = head {
            self.metrics.log_events.set(head as i64);
        }
        if let Some(store) = backend.store() {
            self.metrics.log_bytes.set(store.disk_bytes() as i64);
            if let Ok(free) = fs4::available_space(store.dir()) {
                self.metrics.disk_free_bytes.set(free as i64);
            }
            self.metrics
                .disk_reserve_bytes
                .set(store.disk_reserve_bytes() as i64);
        }
        if kept.shared {
            self.metrics
                .broker_connected
                .set(i64::from(backend.connected()));
        }
        if kept.timers {
            if let Ok(usage) = backend.timer_usage(crate::timer::OUTSIDE) {
                self.metrics
                    .timers_pending
                    .get_or_create(&metrics::plugin(crate::timer::OUTSIDE))
                    .set(usage.count as i64);
            }
        }
        for p in self
            .running
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            let labels = metrics::plugin(&p.name);
            self.metrics
                .queue_depth
                .get_or_create(&labels)
                .set(p.depth() as i64);
            self.metrics
                .state_bytes
                .get_or_create(&labels)
                .set(p.settings.state.used() as i64);
            // The host's own cursor says where the plugin is, except on a
            // broker (which says it, below).
            if let (Some(head), false) = (head, kept.shared) {
                let lag = head.saturating_sub(p.cursor());
                self.metrics.lag.get_or_create(&labels).set(lag as i64);
            }
            if kept.timers {
                if let Ok(usage) = backend.timer_usage(&p.name) {
                    self.metrics
                        .timers_pending
                        .get_or_create(&labels)
                        .set(usage.count as i64);
                }
            }
            if let Some(b) = self.broker_position(&p.name) {
                self.metrics.lag.get_or_create(&labels).set(b.lag as i64);
                self.metrics
                    .broker_pending
                    .get_or_create(&labels)
                    .set(b.pending as i64);
            }
        }
    }

    /// On a broker: where `plugin` is, as the broker reports it (none if
    /// it cannot be asked now). A broker whose last call failed is not
    /// asked again per plugin: each ask would wait out a connect timeout.
    fn broker_position(&self, plugin: &str) -> Option<crate::backend::Position> {
        let backend = self.dispatch.backend();
        if backend.connected() {
            backend.position(plugin).ok().flatten()
        } else {
            None
        }
    }

    /// Where events are kept, for `/v1/plugins`: `embedded`, `memory`, or
    /// the broker's address and whether it answers.
    pub fn backend_status(&self) -> serde_json::Value {
        let b = self.dispatch.backend();
        match b.capabilities() {
            c if !c.durable => serde_json::json!({"kind": "memory"}),
            c if !c.shared => serde_json::json!({"kind": "embedded"}),
            _ => serde_json::json!({
                "kind": "broker",
                "address": b.describe(),
                "connected": b.connected(),
            }),
        }
    }
}

impl RunningPlugin {
    /// The lowest cursor of its workers.
    fn cursor(&self) -> u64 {
        self.cursors
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .min()
            .unwrap_or(0)
    }

    /// Events waiting in its queues.
    fn depth(&self) -> usize {
        self.depths.iter().map(|d| d.load(Ordering::Relaxed)).sum()
    }

    /// The quarantine of the worker whose pause ends last, if any is in one.
    fn quarantined(&self) -> Option<Quarantine> {
        self.quarantine
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .flatten()
            .max_by_key(|q| q.until)
            .cloned()
    }

    /// Events acked per second since the last sample (at least a second
    /// ago; until then, the last rate).
    fn handled_per_s(&self) -> f64 {
        let mut r = self.rate.lock().unwrap_or_else(|p| p.into_inner());
        let now = std::time::Instant::now();
        let handled = self.handled.get();
        match r.at {
            Some(at) if now.duration_since(at) < std::time::Duration::from_secs(1) => {}
            Some(at) => {
                r.per_s = (handled.saturating_sub(r.handled)) as f64
                    / now.duration_since(at).as_secs_f64();
                r.at = Some(now);
                r.handled = handled;
            }
            None => {
                r.at = Some(now);
                r.handled = handled;
            }
        }
        (r.per_s * 10.0).round() / 10.0
    }

    /// Its last event storm, if within [`runtime::chains::CHAIN_IDLE`].
    fn storm(&self) -> Option<StormStatus> {
        let publish = &self.settings.publish;
        let storm = publish
            .storm
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()?;
        let ago = storm.at.elapsed();
        (ago < runtime::chains::CHAIN_IDLE).then(|| StormStatus {
            correlation_id: storm.correlation_id,
            chain_events: storm.events,
            refused: publish.chain_refused.get(),
            ago_ms: ago.as_millis() as u64,
        })
    }

    fn limits(&self) -> PluginLimits {
        let s = &self.settings;
        PluginLimits {
            concurrency: s.concurrency.max(1),
            ordering_key: s.delivery.ordering_key.to_string(),
            retry_ordering: match s.delivery.ordering {
                RetryOrdering::Strict => "strict".into(),
                RetryOrdering::None => "none".into(),
            },
            batch_events_max: s.delivery.batch_events_max,
            max_attempts: s.delivery.max_attempts,
            deadline_ms: s.limits.deadline_ms,
            memory_bytes_max: s.limits.memory_bytes_max,
            stack_bytes_max: s.limits.stack_bytes_max,
            overflow: match s.overflow {
                Overflow::Drop => "drop".into(),
                Overflow::Block(_) => "block".into(),
            },
            publish_events_per_s_max: s.publish.rate.per_s(),
            chain_events_max: s.publish.chain_events_max,
            state_bytes_max: s.state.max(),
            output_lines_per_s_max: s.output.per_s().unwrap_or(0),
            manifest: s.has_manifest,
        }
    }
}

/// A plugin that failed to start: its name, file and why.
fn failed_status(f: &Failed) -> PluginStatus {
    PluginStatus {
        name: f.name.clone(),
        file: f.file.display().to_string(),
        state: "failed".into(),
        error: Some(f.error.clone()),
        version: String::new(),
        content_hash: String::new(),
        tier: String::new(),
        subscriptions: Vec::new(),
        handled: 0,
        failed: 0,
        retried: 0,
        queue_depth: 0,
        cursor: 0,
        lag: None,
        pending: None,
        waiting_retries: None,
        swap_pause_us: None,
        handled_per_s: 0.0,
        quarantine_ms: None,
        quarantines: 0,
        timers: None,
        timer_next_due: None,
        timer_lateness_ms: None,
        low_priority_ms: None,
        background_ms: None,
        state_bytes: None,
        storm: None,
        held: None,
        batch_events: None,
        batch_note: None,
        worker_deaths: 0,
        worker_death: None,
        limits: None,
    }
}
