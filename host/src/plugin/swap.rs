//! Changes to running plugins: a changed file loaded and initialised off
//! the delivery path and offered to the worker as a [`Swap`] it takes at
//! its next batch boundary, a changed manifest, a restart when the
//! subscriptions change, removal (keeping cursor and state), and shutdown.

use super::start::Instances;
use super::*;

/// A new version, loaded and initialised, waiting for the worker to take it
/// at its next batch boundary.
pub(crate) struct Swap {
    pub(super) instance: runtime::PluginInstance,
    pub(super) release: Release,
    /// When it was offered.
    pub(super) offered: std::time::Instant,
    /// The same file as the worker's running version, optimized: no new
    /// version (a new version's optimized build offered before the worker
    /// took the new version is not a tier-up for it).
    pub(super) tier_up: bool,
}

/// A new version ready to be offered: one swap per worker, whether its
/// subscriptions differ, and the schemas it declares.
type Prepared = (Vec<Swap>, bool, Arc<crate::schema::Declared>);

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

impl Registry {
    /// Stop the running plugin called `plugin` alone: its reader and worker
    /// stop (what they have in hand is abandoned; its cursor says what is
    /// still to do) and it leaves the running list. Its cursor and state
    /// stay in the store. Returns it, if it was running.
    pub(super) fn stop_one(&self, plugin: &str) -> Option<Arc<RunningPlugin>> {
        let running = self.running_plugin(plugin)?;
        running.stop.store(true, Ordering::Release);
        self.join_threads(plugin);
        self.backend().stopped(plugin);
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

    /// Wait for the workers of `plugin`, told to stop (each drops its
    /// consumer, and the last one the plugin's log reader).
    pub(super) fn join_threads(&self, plugin: &str) {
        let mine: Vec<JoinHandle<()>> = {
            let mut all = self.workers.lock().unwrap_or_else(|p| p.into_inner());
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
            Ok(Some((_, true, _))) => {
                // New subscriptions: a restart at the cursor.
                self.restart(&name, file)
            }
            Ok(Some((swaps, false, declared))) => {
                *running.declared.write().unwrap_or_else(|p| p.into_inner()) = declared;
                *running
                    .reload_error
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()) = None;
                let mut offered = running.swap.lock().unwrap_or_else(|p| p.into_inner());
                let replaced = std::mem::take(&mut *offered);
                *offered = swaps
                    .into_iter()
                    .enumerate()
                    .map(|(i, mut swap)| {
                        // The optimized build of a new version a worker has
                        // not taken yet is still a new version to it.
                        if replaced
                            .get(i)
                            .is_some_and(|r| r.as_ref().is_some_and(|r| !r.tier_up))
                        {
                            swap.tier_up = false;
                        }
                        Some(swap)
                    })
                    .collect();
                drop(offered);
                drop(replaced);
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
    /// instance per worker, and check that its declared schemas fit the
    /// running plugins' and that what it publishes in its shadow run
    /// (`plugin::shadow`) fits their readers: `None` if it is the one
    /// running (or already offered), else the swaps, whether its
    /// subscriptions differ and what it declares.
    fn prepare(
        &self,
        running: &RunningPlugin,
        file: &Path,
    ) -> Result<Option<Prepared>, PluginError> {
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
            declared,
            patterns,
            config,
        } = self.instances(&loaded, file, settings)?;
        if !tier_up {
            self.check_fit(&running.name, &info.version, &declared)?;
            let (shadow, _) = runtime::with_native_stack(settings.limits.stack_bytes_max, || {
                runtime::instantiate(loaded.clone(), config)
            })
            .map_err(|source| PluginError::Start {
                file: file.to_path_buf(),
                source,
            })?;
            self.shadow(running, shadow, &patterns, &info.version)?;
        }
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
        Ok(Some((swaps, moved, declared)))
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
        // Read once: a manifest that cannot be used, or whose declared
        // schemas do not fit the others', leaves the plugin as it runs.
        let ready = self.load(file).and_then(|(settings, loaded)| {
            let declared = self.declared(&loaded, file, &settings)?;
            self.check_fit(&name, &running.release().version, &declared)?;
            Ok((settings, loaded))
        });
        let (settings, loaded) = match ready {
            Ok(ready) => ready,
            Err(e) => {
                self.refused_change(
                    &running,
                    "manifest not applied (the plugin keeps running with its settings)",
                    &e,
                );
                return Err(e);
            }
        };
        tracing::info!(plugin = %name, "manifest changed: restarting the plugin at its cursor");
        self.stop_one(&name);
        match self.start_loaded(file, settings, Arc::new(loaded)) {
            Ok(_) => Ok(Reload::Restarted),
            Err(e) => {
                self.record_failure(&name, file, &e);
                Err(e)
            }
        }
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

    /// Stop: each worker finishes the batch in hand and stops (in memory
    /// mode once its queue, closed now, is empty), and this waits for them.
    /// What they have not taken is delivered after a restart (durable, a
    /// broker); the log closes last, after the workers' follow-up events.
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
        self.backend().close();
        let workers = std::mem::take(&mut *self.workers.lock().unwrap_or_else(|p| p.into_inner()));
        for (_, w) in workers {
            if w.join().is_err() {
                tracing::error!("a plugin worker panicked during shutdown");
            }
        }
        self.dispatch.backend().finish();
    }
}
