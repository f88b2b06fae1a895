//! Plugins as the operator sees them: the plugin directory, the registry of
//! running plugins and of those that failed to load, and one delivery
//! worker per plugin (`plugin::worker`).
//!
//! A plugin is `plugins-dir/NAME.wasm`; NAME is its identity. Loading one
//! means compiling it (runtime), instantiating it, calling `init` and
//! subscribing it to the bus with the patterns `init` returned. A plugin
//! that fails any of those is reported with its file name and the fix, and
//! kept in the registry as failed; the others load and run regardless.
//!
//! While it runs the directory is watched (`plugin::watch`): a new file
//! starts a plugin, a changed one is loaded and initialised on the
//! watcher's thread and handed to the running worker, which swaps it in at
//! its next batch boundary ([`Registry::reload`]), and a removed one stops
//! the plugin, keeping its cursor and state ([`Registry::remove`]).

pub mod manifest;
mod pump;
pub mod watch;
mod worker;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;

use prometheus_client::metrics::counter::Counter;
use serde::Serialize;

use crate::bus::{OrderingKey, Overflow, Queue, SubscribeOptions, CHUNK_EVENTS_MAX};
use crate::dispatch::Dispatch;
use crate::metrics::{self, DropReason, Metrics};
use crate::runtime::{
    self, kv, CallError, Info, InstanceConfig, Limits, LoadError, PublishPolicy, RateLimit, Runtime,
};
use crate::store::progress::{self, Cursor};
use crate::store::StoreError;
use crate::topic::{Pattern, TopicError};
pub use manifest::{Manifest, ManifestError};

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
            batch_events_max: 64,
            batch_bytes_max: 4 << 20,
            queue_events_max: 4096,
            max_attempts: 5,
            backoff_ms_min: 100,
            backoff_ms_max: 30_000,
            hops_max: 32,
            new_plugins_start_latest: false,
            ordering: RetryOrdering::None,
            ordering_for: std::collections::HashMap::new(),
            ordering_key: OrderingKey::Subject,
        }
    }
}

/// One plugin's settings: the host's, with its manifest applied.
#[derive(Clone)]
struct PluginSettings {
    delivery: DeliverySettings,
    limits: Limits,
    concurrency: usize,
    overflow: Overflow,
    subscriptions: Option<Vec<String>>,
    config: Vec<(String, String)>,
    publish: Arc<PublishPolicy>,
    output: Arc<RateLimit>,
    /// Its state quota; what it keeps is counted at each start.
    state: Arc<kv::StateQuota>,
    has_manifest: bool,
}

/// A plugin's instances, one per worker, just initialised.
struct Instances {
    instances: Vec<runtime::PluginInstance>,
    /// What `init` said.
    info: Info,
    /// The subscriptions in force, as written.
    subscriptions: Vec<String>,
    /// The same, parsed.
    patterns: Vec<Pattern>,
    /// Where their state is.
    kv: kv::Backend,
}

/// Why a plugin did not start.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    /// The file could not be loaded.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// Its manifest cannot be used.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// Instantiation or `init` failed.
    #[error("{file}: {source}")]
    Start {
        /// The plugin file.
        file: PathBuf,
        /// What failed.
        source: CallError,
    },
    /// `init` returned a subscription that is not a pattern.
    #[error("{file}: init returned subscription `{pattern}`, which is not valid: {source}")]
    Subscription {
        /// The plugin file.
        file: PathBuf,
        /// The pattern as returned.
        pattern: String,
        /// Why it is invalid.
        source: TopicError,
    },
    /// `init` returned no subscriptions.
    #[error("{file}: init returned no subscriptions, so the plugin would never get an event; return at least one topic pattern from `info()`")]
    NoSubscriptions {
        /// The plugin file.
        file: PathBuf,
    },
    /// The worker thread could not be started.
    #[error("{file}: cannot start a worker thread: {source}")]
    Thread {
        /// The plugin file.
        file: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The plugin's cursor could not be read.
    #[error("{file}: {source}")]
    Cursor {
        /// The plugin file.
        file: PathBuf,
        /// The store's error.
        source: StoreError,
    },
    /// The plugin directory cannot be read.
    #[error(
        "plugin directory {dir}: {source}; create it or pass --plugins with an existing directory"
    )]
    Dir {
        /// The directory.
        dir: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// Why a replay could not be done.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// There is no log in memory mode.
    #[error("replay needs the durable log; this host runs with --memory")]
    NotDurable,
    /// No such running plugin.
    #[error("no running plugin is called `{0}`; see `plugbus plugins`")]
    NoPlugin(String),
    /// The cursor could not be moved.
    #[error("cannot move the cursor: {0}")]
    Store(StoreError),
    /// The plugin did not start again.
    #[error("the plugin did not start again after moving its cursor: {0}")]
    Restart(PluginError),
}

/// Which build of a plugin is serving: what it reports and its file's hash.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Release {
    version: String,
    /// First 12 hex digits of the file's SHA-256.
    content_hash: String,
    /// Which compiler built it.
    tier: runtime::Tier,
}

/// A new version, loaded and initialised, waiting for the worker to take it
/// at its next batch boundary.
pub(crate) struct Swap {
    instance: runtime::PluginInstance,
    release: Release,
    /// When it was offered.
    offered: std::time::Instant,
    /// The same file as the running version, optimized: no new version.
    tier_up: bool,
}

