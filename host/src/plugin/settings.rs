//! What a plugin runs under: the host's delivery settings, and one
//! plugin's settings resolved from them and its manifest (`NAME.toml`).

use super::*;

/// The longest delay a retry may ask for by default, in ms (30 days, as
/// far as a timer may be set).
pub const RETRY_DELAY_MS_MAX_DEFAULT: u64 = plugbus_contract::timer::DELAY_MS_MAX_DEFAULT;

/// Delivery settings shared by every plugin (per-plugin manifests come
/// later).
#[derive(Debug, Clone)]
pub struct DeliverySettings {
    /// Most events handed to one `handle` call. Default 64.
    pub batch_events_max: usize,
    /// Most bytes (data plus attributes) handed to one `handle` call; a
    /// single larger event still goes alone. Default 4 MiB, so that a batch
    /// fits well inside a plugin's memory cap.
    pub batch_bytes_max: usize,
    /// Capacity of each plugin's queue, in events. Default 4096.
    pub queue_events_max: usize,
    /// Delivery attempts before an event is given up on. Default 5.
    pub max_attempts: u32,
    /// First retry delay, in ms; doubled per attempt. Default 100.
    pub backoff_ms_min: u64,
    /// Longest retry delay, in ms. Default 30000.
    pub backoff_ms_max: u64,
    /// The longest delay a plugin may ask a retry to wait, in ms
    /// (`--retry-delay-ms-max`); kept in the cursor across restarts.
    pub retry_delay_ms_max: u64,
    /// Longest chain of follow-up events. Default 32.
    pub hops_max: u32,
    /// Where a plugin the log has never seen starts (durable mode): at the
    /// earliest event kept (default), or at the next one published.
    pub new_plugins_start_latest: bool,
    /// Ordering under retry, for plugins not named in `ordering_for`.
    pub ordering: RetryOrdering,
    /// Ordering under retry per plugin, by name.
    pub ordering_for: std::collections::HashMap<String, RetryOrdering>,
    /// What strict ordering holds back, and which worker an event goes to
    /// when a plugin has several. Default: the `subject`.
    pub ordering_key: OrderingKey,
    /// On a broker: this host's name among the consumers of each plugin.
    pub broker_host: String,
    /// On a broker: how long events handed to this host stay its own
    /// without a settlement (renewed while a batch runs), in ms; at least
    /// three of a plugin's deadlines. Default 30000.
    pub broker_lease_ms: u64,
    /// Swap in a version whose declared schemas do not fit the running
    /// plugins' (logged) instead of refusing it.
    pub accept_incompatible: bool,
}

/// What a retry does to the events after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RetryOrdering {
    /// Later events go on; a retried event arrives after them.
    #[default]
    None,
    /// Later events with the same ordering key (the CloudEvents `subject`;
    /// events without one share a key) wait, in order, until the retried
    /// event is acked or given up on.
    Strict,
}

impl std::str::FromStr for RetryOrdering {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "none" => Ok(RetryOrdering::None),
            "strict" => Ok(RetryOrdering::Strict),
            other => Err(format!("`{other}` is not an ordering; use strict or none")),
        }
    }
}

impl DeliverySettings {
    /// The ordering under retry of `plugin`.
    pub fn ordering_of(&self, plugin: &str) -> RetryOrdering {
        self.ordering_for
            .get(plugin)
            .copied()
            .unwrap_or(self.ordering)
    }
}

impl Default for DeliverySettings {
    fn default() -> Self {
        DeliverySettings {
            batch_events_max: 256,
            batch_bytes_max: 4 << 20,
            queue_events_max: 4096,
            max_attempts: 5,
            backoff_ms_min: 100,
            backoff_ms_max: 30_000,
            retry_delay_ms_max: RETRY_DELAY_MS_MAX_DEFAULT,
            hops_max: 32,
            new_plugins_start_latest: false,
            ordering: RetryOrdering::None,
            ordering_for: std::collections::HashMap::new(),
            ordering_key: OrderingKey::Subject,
            broker_host: String::new(),
            broker_lease_ms: 30_000,
            accept_incompatible: false,
        }
    }
}

/// One plugin's settings: the host's, with its manifest applied.
#[derive(Clone)]
pub(super) struct PluginSettings {
    pub(super) delivery: DeliverySettings,
    pub(super) limits: Limits,
    pub(super) concurrency: usize,
    pub(super) overflow: Overflow,
    pub(super) subscriptions: Option<Vec<String>>,
    pub(super) config: Vec<(String, String)>,
    pub(super) publish: Arc<PublishPolicy>,
    pub(super) output: Arc<RateLimit>,
    /// Its state quota; what it keeps is counted at each start.
    pub(super) state: Arc<kv::StateQuota>,
    /// Its timer limits.
    pub(super) timers: runtime::TimerBook,
    pub(super) has_manifest: bool,
    /// The schemas its manifest declares, and where their files are.
    pub(super) declarations: Declarations,
    pub(super) manifest_dir: PathBuf,
}

