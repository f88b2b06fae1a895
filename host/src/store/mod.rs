//! The durable store: one fjall database in the data directory, with a
//! keyspace for the event log (key: the sequence, big-endian, of the first
//! event of a record; value: one event or a run of them, `store::codec`),
//! one indexing it by correlation id (`store::chains`), one for the plugins' cursors and one for their
//! key-value buckets (`store::progress`), and two for dead letters and
//! those being re-driven (`store::dead`).
//!
//! [`Store`] is the storage layer: appending a group of events in one atomic
//! batch under the fsync policy, reading the log by sequence, and reading
//! and writing cursors. [`log::Log`] builds delivery on it: a committer
//! thread that group-commits publishers' appends (plugins write their own
//! commits under the same lock) and acknowledges publishers only once
//! their events are durable, and an in-memory tail that workers read first.
//!
//! Faults: a full disk is reported as [`StoreError::DiskFull`] naming the
//! directory, and nothing is acknowledged. The store refuses appends while
//! less than a reserve is free ([`Store::with_disk_reserve`]), so the
//! engine itself never runs out of space, and it accepts again as soon as
//! there is room; plugins' commits count against the reserve as
//! publishes do, and their deliveries wait while the disk is inside it
//! ([`Store::room_for_writes`]). A failed fsync poisons the store: every
//! later append is refused, so that nothing is ever retried and then
//! acknowledged after the kernel may have dropped the dirty pages, and the
//! host exits to be restarted (`server`), recovering from the journal, as
//! PostgreSQL does since "fsyncgate". The
//! fsync runs on the store's own handle on the engine's journal, outside
//! the engine's lock, so plugins committing progress never wait behind it.
//! A record
//! that does not decode is [`StoreError::Corrupt`], naming the file and
//! sequence, never a silently wrong event.
//!
//! Rooms: `disk` (the reserve, memtable sizing and fsync), `retention`
//! (trimming the oldest finished events), `chains` (the index of events by
//! correlation id), `progress` (cursors and state),
//! `dead` (dead letters), `timers` (timers by key and by due time),
//! `codec` (records), `log` (delivery on top).
//!
//! This module knows nothing of plugins, wasm or HTTP.

pub mod backup;
mod chains;
pub mod codec;
pub mod dead;
mod dedup;
mod disk;
#[cfg(test)]
mod faults;
pub mod format;
pub(crate) mod journal;
pub mod log;
pub mod lost;
pub mod progress;
pub mod repair;
mod retention;
pub mod state_cache;
mod state_view;
pub mod timers;

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};

use crate::event::Event;
pub use disk::{
    disk_reserve_for, retention_bytes_for, DISK_RESERVE_BYTES_MAX, DISK_RESERVE_BYTES_MIN,
};
use disk::{is_disk_full, journal_files, memtable_bytes_for, mib, Room};
use progress::Cursor;
pub use retention::Retention;

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
    #[error("data directory {dir}: an earlier write or fsync failed ({reason}), so the store refuses every write and plugbus stops, so that a restart recovers the store from its journal (the shipped systemd unit restarts it; check the disk)")]
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
    /// The directory was written by a newer release.
    #[error("data directory {dir} has data format {found}, written by a newer plugbus; this build reads formats {} to {}: run the release that wrote it (a downgrade is not supported), or restore a backup taken before the upgrade", format::FORMAT_OLDEST, format::FORMAT)]
    NewerFormat {
        /// The data directory.
        dir: PathBuf,
        /// Its format.
        found: u32,
    },
    /// The directory's format is older than this build reads.
    #[error("data directory {dir} has data format {found}; this build reads formats {} to {}: open it once with a release that reads both (it upgrades the directory), then with this one", format::FORMAT_OLDEST, format::FORMAT)]
    OlderFormat {
        /// The data directory.
        dir: PathBuf,
        /// Its format.
        found: u32,
    },
    /// A journal has damage the storage engine would cut away together
    /// with the intact batches after it, without a word.
    #[error("data directory {dir}: journal {} is damaged at byte {offset} ({reason}), and {intact_after} intact batches come after the damage, which the storage engine would drop without a word; nothing was opened or changed. Run `plugbus repair --data {dir}` (it copies the directory aside first, keeps every intact batch and names the sequences lost), or restore the directory from a backup", file.display())]
    JournalDamaged {
        /// The data directory.
        dir: PathBuf,
        /// The damaged journal.
        file: PathBuf,
        /// Where in it the damage starts.
        offset: usize,
        /// What is wrong there.
        reason: String,
        /// Intact batches after the damage, in that journal and later ones.
        intact_after: usize,
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
    /// The chain index (`store::chains`).
    chains: Keyspace,
    /// Timers by owner and key, and by due time (`store::timers`).
    timers: Keyspace,
    timer_due: Keyspace,
    /// Each owner's timers and their bytes (`store::timers`).
    timer_usage: Mutex<std::collections::HashMap<String, crate::timer::Usage>>,
    /// No timer is due before this (`store::timers`).
    timer_floor: AtomicU64,
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
    /// What may still be written before the free space is looked up
    /// again (`disk::Room`). Saves a `statvfs` per write.
    room: Mutex<Room>,
    /// The last look at the free space found it inside the reserve.
    full: AtomicBool,
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
    /// Per plugin, the writes to its state so far.
    state_views: state_view::StateViews,
    /// Holes the check after start found that no repair recorded.
    holes: Mutex<Vec<(u64, u64)>>,
}