/// A worker in quarantine: delivery paused until `until`.
#[derive(Clone)]
pub(crate) struct Quarantine {
    pub(crate) until: std::time::Instant,
    /// The pause, doubled at each quarantine in a row.
    pub(crate) pause: std::time::Duration,
    /// The last failure.
    pub(crate) reason: String,
}

/// The handled count at the last rate sample, and the rate then.
#[derive(Default)]
struct RateSample {
    at: Option<std::time::Instant>,
    handled: u64,
    per_s: f64,
}

/// A running plugin's identity and live counters.
pub struct RunningPlugin {
    name: String,
    file: PathBuf,
    release: RwLock<Release>,
    subscriptions: Vec<String>,
    /// A new version for each worker to swap in.
    swap: Mutex<Vec<Option<Swap>>>,
    /// Why the last new version of the file was not swapped in, if it was not.
    reload_error: Mutex<Option<String>>,
    /// How long delivery stopped for the last swap, in µs (`u64::MAX`: none
    /// yet).
    last_swap_pause_us: AtomicU64,
    handled: Counter,
    failed: Counter,
    retried: Counter,
    quarantines: Counter,
    pub(crate) low_priority_batches: Counter,
    pub(crate) background_batches: Counter,
    /// Until when its calls run at low CPU priority, throttled (the latest
    /// of its workers'), if they do.
    pub(crate) low_priority_until: Until,
    /// Until when its calls run in the background, likewise.
    pub(crate) background_until: Until,
    /// Per worker: the highest sequence it has finished with.
    cursors: Vec<AtomicU64>,
    /// Per worker: events waiting in its queue.
    depths: Vec<Arc<AtomicUsize>>,
    /// Set to make the worker look at its re-drive list.
    redrive_wanted: AtomicBool,
    /// Set to stop this plugin alone (replay): its reader stops and its
    /// worker abandons what it has in hand.
    stop: Arc<AtomicBool>,
    /// Per worker: its quarantine, if it is in one.
    quarantine: Mutex<Vec<Option<Quarantine>>>,
    rate: Mutex<RateSample>,
    settings: PluginSettings,
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
    /// Events in the log it has yet to finish (durable mode).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lag: Option<u64>,
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
    /// Its bounds and policies (running plugins).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<PluginLimits>,
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

/// The queue of plugin files (with their stack caps) to compile optimized,
/// the content hashes already asked for, and the thread compiling them.
struct Optimizer {
    queue: crossbeam_channel::Sender<(PathBuf, usize)>,
    asked: std::collections::HashSet<String>,
    thread: JoinHandle<()>,
}

struct Failed {
    name: String,
    file: PathBuf,
    error: String,
}

/// The registry: running plugins, failed ones, and their workers.
pub struct Registry {
    dispatch: Dispatch,
    runtime: Arc<Runtime>,
    metrics: Arc<Metrics>,
    settings: DeliverySettings,
    running: RwLock<Vec<Arc<RunningPlugin>>>,
    failed: RwLock<Vec<Failed>>,
    /// Each plugin's worker thread, by plugin name.
    workers: Mutex<Vec<(String, JoinHandle<()>)>>,
    /// Each plugin's log reader thread (durable mode), by plugin name.
    pumps: Mutex<Vec<(String, JoinHandle<()>)>>,
    stopping: Arc<AtomicBool>,
    /// Baseline builds waiting for their optimized build (when the runtime
    /// compiles in tiers): the queue and the thread that works it.
    optimizer: Mutex<Option<Optimizer>>,
    /// Each plugin's state in memory mode, kept across its restarts.
    memory_kv: Mutex<std::collections::HashMap<String, kv::Backend>>,
    /// The follow-up counts of causal chains, shared by every plugin.
    chains: Arc<runtime::chains::Chains>,
    /// Held while plugins start, stop or change (loading the directory, the
    /// watcher, a replay), so that one plugin never starts twice.
    lifecycle: Mutex<()>,
}

impl Registry {
    /// An empty registry.
    pub fn new(
        dispatch: Dispatch,
        runtime: Arc<Runtime>,
        metrics: Arc<Metrics>,
        settings: DeliverySettings,
    ) -> Registry {
        Registry {
            dispatch,
            runtime,
            metrics,
            settings,
            running: RwLock::default(),
            failed: RwLock::default(),
            workers: Mutex::default(),
            pumps: Mutex::default(),
            stopping: Arc::default(),
            optimizer: Mutex::default(),
            memory_kv: Mutex::default(),
            chains: Arc::default(),
            lifecycle: Mutex::default(),
        }
    }

