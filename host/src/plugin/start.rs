//! Starting a plugin: its manifest and file loaded, one instance per
//! worker made (`init` runs), a consumer per worker opened on the backend
//! (or the in-memory bus), the plugin's record, then a worker thread per
//! consumer. A step that fails leaves nothing running; the caller records
//! the failure.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use super::{
    check_subscriptions, conditions, short_hash, stem, worker, PluginError, PluginSettings,
    RateSample, Registry, Release, RetryOrdering, RunningPlugin, Until,
};
use crate::backend::Consumer;
use crate::bus::Overflow;
use crate::metrics::{self, DropReason};
use crate::runtime::{self, Info, InstanceConfig};
use crate::schema::Declared;
use plugbus_contract::topic::Pattern;

/// A plugin's instances, one per worker, just initialised.
pub(super) struct Instances {
    pub(super) instances: Vec<runtime::PluginInstance>,
    /// What `init` said.
    pub(super) info: Info,
    /// The subscriptions in force, as written.
    pub(super) subscriptions: Vec<String>,
    /// The same, parsed.
    pub(super) patterns: Vec<Pattern>,
    /// The schemas it declares.
    pub(super) declared: Arc<Declared>,
    /// How they were made, for one more (a shadow run's).
    pub(super) config: InstanceConfig,
}

impl Registry {
    /// Read the manifest of the plugin in `file` and compile it.
    pub(super) fn load(
        &self,
        file: &Path,
    ) -> Result<(PluginSettings, runtime::LoadedPlugin), PluginError> {
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
    pub(super) fn instances(
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
        let declared = self.declared(loaded, file, settings)?;
        let config = InstanceConfig {
            declared: declared.clone(),
            config: settings.config.clone(),
            hops_max: self.settings.hops_max,
            kv: bucket,
            limits: settings.limits.clone(),
            publish: settings.publish.clone(),
            output: settings.output.clone(),
            state: settings.state.clone(),
            timers: settings.timers,
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
            declared,
            config,
        })
    }

    /// Load and start the plugin in `file`.
    pub fn start(&self, file: &Path) -> Result<Arc<RunningPlugin>, PluginError> {
        let (settings, loaded) = self.load(file)?;
        self.start_loaded(file, settings, Arc::new(loaded))
    }

    /// Start the plugin in `file`, compiled as `loaded`, with `settings`:
    /// its instances (`init` runs), its consumers, its record, then one
    /// worker thread per consumer.
    pub(super) fn start_loaded(
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
            declared,
            ..
        } = self.instances(&loaded, file, &settings)?;
        self.optimize_later(file, &loaded, settings.limits.stack_bytes_max);
        if info.name != name {
            tracing::info!(plugin = %name, reports = %info.name, "plugin calls itself by another name; plugbus uses the file name");
        }
        let (consumers, lease) = self.open_consumers(&name, file, &settings, patterns)?;
        let plugin = self.plugin_record(
            &name,
            file,
            &settings,
            &loaded,
            &info,
            &subscriptions,
            &consumers,
            declared,
        );
        self.spawn_workers(&plugin, file, &settings, instances, consumers, lease)?;
        let workers = settings.concurrency.max(1);
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

    /// Each worker's consumer of the plugin `name` (from `file`), with the
    /// lease its events are held under: on the embedded store and a broker
    /// from the backend, in memory on the bus's queues.
    fn open_consumers(
        &self,
        name: &str,
        file: &Path,
        settings: &PluginSettings,
        patterns: Vec<Pattern>,
    ) -> Result<(Vec<Box<dyn Consumer>>, Duration), PluginError> {
        let name = name.to_string();
        let workers = settings.concurrency.max(1);
        let key = settings.delivery.ordering_key.clone();
        let strict = settings.delivery.ordering_of(&name) == RetryOrdering::Strict;
        let broker_err = |e: crate::backend::BackendError| PluginError::Broker {
            file: file.to_path_buf(),
            reason: e.to_string(),
        };
        {
            {
                let backend = self.backend().clone();
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
                    overflow: settings.overflow,
                };
                let consumers = backend.consumers(&name, options).map_err(|e| match e {
                    crate::backend::BackendError::Store(source) => PluginError::Cursor {
                        file: file.to_path_buf(),
                        source,
                    },
                    other => broker_err(other),
                })?;
                Ok((consumers, lease))
            }
        }
    }

    /// The record of the plugin `name` while it runs, shared by its
    /// workers, the API and the watcher.
    #[allow(clippy::too_many_arguments)]
    fn plugin_record(
        &self,
        name: &str,
        file: &Path,
        settings: &PluginSettings,
        loaded: &runtime::LoadedPlugin,
        info: &Info,
        subscriptions: &[String],
        consumers: &[Box<dyn Consumer>],
        declared: Arc<Declared>,
    ) -> Arc<RunningPlugin> {
        let name = name.to_string();
        let workers = settings.concurrency.max(1);
        let labels = metrics::plugin(&name);
        let stop = Arc::new(AtomicBool::new(false));
        let gauges: Vec<crate::backend::local::Gauges> = consumers
            .iter()
            .map(|c| c.gauges().unwrap_or_default())
            .collect();
        Arc::new(RunningPlugin {
            name: name.clone(),
            file: file.to_path_buf(),
            release: RwLock::new(Release {
                version: info.version.clone(),
                content_hash: short_hash(loaded),
                tier: loaded.tier(),
            }),
            subscriptions: subscriptions.to_vec(),
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
            declared: RwLock::new(declared),
        })
    }

    /// One worker thread per consumer of `plugin`, each with its instance.
    /// A thread that cannot start stops those that did.
    fn spawn_workers(
        &self,
        plugin: &Arc<RunningPlugin>,
        file: &Path,
        settings: &PluginSettings,
        instances: Vec<runtime::PluginInstance>,
        consumers: Vec<Box<dyn Consumer>>,
        lease: Duration,
    ) -> Result<(), PluginError> {
        let name = plugin.name.clone();
        let workers = settings.concurrency.max(1);
        let mut spawned = Vec::new();
        let durable = self.backend().capabilities().durable;
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
                    self.backend().stopped(&name);
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
        Ok(())
    }
}
