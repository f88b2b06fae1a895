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

mod pump;
pub mod watch;
mod worker;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;

use prometheus_client::metrics::counter::Counter;
use serde::Serialize;

use crate::bus::{Queue, CHUNK_EVENTS_MAX};
use crate::dispatch::Dispatch;
use crate::metrics::{self, Metrics};
use crate::runtime::{self, kv, CallError, InstanceConfig, LoadError, Runtime};
use crate::store::progress::Cursor;
use crate::store::StoreError;
use crate::topic::{Pattern, TopicError};

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
        }
    }
}

/// Why a plugin did not start.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    /// The file could not be loaded.
    #[error(transparent)]
    Load(#[from] LoadError),
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
}

/// A new version, loaded and initialised, waiting for the worker to take it
/// at its next batch boundary.
pub(crate) struct Swap {
    instance: runtime::PluginInstance,
    release: Release,
    /// When it was offered.
    offered: std::time::Instant,
}

/// A running plugin's identity and live counters.
pub struct RunningPlugin {
    name: String,
    file: PathBuf,
    release: RwLock<Release>,
    subscriptions: Vec<String>,
    /// A new version for the worker to swap in.
    swap: Mutex<Option<Swap>>,
    /// Why the last new version of the file was not swapped in, if it was not.
    reload_error: Mutex<Option<String>>,
    /// How long delivery stopped for the last swap, in µs (`u64::MAX`: none
    /// yet).
    last_swap_pause_us: AtomicU64,
    handled: Counter,
    failed: Counter,
    retried: Counter,
    /// The highest sequence this plugin has finished with.
    cursor: AtomicU64,
    /// Events waiting in its queue.
    depth: Arc<AtomicUsize>,
    /// Set to make the worker look at its re-drive list.
    redrive_wanted: AtomicBool,
    /// Set to stop this plugin alone (replay): its reader stops and its
    /// worker abandons what it has in hand.
    stop: Arc<AtomicBool>,
}