    /// Start compiling optimized builds in the background (when the runtime
    /// compiles in tiers): each plugin started on a baseline build is
    /// compiled optimized, one at a time, and swapped in like a new
    /// version. Call once, before loading plugins.
    pub fn start_optimizer(self: &Arc<Self>) -> Result<(), PluginError> {
        if !self.runtime.is_tiered() {
            return Ok(());
        }
        let (queue, jobs) = crossbeam_channel::unbounded::<(PathBuf, usize)>();
        let registry = Arc::downgrade(self);
        let stop = self.stopping.clone();
        let thread = std::thread::Builder::new()
            .name("plugin-optimize".into())
            .spawn(move || {
                for (file, stack) in jobs {
                    let Some(runtime) = registry.upgrade().map(|r| r.runtime.clone()) else {
                        break;
                    };
                    let started = std::time::Instant::now();
                    let compiled = runtime.compile_in_child(
                        &file,
                        stack,
                        runtime::Tier::Optimized,
                        &stop,
                    );
                    let Some(registry) = registry.upgrade() else {
                        break;
                    };
                    if stop.load(Ordering::Acquire) {
                        break;
                    }
                    match compiled {
                        Ok(()) => {
                            tracing::info!(file = %file.display(), ms = started.elapsed().as_millis() as u64, "optimized build compiled; swapping it in");
                            // A failure is logged, shown and counted there.
                            let _ = registry.reload(&file);
                        }
                        Err(e) => {
                            tracing::warn!(file = %file.display(), "cannot compile the optimized build ({e}); the plugin keeps running on its baseline build")
                        }
                    }
                }
            })
            .map_err(|source| PluginError::Thread {
                file: PathBuf::from("plugin-optimize"),
                source,
            })?;
        *self.optimizer.lock().unwrap_or_else(|p| p.into_inner()) = Some(Optimizer {
            queue,
            asked: Default::default(),
            thread,
        });
        Ok(())
    }

    /// Ask for the optimized build of `loaded` (from `file`) if it is a
    /// baseline build; each file content is asked for once.
    fn optimize_later(&self, file: &Path, loaded: &runtime::LoadedPlugin, stack: usize) {
        if loaded.tier() == runtime::Tier::Optimized {
            return;
        }
        let mut optimizer = self.optimizer.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(o) = optimizer.as_mut() {
            if o.asked.insert(loaded.content_hash().to_string()) {
                let _ = o.queue.send((file.to_path_buf(), stack));
            }
        }
    }

