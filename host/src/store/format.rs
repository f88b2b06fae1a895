//! The data directory's format version: `DIR/format`, one line
//! (`plugbus data format 2`), written when a directory is made or
//! upgraded. A release opens the formats it can read (upgrading them in
//! place, which only ever adds what the older one lacked) and refuses a
//! newer one, naming both, instead of misreading it.
//!
//! Formats: 1, every directory before the file existed (log records of
//! codec versions 1 and 2, cursors, state, dead letters, chains); 2 adds the
//! record of sequences lost to damage (`store::lost`), which format 1
//! simply does not have.
//!
//! It owns the version file; `store` calls it before the engine opens.

use std::path::Path;

use super::StoreError;

/// The format this build writes.
pub const FORMAT: u32 = 2;
/// The oldest format this build opens.
pub const FORMAT_OLDEST: u32 = 1;
/// The version file in the data directory.
pub const FORMAT_FILE: &str = "format";

const PREFIX: &str = "plugbus data format ";

/// The format of `dir`: its file's, else 1 for a directory that already
/// holds a store, else none (a new directory).
fn found(dir: &Path) -> Result<Option<u32>, StoreError> {
    let path = dir.join(FORMAT_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => text
            .trim()
            .strip_prefix(PREFIX)
            .and_then(|v| v.parse().ok())
            .map(Some)
            .ok_or_else(|| StoreError::Open {
                dir: dir.to_path_buf(),
                reason: format!(
                    "{} should read `{PREFIX}N` and reads {text:?}; restore it from a backup, or write the format of the release that made the directory",
                    path.display()
                ),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let has_store = dir.join("version").exists() || dir.join("keyspaces").exists();
            Ok(has_store.then_some(1))
        }
        Err(e) => Err(StoreError::Open {
            dir: dir.to_path_buf(),
            reason: format!("{}: {e}", path.display()),
        }),
    }
}

/// Check that this build reads `dir`'s format; returns it (none: new).
pub(super) fn check(dir: &Path) -> Result<Option<u32>, StoreError> {
    let format = found(dir)?;
    match format {
        Some(f) if f > FORMAT => Err(StoreError::NewerFormat {
            dir: dir.to_path_buf(),
            found: f,
        }),
        Some(f) if f < FORMAT_OLDEST => Err(StoreError::OlderFormat {
            dir: dir.to_path_buf(),
            found: f,
        }),
        _ => Ok(format),
    }
}

/// Write this build's format into `dir` (after it opened), if it is not
/// there yet; says so when that upgrades an older one.
pub(super) fn write(dir: &Path, was: Option<u32>) -> Result<(), StoreError> {
    if was == Some(FORMAT) {
        return Ok(());
    }
    let path = dir.join(FORMAT_FILE);
    super::disk::replace_file(&path, format!("{PREFIX}{FORMAT}\n").as_bytes()).map_err(|e| {
        StoreError::Open {
            dir: dir.to_path_buf(),
            reason: format!("writing {}: {e}", path.display()),
        }
    })?;
    if let Some(old) = was {
        tracing::info!(data = %dir.display(), "data directory upgraded from format {old} to {FORMAT}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::{ev, temp_dir};
    use crate::store::{Fsync, Store};

    #[test]
    fn a_new_directory_gets_the_format_an_older_one_is_upgraded_a_newer_one_refused() {
        let dir = temp_dir("format");
        let store = Store::open(&dir, Fsync::Always).expect("new");
        store.append(&mut [ev(1)]).expect("append");
        drop(store);
        let text = std::fs::read_to_string(dir.join(FORMAT_FILE)).expect("written");
        assert_eq!(text, format!("plugbus data format {FORMAT}\n"));
        // A directory of format 1 has no file: opened and upgraded.
        std::fs::remove_file(dir.join(FORMAT_FILE)).expect("remove");
        assert_eq!(found(&dir).expect("reads"), Some(1));
        let store = Store::open(&dir, Fsync::Always).expect("format 1 opens");
        assert_eq!(store.last_sequence(), 1);
        drop(store);
        assert_eq!(found(&dir).expect("reads"), Some(FORMAT));
        // A newer release's directory is refused, naming both formats.
        std::fs::write(dir.join(FORMAT_FILE), "plugbus data format 9\n").expect("write");
        let err = Store::open(&dir, Fsync::Always).err().expect("refused");
        let text = err.to_string();
        assert!(
            text.contains("format 9")
                && text.contains(&format!("formats {FORMAT_OLDEST} to {FORMAT}")),
            "{text}"
        );
        std::fs::write(dir.join(FORMAT_FILE), "garbage").expect("write");
        let err = Store::open(&dir, Fsync::Always).err().expect("refused");
        assert!(err.to_string().contains("should read"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
