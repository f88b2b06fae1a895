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
//!
//! Rooms: `settings` (delivery settings and a plugin's resolved manifest),
//! `swap` (reload, restart, removal, shutdown), `status` (what
//! `/v1/plugins` shows), `worker` (delivery), `pump` (memory-mode queues),
//! `watch` (the directory), `manifest` (`NAME.toml`), `optimizer`
//! (optimized builds in the background), `error` (why a plugin did not
//! start).

mod conditions;
mod contracts;
pub use contracts::Incompatible;
pub use shadow::{ShadowMisfit, Shadowed};
mod error;
pub mod manifest;
pub mod manifest_reference;
mod optimizer;
mod settings;
mod shadow;
mod start;
mod status;
mod swap;
pub mod watch;
mod worker;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;

use prometheus_client::metrics::counter::Counter;

use crate::bus::{OrderingKey, Overflow};
use crate::dispatch::Dispatch;
use crate::metrics::{self, Metrics};
use crate::runtime::{self, kv, Limits, PublishPolicy, RateLimit, Runtime};
use crate::schema::{Declarations, Declared};

pub use error::{PluginError, ReplayError};
pub use manifest::{Manifest, ManifestError};
use optimizer::Optimizer;
use plugbus_contract::topic::Pattern;
use settings::PluginSettings;
pub use settings::{DeliverySettings, RetryOrdering, RETRY_DELAY_MS_MAX_DEFAULT};
use status::RateSample;
pub use status::{PluginLimits, PluginStatus, StormStatus};
pub use swap::Reload;
pub(crate) use swap::Swap;

/// Which build of a plugin is serving: what it reports and its file's hash.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Release {
    version: String,
    /// First 12 hex digits of the file's SHA-256.
    content_hash: String,
    /// Which compiler built it.
    tier: runtime::Tier,
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
    cursors: Vec<Arc<AtomicU64>>,
    /// Per worker: events waiting in its queue.
    depths: Vec<Arc<AtomicUsize>>,
    /// Set to stop this plugin alone (replay): its reader stops and its
    /// worker abandons what it has in hand.
    stop: Arc<AtomicBool>,
    /// Per worker: its quarantine, if it is in one.
    quarantine: Mutex<Vec<Option<Quarantine>>>,
    rate: Mutex<RateSample>,
    settings: PluginSettings,
    /// The schemas the version it runs (or is about to) declares.
    declared: RwLock<Arc<Declared>>,
    /// What holds it back: publish-rate holds, reduced batches, panics.
    pub(crate) conditions: conditions::Conditions,
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
    stopping: Arc<AtomicBool>,
    /// Baseline builds waiting for their optimized build (when the runtime
    /// compiles in tiers): the queue and the thread that works it.
    optimizer: Mutex<Option<Optimizer>>,
    /// The follow-up counts of causal chains, shared by every plugin.
    chains: Arc<runtime::chains::Chains>,
    /// The topics' declared schemas, checked at every publish.
    schemas: Arc<crate::schema::Schemas>,
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
            stopping: Arc::default(),
            optimizer: Mutex::default(),
            chains: Arc::default(),
            schemas: Arc::default(),
            lifecycle: Mutex::default(),
        }
    }

    /// Check what plugins publish against `schemas` (before any starts).
    pub fn with_schemas(mut self, schemas: Arc<crate::schema::Schemas>) -> Registry {
        self.schemas = schemas;
        self
    }

    /// The topics' declared schemas.
    pub fn schemas(&self) -> &Arc<crate::schema::Schemas> {
        &self.schemas
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

    /// Where events, dead letters and state are kept: the embedded
    /// store, a broker, or memory mode's bus and maps.
    pub fn backend(&self) -> &Arc<dyn crate::backend::Backend> {
        self.dispatch.backend()
    }

    /// Where `plugin`'s key-value state is, if it is a plugin this host
    /// knows (running or failed).
    pub fn state_of(&self, plugin: &str) -> Option<kv::Backend> {
        if !self.names().iter().any(|n| n == plugin) {
            return None;
        }
        Some(self.bucket(plugin))
    }

    /// Where `plugin`'s state is.
    fn bucket(&self, _plugin: &str) -> kv::Backend {
        kv::Backend::on(self.dispatch.backend().clone())
    }

    /// The names of every plugin, running or failed.
    pub fn names(&self) -> Vec<String> {
        self.status().into_iter().map(|p| p.name).collect()
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
        let backend = self.backend().clone();
        if !backend.capabilities().durable {
            return Err(ReplayError::NotDurable);
        }
        let _one = self.lifecycle.lock().unwrap_or_else(|p| p.into_inner());
        let running = self
            .stop_one(plugin)
            .ok_or_else(|| ReplayError::NoPlugin(plugin.to_string()))?;
        backend
            .replay(
                plugin,
                crate::backend::Start::Sequence(from.max(1)),
                reset_state,
            )
            .map_err(ReplayError::Backend)?;
        if reset_state {
            tracing::info!(plugin, "state cleared for the replay");
        }
        tracing::info!(plugin, from, "replaying the log from sequence {from}");
        self.start(&running.file).map_err(ReplayError::Restart)?;
        self.status()
            .into_iter()
            .find(|p| p.name == plugin)
            .ok_or_else(|| ReplayError::NoPlugin(plugin.to_string()))
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
    /// The version the serving build reports.
    pub(crate) fn version(&self) -> String {
        self.release().version
    }

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
