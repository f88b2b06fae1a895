//! Disk space and durability: the reserve the store keeps free on its file
//! system (so that the engine never runs out of room for its own flushes
//! and compactions), the sizing of memtables to fit it, refusing an append
//! that would eat into it, and the fsync of what was written, which poisons
//! the store when it fails (see the parent module).

use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use fjall::PersistMode;

use super::{Store, StoreError, MARK_FILE};

/// The most the store keeps free by default ([`disk_reserve_for`]): room
/// for the engine to flush full memtables and compact.
pub const DISK_RESERVE_BYTES_MAX: u64 = 256 << 20;
/// The least the store keeps free by default ([`disk_reserve_for`]).
pub const DISK_RESERVE_BYTES_MIN: u64 = 8 << 20;
/// The largest memtable of a keyspace ([`memtable_bytes_for`]): sized for
/// a device, not the engine's default of 64 MiB. A memtable is held in
/// memory (twice while it is flushed), and a host that grows pays for every
/// new page: 200,000 orders through the reference plugins peaked at
/// 384-389 MiB resident with 64 MiB memtables and 293-304 MiB with 8 MiB,
/// with less CPU (6.3-7.1 s against 7.6-8.3); with the host's other bounds
/// in place (issue 26), 4 MiB took it from 153-159 MiB to 133-136 MiB for 4 %
/// more CPU.
pub(super) const MEMTABLE_BYTES_MAX: u64 = 4 << 20;
/// The largest memtable of the log's keyspace, which takes nearly all the
/// bytes written: each flush of a memtable stalls every write for a few ms
/// (the engine syncs its journal under its writer lock first, fjall
/// 3.1.13), so the log's flushes are halved. Measured with the order flow,
/// alternating builds: chain latency p99 at 10,000 orders/s 7.1-10.2 ms
/// (max 21-25) with 4 MiB, 6.4-7.6 ms (max 13-19) with 8 MiB; peak RSS for
/// 200,000 orders about 102 MiB and 117.
pub(super) const LOG_MEMTABLE_BYTES_MAX: u64 = 8 << 20;
/// The smallest memtable of a keyspace.
pub(super) const MEMTABLE_BYTES_MIN: u64 = 1 << 20;

/// The free space is looked up again at least this often while writing,
/// so that another program filling the disk is seen within this time, not
/// only once the store's own writes used up what it counted on.
const ROOM_LOOK_EVERY: Duration = Duration::from_millis(100);

/// What the store may still write before it looks at the free space
/// again: half of what was above the reserve at the last look, less what
/// was written since, for at most [`ROOM_LOOK_EVERY`].
#[derive(Debug, Default)]
pub(super) struct Room {
    bytes: u64,
    looked: Option<Instant>,
}

/// The space the store keeps free by default on a file system of
/// `total` bytes: an eighth of it, at least [`DISK_RESERVE_BYTES_MIN`] and at
/// most [`DISK_RESERVE_BYTES_MAX`]. (A 48 MiB device keeps 8 MiB, a 1 GiB
/// one 128 MiB, anything from 2 GiB up 256 MiB.)
pub fn disk_reserve_for(total: u64) -> u64 {
    (total / 8).clamp(DISK_RESERVE_BYTES_MIN, DISK_RESERVE_BYTES_MAX)
}

/// How much of the log retention keeps by default on a file system of
/// `total` bytes with the store's `reserve`: a third of what is above the
/// reserve, since the engine may hold the log about twice while it
/// rewrites tables. A device's card can then not fill with finished
/// events; what plugins have not finished is never trimmed.
pub fn retention_bytes_for(total: u64, reserve: u64) -> u64 {
    total.saturating_sub(reserve) / 3
}

/// The memtable size of a keyspace for a reserve of `reserve` bytes: half
/// of it, so that a memtable's flush always fits in the reserve, and at
/// most `max` ([`MEMTABLE_BYTES_MAX`], or [`LOG_MEMTABLE_BYTES_MAX`] for the
/// log).
pub(super) fn memtable_bytes_for(reserve: u64, max: u64) -> u64 {
    (reserve / 2).clamp(MEMTABLE_BYTES_MIN, max.max(MEMTABLE_BYTES_MIN))
}

