//! Optimized builds in the background: a plugin started on a baseline
//! build (tiered compilation) is compiled optimized in a child process, one
//! at a time, and swapped in like a new version.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;

use super::{PluginError, Registry};
use crate::runtime;

/// The queue of plugin files (with their stack caps) to compile optimized,
/// the content hashes already asked for, and the thread compiling them.
pub(super) struct Optimizer {
    pub(super) queue: crossbeam_channel::Sender<(PathBuf, usize)>,
    asked: std::collections::HashSet<String>,
    pub(super) thread: JoinHandle<()>,
}

impl Registry {
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
    pub(super) fn optimize_later(&self, file: &Path, loaded: &runtime::LoadedPlugin, stack: usize) {
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
}