    /// Load every `*.wasm` in `dir`, in name order. Each failure is logged
    /// and recorded; the result lists them. Only an unreadable directory is
    /// an error.
    pub fn load_dir(&self, dir: &Path) -> Result<Vec<PluginError>, PluginError> {
        let _one = self.lifecycle.lock().unwrap_or_else(|p| p.into_inner());
        let dir_err = |source| PluginError::Dir {
            dir: dir.to_path_buf(),
            source,
        };
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(dir_err)?
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "wasm") && p.is_file())
            .collect();
        files.sort();
        if files.is_empty() {
            tracing::warn!(dir = %dir.display(), "no plugins (*.wasm) in the plugin directory; events will be accepted but nobody consumes them");
        }
        // Compiling is the slow part of a cold start: compile the plugins
        // side by side (as many at once as there are cores), then start
        // them in name order.
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let mut errors = Vec::new();
        for group in files.chunks(cores) {
            let loaded: Vec<Result<(PluginSettings, runtime::LoadedPlugin), PluginError>> =
                std::thread::scope(|scope| {
                    let compiling: Vec<_> = group
                        .iter()
                        .map(|file| scope.spawn(move || self.load(file)))
                        .collect();
                    compiling
                        .into_iter()
                        .zip(group)
                        .map(|(c, file)| {
                            c.join().unwrap_or_else(|_| {
                                Err(PluginError::Thread {
                                    file: file.clone(),
                                    source: std::io::Error::other("the compiling thread panicked"),
                                })
                            })
                        })
                        .collect()
                });
            for (file, loaded) in group.iter().zip(loaded) {
                let started = loaded.and_then(|(settings, loaded)| {
                    self.start_loaded(file, settings, Arc::new(loaded))
                });
                if let Err(e) = started {
                    self.record_failure(&stem(file), file, &e);
                    errors.push(e);
                }
            }
        }
        Ok(errors)
    }

    /// Read the manifest of the plugin in `file` and compile it.
    fn load(&self, file: &Path) -> Result<(PluginSettings, runtime::LoadedPlugin), PluginError> {
        let settings = self.resolve(&stem(file), file)?;
        let loaded = self
            .runtime
            .load_file_with_stack(file, settings.limits.stack_bytes_max)?;
        Ok((settings, loaded))
    }

    /// The settings of the plugin in `file`: the host's, with its manifest
    /// (`NAME.toml`, if any) applied.
    fn resolve(&self, name: &str, file: &Path) -> Result<PluginSettings, PluginError> {
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
        let patterns = |list: &[String]| -> Vec<Pattern> {
            // Checked when the manifest was parsed.
            list.iter().filter_map(|p| Pattern::parse(p).ok()).collect()
        };
        let labels = metrics::plugin(name);
        let publish = PublishPolicy {
            allow: m.publish.allow.as_deref().map(patterns),
            deny: patterns(&m.publish.deny),
            rate: RateLimit::new(
                Some(
                    m.publish
                        .rate_events_per_s_max
                        .unwrap_or(runtime::PUBLISH_EVENTS_PER_S_DEFAULT),
                ),
                self.metrics
                    .publish_throttled
                    .get_or_create(&labels)
                    .clone(),
            ),
            chain_events_max: m
                .publish
                .chain_events_max
                .unwrap_or(runtime::chains::CHAIN_EVENTS_MAX_DEFAULT),
            chains: self.chains.clone(),
            chain_refused: self.metrics.chain_refused.get_or_create(&labels).clone(),
            storm: Mutex::new(None),
        };
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
            delivery: d,
            has_manifest,
        })
    }

    /// Instantiate `loaded` once per worker of `settings` and run `init`:
    /// the instances, what the plugin said about itself, and its
    /// subscriptions (the manifest's, else those `init` returned) as
    /// written and as patterns.
    fn instances(
        &self,
        loaded: &Arc<runtime::LoadedPlugin>,
        file: &Path,
        settings: &PluginSettings,
    ) -> Result<Instances, PluginError> {
        let bucket = self.bucket(loaded.name());
        // What it keeps now counts against its quota.
        match bucket.usage(loaded.name()) {
            Ok(used) => settings.state.set_used(used),
            Err(e) => tracing::warn!(plugin = loaded.name(), "cannot measure its state: {e}"),
        }
        let config = InstanceConfig {
            config: settings.config.clone(),
            hops_max: self.settings.hops_max,
            kv: bucket,
            limits: settings.limits.clone(),
            publish: settings.publish.clone(),
            output: settings.output.clone(),
            state: settings.state.clone(),
        };
        let start_err = |source| PluginError::Start {
            file: file.to_path_buf(),
            source,
        };
        // `init` runs here: on a thread with room for the plugin's stack.
        let (instances, info) = runtime::with_native_stack(settings.limits.stack_bytes_max, || {
            let (first, info) = runtime::instantiate(loaded.clone(), config.clone())?;
            let mut instances = vec![first];
            for _ in 1..settings.concurrency {
                let (more, _) = runtime::instantiate(loaded.clone(), config.clone())?;
                instances.push(more);
            }
            Ok((instances, info))
        })
        .map_err(start_err)?;
        let subscriptions = settings
            .subscriptions
            .clone()
            .unwrap_or_else(|| info.subscriptions.clone());
        let patterns = check_subscriptions(file, &subscriptions)?;
        Ok(Instances {
            instances,
            info,
            subscriptions,
            patterns,
            kv: config.kv,
        })
    }

    /// Load and start the plugin in `file`.
    pub fn start(&self, file: &Path) -> Result<Arc<RunningPlugin>, PluginError> {
        let (settings, loaded) = self.load(file)?;
        self.start_loaded(file, settings, Arc::new(loaded))
    }

    /// Start the plugin in `file`, compiled as `loaded`, with `settings`.
    fn start_loaded(
        &self,
        file: &Path,
        settings: PluginSettings,
        loaded: Arc<runtime::LoadedPlugin>,
    ) -> Result<Arc<RunningPlugin>, PluginError> {
        let name = stem(file);
        let Instances {
            instances,
            info,
            subscriptions,
            patterns,
            kv,
        } = self.instances(&loaded, file, &settings)?;
        self.optimize_later(file, &loaded, settings.limits.stack_bytes_max);
        if info.name != name {
            tracing::info!(plugin = %name, reports = %info.name, "plugin calls itself by another name; plugbus uses the file name");
        }
        let workers = settings.concurrency.max(1);
        let labels = metrics::plugin(&name);
        let stop = Arc::new(AtomicBool::new(false));
        let key = settings.delivery.ordering_key.clone();
        // Where delivery starts: after the stored cursors in durable mode
        // (a new plugin starts at the earliest event), at once in memory.
        let (queues, cursor_store, starts, cursor_names) = match &self.dispatch {
            Dispatch::Memory(bus) => (
                bus.subscribe_with(
                    &name,
                    patterns,
                    SubscribeOptions {
                        capacity: self.settings.queue_events_max,
                        parts: workers,
                        key,
                        overflow: settings.overflow,
                    },
                ),
                None,
                vec![Cursor::default(); workers],
                vec![None; workers],
            ),
            Dispatch::Durable(log) => {
                let cursor_err = |source| PluginError::Cursor {
                    file: file.to_path_buf(),
                    source,
                };
                let store = log.store().clone();
                let names: Vec<String> = (0..workers)
                    .map(|i| progress::cursor_name(&name, i, workers))
                    .collect();
                let existing = store.cursors_of(&name).map_err(cursor_err)?;
                let seed = match existing.iter().map(|(_, c)| c.low()).min() {
                    Some(low) => low,
                    None => {
                        let start = if self.settings.new_plugins_start_latest {
                            log.head()
                        } else {
                            0
                        };
                        tracing::info!(plugin = %name, "new plugin: starts after sequence {start}");
                        start
                    }
                };
                let mut starts = Vec::new();
                for n in &names {
                    match existing.iter().find(|(e, _)| e == n) {
                        Some((_, c)) => starts.push(c.clone()),
                        None => {
                            // Where a new worker starts sticks across restarts.
                            store.set_cursor(n, seed).map_err(cursor_err)?;
                            starts.push(Cursor::at(seed));
                        }
                    }
                }
                for (old, _) in existing.iter().filter(|(e, _)| !names.contains(e)) {
                    tracing::info!(plugin = %name, cursor = %old, "concurrency changed: the new workers start after sequence {seed}, the lowest of the old cursors (events after it may be delivered again)");
                    store.remove_cursor(old).map_err(cursor_err)?;
                }
                let mut outlets = Vec::new();
                let mut queues = Vec::new();
                for start in &starts {
                    let (tx, queue) =
                        Queue::channel((self.settings.queue_events_max / CHUNK_EVENTS_MAX).max(2));
                    outlets.push(pump::Outlet {
                        queue: tx,
                        through: start.through,
                    });
                    queues.push(queue);
                }
                let routing = pump::Routing {
                    patterns,
                    key,
                    drop_when_full: settings.overflow == Overflow::Drop,
                    dropped: self.metrics.drop_counter(&name, DropReason::OverflowDrop),
                };
                let (log, all, own, pump_name) = (
                    log.clone(),
                    self.stopping.clone(),
                    stop.clone(),
                    name.clone(),
                );
                let stopped = move || all.load(Ordering::Acquire) || own.load(Ordering::Acquire);
                let pump = std::thread::Builder::new()
                    .name(format!("pump-{name}"))
                    .spawn(move || pump::run(&log, &pump_name, &routing, &outlets, &stopped))
                    .map_err(|source| PluginError::Thread {
                        file: file.to_path_buf(),
                        source,
                    })?;
                self.pumps
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push((name.clone(), pump));
                let names = if workers > 1 {
                    names.into_iter().map(Some).collect()
                } else {
                    vec![None]
                };
                (queues, Some(store), starts, names)
            }
        };
        let plugin = Arc::new(RunningPlugin {
            name: name.clone(),
            file: file.to_path_buf(),
            release: RwLock::new(Release {
                version: info.version.clone(),
                content_hash: short_hash(&loaded),
                tier: loaded.tier(),
            }),
            subscriptions: subscriptions.clone(),
            swap: Mutex::new((0..workers).map(|_| None).collect()),
            reload_error: Mutex::default(),
            last_swap_pause_us: AtomicU64::new(u64::MAX),
            handled: self.metrics.handled.get_or_create(&labels).clone(),
            failed: self.metrics.failed.get_or_create(&labels).clone(),
            retried: self.metrics.retried.get_or_create(&labels).clone(),
            quarantines: self.metrics.quarantines.get_or_create(&labels).clone(),
            low_priority_batches: self
                .metrics
                .low_priority_batches
                .get_or_create(&labels)
                .clone(),
            background_batches: self
                .metrics
                .background_batches
                .get_or_create(&labels)
                .clone(),
            low_priority_until: Until::default(),
            background_until: Until::default(),
            cursors: starts.iter().map(|s| AtomicU64::new(s.low())).collect(),
            depths: queues.iter().map(Queue::depth_handle).collect(),
            // Look once at start: re-drives may be pending from before.
            redrive_wanted: AtomicBool::new(true),
            stop,
            quarantine: Mutex::new(vec![None; workers]),
            rate: Mutex::new(RateSample::default()),
            settings: settings.clone(),
        });
        let mut spawned = Vec::new();
        for (index, ((instance, queue), (start, cursor_name))) in instances
            .into_iter()
            .zip(queues)
            .zip(starts.into_iter().zip(cursor_names))
            .enumerate()
        {
            let worker = worker::Worker::new(
                instance,
                worker::Source {
                    queue,
                    cursor_store: cursor_store.clone(),
                    start,
                    kv: kv.clone(),
                    index,
                    cursor_name,
                    stopping: self.stopping.clone(),
                },
                self.dispatch.clone(),
                plugin.clone(),
                &self.metrics,
                settings.delivery.clone(),
            );
            let thread = if workers > 1 {
                format!("plugin-{name}-{index}")
            } else {
                format!("plugin-{name}")
            };
            match std::thread::Builder::new()
                .name(thread)
                .stack_size(runtime::native_stack_for(settings.limits.stack_bytes_max))
                .spawn(move || worker.run())
            {
                Ok(handle) => spawned.push((name.clone(), handle)),
                Err(source) => {
                    // Stop what started; its cursor says where it was.
                    plugin.stop.store(true, Ordering::Release);
                    self.workers
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .extend(spawned);
                    self.join_threads(&name);
                    if let Dispatch::Memory(bus) = &self.dispatch {
                        bus.unsubscribe(&name);
                    }
                    return Err(PluginError::Thread {
                        file: file.to_path_buf(),
                        source,
                    });
                }
            }
        }
        self.workers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(spawned);
        tracing::info!(
            plugin = %name,
            version = %info.version,
            subscriptions = ?subscriptions,
            workers,
            manifest = settings.has_manifest,
            tier = %loaded.tier(),
            "plugin loaded"
        );
        self.running
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .push(plugin.clone());
        Ok(plugin)
    }

    /// The status of every plugin, running and failed, by name.
    pub fn status(&self) -> Vec<PluginStatus> {
        let head = match &self.dispatch {
            Dispatch::Durable(log) => Some(log.head()),
            Dispatch::Memory(_) => None,
        };
        let mut out: Vec<PluginStatus> = self
            .running
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|p| {
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
                let cursor = p.cursor();
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
                    lag: head.map(|h| h.saturating_sub(cursor)),
                    swap_pause_us: Some(p.last_swap_pause_us.load(Ordering::Acquire))
                        .filter(|&us| us != u64::MAX),
                    handled_per_s: p.handled_per_s(),
                    quarantine_ms: quarantine.map(|q| {
                        q.until
                            .saturating_duration_since(std::time::Instant::now())
                            .as_millis() as u64
                    }),
                    quarantines: p.quarantines.get(),
                    low_priority_ms: p.low_priority_until.left_ms(),
                    background_ms: p.background_until.left_ms(),
                    state_bytes: Some(p.settings.state.used()),
                    storm: p.storm(),
                    limits: Some(p.limits()),
                }
            })
            .collect();
        out.extend(
            self.failed
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .map(|f| PluginStatus {
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
                    swap_pause_us: None,
                    handled_per_s: 0.0,
                    quarantine_ms: None,
                    quarantines: 0,
                    low_priority_ms: None,
                    background_ms: None,
                    state_bytes: None,
                    storm: None,
                    limits: None,
                }),
        );
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// The durable store, when there is one.
    pub fn store(&self) -> Option<&Arc<crate::store::Store>> {
        match &self.dispatch {
            Dispatch::Durable(log) => Some(log.store()),
            Dispatch::Memory(_) => None,
        }
    }

    /// Where `plugin`'s key-value state is, if it is a plugin this host
    /// knows (running or failed).
    pub fn state_of(&self, plugin: &str) -> Option<kv::Backend> {
        if !self.names().iter().any(|n| n == plugin) {
            return None;
        }
        Some(self.bucket(plugin))
    }

    fn bucket(&self, plugin: &str) -> kv::Backend {
        match &self.dispatch {
            Dispatch::Durable(log) => kv::Backend::Durable(log.store().clone()),
            Dispatch::Memory(_) => self
                .memory_kv
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .entry(plugin.to_string())
                .or_default()
                .clone(),
        }
    }

    /// The names of every plugin, running or failed.
    pub fn names(&self) -> Vec<String> {
        self.status().into_iter().map(|p| p.name).collect()
    }

    /// Tell `plugin`'s worker to pick up events re-driven to it (it also
    /// looks at every start).
    pub fn wake_redrive(&self, plugin: &str) {
        for p in self
            .running
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|p| p.name == plugin)
        {
            p.redrive_wanted.store(true, Ordering::Release);
        }
    }

    /// Replay: deliver `plugin` every event from sequence `from` on again.
    /// Its reader and worker stop (abandoning what they have in hand), its
    /// cursor moves to `from - 1` (forgetting pending retries), with
    /// `reset_state` its key-value bucket is emptied, and it starts again
    /// as a fresh instance: a projection is rebuilt from the log. Returns
    /// the plugin's status after the restart.
    pub fn replay(
        &self,
        plugin: &str,
        from: u64,
        reset_state: bool,
    ) -> Result<PluginStatus, ReplayError> {
        let store = self.store().cloned().ok_or(ReplayError::NotDurable)?;
        let _one = self.lifecycle.lock().unwrap_or_else(|p| p.into_inner());
        let running = self
            .stop_one(plugin)
            .ok_or_else(|| ReplayError::NoPlugin(plugin.to_string()))?;
        let removed = store
            .rewind(plugin, Some(from.saturating_sub(1)), reset_state)
            .map_err(ReplayError::Store)?;
        if reset_state {
            tracing::info!(plugin, removed, "state cleared for the replay");
        }
        tracing::info!(plugin, from, "replaying the log from sequence {from}");
        self.start(&running.file).map_err(ReplayError::Restart)?;
        self.status()
            .into_iter()
            .find(|p| p.name == plugin)
            .ok_or_else(|| ReplayError::NoPlugin(plugin.to_string()))
    }

    /// Stop the running plugin called `plugin` alone: its reader and worker
    /// stop (what they have in hand is abandoned; its cursor says what is
    /// still to do) and it leaves the running list. Its cursor and state
    /// stay in the store. Returns it, if it was running.
    fn stop_one(&self, plugin: &str) -> Option<Arc<RunningPlugin>> {
        let running = self.running_plugin(plugin)?;
        running.stop.store(true, Ordering::Release);
        self.join_threads(plugin);
        if let Dispatch::Memory(bus) = &self.dispatch {
            bus.unsubscribe(plugin);
        }
        self.running
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|p| p.name != plugin);
        Some(running)
    }

    /// A new version or manifest of `running` was not taken: log it, count
    /// it, and show it in the plugin's status until the next change.
    fn refused_change(&self, running: &RunningPlugin, what: &str, e: &PluginError) {
        tracing::error!(plugin = %running.name, "{what}: {e}");
        self.metrics
            .reload_failures
            .get_or_create(&metrics::plugin(&running.name))
            .inc();
        *running
            .reload_error
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(format!("{what}: {e}"));
    }

    /// The running plugin called `name`, if there is one.
    fn running_plugin(&self, name: &str) -> Option<Arc<RunningPlugin>> {
        self.running
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .find(|p| p.name == name)
            .cloned()
    }

    /// Wait for the reader and workers of `plugin`, told to stop.
    fn join_threads(&self, plugin: &str) {
        for list in [&self.pumps, &self.workers] {
            let mine: Vec<JoinHandle<()>> = {
                let mut all = list.lock().unwrap_or_else(|p| p.into_inner());
                let (mine, rest) = std::mem::take(&mut *all)
                    .into_iter()
                    .partition(|(n, _)| n == plugin);
                *all = rest;
                mine.into_iter().map(|(_, h)| h).collect()
            };
            for h in mine {
                if h.join().is_err() {
                    tracing::error!(plugin, "a thread of the plugin panicked while stopping");
                }
            }
        }
    }

    /// The plugin file `file` is new or changed: start it, or load the new
    /// version and have the worker swap it in at its next batch boundary
    /// (no event lost, none handled by both versions, the cursor and
    /// pending retries carried over). A version whose subscriptions differ
    /// restarts the plugin at its cursor instead. A version that fails to
    /// load or to `init` is reported (log, status, metric) and the running
    /// one keeps serving. Loading and `init` run on the caller's thread,
    /// off the delivery path.
    pub fn reload(&self, file: &Path) -> Result<Reload, PluginError> {
        let _one = self.lifecycle.lock().unwrap_or_else(|p| p.into_inner());
        let name = stem(file);
        let Some(running) = self.running_plugin(&name) else {
            return match self.start(file) {
                Ok(_) => {
                    self.forget_failure(&name);
                    Ok(Reload::Started)
                }
                Err(e) => {
                    self.record_failure(&name, file, &e);
                    Err(e)
                }
            };
        };
        match self.prepare(&running, file) {
            Ok(Some((_, true))) => {
                // New subscriptions: a restart at the cursor.
                self.restart(&name, file)
            }
            Ok(Some((swaps, false))) => {
                *running
                    .reload_error
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()) = None;
                *running.swap.lock().unwrap_or_else(|p| p.into_inner()) =
                    swaps.into_iter().map(Some).collect();
                Ok(Reload::Offered)
            }
            Ok(None) => Ok(Reload::Unchanged),
            Err(e) => {
                self.refused_change(
                    &running,
                    "new version not loaded (the running one keeps serving)",
                    &e,
                );
                Err(e)
            }
        }
    }

    /// Load and initialise the version of `running` in `file`, one
    /// instance per worker: `None` if it is the one running (or already
    /// offered), else the swaps and whether its subscriptions differ.
    fn prepare(
        &self,
        running: &RunningPlugin,
        file: &Path,
    ) -> Result<Option<(Vec<Swap>, bool)>, PluginError> {
        let settings = &running.settings;
        let loaded = Arc::new(
            self.runtime
                .load_file_with_stack(file, settings.limits.stack_bytes_max)?,
        );
        let hash = short_hash(&loaded);
        // The version the workers run next: the one offered, if any.
        let next = running
            .swap
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .flatten()
            .next()
            .map(|s| s.release.clone())
            .unwrap_or_else(|| running.release());
        // The same file is a change only as a better build of it.
        let tier_up = next.content_hash == hash;
        if tier_up && loaded.tier() <= next.tier {
            return Ok(None);
        }
        let Instances {
            instances,
            info,
            subscriptions,
            ..
        } = self.instances(&loaded, file, settings)?;
        self.optimize_later(file, &loaded, settings.limits.stack_bytes_max);
        let moved = subscriptions != running.subscriptions;
        let offered = std::time::Instant::now();
        let release = Release {
            version: info.version,
            content_hash: hash,
            tier: loaded.tier(),
        };
        let swaps = instances
            .into_iter()
            .map(|instance| Swap {
                instance,
                release: release.clone(),
                offered,
                tier_up,
            })
            .collect();
        Ok(Some((swaps, moved)))
    }

    /// The manifest of the plugin in `file` is new, changed or removed:
    /// restart the plugin with it at its cursor (a new plugin starts). A
    /// manifest that cannot be used is reported (log, status, metric) and
    /// the running plugin keeps serving with its settings.
    pub fn reload_manifest(&self, file: &Path) -> Result<Reload, PluginError> {
        let name = stem(file);
        let Some(running) = self.running_plugin(&name) else {
            return self.reload(file);
        };
        let _one = self.lifecycle.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = Manifest::load_for(file) {
            let e = PluginError::Manifest(e);
            self.refused_change(
                &running,
                "manifest not applied (the plugin keeps running with its settings)",
                &e,
            );
            return Err(e);
        }
        tracing::info!(plugin = %name, "manifest changed: restarting the plugin at its cursor");
        self.restart(&name, file)
    }

    /// Stop the plugin `name` and start it again from `file`, at its
    /// cursor; a start that fails is recorded as a failed plugin.
    fn restart(&self, name: &str, file: &Path) -> Result<Reload, PluginError> {
        self.stop_one(name);
        match self.start(file) {
            Ok(_) => Ok(Reload::Restarted),
            Err(e) => {
                self.record_failure(name, file, &e);
                Err(e)
            }
        }
    }

    /// The plugin file of `plugin` was removed: stop it, keeping its cursor
    /// and state for when it comes back, and forget a failure to load it.
    pub fn remove(&self, plugin: &str) {
        let _one = self.lifecycle.lock().unwrap_or_else(|p| p.into_inner());
        if self.stop_one(plugin).is_some() {
            tracing::info!(
                plugin,
                "plugin file removed: stopped; its cursor and state are kept"
            );
        }
        self.forget_failure(plugin);
    }

    fn record_failure(&self, name: &str, file: &Path, e: &PluginError) {
        tracing::error!("plugin not loaded: {e}");
        self.metrics
            .reload_failures
            .get_or_create(&metrics::plugin(name))
            .inc();
        let mut failed = self.failed.write().unwrap_or_else(|p| p.into_inner());
        failed.retain(|f| f.name != name);
        failed.push(Failed {
            name: name.to_string(),
            file: file.to_path_buf(),
            error: e.to_string(),
        });
    }

    fn forget_failure(&self, name: &str) {
        self.failed
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|f| f.name != name);
    }

    /// Refresh the queue-depth gauges (before a scrape).
    pub fn refresh_gauges(&self) {
        for p in self
            .running
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            self.metrics
                .queue_depth
                .get_or_create(&metrics::plugin(&p.name))
                .set(p.depth() as i64);
            self.metrics
                .state_bytes
                .get_or_create(&metrics::plugin(&p.name))
                .set(p.settings.state.used() as i64);
            if let Dispatch::Durable(log) = &self.dispatch {
                let lag = log.head().saturating_sub(p.cursor());
                self.metrics
                    .lag
                    .get_or_create(&metrics::plugin(&p.name))
                    .set(lag as i64);
            }
        }
        if let Dispatch::Durable(log) = &self.dispatch {
            self.metrics.log_events.set(log.head() as i64);
            self.metrics.log_bytes.set(log.store().disk_bytes() as i64);
        }
    }

    /// Stop: close every queue, let each worker finish what is queued, and
    /// wait for them. In durable mode the pumps stop reading the log first
    /// (what they have not read is delivered after a restart), and the log
    /// closes last, after the workers' follow-up events.
    pub fn shutdown(&self) {
        self.stopping.store(true, Ordering::Release);
        // The optimizer ends its compile (its child is killed) and, its
        // queue closed, stops.
        let optimizer = self
            .optimizer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(Optimizer { queue, thread, .. }) = optimizer {
            drop(queue);
            if thread.join().is_err() {
                tracing::error!("the optimizing compile thread panicked");
            }
        }
        match &self.dispatch {
            Dispatch::Memory(bus) => bus.close(),
            Dispatch::Durable(_) => {
                let pumps =
                    std::mem::take(&mut *self.pumps.lock().unwrap_or_else(|p| p.into_inner()));
                for (_, p) in pumps {
                    if p.join().is_err() {
                        tracing::error!("a log reader panicked during shutdown");
                    }
                }
            }
        }
        let workers = std::mem::take(&mut *self.workers.lock().unwrap_or_else(|p| p.into_inner()));
        for (_, w) in workers {
            if w.join().is_err() {
                tracing::error!("a plugin worker panicked during shutdown");
            }
        }
        if let Dispatch::Durable(log) = &self.dispatch {
            log.close();
        }
    }
}

