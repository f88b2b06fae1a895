//! `plugbus repair`: salvage a data directory whose journals are damaged,
//! offline. It never changes the damaged directory: it copies it (tables
//! hard-linked, they are immutable), cuts the damaged byte ranges out of
//! the copy's journals (into a quarantine file), opens the copy with the
//! ordinary store, finds exactly which sequences the log lost (the holes,
//! and an end short of what was acknowledged), records them so that
//! reading one answers that it is gone and new events are numbered after
//! them, and then swaps the copy in, keeping the original beside it as
//! `DIR.damaged-<time>`. With `dry_run` it does all of that on the copy and
//! removes it. The research behind it: `repair.md` (RocksDB's RepairDB,
//! SQLite's `.recover`, etcd's copy-before-cut).
//!
//! It owns the salvage; `journal` finds the damage, `lost` records it.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::journal::{self, Scan};
use super::lost::LostRange;
use super::progress::Cursor;
use super::{Fsync, Store, StoreError, MARK_FILE};

/// Why a repair could not be done.
#[derive(Debug, thiserror::Error)]
pub enum RepairError {
    /// No store there.
    #[error("{0} holds no plugbus store (no journal file): nothing to repair; check --data")]
    NotAStore(PathBuf),
    /// A host has the store open.
    #[error(
        "a plugbus host has {0} open: stop it first (repair works on a directory nobody writes to)"
    )]
    InUse(PathBuf),
    /// Reading, copying or writing failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The salvaged copy does not open.
    #[error(
        "the salvaged copy {dir} does not open ({source}); the original directory is unchanged"
    )]
    Store {
        /// The copy.
        dir: PathBuf,
        /// Why.
        source: StoreError,
    },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> RepairError {
    let what = what.into();
    move |source| RepairError::Io { what, source }
}

/// Damaged bytes cut out of one journal.
#[derive(Debug, Clone, Serialize)]
pub struct Cut {
    /// The journal.
    pub file: String,
    /// Where the damaged bytes start.
    pub offset: usize,
    /// How many.
    pub bytes: usize,
    /// What was wrong.
    pub reason: String,
    /// What its items were, as far as they can still be read: log
    /// records, cursors, plugins' state keys, dead letters.
    pub touches: Vec<String>,
}

/// A plugin's cursor after a repair, and the lost ranges ahead of it:
/// events it will never see.
#[derive(Debug, Clone, Serialize)]
pub struct CursorAhead {
    /// The cursor's name (the plugin, or one of its workers).
    pub cursor: String,
    /// Every event up to here is done.
    pub through: u64,
    /// Lost ranges after it.
    pub lost_ahead: Vec<(u64, u64)>,
}

/// An item of a journal batch: (keyspace id, key).
type Item = (u64, Vec<u8>);

/// What the salvaged copy holds once opened.
struct Found {
    lost: Vec<(u64, u64)>,
    acknowledged: u64,
    cursors: Vec<CursorAhead>,
    /// The engine's keyspace ids, by name.
    keyspaces: Vec<(u64, &'static str)>,
}

/// What the item `key` of the keyspace `name` is, for people.
fn describe(name: &str, key: &[u8]) -> String {
    let split = |k: &[u8]| -> (String, Vec<u8>) {
        let at = k.iter().position(|&b| b == 0).unwrap_or(k.len());
        (
            String::from_utf8_lossy(&k[..at]).into_owned(),
            k.get(at + 1..).unwrap_or_default().to_vec(),
        )
    };
    let seq = |k: &[u8]| super::sequence_of(k).map_or("?".into(), |s| s.to_string());
    match name {
        "log" => format!("log record from sequence {}", seq(key)),
        "cursors" => format!("cursor {}", String::from_utf8_lossy(key)),
        "kv" => {
            let (plugin, k) = split(key);
            format!("state {plugin}/{}", String::from_utf8_lossy(&k))
        }
        "dead" | "redrive" => {
            let (plugin, k) = split(key);
            format!("{name} {plugin} sequence {}", seq(&k))
        }
        "chains" => "chain index".into(),
        other => format!("{other} {}", String::from_utf8_lossy(key)),
    }
}

/// What a repair found and did.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The data directory.
    pub dir: PathBuf,
    /// The repair's id: its UTC time.
    pub repair: String,
    /// Whether nothing was changed.
    pub dry_run: bool,
    /// Damaged byte ranges cut out of journals.
    pub cuts: Vec<Cut>,
    /// Intact journal batches kept.
    pub batches_kept: usize,
    /// Sequences the log lost, as ranges.
    pub lost: Vec<(u64, u64)>,
    /// The highest sequence ever acknowledged.
    pub acknowledged: u64,
    /// Plugins' cursors after the repair, and the lost ranges ahead of
    /// each.
    pub cursors: Vec<CursorAhead>,
    /// Where the original directory was kept (none: dry run, or nothing
    /// to repair).
    pub original: Option<PathBuf>,
    /// The damaged bytes, each after a line naming file, offset and length.
    pub quarantine: Option<PathBuf>,
}