/// `bytes` in MiB, for messages.
pub(super) fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / f64::from(1 << 20))
}

pub(super) fn is_disk_full(e: &fjall::Error) -> bool {
    let io = match e {
        fjall::Error::Io(io) => Some(io),
        fjall::Error::Storage(fjall::LsmError::Io(io)) => Some(io),
        _ => None,
    };
    io.is_some_and(|io| {
        io.kind() == std::io::ErrorKind::StorageFull || io.raw_os_error() == Some(28)
    })
}

/// Replace the file at `path` with `bytes` so that a crash leaves either
/// the old file or the new one: written beside (`PATH.tmp`), fsynced,
/// renamed over it, and the directory fsynced.
pub(super) fn replace_file(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_os_string();
    tmp.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp);
    std::fs::write(&tmp, bytes)?;
    std::fs::File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// The number of the engine's active journal in `dir`: the highest `N` of
/// the `N.jnl` files.
pub(super) fn newest_journal(dir: &Path) -> Option<u64> {
    super::journal::journals(dir).ok()?.last().map(|(n, _)| *n)
}

/// The journal files in `dir`, for messages.
pub(super) fn journal_files(dir: &Path) -> String {
    let names: Vec<String> = super::journal::journals(dir)
        .unwrap_or_default()
        .iter()
        .map(|(_, p)| p.display().to_string())
        .collect();
    if names.is_empty() {
        "no journal file left".into()
    } else {
        names.join(", ")
    }
}

impl Store {
    /// The bytes kept free on the data directory's file system.
    pub fn disk_reserve_bytes(&self) -> u64 {
        self.disk_reserve_bytes
    }

    #[cfg(test)]
    fn with_disk_reserve(mut self, bytes: u64) -> Store {
        self.disk_reserve_bytes = bytes;
        // What was counted against the old reserve does not hold.
        *self.room.get_mut().unwrap_or_else(|p| p.into_inner()) = Room::default();
        self
    }

    /// Bytes the store's files take on disk.
    pub fn disk_bytes(&self) -> u64 {
        self.db.disk_space().unwrap_or(0)
    }

    /// When the free space of the data directory's file system is inside
    /// the reserve: (free, reserve).
    pub fn inside_reserve(&self) -> Option<(u64, u64)> {
        let free = fs4::available_space(&self.dir).ok()?;
        (free < self.disk_reserve_bytes).then_some((free, self.disk_reserve_bytes))
    }

    /// Account for `incoming` bytes about to be written (events, or a
    /// plugin's progress); refuses with [`StoreError::DiskFull`] when they
    /// would eat into the reserve. Nothing is counted when refused.
    pub(super) fn make_room(&self, incoming: u64) -> Result<(), StoreError> {
        let mut room = self.room.lock().unwrap_or_else(|p| p.into_inner());
        let stale = room.looked.is_none_or(|at| at.elapsed() >= ROOM_LOOK_EVERY);
        if room.bytes < incoming || stale {
            match fs4::available_space(&self.dir) {
                Ok(free) => {
                    let above = free.saturating_sub(self.disk_reserve_bytes);
                    room.looked = Some(Instant::now());
                    if above < incoming.max(1) {
                        room.bytes = 0;
                        self.full.store(true, Ordering::Release);
                        return Err(StoreError::DiskFull {
                            dir: self.dir.clone(),
                            free,
                            reserve: self.disk_reserve_bytes,
                        });
                    }
                    room.bytes = above / 2;
                }
                // Not knowable: this write only, and look again next time.
                Err(_) => *room = Room::default(),
            }
            self.full.store(false, Ordering::Release);
        }
        room.bytes = room.bytes.saturating_sub(incoming);
        Ok(())
    }

    /// Whether there is room to write above the reserve: while the disk was
    /// last seen with room this is one atomic load; once it was seen full
    /// it looks at the free space again. Deliveries wait on it instead of
    /// handling events whose commit would be refused.
    pub fn room_for_writes(&self) -> Result<(), StoreError> {
        if !self.full.load(Ordering::Acquire) {
            return Ok(());
        }
        self.make_room(1)
    }

