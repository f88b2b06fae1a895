//! The durable store: one fjall database in the data directory, with a
//! keyspace for the event log (key: the sequence, big-endian, of the first
//! event of a record; value: one event or a run of them, `store::codec`), one for the plugins' cursors and one for their
//! key-value buckets (`store::progress`), and two for dead letters and
//! those being re-driven (`store::dead`).
//!
//! [`Store`] is the storage layer: appending a group of events in one atomic
//! batch under the fsync policy, reading the log by sequence, and reading
//! and writing cursors. [`log::Log`] builds delivery on it: one committer
//! thread that group-commits appends and acknowledges publishers only once
//! their events are durable, and an in-memory tail that workers read first.
//!
//! Faults: a full disk is reported as [`StoreError::DiskFull`] naming the
//! directory, and nothing is acknowledged. The store refuses appends while
//! less than a reserve is free ([`Store::with_disk_reserve`]), so the
//! engine itself never runs out of space, and it accepts again as soon as
//! there is room. A failed fsync poisons the store: every later append is
//! refused until a restart, so that nothing is ever retried and then
//! acknowledged after the kernel may have dropped the dirty pages. The
//! fsync runs on the store's own handle on the engine's journal, outside
//! the engine's lock, so plugins committing progress never wait behind it.
//! A record
//! that does not decode is [`StoreError::Corrupt`], naming the file and
//! sequence, never a silently wrong event.
//!
//! This module knows nothing of plugins, wasm or HTTP.

pub mod codec;
pub mod dead;
pub mod log;
pub mod progress;

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};

use crate::event::Event;
use progress::Cursor;

/// When appended events are forced to stable storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fsync {
    /// Before a publisher is acknowledged: an acknowledged event survives
    /// power loss.
    Always,
    /// At most this often: an acknowledged event survives a crash of the
    /// process, but power loss may lose up to this window of events.
    Interval(Duration),
}

impl FromStr for Fsync {
    type Err = String;

    fn from_str(s: &str) -> Result<Fsync, String> {
        if s == "always" {
            return Ok(Fsync::Always);
        }
        let ms = s
            .strip_prefix("interval=")
            .map(|v| v.strip_suffix("ms").unwrap_or(v))
            .and_then(|v| v.parse::<u64>().ok())
            .filter(|ms| (1..=60_000).contains(ms));
        match ms {
            Some(ms) => Ok(Fsync::Interval(Duration::from_millis(ms))),
            None => Err(format!(
                "`{s}` is not an fsync policy; use `always` or `interval=MS` with MS from 1 to 60000, e.g. `interval=10ms`"
            )),
        }
    }
}

/// Why the store refused or failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The database could not be opened.
    #[error("data directory {dir}: cannot open the store: {reason}; check the path and its permissions, or start with --data pointing elsewhere")]
    Open {
        /// The data directory.
        dir: PathBuf,
        /// What fjall said.
        reason: String,
    },
    /// No space left, or no more than the reserve.
    #[error("data directory {dir} is full: {} free on its file system, and the store keeps {} free for its own flushes (--disk-reserve-bytes; by default an eighth of the file system, at least 8 MiB and at most 256 MiB): the events were not stored and not acknowledged; free space there, move --data to a larger disk, or lower the reserve (publishing resumes by itself once there is room)", mib(*free), mib(*reserve))]
    DiskFull {
        /// The data directory.
        dir: PathBuf,
        /// Bytes free on its file system.
        free: u64,
        /// Bytes the store keeps free.
        reserve: u64,
    },
    /// A write failed for another reason.
    #[error("data directory {dir}: writing failed: {reason}; the events were not acknowledged")]
    Write {
        /// The data directory.
        dir: PathBuf,
        /// What failed.
        reason: String,
    },
    /// An fsync failed earlier; no more writes until a restart.
    #[error("data directory {dir}: an earlier write or fsync failed ({reason}), so the store refuses writes until plugbus is restarted; check the disk, then restart")]
    Poisoned {
        /// The data directory.
        dir: PathBuf,
        /// The first failure.
        reason: String,
    },
    /// A stored record does not decode.
    #[error("data directory {dir}: log record {sequence} is corrupt ({reason}); restore the directory from a backup, or move it aside to start with an empty log")]
    Corrupt {
        /// The data directory.
        dir: PathBuf,
        /// The record's sequence.
        sequence: u64,
        /// What is wrong with it.
        reason: String,
    },
    /// The storage engine found its files damaged and will not open them.
    #[error("data directory {dir}: the store is damaged and cannot be opened ({reason}; files: {journals}). Restore the directory from a backup, or move it aside (mv {dir} {dir}.damaged) to start with an empty log")]
    Damaged {
        /// The data directory.
        dir: PathBuf,
        /// The journal files.
        journals: String,
        /// What the engine found.
        reason: String,
    },
    /// The log ends before events that were acknowledged.
    #[error("data directory {dir}: the event log ends at sequence {recovered}, but events up to {acknowledged} were acknowledged: the storage engine recovered only a prefix of a damaged or truncated journal ({journals}). Restore the directory from a backup, or start with --accept-lost-events to go on without events {}..={acknowledged}", recovered + 1)]
    LostTail {
        /// The data directory.
        dir: PathBuf,
        /// The journal files.
        journals: String,
        /// Where the recovered log ends.
        recovered: u64,
        /// The highest sequence acknowledged before.
        acknowledged: u64,
    },
    /// The committer is gone (shutdown).
    #[error("the store is shutting down; retry against the restarted host")]
    Closed,
}

