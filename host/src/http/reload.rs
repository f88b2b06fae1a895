//! Files read again when they change (the token file, the TLS certificate
//! and key): looked at on use, at most once per [`RECHECK_EVERY`], by their
//! modification time and length. A version that does not load is tried
//! again at the next look, so a pair of files written one after the other
//! loads once both are in place.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

/// How often, at most, the files are looked at again.
pub const RECHECK_EVERY: Duration = Duration::from_secs(1);

/// What identifies a version of a file: its modification time and length.
type Stamp = Option<(SystemTime, u64)>;

fn stamp(path: &Path) -> Stamp {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

/// Some files, and the versions of them last loaded.
#[derive(Debug)]
pub struct Watched {
    files: Vec<PathBuf>,
    /// When the files were last looked at, and the versions loaded.
    checked: Mutex<(Instant, Vec<Stamp>)>,
}

impl Watched {
    /// `files`, as they are now (just loaded).
    pub fn new(files: &[&Path]) -> Watched {
        Watched {
            files: files.iter().map(|f| f.to_path_buf()).collect(),
            checked: Mutex::new((Instant::now(), files.iter().map(|f| stamp(f)).collect())),
        }
    }

    /// If [`RECHECK_EVERY`] has passed and a file changed since it was last
    /// loaded, run `load`; when it succeeds the new versions count as
    /// loaded. Callers wait for one another.
    pub fn reload_if_changed(&self, load: impl FnOnce() -> bool) {
        let mut checked = self.checked.lock().unwrap_or_else(|p| p.into_inner());
        if checked.0.elapsed() < RECHECK_EVERY {
            return;
        }
        checked.0 = Instant::now();
        let now: Vec<Stamp> = self.files.iter().map(|f| stamp(f)).collect();
        if now != checked.1 && load() {
            checked.1 = now;
        }
    }
}