    /// Force everything written so far to stable storage. A failure poisons
    /// the store (see the module docs).
    pub fn sync(&self) -> Result<(), StoreError> {
        // One sync at a time: a caller that finds nothing dirty must not
        // return while another's fsync of its writes is still running.
        let _one = self.sync_lock.lock().unwrap_or_else(|p| p.into_inner());
        self.check_poisoned()?;
        if !self.dirty.swap(false, Ordering::AcqRel) {
            return Ok(());
        }
        // Everything written before the flush below is durable after it.
        let durable = self.written.load(Ordering::Acquire);
        let started = Instant::now();
        // The journal's buffer goes to the kernel under the engine's lock;
        // the fsync itself runs on a handle of our own, outside the lock, so
        // plugins committing their progress do not wait behind it.
        let persisted = self.db.persist(PersistMode::Buffer);
        if let Err(e) = persisted {
            let err = self.write_error(&e);
            return Err(match err {
                StoreError::DiskFull { .. } => err,
                _ => self.poison(format!("fsync failed: {e:?}")),
            });
        }
        let synced = self.sync_active_journal();
        self.fsync_seconds.observe(started.elapsed().as_secs_f64());
        if let Err(e) = synced {
            return Err(self.poison(format!("fsync failed: {e}")));
        }
        if let Ok(mut t) = self.last_persist.lock() {
            *t = Instant::now();
        }
        // The witness of what is durable now. Not synced itself: it guards
        // against a journal that comes back shorter than it was, and a
        // failure to write it is logged, not fatal.
        if let Err(e) =
            std::os::unix::fs::FileExt::write_all_at(&self.mark, &durable.to_be_bytes(), 0)
        {
            tracing::warn!(data = %self.dir.display(), "cannot update {MARK_FILE}: {e}");
        }
        Ok(())
    }