/// The storage layer. See the module docs.
pub struct Store {
    db: Database,
    log: Keyspace,
    cursors: Keyspace,
    dead: Keyspace,
    redrive: Keyspace,
    meta: Keyspace,
    kv: Keyspace,
    /// Bytes of the records in the log (keys and values): kept in `meta`,
    /// updated in the same batch as every append and trim.
    log_bytes: AtomicU64,
    dir: PathBuf,
    fsync: Fsync,
    /// The sequence of the last event stored.
    last_sequence: AtomicU64,
    last_persist: Mutex<Instant>,
    poisoned: Mutex<Option<String>>,
    dirty: AtomicBool,
    disk_reserve_bytes: u64,
    /// Bytes that may still be appended before the free space is looked
    /// up again: half of what was above the reserve at the last look,
    /// less what was appended since. Saves a `statvfs` per append.
    room: Mutex<u64>,
    /// The engine's active journal file and our own handle on it.
    journal: Mutex<Option<(u64, std::fs::File)>>,
    /// Held for the whole of a sync.
    sync_lock: Mutex<()>,
    /// `DIR/acknowledged`: the highest sequence known durable, written after
    /// each sync outside the engine's journal, as a witness against a
    /// journal that comes back shorter than it was.
    mark: std::fs::File,
    /// The sequence of the last event handed to the engine (maybe not yet
    /// synced).
    written: AtomicU64,
    /// Seconds per fsync.
    fsync_seconds: prometheus_client::metrics::histogram::Histogram,
}

/// The most events in one log record (a run of one group commit).
const RUN_EVENTS_MAX: usize = 256;

/// The `meta` key holding the log's size in bytes.
const LOG_BYTES_KEY: &str = "log_bytes";
/// The `meta` key holding the last sequence retention removed: the log
/// reaches at least there even when retention emptied it.
const TRIMMED_KEY: &str = "trimmed_through";

/// How much of the log to keep. Events are removed oldest first, and only
/// once every plugin's cursor is past them: never one a plugin has yet to
/// finish.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Retention {
    /// Remove events whose `time` is older than this.
    pub age: Option<Duration>,
    /// Remove the oldest events while the log is larger than this.
    pub bytes: Option<u64>,
}

/// The name of the acknowledged-sequence witness file in the data directory.
pub const MARK_FILE: &str = "acknowledged";

/// The most the store keeps free by default ([`disk_reserve_for`]): room
/// for the engine to flush full memtables (64 MiB each) and compact.
pub const DISK_RESERVE_BYTES_MAX: u64 = 256 << 20;
/// The least the store keeps free by default ([`disk_reserve_for`]).
pub const DISK_RESERVE_BYTES_MIN: u64 = 8 << 20;
/// The largest memtable of a keyspace ([`memtable_bytes_for`]).
const MEMTABLE_BYTES_MAX: u64 = 64 << 20;
/// The smallest memtable of a keyspace.
const MEMTABLE_BYTES_MIN: u64 = 1 << 20;