/// What [`Registry::reload`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reload {
    /// A plugin new to this host started.
    Started,
    /// The new version waits for the worker's next batch boundary.
    Offered,
    /// The new version subscribes differently: the plugin restarted at its
    /// cursor.
    Restarted,
    /// The file holds the version already running (or already offered).
    Unchanged,
}

/// A time shared by a plugin's workers: the latest any of them set.
#[derive(Default)]
pub(crate) struct Until(Mutex<Option<std::time::Instant>>);

impl Until {
    /// Make it at least `until`.
    pub(crate) fn extend(&self, until: std::time::Instant) {
        let mut at = self.0.lock().unwrap_or_else(|p| p.into_inner());
        *at = Some(at.map_or(until, |t| t.max(until)));
    }

    pub(crate) fn clear(&self) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// Milliseconds left, if any.
    fn left_ms(&self) -> Option<u64> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .and_then(|t| t.checked_duration_since(std::time::Instant::now()))
            .map(|d| d.as_millis() as u64)
    }
}

impl RunningPlugin {
    fn release(&self) -> Release {
        self.release
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The new version offered to worker `index`, if any, for it to swap
    /// in.
    pub(crate) fn take_swap(&self, index: usize) -> Option<Swap> {
        let swap = self
            .swap
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_mut(index)?
            .take()?;
        *self.release.write().unwrap_or_else(|p| p.into_inner()) = swap.release.clone();
        Some(swap)
    }

    /// Whether a new version waits for worker `index` to swap it in.
    pub(crate) fn swap_offered(&self, index: usize) -> bool {
        self.swap
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(index)
            .is_some_and(Option::is_some)
    }

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

    /// Put worker `index` in quarantine (or take it out, with `None`).
    pub(crate) fn set_quarantine(&self, index: usize, q: Option<Quarantine>) {
        if let Some(slot) = self
            .quarantine
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_mut(index)
        {
            *slot = q;
        }
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

impl Swap {
    /// The new instance, how long it waited for a batch boundary, its
    /// content hash and whether it is the running file optimized.
    pub(crate) fn into_parts(self) -> (runtime::PluginInstance, std::time::Duration, String, bool) {
        (
            self.instance,
            self.offered.elapsed(),
            self.release.content_hash,
            self.tier_up,
        )
    }
}

/// The patterns of `subscriptions` as `init` returned them, or why they
/// cannot be used.
fn check_subscriptions(file: &Path, subscriptions: &[String]) -> Result<Vec<Pattern>, PluginError> {
    if subscriptions.is_empty() {
        return Err(PluginError::NoSubscriptions {
            file: file.to_path_buf(),
        });
    }
    subscriptions
        .iter()
        .map(|p| {
            Pattern::parse(p).map_err(|source| PluginError::Subscription {
                file: file.to_path_buf(),
                pattern: p.clone(),
                source,
            })
        })
        .collect()
}

fn short_hash(loaded: &runtime::LoadedPlugin) -> String {
    loaded.content_hash().chars().take(12).collect()
}

fn stem(file: &Path) -> String {
    file.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}