/// The most events in one log record (a run of one group commit).
const RUN_EVENTS_MAX: usize = 256;
/// The most events a read reserves room for at once.
const READ_RESERVE_MAX: usize = 4096;
/// The engine's cache of blocks read from disk (its default is 32 MiB).
/// Readers behind the tail read blocks once, in order, and plugins' state
/// reads are answered by their copies (`state_view`), so a small cache
/// costs nothing measurable and keeps a device's memory: the order flow
/// ran as fast with 2 MiB as with 8, at 121-135 MiB peak instead of
/// 136-154. The operating system's page cache is behind it.
const BLOCK_CACHE_BYTES: u64 = 2 << 20;

/// The `meta` key holding the log's size in bytes.
const LOG_BYTES_KEY: &str = "log_bytes";
/// The `meta` key holding the last sequence retention removed: the log
/// reaches at least there even when retention emptied it.
const TRIMMED_KEY: &str = "trimmed_through";

/// The name of the acknowledged-sequence witness file in the data directory.
pub const MARK_FILE: &str = "acknowledged";

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
        let format_was = format::check(dir)?;
        journal::refuse_silent_loss(dir)?;
        let db = Database::builder(dir)
            .manual_journal_persist(true)
            .cache_size(BLOCK_CACHE_BYTES)
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
        let sized = |name: &str, memtable_max: u64| {
            let memtable = memtable_bytes_for(disk_reserve_bytes, memtable_max);
            db.keyspace(name, || {
                KeyspaceCreateOptions::default().max_memtable_size(memtable)
            })
            .map_err(|e| open_err(format!("keyspace {name}: {e:?}")))
        };
        let keyspace = |name: &str| sized(name, disk::MEMTABLE_BYTES_MAX);
        let log = sized("log", disk::LOG_MEMTABLE_BYTES_MAX)?;
        let cursors = keyspace("cursors")?;
        let dead = keyspace("dead")?;
        let redrive = keyspace("redrive")?;
        let meta = keyspace("meta")?;
        let kv = keyspace("kv")?;
        let chains = keyspace("chains")?;
        let timers = keyspace("timers")?;
        let timer_due = keyspace("timer_due")?;
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
        // A lost end that a repair recorded is known, not a surprise.
        let recorded = lost::decode(
            meta.get(lost::LOST_KEY)
                .map_err(|e| open_err(format!("{e:?}")))?
                .as_deref(),
        );
        let known = recorded.iter().any(|r| r.from <= last + 1 && r.to >= high);
        if high > last && !known {
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
        format::write(dir, format_was)?;
        let mark = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&mark_path)
            .map_err(|e| open_err(format!("{}: {e}", mark_path.display())))?;
        let store = Store {
            db,
            log,
            cursors,
            dead,
            redrive,
            meta,
            kv,
            chains,
            timers,
            timer_due,
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
            room: Mutex::default(),
            full: AtomicBool::new(false),
            journal: Mutex::new(None),
            sync_lock: Mutex::new(()),
            mark,
            state_views: state_view::StateViews::default(),
            holes: Mutex::default(),
            timer_usage: Mutex::default(),
            timer_floor: AtomicU64::new(0),
        };
        store.count_timers()?;
        Ok(store)
    }

    /// Observe every fsync's duration in `histogram` (seconds).
    pub fn with_fsync_histogram(
        mut self,
        histogram: prometheus_client::metrics::histogram::Histogram,
    ) -> Store {
        self.fsync_seconds = histogram;
        self
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

    /// Why the store refuses writes since an earlier failure, if it does
    /// (see the module docs): the host then exits to be restarted.
    pub fn poisoned(&self) -> Option<String> {
        self.poisoned
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
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
    /// the sequence numbers are not used up. One thread at a time appends
    /// (the log's writer lock).
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
    /// before acknowledging them. One thread at a time writes events (the
    /// log's writer lock).
    pub fn write_with(
        &self,
        events: &mut [Event],
        progress: &[&progress::Progress],
    ) -> Result<u64, StoreError> {
        self.check_poisoned()?;
        // The plugins' writes count as the publishers' do: inside the
        // reserve a plugin's commit waits for room like a publish.
        let incoming: u64 = events
            .iter()
            .map(|e| 64 + e.data.len() as u64 + e.id.len() as u64 + e.topic.len() as u64)
            .sum::<u64>()
            + progress.iter().map(|p| p.bytes()).sum::<u64>();
        self.make_room(incoming)?;
        let changes = progress::state_changes(progress.iter().copied());
        self.state_views
            .around(&changes, || self.write_with_now(events, progress))
    }

    fn write_with_now(
        &self,
        events: &mut [Event],
        progress: &[&progress::Progress],
    ) -> Result<u64, StoreError> {
        let first = self.last_sequence() + 1;
        let mut batch = self.db.batch();
        let mut added = 0;
        let mut timers = timers::UsageDeltas::new();
        for (i, e) in events.iter_mut().enumerate() {
            e.sequence = first + i as u64;
        }
        // One record per run of events: the engine's cost is per record.
        for run in events.chunks(RUN_EVENTS_MAX) {
            let value = codec::encode_run(run);
            added += 8 + value.len() as u64;
            batch.insert(&self.log, run[0].sequence.to_be_bytes(), value);
        }
        self.index_chains(&mut batch, events);
        let log_bytes = self.log_bytes.load(Ordering::Acquire) + added;
        batch.insert(&self.meta, LOG_BYTES_KEY, log_bytes.to_be_bytes());
        for p in progress {
            self.add_progress(&mut batch, p, &mut timers)?;
        }
        batch.commit().map_err(|e| match e {
            fjall::Error::Poisoned => {
                self.poison("fjall refused writes after an earlier failure".into())
            }
            e => self.write_error(&e),
        })?;
        self.apply_timer_usage(timers);
        self.log_bytes.store(log_bytes, Ordering::Release);
        self.written
            .store(first + events.len() as u64 - 1, Ordering::Release);
        self.dirty.store(true, Ordering::Release);
        self.last_sequence
            .store(first + events.len() as u64 - 1, Ordering::Release);
        Ok(first)
    }

    /// Up to `max` events with sequence ≥ `from`, in order.
    pub fn read(&self, from: u64, max: usize) -> Result<Vec<Event>, StoreError> {
        // Sized once: grown by doubling, a reader's batches were a good part
        // of the host's fresh pages.
        let mut out = Vec::with_capacity(max.min(READ_RESERVE_MAX));
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

    pub(crate) fn ev(i: usize) -> Event {
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