impl Report {
    /// Whether anything was lost: the exit status is 2 when it was.
    pub fn lost_anything(&self) -> bool {
        !self.cuts.is_empty() || !self.lost.is_empty()
    }

    /// The report for people.
    pub fn text(&self) -> String {
        let mut out = String::new();
        let dir = self.dir.display();
        if !self.lost_anything() {
            return format!("{dir}: no damage found and no event lost; nothing to repair\n");
        }
        for c in &self.cuts {
            out += &format!(
                "journal {}: {} damaged bytes at {}..{} ({}), cut out\n",
                c.file,
                c.bytes,
                c.offset,
                c.offset + c.bytes,
                c.reason
            );
            if !c.touches.is_empty() {
                let shown: Vec<&str> = c.touches.iter().take(12).map(String::as_str).collect();
                let more = c.touches.len().saturating_sub(shown.len());
                out += &format!(
                    "  it held: {}{}\n",
                    shown.join(", "),
                    if more > 0 {
                        format!(" and {more} more")
                    } else {
                        String::new()
                    }
                );
            }
        }
        out += &format!("kept: {} intact journal batches\n", self.batches_kept);
        if self.lost.is_empty() {
            out += "lost events: none (the damage held only plugins' progress, which they redo)\n";
        }
        for (from, to) in &self.lost {
            out += &format!("lost events: sequences {from}..={to} ({})\n", to - from + 1);
        }
        for c in self.cursors.iter().filter(|c| !c.lost_ahead.is_empty()) {
            let ranges: Vec<String> = c
                .lost_ahead
                .iter()
                .map(|(f, t)| format!("{f}..={t}"))
                .collect();
            out += &format!(
                "cursor {}: at {}; it will not see {} (lost)\n",
                c.cursor,
                c.through,
                ranges.join(", ")
            );
        }
        if let Some(q) = &self.quarantine {
            out += &format!("damaged bytes kept in {}\n", q.display());
        }
        match (&self.original, self.dry_run) {
            (_, true) => out += "dry run: nothing was changed\n",
            (Some(o), false) => {
                out += &format!(
                    "the original directory is kept as {}\nnext: start plugbus on {dir}; a projection can be rebuilt with `plugbus replay PLUGIN --from-seq 1 --reset-state`\n",
                    o.display()
                )
            }
            (None, false) => {}
        }
        out
    }
}

/// The repair's id: now, in UTC, to the second.
fn stamp() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now())
        .to_string()
        .replace(['-', ':'], "")
}

/// `dir` with `suffix` after its name, beside it.
fn beside(dir: &Path, suffix: &str) -> PathBuf {
    let mut name = dir.file_name().unwrap_or_default().to_os_string();
    name.push(suffix);
    dir.with_file_name(name)
}

/// Copy `from` to `to` (new): table files hard-linked, the rest copied.
fn copy_dir(from: &Path, to: &Path) -> Result<(), RepairError> {
    std::fs::create_dir(to).map_err(io(format!("creating {}", to.display())))?;
    for entry in std::fs::read_dir(from).map_err(io(format!("reading {}", from.display())))? {
        let entry = entry.map_err(io(format!("reading {}", from.display())))?;
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        let kind = entry
            .file_type()
            .map_err(io(format!("reading {}", src.display())))?;
        if kind.is_dir() {
            copy_dir(&src, &dst)?;
        } else {
            let in_tables = from.file_name().is_some_and(|n| n == "tables");
            if !(in_tables && std::fs::hard_link(&src, &dst).is_ok()) {
                std::fs::copy(&src, &dst).map_err(io(format!("copying {}", src.display())))?;
            }
        }
    }
    Ok(())
}