    /// fsync the engine's active journal through our own handle. fjall 3
    /// numbers its journals `N.jnl` and fsyncs one before it moves to the
    /// next, so what was handed to the kernel before a move is durable
    /// either way. Another layout falls back to the engine's own fsync.
    /// `fdatasync` suffices: it also makes durable a size the file grew
    /// to, and fjall sets a journal's size (and syncs it) when it makes it.
    fn sync_active_journal(&self) -> std::io::Result<()> {
        let mut journal = self.journal.lock().unwrap_or_else(|p| p.into_inner());
        // The engine moved on if the next journal exists.
        let moved = journal
            .as_ref()
            .is_none_or(|(id, _)| self.dir.join(format!("{}.jnl", id + 1)).exists());
        if moved {
            let Some(id) = newest_journal(&self.dir) else {
                *journal = None;
                return self
                    .db
                    .persist(PersistMode::SyncAll)
                    .map_err(|e| std::io::Error::other(format!("{e:?}")));
            };
            let file = std::fs::File::open(self.dir.join(format!("{id}.jnl")))?;
            *journal = Some((id, file));
        }
        match journal.as_ref() {
            Some((_, file)) => file.sync_data(),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::{ev, temp_dir};
    use crate::store::Fsync;

    #[test]
    fn the_default_reserve_fits_the_disk_and_a_memtable_flush_fits_the_reserve() {
        const MIB: u64 = 1 << 20;
        assert_eq!(disk_reserve_for(48 * MIB), 8 * MIB);
        assert_eq!(disk_reserve_for(1024 * MIB), 128 * MIB);
        assert_eq!(disk_reserve_for(1 << 40), 256 * MIB);
        for reserve in [8 * MIB, 128 * MIB, 256 * MIB, 1 << 40] {
            for max in [MEMTABLE_BYTES_MAX, LOG_MEMTABLE_BYTES_MAX] {
                assert!(memtable_bytes_for(reserve, max) * 2 <= reserve);
            }
        }
        let m = |reserve| memtable_bytes_for(reserve, MEMTABLE_BYTES_MAX);
        assert_eq!(m(256 * MIB), MEMTABLE_BYTES_MAX);
        assert_eq!(m(16 * MIB), 4 * MIB);
        assert_eq!(m(4 * MIB), 2 * MIB);
        assert_eq!(m(0), MIB);
        assert_eq!(
            memtable_bytes_for(256 * MIB, LOG_MEMTABLE_BYTES_MAX),
            LOG_MEMTABLE_BYTES_MAX
        );
        assert_eq!(memtable_bytes_for(8 * MIB, LOG_MEMTABLE_BYTES_MAX), 4 * MIB);
        // A 64 MiB card keeps 8 MiB free and at most 18.7 MiB of log.
        assert_eq!(retention_bytes_for(64 * MIB, 8 * MIB), 56 * MIB / 3);
        assert_eq!(retention_bytes_for(4 * MIB, 8 * MIB), 0);
    }

    #[test]
    fn below_the_disk_reserve_appends_are_refused_and_nothing_is_used_up() {
        let dir = temp_dir("reserve");
        let store = Store::open(&dir, Fsync::Always)
            .expect("opens")
            .with_disk_reserve(u64::MAX);
        let err = store
            .append(&mut [ev(0)])
            .expect_err("no disk has that much free");
        assert!(
            matches!(&err, StoreError::DiskFull { dir: d, reserve: u64::MAX, .. } if d == &dir),
            "{err}"
        );
        let text = err.to_string();
        assert!(
            text.contains("free space there") && text.contains("--disk-reserve-bytes"),
            "{text}"
        );
        assert_eq!(store.last_sequence(), 0);
        let store = store.with_disk_reserve(0);
        assert_eq!(
            store.append(&mut [ev(0)]).expect("room now"),
            1,
            "not poisoned"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn inside_the_reserve_a_plugins_commit_is_refused_whole_and_deliveries_are_told_to_wait() {
        let dir = temp_dir("reserve-progress");
        let store = Store::open(&dir, Fsync::Always).expect("opens");
        let progress = |value: &str| crate::store::progress::Progress {
            plugin: "inventory".into(),
            kv: vec![("stock.a".into(), Some(value.as_bytes().to_vec()))],
            ..Default::default()
        };
        store.commit_progress(&progress("1")).expect("room");
        assert!(store.room_for_writes().is_ok());
        let store = store.with_disk_reserve(u64::MAX);
        let err = store
            .commit_progress(&progress("2"))
            .expect_err("inside the reserve");
        assert!(matches!(err, StoreError::DiskFull { .. }), "{err}");
        assert_eq!(
            store.kv_get("inventory", "stock.a").expect("reads"),
            Some(b"1".to_vec()),
            "nothing of the refused commit was written"
        );
        assert!(
            matches!(store.room_for_writes(), Err(StoreError::DiskFull { .. })),
            "deliveries wait"
        );
        // Room again: deliveries go on, and so do commits.
        let store = store.with_disk_reserve(0);
        assert!(store.room_for_writes().is_ok());
        store.commit_progress(&progress("2")).expect("room again");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_free_space_is_looked_at_again_while_room_is_still_counted() {
        let dir = temp_dir("reserve-look");
        let store = Store::open(&dir, Fsync::Always)
            .expect("opens")
            .with_disk_reserve(0);
        store.append(&mut [ev(1)]).expect("room");
        // Another program takes the space (here: the reserve grows, the
        // room counted at the last look kept): once the last look is old
        // enough, the next write looks again, though that room is not used
        // up.
        let mut store = store;
        store.disk_reserve_bytes = u64::MAX;
        std::thread::sleep(ROOM_LOOK_EVERY);
        let err = store.append(&mut [ev(2)]).expect_err("looked again");
        assert!(matches!(err, StoreError::DiskFull { .. }), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_active_journal_is_the_highest_numbered() {
        let dir = temp_dir("journals");
        std::fs::create_dir_all(&dir).expect("dir");
        assert_eq!(newest_journal(&dir), None);
        for name in ["3.jnl", "12.jnl", "9.jnl", "x.jnl", "13.jnl.tmp"] {
            std::fs::write(dir.join(name), b"").expect("file");
        }
        assert_eq!(newest_journal(&dir), Some(12));
        let _ = std::fs::remove_dir_all(&dir);
        // And a real store syncs through the journal it finds.
        let dir = temp_dir("journal-sync");
        let store = Store::open(&dir, Fsync::Always).expect("opens");
        store.append(&mut [ev(1)]).expect("append, synced");
        let synced = store
            .journal
            .lock()
            .expect("lock")
            .as_ref()
            .map(|(id, _)| *id);
        assert_eq!(synced, newest_journal(&dir), "fsynced the active journal");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