/// The space the store keeps free by default on a file system of
/// `total` bytes: an eighth of it, at least [`DISK_RESERVE_BYTES_MIN`] and at
/// most [`DISK_RESERVE_BYTES_MAX`]. (A 48 MiB device keeps 8 MiB, a 1 GiB
/// one 128 MiB, anything from 2 GiB up 256 MiB.)
pub fn disk_reserve_for(total: u64) -> u64 {
    (total / 8).clamp(DISK_RESERVE_BYTES_MIN, DISK_RESERVE_BYTES_MAX)
}

/// The memtable size of each keyspace for a reserve of `reserve` bytes:
/// half of it, so that a memtable's flush always fits in the reserve, and
/// at most the engine's default of 64 MiB.
fn memtable_bytes_for(reserve: u64) -> u64 {
    (reserve / 2).clamp(MEMTABLE_BYTES_MIN, MEMTABLE_BYTES_MAX)
}

/// `bytes` in MiB, for messages.
fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / f64::from(1 << 20))
}

fn is_disk_full(e: &fjall::Error) -> bool {
    let io = match e {
        fjall::Error::Io(io) => Some(io),
        fjall::Error::Storage(fjall::LsmError::Io(io)) => Some(io),
        _ => None,
    };
    io.is_some_and(|io| {
        io.kind() == std::io::ErrorKind::StorageFull || io.raw_os_error() == Some(28)
    })
}

impl Store {
    /// Open (or create) the store in `dir`, and find where the log ends.
    /// Refuses ([`StoreError::LostTail`]) if the log ends before events that
    /// were acknowledged.
    pub fn open(dir: &Path, fsync: Fsync) -> Result<Store, StoreError> {
        Store::open_accepting_loss(dir, fsync, false, None)
    }