/// Hold the engine's lock of `dir` for the repair: refused while a host
/// has it.
fn lock(dir: &Path) -> Result<Option<std::fs::File>, RepairError> {
    let path = dir.join("lock");
    let Ok(file) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
    else {
        return Ok(None);
    };
    match file.try_lock() {
        Ok(()) => Ok(Some(file)),
        Err(std::fs::TryLockError::WouldBlock) => Err(RepairError::InUse(dir.to_path_buf())),
        Err(std::fs::TryLockError::Error(e)) => Err(io(format!("locking {}", path.display()))(e)),
    }
}

/// Rewrite the journal of `scan` (in the copy, at `path`) with only its
/// intact batches; the damaged bytes go to `quarantine`.
fn cut_journal(
    scan: &Scan,
    path: &Path,
    quarantine: &mut Vec<u8>,
    cuts: &mut Vec<(Cut, Vec<Item>)>,
) -> Result<(), RepairError> {
    let bytes = std::fs::read(path).map_err(io(format!("reading {}", path.display())))?;
    let file = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut kept = Vec::with_capacity(scan.end);
    for b in &scan.batches {
        kept.extend_from_slice(&bytes[b.bytes.clone()]);
    }
    for d in &scan.damage {
        let _ = writeln!(quarantine, "{file} {} {}", d.bytes.start, d.bytes.len());
        quarantine.extend_from_slice(&bytes[d.bytes.clone()]);
        quarantine.push(b'\n');
        cuts.push((
            Cut {
                file: file.clone(),
                offset: d.bytes.start,
                bytes: d.bytes.len(),
                reason: d.reason.clone(),
                touches: Vec::new(),
            },
            journal::readable_items(&bytes, d),
        ));
    }
    super::disk::replace_file(path, &kept).map_err(io(format!("replacing {}", path.display())))
}

/// Open the salvaged copy, find what the log lost, record it; the
/// plugins' cursors and the lost ranges ahead of each.
fn settle_copy(work: &Path, repair: &str, reason: &str) -> Result<Found, RepairError> {
    let failed = |source| RepairError::Store {
        dir: work.to_path_buf(),
        source,
    };
    let witness = std::fs::read(work.join(MARK_FILE))
        .ok()
        .and_then(|b| super::sequence_of(&b))
        .unwrap_or(0);
    let store = Store::open_accepting_loss(work, Fsync::Always, true, None).map_err(failed)?;
    let acknowledged = witness.max(store.last_sequence());
    let holes = store.holes(acknowledged).map_err(failed)?;
    let ranges: Vec<LostRange> = holes
        .iter()
        .map(|&(from, to)| LostRange {
            from,
            to,
            repair: repair.to_string(),
            reason: reason.to_string(),
            announced: false,
        })
        .collect();
    if !ranges.is_empty() {
        store.record_lost(&ranges).map_err(failed)?;
    }
    let mut cursors = Vec::new();
    for guard in store.cursors.iter() {
        let Ok((name, value)) = guard.into_inner() else {
            continue;
        };
        let Some(cursor) = Cursor::decode(&value) else {
            continue;
        };
        cursors.push(CursorAhead {
            cursor: String::from_utf8_lossy(&name).into_owned(),
            through: cursor.through,
            lost_ahead: holes
                .iter()
                .copied()
                .filter(|&(_, to)| to > cursor.through)
                .collect(),
        });
    }
    let keyspaces = super::backup::KEYSPACES
        .iter()
        .map(|&name| (store.keyspace_named(name).id(), name))
        .collect();
    Ok(Found {
        lost: holes,
        acknowledged,
        cursors,
        keyspaces,
    })
}

