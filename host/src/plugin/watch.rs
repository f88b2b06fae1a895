//! Watching the plugin directory: the operator deploys by dropping files.
//!
//! A thread takes the directory's change notices (`notify`) and, once a
//! plugin's file has been quiet for [`SETTLE`], brings the registry in line
//! with it: a new `NAME.wasm` starts a plugin, a changed one is loaded and
//! swapped in at the worker's next batch boundary, a removed one stops the
//! plugin (its cursor and state stay). A new, changed or removed manifest
//! (`NAME.toml`) restarts the plugin with it at its cursor; one that cannot
//! be used is reported and the plugin keeps its settings. Only names ending
//! in `.wasm` (and `.toml` for manifests) count,
//! so a deploy script writes `NAME.wasm.tmp` (or a dotfile) and renames it
//! into place: the rename is atomic, and the host never sees half a file.
//! A file copied in place in several writes is still safe: it is loaded
//! only once quiet, and a file that does not compile is reported while the
//! running version keeps serving; the next complete write is picked up.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use notify::{RecursiveMode, Watcher};

use super::Registry;

/// How long a plugin file must be quiet before it is acted on.
pub const SETTLE: Duration = Duration::from_millis(200);

/// The watcher thread and the stop flag it checks.
pub struct DirWatch {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// Why the directory cannot be watched.
#[derive(Debug, thiserror::Error)]
#[error("cannot watch the plugin directory {dir}: {reason}; plugins there are loaded at start only (restart to pick up changes), or fix the directory")]
pub struct WatchError {
    /// The directory.
    pub dir: PathBuf,
    /// What failed.
    pub reason: String,
}

impl DirWatch {
    /// Start watching `dir` for `registry`.
    pub fn start(registry: Arc<Registry>, dir: &Path) -> Result<DirWatch, WatchError> {
        let err = |reason: String| WatchError {
            dir: dir.to_path_buf(),
            reason,
        };
        let (tx, rx) = crossbeam_channel::unbounded();
        let mut watcher = notify::recommended_watcher(move |res| {
            let _ = tx.send(res);
        })
        .map_err(|e| err(e.to_string()))?;
        watcher
            .watch(dir, RecursiveMode::NonRecursive)
            .map_err(|e| err(e.to_string()))?;
        let stop = Arc::new(AtomicBool::new(false));
        let (flag, dir) = (stop.clone(), dir.to_path_buf());
        let thread = std::thread::Builder::new()
            .name("plugin-watch".into())
            .spawn(move || {
                // The watcher lives as long as the thread.
                let _watcher = watcher;
                // Per plugin: when its files last changed, and whether its
                // manifest was one of them.
                let mut quiet_since: HashMap<String, (Instant, bool)> = HashMap::new();
                while !flag.load(Ordering::Acquire) {
                    match rx.recv_timeout(SETTLE / 4) {
                        // Reading a file (the host's own loads included) is
                        // no change.
                        Ok(Ok(event)) if matches!(event.kind, notify::EventKind::Access(_)) => {}
                        Ok(Ok(event)) => {
                            for (name, manifest) in
                                event.paths.iter().filter_map(|p| plugin_file(p))
                            {
                                let seen =
                                    quiet_since.entry(name).or_insert((Instant::now(), false));
                                *seen = (Instant::now(), seen.1 || manifest);
                            }
                        }
                        Ok(Err(e)) => {
                            tracing::error!(dir = %dir.display(), "plugin directory watch: {e}")
                        }
                        Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
                        Err(crossbeam_channel::RecvTimeoutError::Disconnected) => break,
                    }
                    let settled: Vec<(String, bool)> = quiet_since
                        .iter()
                        .filter(|(_, (at, _))| at.elapsed() >= SETTLE)
                        .map(|(name, (_, manifest))| (name.clone(), *manifest))
                        .collect();
                    for (name, manifest) in settled {
                        quiet_since.remove(&name);
                        apply(&registry, &dir, &name, manifest);
                    }
                }
            })
            .map_err(|e| err(format!("cannot start the watcher thread: {e}")))?;
        Ok(DirWatch {
            stop,
            thread: Some(thread),
        })
    }

    /// Stop watching (before the registry shuts down).
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                tracing::error!("the plugin directory watcher panicked");
            }
        }
    }
}

/// Bring plugin `name` in line with its files in `dir`; `manifest` when its
/// manifest changed.
fn apply(registry: &Registry, dir: &Path, name: &str, manifest: bool) {
    let file = dir.join(format!("{name}.wasm"));
    if file.is_file() {
        // A failure is logged, shown in the status and counted by reload.
        let done = if manifest {
            registry.reload_manifest(&file)
        } else {
            registry.reload(&file)
        };
        if let Ok(done) = done {
            tracing::debug!(plugin = name, ?done, "plugin file changed");
        }
    } else if !manifest {
        registry.remove(name);
    }
}

/// The plugin a path in the directory is a file of, and whether it is its
/// manifest: `NAME.wasm` or `NAME.toml`, not a dotfile.
fn plugin_file(path: &Path) -> Option<(String, bool)> {
    let file = path.file_name()?.to_str()?;
    let (name, manifest) = match file.strip_suffix(".wasm") {
        Some(name) => (name, false),
        None => (file.strip_suffix(".toml")?, true),
    };
    (!name.is_empty() && !name.starts_with('.')).then(|| (name.to_string(), manifest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_wasm_and_toml_files_name_a_plugin() {
        assert_eq!(
            plugin_file(Path::new("/p/email.wasm")),
            Some(("email".into(), false))
        );
        assert_eq!(plugin_file(Path::new("/p/email.wasm.tmp")), None);
        assert_eq!(plugin_file(Path::new("/p/.email.wasm")), None);
        assert_eq!(
            plugin_file(Path::new("/p/email.toml")),
            Some(("email".into(), true))
        );
        assert_eq!(plugin_file(Path::new("/p/email.toml.tmp")), None);
        assert_eq!(plugin_file(Path::new("/p/.wasm")), None);
    }
}