    /// [`Store::open`], but with `accept_lost_events` a log that lost
    /// acknowledged events is reported and used: new events are numbered
    /// after everything ever acknowledged, so nothing is skipped or reused.
    /// Appends are refused while the data directory's file system has less
    /// than `disk_reserve` bytes free besides what they need (default:
    /// [`disk_reserve_for`] its size): the storage engine must never itself
    /// run out of space, since a failed write makes it refuse every later
    /// one until a restart, while a refusal here lets publishing resume as
    /// soon as there is room. Memtables are sized so that a flush fits in
    /// the reserve.
    pub fn open_accepting_loss(
        dir: &Path,
        fsync: Fsync,
        accept_lost_events: bool,
        disk_reserve: Option<u64>,
    ) -> Result<Store, StoreError> {
        let open_err = |reason: String| StoreError::Open {
            dir: dir.to_path_buf(),
            reason,
        };
        std::fs::create_dir_all(dir).map_err(|e| open_err(e.to_string()))?;
        let disk_reserve_bytes = disk_reserve.unwrap_or_else(|| {
            fs4::total_space(dir).map_or(DISK_RESERVE_BYTES_MAX, disk_reserve_for)
        });
        let memtable = memtable_bytes_for(disk_reserve_bytes);
        let db = Database::builder(dir)
            .manual_journal_persist(true)
            .open()
            .map_err(|e| match e {
                fjall::Error::JournalRecovery(_)
                | fjall::Error::InvalidTrailer
                | fjall::Error::InvalidTag(_)
                | fjall::Error::Decompress(_)
                | fjall::Error::InvalidVersion(_) => StoreError::Damaged {
                    dir: dir.to_path_buf(),
                    journals: journal_files(dir),
                    reason: format!("{e:?}"),
                },
                e => open_err(format!("{e:?}")),
            })?;
        let keyspace = |name: &str| {
            db.keyspace(name, || {
                KeyspaceCreateOptions::default().max_memtable_size(memtable)
            })
            .map_err(|e| open_err(format!("keyspace {name}: {e:?}")))
        };
        let log = keyspace("log")?;
        let cursors = keyspace("cursors")?;
        let dead = keyspace("dead")?;
        let redrive = keyspace("redrive")?;
        let meta = keyspace("meta")?;
        let kv = keyspace("kv")?;
        let log_bytes = meta
            .get(LOG_BYTES_KEY)
            .map_err(|e| open_err(format!("{e:?}")))?
            .and_then(|v| sequence_of(&v))
            .unwrap_or(0);
        let last = match log.last_key_value() {
            None => 0,
            Some(guard) => {
                let (key, value) = guard.into_inner().map_err(|e| open_err(format!("{e:?}")))?;
                let first = sequence_of(&key)
                    .ok_or_else(|| open_err("a log key is not a sequence number".into()))?;
                let count = codec::run_len(&value).map_err(|e| StoreError::Corrupt {
                    dir: dir.to_path_buf(),
                    sequence: first,
                    reason: e.0,
                })?;
                first + count.saturating_sub(1)
            }
        };
        let trimmed = meta
            .get(TRIMMED_KEY)
            .map_err(|e| open_err(format!("{e:?}")))?
            .and_then(|v| sequence_of(&v))
            .unwrap_or(0);
        let last = last.max(trimmed);
        // What was acknowledged before: the witness file, and any cursor.
        let mark_path = dir.join(MARK_FILE);
        let mut high = std::fs::read(&mark_path)
            .ok()
            .and_then(|b| sequence_of(&b))
            .unwrap_or(0);
        for guard in cursors.iter() {
            if let Some(cursor) = guard.value().ok().and_then(|v| Cursor::decode(&v)) {
                high = high.max(cursor.through);
            }
        }
        if high > last {
            let lost = StoreError::LostTail {
                dir: dir.to_path_buf(),
                journals: journal_files(dir),
                recovered: last,
                acknowledged: high,
            };
            if !accept_lost_events {
                return Err(lost);
            }
            tracing::error!(
                "{lost}; going on as --accept-lost-events asks: new events are numbered from {}",
                high + 1
            );
        }
        let high = high.max(last);
        let mark = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&mark_path)
            .map_err(|e| open_err(format!("{}: {e}", mark_path.display())))?;
        Ok(Store {
            db,
            log,
            cursors,
            dead,
            redrive,
            meta,
            kv,
            log_bytes: AtomicU64::new(log_bytes),
            dir: dir.to_path_buf(),
            fsync,
            last_sequence: AtomicU64::new(high),
            written: AtomicU64::new(high),
            fsync_seconds: prometheus_client::metrics::histogram::Histogram::new(
                prometheus_client::metrics::histogram::exponential_buckets(0.000_05, 2.0, 14),
            ),
            last_persist: Mutex::new(Instant::now()),
            poisoned: Mutex::new(None),
            dirty: AtomicBool::new(false),
            disk_reserve_bytes,
            room: Mutex::new(0),
            journal: Mutex::new(None),
            sync_lock: Mutex::new(()),
            mark,
        })
    }

    /// The bytes kept free on the data directory's file system.
    pub fn disk_reserve_bytes(&self) -> u64 {
        self.disk_reserve_bytes
    }

    #[cfg(test)]
    fn with_disk_reserve(mut self, bytes: u64) -> Store {
        self.disk_reserve_bytes = bytes;
        self
    }

    /// Observe every fsync's duration in `histogram` (seconds).
    pub fn with_fsync_histogram(
        mut self,
        histogram: prometheus_client::metrics::histogram::Histogram,
    ) -> Store {
        self.fsync_seconds = histogram;
        self
    }

    /// Bytes the store's files take on disk.
    pub fn disk_bytes(&self) -> u64 {
        self.db.disk_space().unwrap_or(0)
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The sequence of the last stored event (0: none), or the highest any
    /// plugin had finished if the log lost its tail (see `open`).
    pub fn last_sequence(&self) -> u64 {
        self.last_sequence.load(Ordering::Acquire)
    }

    fn read_error(&self, e: &fjall::Error) -> StoreError {
        StoreError::Write {
            dir: self.dir.clone(),
            reason: format!("reading: {e:?}"),
        }
    }

    fn write_error(&self, e: &fjall::Error) -> StoreError {
        if is_disk_full(e) {
            StoreError::DiskFull {
                dir: self.dir.clone(),
                free: fs4::available_space(&self.dir).unwrap_or(0),
                reserve: self.disk_reserve_bytes,
            }
        } else {
            StoreError::Write {
                dir: self.dir.clone(),
                reason: format!("{e:?}"),
            }
        }
    }

    pub(crate) fn check_poisoned(&self) -> Result<(), StoreError> {
        match &*self.poisoned.lock().unwrap_or_else(|p| p.into_inner()) {
            Some(reason) => Err(StoreError::Poisoned {
                dir: self.dir.clone(),
                reason: reason.clone(),
            }),
            None => Ok(()),
        }
    }

    fn poison(&self, reason: String) -> StoreError {
        let mut p = self.poisoned.lock().unwrap_or_else(|p| p.into_inner());
        p.get_or_insert(reason.clone());
        StoreError::Poisoned {
            dir: self.dir.clone(),
            reason,
        }
    }

    /// Append `events` as one atomic batch, giving them the next sequence
    /// numbers, and make them as durable as the policy says before
    /// returning the first sequence. On error nothing was acknowledged and
    /// the sequence numbers are not used up. Only one thread appends (the
    /// committer).
    pub fn append(&self, events: &mut [Event]) -> Result<u64, StoreError> {
        self.append_with(events, &[])
    }

    /// [`Store::append`], writing `progress` (of the plugins whose follow-up
    /// events these are) in the same atomic batch.
    pub fn append_with(
        &self,
        events: &mut [Event],
        progress: &[&progress::Progress],
    ) -> Result<u64, StoreError> {
        let first = self.write_with(events, progress)?;
        match self.fsync {
            Fsync::Always => self.sync()?,
            Fsync::Interval(every) => {
                let due = self
                    .last_persist
                    .lock()
                    .map(|t| t.elapsed() >= every)
                    .unwrap_or(true);
                if due {
                    self.sync()?;
                }
            }
        }
        Ok(first)
    }

    /// Number `events` and write them with `progress` as one atomic batch,
    /// without syncing: the caller makes them durable ([`Store::sync`])
    /// before acknowledging them. Only one thread writes events (the
    /// committer).
    pub fn write_with(
        &self,
        events: &mut [Event],
        progress: &[&progress::Progress],
    ) -> Result<u64, StoreError> {
        self.check_poisoned()?;
        let incoming: u64 = events
            .iter()
            .map(|e| 64 + e.data.len() as u64 + e.id.len() as u64 + e.topic.len() as u64)
            .sum();
        self.make_room(incoming)?;
        let first = self.last_sequence() + 1;
        let mut batch = self.db.batch();
        let mut added = 0;
        for (i, e) in events.iter_mut().enumerate() {
            e.sequence = first + i as u64;
        }
        // One record per run of events: the engine's cost is per record.
        for run in events.chunks(RUN_EVENTS_MAX) {
            let value = codec::encode_run(run);
            added += 8 + value.len() as u64;
            batch.insert(&self.log, run[0].sequence.to_be_bytes(), value);
        }
        let log_bytes = self.log_bytes.load(Ordering::Acquire) + added;
        batch.insert(&self.meta, LOG_BYTES_KEY, log_bytes.to_be_bytes());
        for p in progress {
            self.add_progress(&mut batch, p);
        }
        batch.commit().map_err(|e| match e {
            fjall::Error::Poisoned => {
                self.poison("fjall refused writes after an earlier failure".into())
            }
            e => self.write_error(&e),
        })?;
        self.log_bytes.store(log_bytes, Ordering::Release);
        self.written
            .store(first + events.len() as u64 - 1, Ordering::Release);
        self.dirty.store(true, Ordering::Release);
        self.last_sequence
            .store(first + events.len() as u64 - 1, Ordering::Release);
        Ok(first)
    }

    /// Account for `incoming` bytes about to be appended; refuses with
    /// [`StoreError::DiskFull`] when they would eat into the reserve.
    fn make_room(&self, incoming: u64) -> Result<(), StoreError> {
        let mut room = self.room.lock().unwrap_or_else(|p| p.into_inner());
        if *room < incoming {
            if let Ok(free) = fs4::available_space(&self.dir) {
                let above = free.saturating_sub(self.disk_reserve_bytes);
                if above < incoming {
                    *room = 0;
                    return Err(StoreError::DiskFull {
                        dir: self.dir.clone(),
                        free,
                        reserve: self.disk_reserve_bytes,
                    });
                }
                *room = above / 2;
            } else {
                *room = incoming;
            }
        }
        *room = room.saturating_sub(incoming);
        Ok(())
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

    /// Up to `max` events with sequence ≥ `from`, in order.
    pub fn read(&self, from: u64, max: usize) -> Result<Vec<Event>, StoreError> {
        let mut out = Vec::new();
        if max == 0 {
            return Ok(out);
        }
        // Start at the record that holds `from`: it may begin before it.
        let start = match self.log.range(..=from.to_be_bytes()).next_back() {
            Some(guard) => {
                let key = guard.key().map_err(|e| self.read_error(&e))?;
                sequence_of(&key).unwrap_or(from)
            }
            None => from,
        };
        for guard in self.log.range(start.to_be_bytes()..) {
            let (key, value) = guard.into_inner().map_err(|e| self.read_error(&e))?;
            for e in self.decode_records(&key, &value)? {
                if e.sequence < from {
                    continue;
                }
                out.push(e);
                if out.len() >= max {
                    return Ok(out);
                }
            }
        }
        Ok(out)
    }

    /// Bytes of the records in the log.
    pub fn log_bytes(&self) -> u64 {
        self.log_bytes.load(Ordering::Acquire)
    }

    /// The lowest cursor of any plugin (0 when none has one): every event
    /// up to it is finished by every plugin the store knows.
    pub fn min_cursor(&self) -> Result<u64, StoreError> {
        let mut min: Option<u64> = None;
        for guard in self.cursors.iter() {
            let value = guard.value().map_err(|e| self.read_error(&e))?;
            if let Some(c) = Cursor::decode(&value).map(|c| c.low()) {
                min = Some(min.map_or(c, |m| m.min(c)));
            }
        }
        Ok(min.unwrap_or(0))
    }

    /// Remove the oldest events `keep` does not keep, never past the lowest
    /// cursor; returns how many. Called by the log's committer, the log's
    /// only writer.
    pub fn trim(&self, keep: &Retention) -> Result<usize, StoreError> {
        if keep.age.is_none() && keep.bytes.is_none() {
            return Ok(0);
        }
        self.check_poisoned()?;
        let limit = self.min_cursor()?;
        let cutoff = keep
            .age
            .and_then(|age| std::time::SystemTime::now().checked_sub(age));
        let mut bytes = self.log_bytes();
        let mut removed = 0;
        let mut from: u64 = 1;
        let mut removed_through = 0;
        'scan: loop {
            let mut batch = self.db.batch();
            let mut any = false;
            let mut done = false;
            for guard in self.log.range(from.to_be_bytes()..).take(4096) {
                let (key, value) = guard.into_inner().map_err(|e| self.read_error(&e))?;
                let Some(first) = sequence_of(&key) else {
                    break 'scan;
                };
                // A record goes whole, once every event in it may go.
                let last = first + codec::run_len(&value).unwrap_or(1).saturating_sub(1);
                from = last + 1;
                if last > limit {
                    done = true;
                    break;
                }
                let too_big = keep.bytes.is_some_and(|max| bytes > max);
                let too_old = cutoff.is_some_and(|cut| {
                    codec::decode_run(first, &value)
                        .ok()
                        .and_then(|events| events.last().map(|e| e.time.clone()))
                        .and_then(|t| humantime::parse_rfc3339_weak(&t).ok())
                        .is_some_and(|t| t < cut)
                });
                if !too_big && !too_old {
                    done = true;
                    break;
                }
                batch.remove(&self.log, key.to_vec());
                bytes = bytes.saturating_sub(8 + value.len() as u64);
                removed += (last - first + 1) as usize;
                removed_through = last;
                any = true;
            }
            if any {
                batch.insert(&self.meta, LOG_BYTES_KEY, bytes.to_be_bytes());
                batch.insert(&self.meta, TRIMMED_KEY, removed_through.to_be_bytes());
                batch.commit().map_err(|e| self.write_error(&e))?;
                self.log_bytes.store(bytes, Ordering::Release);
                self.dirty.store(true, Ordering::Release);
            }
            if done || !any {
                break;
            }
        }
        Ok(removed)
    }

    /// The events of a stored record (one, or a run) whose key ends with
    /// the sequence of its first event.
    pub(crate) fn decode_records(
        &self,
        key: &[u8],
        value: &[u8],
    ) -> Result<Vec<Event>, StoreError> {
        let first = key
            .get(key.len().saturating_sub(8)..)
            .and_then(sequence_of)
            .ok_or_else(|| StoreError::Corrupt {
                dir: self.dir.clone(),
                sequence: 0,
                reason: format!("a key of {} bytes", key.len()),
            })?;
        codec::decode_run(first, value).map_err(|e| StoreError::Corrupt {
            dir: self.dir.clone(),
            sequence: first,
            reason: e.0,
        })
    }

    /// Check the store is writable, fill one atomic batch with `fill`,
    /// commit it and hand it to the operating system (so that it survives
    /// the process being killed; the next sync makes it durable).
    pub(crate) fn write_now<T>(
        &self,
        fill: impl FnOnce(&mut fjall::OwnedWriteBatch) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.check_poisoned()?;
        let mut batch = self.db.batch().durability(Some(PersistMode::Buffer));
        let out = fill(&mut batch)?;
        batch.commit().map_err(|e| self.write_error(&e))?;
        self.dirty.store(true, Ordering::Release);
        Ok(out)
    }

    /// Up to `max` events from the end of the log, newest first.
    pub fn read_back(&self, max: usize) -> Result<Vec<Event>, StoreError> {
        let mut out = Vec::new();
        for guard in self.log.range::<&[u8], _>(..).rev() {
            let (key, value) = guard.into_inner().map_err(|e| self.read_error(&e))?;
            for e in self.decode_records(&key, &value)?.into_iter().rev() {
                if out.len() >= max {
                    return Ok(out);
                }
                out.push(e);
            }
        }
        Ok(out)
    }

    /// The sequence of the first event whose `time` is at or after `t`.
    /// Times are what publishers gave (or the host's clock when they gave
    /// none), so this scans the log from the start rather than assume they
    /// are ordered.
    pub fn first_since(&self, t: std::time::SystemTime) -> Result<Option<u64>, StoreError> {
        let mut from = 1;
        loop {
            let events = self.read(from, 4096)?;
            let Some(last) = events.last().map(|e| e.sequence) else {
                return Ok(None);
            };
            for e in &events {
                if humantime::parse_rfc3339_weak(&e.time).is_ok_and(|et| et >= t) {
                    return Ok(Some(e.sequence));
                }
            }
            from = last + 1;
        }
    }

    /// The cursor of `plugin`: the highest sequence up to which it is done
    /// with every event (before any it is still retrying).
    pub fn cursor(&self, plugin: &str) -> Result<Option<u64>, StoreError> {
        Ok(self.cursor_state(plugin)?.map(|c| c.low()))
    }

    /// Move `plugin`'s cursor to `sequence`, with nothing pending.
    pub fn set_cursor(&self, plugin: &str, sequence: u64) -> Result<(), StoreError> {
        self.rewind(plugin, Some(sequence), false).map(|_| ())
    }
}