/// What `/v1/plugins` and `plugbus plugins` show for one plugin.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct PluginStatus {
    /// The plugin's name (file stem).
    pub name: String,
    /// The plugin file.
    pub file: String,
    /// `running` or `failed`.
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
    /// Each plugin's state in memory mode, kept across its restarts.
    memory_kv: Mutex<std::collections::HashMap<String, kv::Backend>>,
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
            memory_kv: Mutex::default(),
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
        let mut errors = Vec::new();
        for file in files {
            if let Err(e) = self.start(&file) {
                self.record_failure(&stem(&file), &file, &e);
                errors.push(e);
            }
        }
        Ok(errors)
    }

    /// Load and start the plugin in `file`.
    pub fn start(&self, file: &Path) -> Result<Arc<RunningPlugin>, PluginError> {
        let loaded = Arc::new(self.runtime.load_file(file)?);
        let name = loaded.name().to_string();
        let kv = self.bucket(&name);
        let config = InstanceConfig {
            config: Vec::new(),
            hops_max: self.settings.hops_max,
            kv: kv.clone(),
        };
        let (instance, info) =
            runtime::instantiate(loaded.clone(), config).map_err(|source| PluginError::Start {
                file: file.to_path_buf(),
                source,
            })?;
        let patterns = check_subscriptions(file, &info.subscriptions)?;
        if info.name != name {
            tracing::info!(plugin = %name, reports = %info.name, "plugin calls itself by another name; plugbus uses the file name");
        }
        let labels = metrics::plugin(&name);
        let stop = Arc::new(AtomicBool::new(false));
        // Where delivery starts: after the stored cursor in durable mode
        // (a new plugin starts at the earliest event), at once in memory.
        let (queue, cursor_store, start) = match &self.dispatch {
            Dispatch::Memory(bus) => (
                bus.subscribe(&name, patterns, self.settings.queue_events_max),
                None,
                Cursor::default(),
            ),
            Dispatch::Durable(log) => {
                let cursor_err = |source| PluginError::Cursor {
                    file: file.to_path_buf(),
                    source,
                };
                let start = match log.store().cursor_state(&name).map_err(cursor_err)? {
                    Some(cursor) => cursor,
                    None => {
                        let start = if self.settings.new_plugins_start_latest {
                            log.head()
                        } else {
                            0
                        };
                        // Where a new plugin starts sticks across restarts.
                        log.store().set_cursor(&name, start).map_err(cursor_err)?;
                        tracing::info!(plugin = %name, "new plugin: starts after sequence {start}");
                        Cursor::at(start)
                    }
                };
                let from = start.through + 1;
                let (tx, queue) =
                    Queue::channel((self.settings.queue_events_max / CHUNK_EVENTS_MAX).max(2));
                let store = log.store().clone();
                let (log, all, own, pump_name) = (
                    log.clone(),
                    self.stopping.clone(),
                    stop.clone(),
                    name.clone(),
                );
                let stopped = move || all.load(Ordering::Acquire) || own.load(Ordering::Acquire);
                let pump = std::thread::Builder::new()
                    .name(format!("pump-{name}"))
                    .spawn(move || pump::run(&log, &pump_name, &patterns, &tx, from, &stopped))
                    .map_err(|source| PluginError::Thread {
                        file: file.to_path_buf(),
                        source,
                    })?;
                self.pumps
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push((name.clone(), pump));
                (queue, Some(store), start)
            }
        };
        let plugin = Arc::new(RunningPlugin {
            name: name.clone(),
            file: file.to_path_buf(),
            release: RwLock::new(Release {
                version: info.version.clone(),
                content_hash: short_hash(&loaded),
            }),
            subscriptions: info.subscriptions.clone(),
            swap: Mutex::default(),
            reload_error: Mutex::default(),
            last_swap_pause_us: AtomicU64::new(u64::MAX),
            handled: self.metrics.handled.get_or_create(&labels).clone(),
            failed: self.metrics.failed.get_or_create(&labels).clone(),
            retried: self.metrics.retried.get_or_create(&labels).clone(),
            cursor: AtomicU64::new(start.low()),
            depth: queue.depth_handle(),
            // Look once at start: re-drives may be pending from before.
            redrive_wanted: AtomicBool::new(true),
            stop,
        });
        let worker = worker::Worker::new(
            instance,
            worker::Source {
                queue,
                cursor_store,
                start,
                kv,
            },
            self.dispatch.clone(),
            plugin.clone(),
            &self.metrics,
            self.settings.clone(),
        );
        let handle = std::thread::Builder::new()
            .name(format!("plugin-{name}"))
            .spawn(move || worker.run())
            .map_err(|source| {
                if let Dispatch::Memory(bus) = &self.dispatch {
                    bus.unsubscribe(&name);
                }
                PluginError::Thread {
                    file: file.to_path_buf(),
                    source,
                }
            })?;
        self.workers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((name.clone(), handle));
        tracing::info!(
            plugin = %name,
            version = %info.version,
            subscriptions = ?info.subscriptions,
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
                PluginStatus {
                    name: p.name.clone(),
                    file: p.file.display().to_string(),
                    state: "running".into(),
                    error: p
                        .reload_error
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .clone(),
                    version: release.version,
                    content_hash: release.content_hash,
                    subscriptions: p.subscriptions.clone(),
                    handled: p.handled.get(),
                    failed: p.failed.get(),
                    retried: p.retried.get(),
                    queue_depth: p.depth.load(Ordering::Relaxed),
                    cursor: p.cursor.load(Ordering::Relaxed),
                    lag: head.map(|h| h.saturating_sub(p.cursor.load(Ordering::Relaxed))),
                    swap_pause_us: Some(p.last_swap_pause_us.load(Ordering::Acquire))
                        .filter(|&us| us != u64::MAX),
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
                    subscriptions: Vec::new(),
                    handled: 0,
                    failed: 0,
                    retried: 0,
                    queue_depth: 0,
                    cursor: 0,
                    lag: None,
                    swap_pause_us: None,
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
        let running = self
            .running
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .find(|p| p.name == plugin)
            .cloned()?;
        running.stop.store(true, Ordering::Release);
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
        if let Dispatch::Memory(bus) = &self.dispatch {
            bus.unsubscribe(plugin);
        }
        self.running
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|p| p.name != plugin);
        Some(running)
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
        let running = self
            .running
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .find(|p| p.name == name)
            .cloned();
        let Some(running) = running else {
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
                self.stop_one(&name);
                match self.start(file) {
                    Ok(_) => Ok(Reload::Restarted),
                    Err(e) => {
                        self.record_failure(&name, file, &e);
                        Err(e)
                    }
                }
            }
            Ok(Some((swap, false))) => {
                *running
                    .reload_error
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()) = None;
                *running.swap.lock().unwrap_or_else(|p| p.into_inner()) = Some(swap);
                Ok(Reload::Offered)
            }
            Ok(None) => Ok(Reload::Unchanged),
            Err(e) => {
                tracing::error!(plugin = %name, "new version not loaded; the running one keeps serving: {e}");
                self.metrics
                    .reload_failures
                    .get_or_create(&metrics::plugin(&name))
                    .inc();
                *running
                    .reload_error
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()) = Some(format!(
                    "new version not loaded (the running one keeps serving): {e}"
                ));
                Err(e)
            }
        }
    }

    /// Load and initialise the version of `running` in `file`: `None` if it
    /// is the one running (or already offered), else the swap and whether
    /// its subscriptions differ.
    fn prepare(
        &self,
        running: &RunningPlugin,
        file: &Path,
    ) -> Result<Option<(Swap, bool)>, PluginError> {
        let loaded = Arc::new(self.runtime.load_file(file)?);
        let hash = short_hash(&loaded);
        // The version the worker runs next: the one offered, if any.
        let next = running
            .swap
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|s| s.release.content_hash.clone())
            .unwrap_or_else(|| running.release().content_hash);
        if next == hash {
            return Ok(None);
        }
        let config = InstanceConfig {
            config: Vec::new(),
            hops_max: self.settings.hops_max,
            kv: self.bucket(&running.name),
        };
        let (instance, info) =
            runtime::instantiate(loaded, config).map_err(|source| PluginError::Start {
                file: file.to_path_buf(),
                source,
            })?;
        check_subscriptions(file, &info.subscriptions)?;
        let moved = info.subscriptions != running.subscriptions;
        Ok(Some((
            Swap {
                instance,
                release: Release {
                    version: info.version,
                    content_hash: hash,
                },
                offered: std::time::Instant::now(),
            },
            moved,
        )))
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
                .set(p.depth.load(Ordering::Relaxed) as i64);
            if let Dispatch::Durable(log) = &self.dispatch {
                let lag = log.head().saturating_sub(p.cursor.load(Ordering::Relaxed));
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
        match &self.dispatch {
            Dispatch::Memory(bus) => bus.close(),
            Dispatch::Durable(_) => {
                self.stopping.store(true, Ordering::Release);
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

impl RunningPlugin {
    fn release(&self) -> Release {
        self.release
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The new version offered, if any, for the worker to swap in.
    pub(crate) fn take_swap(&self) -> Option<Swap> {
        let swap = self.swap.lock().unwrap_or_else(|p| p.into_inner()).take()?;
        *self.release.write().unwrap_or_else(|p| p.into_inner()) = swap.release.clone();
        Some(swap)
    }
}

impl Swap {
    /// The new instance, and how long it waited for a batch boundary.
    pub(crate) fn into_parts(self) -> (runtime::PluginInstance, std::time::Duration, String) {
        (
            self.instance,
            self.offered.elapsed(),
            self.release.content_hash,
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