impl Registry {
    /// The settings of the plugin in `file`: the host's, with its manifest
    /// (`NAME.toml`, if any) applied.
    pub(super) fn resolve(&self, name: &str, file: &Path) -> Result<PluginSettings, PluginError> {
        let found = Manifest::load_for(file)?;
        let has_manifest = found.is_some();
        let m = found.unwrap_or_default();
        let bad = |key: &str, reason: String| {
            PluginError::Manifest(ManifestError::Value {
                file: manifest::path_for(file),
                key: key.to_string(),
                reason,
            })
        };
        let mut d = self.settings.clone();
        if let Some(b) = m.batch_events_max {
            d.batch_events_max = b as usize;
        }
        let r = &m.retry;
        d.max_attempts = r.max_attempts.unwrap_or(d.max_attempts);
        d.backoff_ms_min = r.backoff_ms_min.unwrap_or(d.backoff_ms_min);
        d.backoff_ms_max = r.backoff_ms_max.unwrap_or(d.backoff_ms_max);
        if d.backoff_ms_min > d.backoff_ms_max {
            return Err(bad(
                "retry",
                format!(
                    "backoff_ms_min ({}) would be larger than backoff_ms_max ({}) with the host's settings; set both",
                    d.backoff_ms_min, d.backoff_ms_max
                ),
            ));
        }
        d.ordering = match &r.ordering {
            Some(o) => o.parse().map_err(|e| bad("retry.ordering", e))?,
            None => d.ordering_of(name),
        };
        d.ordering_for.clear();
        if m.ordering_key.is_some() {
            d.ordering_key = m.ordering_key();
        }
        let host = self.runtime.limits();
        let l = &m.limits;
        let limits = Limits {
            deadline_ms: l.deadline_ms.unwrap_or(host.deadline_ms),
            memory_bytes_max: l
                .memory_bytes_max
                .map_or(host.memory_bytes_max, |m| m as usize),
            stack_bytes_max: l
                .stack_bytes_max
                .map_or(host.stack_bytes_max, |s| s as usize),
            enforce: host.enforce,
        };
        // A batch must fit in the plugin's memory.
        d.batch_bytes_max = d.batch_bytes_max.min(limits.memory_bytes_max / 2);
        let labels = metrics::plugin(name);
        let publish = self.publish_policy(&m, &labels);
        let state = kv::StateQuota::new(
            l.state_bytes_max.unwrap_or(kv::STATE_BYTES_MAX_DEFAULT),
            0,
            self.metrics.state_refused.get_or_create(&labels).clone(),
        );
        let output = RateLimit::new(
            Some(
                l.output_lines_per_s_max
                    .unwrap_or(runtime::OUTPUT_LINES_PER_S_DEFAULT),
            ),
            self.metrics.output_dropped.get_or_create(&labels).clone(),
        );
        Ok(PluginSettings {
            concurrency: m.concurrency.unwrap_or(1) as usize,
            overflow: m.overflow(),
            subscriptions: m.subscriptions.clone(),
            config: m.config.clone().into_iter().collect(),
            limits,
            publish: Arc::new(publish),
            output: Arc::new(output),
            state: Arc::new(state),
            timers: runtime::TimerBook::new(
                l.timer_delay_ms_max
                    .unwrap_or(plugbus_contract::timer::DELAY_MS_MAX_DEFAULT),
                l.timers_max
                    .unwrap_or(plugbus_contract::timer::TIMERS_MAX_DEFAULT),
            ),
            delivery: d,
            has_manifest,
            declarations: m.declarations(),
            manifest_dir: file.parent().map(Path::to_path_buf).unwrap_or_default(),
        })
    }

    /// What the plugin may publish, by its manifest `m`'s `[publish]`.
    fn publish_policy(&self, m: &Manifest, labels: &metrics::PluginLabels) -> PublishPolicy {
        let patterns = |list: &[String]| -> Vec<Pattern> {
            // Checked when the manifest was parsed.
            list.iter().filter_map(|p| Pattern::parse(p).ok()).collect()
        };
        PublishPolicy {
            allow: m.publish.allow.as_deref().map(patterns),
            deny: patterns(&m.publish.deny),
            rate: RateLimit::new(
                m.publish.rate_events_per_s_max,
                self.metrics.publish_throttled.get_or_create(labels).clone(),
            ),
            chain_events_max: m
                .publish
                .chain_events_max
                .unwrap_or(runtime::chains::CHAIN_EVENTS_MAX_DEFAULT),
            chains: self.chains.clone(),
            chain_refused: self.metrics.chain_refused.get_or_create(labels).clone(),
            storm: Mutex::new(None),
            schemas: self.schemas.clone(),
        }
    }
}