/// The number of the engine's active journal in `dir`: the highest `N` of
/// the `N.jnl` files.
fn newest_journal(dir: &Path) -> Option<u64> {
    std::fs::read_dir(dir)
        .ok()?
        .filter_map(|entry| {
            let name = entry.ok()?.file_name();
            name.to_str()?.strip_suffix(".jnl")?.parse().ok()
        })
        .max()
}

/// The journal files in `dir`, for messages.
fn journal_files(dir: &Path) -> String {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "jnl"))
                .map(|p| p.display().to_string())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    if names.is_empty() {
        "no journal file left".into()
    } else {
        names.join(", ")
    }
}

fn sequence_of(bytes: &[u8]) -> Option<u64> {
    <[u8; 8]>::try_from(bytes).ok().map(u64::from_be_bytes)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("plugbus-store-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    fn ev(i: usize) -> Event {
        Event::new("order.placed", None, format!("{{\"i\":{i}}}").into_bytes()).expect("event")
    }

    #[test]
    fn appends_are_numbered_read_back_and_survive_reopening() {
        let dir = temp_dir("reopen");
        {
            let store = Store::open(&dir, Fsync::Always).expect("opens");
            let mut a: Vec<Event> = (0..3).map(ev).collect();
            assert_eq!(store.append(&mut a).expect("append"), 1);
            let mut b: Vec<Event> = (3..5).map(ev).collect();
            assert_eq!(store.append(&mut b).expect("append"), 4);
            store.set_cursor("analytics", 2).expect("cursor");
            store.sync().expect("sync");
        }
        let store = Store::open(&dir, Fsync::Always).expect("reopens");
        assert_eq!(store.last_sequence(), 5);
        let read = store.read(2, 10).expect("reads");
        let seqs: Vec<u64> = read.iter().map(|e| e.sequence).collect();
        assert_eq!(seqs, [2, 3, 4, 5]);
        assert_eq!(read[0].data, br#"{"i":1}"#);
        assert_eq!(store.cursor("analytics").expect("cursor"), Some(2));
        assert_eq!(store.cursor("email").expect("cursor"), None);
        let mut c = vec![ev(5)];
        assert_eq!(
            store.append(&mut c).expect("append"),
            6,
            "numbering continues"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_default_reserve_fits_the_disk_and_a_memtable_flush_fits_the_reserve() {
        const MIB: u64 = 1 << 20;
        assert_eq!(disk_reserve_for(48 * MIB), 8 * MIB);
        assert_eq!(disk_reserve_for(1024 * MIB), 128 * MIB);
        assert_eq!(disk_reserve_for(1 << 40), 256 * MIB);
        for reserve in [8 * MIB, 128 * MIB, 256 * MIB, 1 << 40] {
            assert!(memtable_bytes_for(reserve) * 2 <= reserve);
        }
        assert_eq!(
            memtable_bytes_for(256 * MIB),
            64 * MIB,
            "the engine's default"
        );
        assert_eq!(memtable_bytes_for(0), MIB);
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
    fn retention_removes_the_oldest_finished_events_and_never_an_unfinished_one() {
        let dir = temp_dir("retention");
        let store = Store::open(&dir, Fsync::Always).expect("opens");
        let mut old: Vec<Event> = (0..10).map(ev).collect();
        for e in &mut old {
            e.time = "2020-01-01T00:00:00Z".into();
        }
        // One record per event here, so that trimming is per event.
        for e in &mut old {
            store.append(std::slice::from_mut(e)).expect("append");
        }
        for i in 10..100 {
            store.append(&mut [ev(i)]).expect("append");
        }
        let full = store.log_bytes();
        assert!(full > 0);
        store.set_cursor("a", 60).expect("cursor");
        store.set_cursor("b", 5).expect("cursor");
        let by_age = Retention {
            age: Some(Duration::from_secs(3600)),
            bytes: None,
        };
        assert_eq!(
            store.trim(&by_age).expect("trim"),
            5,
            "old, but b has finished only 5"
        );
        store.set_cursor("b", 80).expect("cursor");
        assert_eq!(store.trim(&by_age).expect("trim"), 5, "the other old ones");
        assert_eq!(store.read(1, 1).expect("read")[0].sequence, 11);
        let by_size = Retention {
            age: None,
            bytes: Some(1),
        };
        assert_eq!(
            store.trim(&by_size).expect("trim"),
            50,
            "down to a's cursor and no further"
        );
        assert_eq!(store.read(1, 1).expect("read")[0].sequence, 61);
        assert!(store.log_bytes() < full);
        let kept = store.log_bytes();
        drop(store);
        let store = Store::open(&dir, Fsync::Always).expect("reopens");
        assert_eq!(store.log_bytes(), kept, "the size survives a restart");
        assert_eq!(store.last_sequence(), 100);
        // A run of events (one group commit) is one record: it goes whole,
        // only once every event in it is finished.
        let mut run: Vec<Event> = (100..110).map(ev).collect();
        store.append(&mut run).expect("append a run");
        store.set_cursor("a", 105).expect("cursor");
        store.set_cursor("b", 105).expect("cursor");
        assert_eq!(
            store.trim(&by_size).expect("trim"),
            40,
            "61..=100, not the run"
        );
        assert_eq!(store.read(1, 1).expect("read")[0].sequence, 101);
        store.set_cursor("a", 110).expect("cursor");
        store.set_cursor("b", 110).expect("cursor");
        assert_eq!(store.trim(&by_size).expect("trim"), 10, "the whole run");
        assert!(store.read(1, 1).expect("read").is_empty());
        assert_eq!(store.last_sequence(), 110);
        drop(store);
        let store = Store::open(&dir, Fsync::Always).expect("an emptied log reopens");
        assert_eq!(store.last_sequence(), 110, "numbering goes on");
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

    #[test]
    fn fsync_policies_parse_with_a_helpful_refusal() {
        assert_eq!("always".parse::<Fsync>(), Ok(Fsync::Always));
        assert_eq!(
            "interval=10ms".parse::<Fsync>(),
            Ok(Fsync::Interval(Duration::from_millis(10)))
        );
        assert_eq!(
            "interval=250".parse::<Fsync>(),
            Ok(Fsync::Interval(Duration::from_millis(250)))
        );
        let err = "sometimes".parse::<Fsync>().expect_err("refused");
        assert!(err.contains("interval=MS"), "{err}");
        assert!("interval=0".parse::<Fsync>().is_err());
    }
}