/// Repair the store in `dir` (see the module docs).
pub fn repair(dir: &Path, dry_run: bool) -> Result<Report, RepairError> {
    if !dir.is_dir() {
        return Err(RepairError::NotAStore(dir.to_path_buf()));
    }
    let scans = journal::scan_dir(dir).map_err(io(format!("reading {}", dir.display())))?;
    if scans.is_empty() {
        return Err(RepairError::NotAStore(dir.to_path_buf()));
    }
    let _lock = lock(dir)?;
    let repair = stamp();
    let work = beside(dir, &format!(".repairing-{repair}"));
    let _ = std::fs::remove_dir_all(&work);
    copy_dir(dir, &work)?;
    let salvage = || -> Result<Report, RepairError> {
        let mut quarantine = Vec::new();
        let mut cuts = Vec::new();
        for scan in scans.iter().filter(|s| !s.damage.is_empty()) {
            let name = scan.path.file_name().unwrap_or_default();
            cut_journal(scan, &work.join(name), &mut quarantine, &mut cuts)?;
        }
        let reason = cuts.first().map_or(
            "the log ended before what was acknowledged".to_string(),
            |(c, _)| format!("journal {}: {}", c.file, c.reason),
        );
        let Found {
            lost,
            acknowledged,
            cursors,
            keyspaces,
        } = settle_copy(&work, &repair, &reason)?;
        let cuts: Vec<Cut> = cuts
            .into_iter()
            .map(|(mut cut, items)| {
                let mut touches: Vec<String> = items
                    .iter()
                    .map(|(id, key)| {
                        let name = keyspaces.iter().find(|(k, _)| k == id).map_or("?", |k| k.1);
                        describe(name, key)
                    })
                    .filter(|t| t != "chain index")
                    .collect();
                touches.dedup();
                cut.touches = touches;
                cut
            })
            .collect();
        let mut report = Report {
            dir: dir.to_path_buf(),
            repair: repair.clone(),
            dry_run,
            cuts,
            batches_kept: scans.iter().map(|s| s.batches.len()).sum(),
            lost,
            acknowledged,
            cursors,
            original: None,
            quarantine: None,
        };
        if report.lost_anything() {
            let folder = work.join("repair").join(&repair);
            std::fs::create_dir_all(&folder)
                .map_err(io(format!("creating {}", folder.display())))?;
            if !quarantine.is_empty() && !dry_run {
                std::fs::write(folder.join("quarantine.bin"), &quarantine)
                    .map_err(io("writing the quarantine file"))?;
                report.quarantine = Some(dir.join("repair").join(&repair).join("quarantine.bin"));
            }
            if !dry_run {
                report.original = Some(beside(dir, &format!(".damaged-{repair}")));
            }
            let json = serde_json::to_vec_pretty(&report).unwrap_or_default();
            std::fs::write(folder.join("report.json"), json).map_err(io("writing the report"))?;
        }
        Ok(report)
    };
    let report = salvage();
    let report = match report {
        Ok(r) if r.lost_anything() && !dry_run => r,
        other => {
            // A dry run, nothing to do, or a failure: the copy goes.
            let _ = std::fs::remove_dir_all(&work);
            return other;
        }
    };
    let original = report
        .original
        .clone()
        .unwrap_or_else(|| beside(dir, ".damaged"));
    std::fs::rename(dir, &original).map_err(io(format!("moving {} aside", dir.display())))?;
    std::fs::rename(&work, dir)
        .map_err(io(format!("moving the salvaged copy to {}", dir.display())))?;
    if let Some(parent) = dir.parent() {
        let _ = std::fs::File::open(parent).and_then(|f| f.sync_all());
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::{ev, temp_dir};

    #[test]
    fn a_healthy_store_needs_nothing_and_an_open_one_is_refused() {
        let dir = temp_dir("repair-healthy");
        let store = Store::open(&dir, Fsync::Always).expect("opens");
        store.append(&mut [ev(1)]).expect("append");
        let err = repair(&dir, false).expect_err("a host has it open");
        assert!(matches!(err, RepairError::InUse(_)), "{err}");
        drop(store);
        let report = repair(&dir, false).expect("repairs");
        assert!(!report.lost_anything(), "{}", report.text());
        assert!(report.text().contains("nothing to repair"));
        assert!(report.original.is_none());
        let siblings: Vec<String> = std::fs::read_dir(dir.parent().expect("parent"))
            .expect("list")
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.contains("repairing") || n.contains("damaged"))
            .filter(|n| n.starts_with(&*dir.file_name().unwrap_or_default().to_string_lossy()))
            .collect();
        assert!(siblings.is_empty(), "no copy left behind: {siblings:?}");
        let err = repair(&dir.join("nope"), false).expect_err("no store");
        assert!(matches!(err, RepairError::NotAStore(_)), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
