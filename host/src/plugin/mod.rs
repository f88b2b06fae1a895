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
mod error;
pub mod manifest;
pub mod manifest_reference;
mod optimizer;
mod settings;
mod status;
mod swap;
pub mod watch;
mod worker;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;

use crate::backend::local::{Commit, LocalConsumer, LocalOptions};
use crate::backend::Consumer;
use crate::bus::{OrderingKey, Overflow, SubscribeOptions};
use crate::dispatch::Dispatch;
use crate::metrics::{self, DropReason, Metrics};
use crate::runtime::{self, kv, Info, InstanceConfig, Limits, PublishPolicy, RateLimit, Runtime};
use crate::store::progress::Cursor;

pub use error::{PluginError, ReplayError};
pub use manifest::{Manifest, ManifestError};
use optimizer::Optimizer;
use plugbus_contract::topic::Pattern;
use settings::PluginSettings;
pub use settings::{DeliverySettings, RetryOrdering};
use status::RateSample;
pub use status::{PluginLimits, PluginStatus, StormStatus};
pub use swap::Reload;
pub(crate) use swap::Swap;

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
    /// Where the log, dead letters and state are kept, for the API: the
    /// embedded store or the broker (none in memory mode).
    backend: Option<Arc<dyn crate::backend::Backend>>,
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
        let backend: Option<Arc<dyn crate::backend::Backend>> = match &dispatch {
            Dispatch::Durable(log) => Some(Arc::new(
                crate::backend::embedded::EmbeddedBackend::new(log.clone(), log.dedup_window()),
            )),
            Dispatch::Broker(b) => Some(b.clone()),
            Dispatch::Memory(_) => None,
        };
        Registry {
            dispatch,
            backend,
            runtime,
            metrics,
            settings,
            running: RwLock::default(),
            failed: RwLock::default(),
            workers: Mutex::default(),
            stopping: Arc::default(),
            optimizer: Mutex::default(),
            memory_kv: Mutex::default(),
            chains: Arc::default(),
            lifecycle: Mutex::default(),
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
        // Each worker's consumer: on the embedded store and a broker from
        // the backend, in memory on the bus's queues.
        let strict = settings.delivery.ordering_of(&name) == RetryOrdering::Strict;
        let broker_err = |e: crate::backend::BackendError| PluginError::Broker {
            file: file.to_path_buf(),
            reason: e.to_string(),
        };
        let (consumers, lease): (Vec<Box<dyn Consumer>>, Duration) = match &self.dispatch {
            Dispatch::Memory(bus) => {
                let queues = bus.subscribe_with(
                    &name,
                    patterns,
                    SubscribeOptions {
                        capacity: self.settings.queue_events_max,
                        parts: workers,
                        key: key.clone(),
                        overflow: settings.overflow,
                    },
                );
                let consumers = queues
                    .into_iter()
                    .map(|queue| {
                        let consumer = LocalConsumer::new(
                            &name,
                            queue,
                            Commit::Memory(self.memory_commit(&name, kv.clone())),
                            LocalOptions {
                                strict: strict.then(|| key.clone()),
                                start: Cursor::default(),
                                redrives: None,
                                drain_on_close: true,
                            },
                            None,
                        );
                        Box::new(consumer) as Box<dyn Consumer>
                    })
                    .collect();
                (consumers, Duration::MAX)
            }
            Dispatch::Durable(_) | Dispatch::Broker(_) => {
                let Some(backend) = self.backend.clone() else {
                    return Err(broker_err(crate::backend::BackendError::Closed));
                };
                // On a broker, a lease longer than a batch may take: three
                // deadlines. The embedded store has nobody to take over.
                let lease = Duration::from_millis(
                    self.settings
                        .broker_lease_ms
                        .max(3 * settings.limits.deadline_ms),
                );
                let options = crate::backend::ConsumerOptions {
                    patterns,
                    host: self.settings.broker_host.clone(),
                    lease,
                    start_latest: self.settings.new_plugins_start_latest,
                    parts: workers,
                    key: key.clone(),
                    strict,
                    queue_events_max: self.settings.queue_events_max,
                    drop_when_full: (settings.overflow == Overflow::Drop)
                        .then(|| self.metrics.drop_counter(&name, DropReason::OverflowDrop)),
                };
                let consumers = backend.consumers(&name, options).map_err(|e| match e {
                    crate::backend::BackendError::Store(source) => PluginError::Cursor {
                        file: file.to_path_buf(),
                        source,
                    },
                    other => broker_err(other),
                })?;
                (consumers, lease)
            }
        };
        let gauges: Vec<crate::backend::local::Gauges> = consumers
            .iter()
            .map(|c| c.gauges().unwrap_or_default())
            .collect();
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
            cursors: gauges.iter().map(|g| g.done_through.clone()).collect(),
            depths: gauges.iter().map(|g| g.queued.clone()).collect(),
            stop,
            quarantine: Mutex::new(vec![None; workers]),
            rate: Mutex::new(RateSample::default()),
            conditions: conditions::Conditions::new(
                workers,
                settings.delivery.batch_events_max.max(1),
                self.metrics.batch_splits.get_or_create(&labels).clone(),
                self.metrics.worker_deaths.get_or_create(&labels).clone(),
            ),
            settings: settings.clone(),
        });
        let mut spawned = Vec::new();
        let durable = !matches!(self.dispatch, Dispatch::Memory(_));
        for (index, (instance, consumer)) in instances.into_iter().zip(consumers).enumerate() {
            let worker = worker::Worker::new(
                instance,
                worker::Source {
                    consumer,
                    lease,
                    durable,
                    index,
                    stopping: self.stopping.clone(),
                },
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

    /// The durable store, when there is one.
    pub fn store(&self) -> Option<&Arc<crate::store::Store>> {
        match &self.dispatch {
            Dispatch::Durable(log) => Some(log.store()),
            Dispatch::Memory(_) | Dispatch::Broker(_) => None,
        }
    }

    /// Where the log, dead letters and state are kept, outside memory mode.
    pub fn backend(&self) -> Option<Arc<dyn crate::backend::Backend>> {
        self.backend.clone()
    }

    /// Where `plugin`'s key-value state is, if it is a plugin this host
    /// knows (running or failed).
    pub fn state_of(&self, plugin: &str) -> Option<kv::Backend> {
        if !self.names().iter().any(|n| n == plugin) {
            return None;
        }
        Some(self.bucket(plugin))
    }

    /// What commits a memory-mode settlement of `plugin`: its state writes
    /// into `kv`, then its follow-up events published (those that find no
    /// room are counted as dropped).
    fn memory_commit(&self, plugin: &str, kv: kv::Backend) -> crate::backend::local::MemoryCommit {
        let (dispatch, name) = (self.dispatch.clone(), plugin.to_string());
        let dropped = self
            .metrics
            .drop_counter(plugin, DropReason::FollowUpQueueFull);
        Box::new(move |writes, follow_ups, expected| {
            match kv.apply_if(&name, expected, writes.into_iter().collect()) {
                Ok(()) => {}
                Err(kv::ApplyError::Changed(key)) => {
                    return Err(crate::backend::BackendError::Conflict {
                        plugin: name.clone(),
                        key,
                    })
                }
                Err(kv::ApplyError::Failed(e)) => {
                    tracing::error!(plugin = %name, "state not kept: {e}")
                }
            }
            if !follow_ups.is_empty() {
                let n = follow_ups.len();
                if let Err(e) = dispatch.publish(follow_ups) {
                    dropped.inc_by((n - e.accepted()) as u64);
                    tracing::error!(plugin = %name, "follow-up events lost: {e}");
                }
            }
            Ok(())
        })
    }

    fn bucket(&self, plugin: &str) -> kv::Backend {
        match &self.dispatch {
            Dispatch::Durable(log) => kv::Backend::Durable(log.store().clone()),
            Dispatch::Broker(b) => kv::Backend::Broker(b.clone()),
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
        let backend = self.backend().ok_or(ReplayError::NotDurable)?;
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
