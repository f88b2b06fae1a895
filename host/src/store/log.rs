//! The durable log as publishers and plugins see it.
//!
//! Publishers call [`Log::append`]; one committer thread takes every append
//! waiting (up to [`GROUP_EVENTS_MAX`] events), writes them as one atomic
//! batch, syncs under the fsync policy, and only then answers each
//! publisher with its sequence numbers: an acknowledged event is durable.
//! With `--fsync always` the sync and the answers are a second thread's
//! (the syncer's), which covers every group written so far with one fsync
//! while the committer writes the next. A group that fails is refused whole
//! and acknowledged to nobody, and nothing is acknowledged after it.
//!
//! A plugin's follow-ups come with its progress (state, cursor, dead
//! letters) and are written by the plugin's own thread, under the same
//! writer lock the committer takes for each group (so sequences stay in
//! order and the duplicate window sees every id), and answered as soon as
//! they are written, before the sync, like a plugin's commits without
//! follow-ups (`Store::commit_progress`): its next batch reads the state it
//! left, and its worker neither waits out an fsync per batch nor hands its
//! commit to another thread. The follow-ups themselves reach readers only
//! once durable (the tail and the head move after the sync). A crash before
//! the sync loses the progress and its follow-ups together (one journal,
//! in order): the events are handled again and publish the same follow-up
//! ids. A failed sync poisons the store, so nothing written after it is
//! kept either.
//!
//! Committed events also go into an in-memory tail of the log (the last
//! [`TAIL_EVENTS_MAX`]), and every doorbell rings. Readers
//! ([`Log::read_from`]) are served from the tail when they are close to the
//! head, and from the store when they have fallen behind it: a slow reader
//! costs disk reads, never events.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TrySendError};
use prometheus_client::metrics::counter::Counter;

use super::progress::Progress;
use super::{Fsync, Retention, Store, StoreError};
use crate::event::Event;

/// The most events committed in one group.
pub const GROUP_EVENTS_MAX: usize = 8192;
/// Committed events kept in memory for readers near the head.
pub const TAIL_EVENTS_MAX: usize = 16_384;

struct Append {
    events: Vec<Event>,
    /// A plugin's progress, for follow-up events: stored with them.
    progress: Option<Progress>,
    reply: Reply,
}

/// A group the committer wrote, waiting for the syncer (`--fsync always`).
struct Written {
    /// The new events, for the tail once durable (shared here, in the
    /// committer, so the syncer's answer is quick).
    events: Vec<Arc<Event>>,
    /// Each append's answer, sent once the group is durable.
    replies: Vec<(Reply, Appended)>,
    /// Whether anything was written (not only duplicates answered).
    wrote: bool,
}

type Reply = tokio::sync::oneshot::Sender<Result<Appended, StoreError>>;

/// Groups written and not yet synced, at most (then the committer waits).
const WRITTEN_GROUPS_MAX: usize = 64;

/// What an append got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appended {
    /// The sequence of each event, in order: a new one, or, for an event
    /// whose id was appended within the duplicate window, the original's.
    pub sequences: Vec<u64>,
    /// How many were such duplicates (not stored again).
    pub duplicates: usize,
}

/// The answer to an append, once its group is committed, or why nothing
/// was stored. Await it from async code, or [`Ticket::wait`] from a thread.
pub struct Ticket(tokio::sync::oneshot::Receiver<Result<Appended, StoreError>>);

impl Ticket {
    /// Block the thread until the group is committed. Not for async code.
    pub fn wait(self) -> Result<Appended, StoreError> {
        self.0.blocking_recv().map_err(|_| StoreError::Closed)?
    }

    /// Wait without blocking a thread.
    pub async fn wait_async(self) -> Result<Appended, StoreError> {
        self.0.await.map_err(|_| StoreError::Closed)?
    }
}

/// How often retention is applied.
const TRIM_EVERY: Duration = Duration::from_secs(5);

/// How the log behaves.
#[derive(Debug, Clone, Copy)]
pub struct LogOptions {
    /// When appends reach stable storage.
    pub fsync: Fsync,
    /// Idempotent publishing: an event whose id was appended less than this
    /// ago is not stored again, and its publisher gets the original
    /// sequence (zero: no detection). Remembered across restarts.
    pub dedup_window: Duration,
    /// How much of the log to keep, applied every few seconds.
    pub retention: Retention,
}

/// The duplicate window's default: 2 minutes (as NATS JetStream's).
pub const DEDUP_WINDOW_DEFAULT: Duration = Duration::from_secs(120);
use super::dedup::Dedup;
pub use super::dedup::DEDUP_IDS_MAX;

/// Where an appended event went: an index into its group's new events, or
/// the sequence of the event it duplicates; and whether it is a duplicate.
type Slot = (Result<usize, u64>, bool);

/// What only the log's writer touches (under `Log::writer`).
struct Writer {
    dedup: Dedup,
    /// Ids (by hash) appended by the group being committed: an index into
    /// its new events; reused group to group.
    in_group: HashMap<u64, usize, foldhash::fast::RandomState>,
    /// With fsync always, the syncer's queue of written groups.
    to_syncer: Option<Sender<Written>>,
}

struct Tail {
    /// The sequence of `events[0]` (head + 1 when empty).
    first: u64,
    events: VecDeque<Arc<Event>>,
}

/// The durable log: group commit, the tail, and doorbells.
pub struct Log {
    store: Arc<Store>,
    requests: Mutex<Option<Sender<Append>>>,
    tail: RwLock<Tail>,
    head: AtomicU64,
    bells: Mutex<Vec<Sender<()>>>,
    /// The log's writer: the committer takes it for each group, and a
    /// plugin's thread for its own commit. `None` once closed.
    writer: Mutex<Option<Writer>>,
    committer: Mutex<Option<JoinHandle<()>>>,
    syncer: Mutex<Option<JoinHandle<()>>>,
    committed: Counter,
    dedup_window: Duration,
    observer: std::sync::OnceLock<Arc<dyn crate::event::Watcher>>,
}

impl Log {
    /// Show every committed event to `observer` (the flow, the catalog,
    /// the live tail); once.
    pub fn observe(&self, observer: Arc<dyn crate::event::Watcher>) {
        let _ = self.observer.set(observer);
    }

    /// Start the committer on `store` with the default duplicate window and
    /// no retention; `committed` counts the events it commits.
    pub fn start(store: Store, fsync: Fsync, committed: Counter) -> Result<Arc<Log>, StoreError> {
        Log::start_with(
            store,
            committed,
            LogOptions {
                fsync,
                dedup_window: DEDUP_WINDOW_DEFAULT,
                retention: Retention::default(),
            },
        )
    }

    /// [`Log::start`] with every option.
    pub fn start_with(
        store: Store,
        committed: Counter,
        options: LogOptions,
    ) -> Result<Arc<Log>, StoreError> {
        let LogOptions {
            fsync,
            dedup_window,
            retention,
        } = options;
        let store = Arc::new(store);
        let head = store.last_sequence();
        let (tx, rx) = crossbeam_channel::bounded::<Append>(1024);
        let log = Arc::new(Log {
            store,
            requests: Mutex::new(Some(tx)),
            tail: RwLock::new(Tail {
                first: head + 1,
                events: VecDeque::new(),
            }),
            head: AtomicU64::new(head),
            bells: Mutex::default(),
            writer: Mutex::default(),
            committer: Mutex::default(),
            syncer: Mutex::default(),
            committed,
            dedup_window,
            observer: std::sync::OnceLock::new(),
        });
        let dedup = log.recent_ids(dedup_window)?;
        let thread_err = |what: &str, e: std::io::Error| StoreError::Open {
            dir: log.store.dir().to_path_buf(),
            reason: format!("cannot start the {what} thread: {e}"),
        };
        // With fsync always, a syncer makes written groups durable and
        // answers them while the committer writes the next ones.
        let to_syncer = match fsync {
            Fsync::Always => {
                let (tx, written) = crossbeam_channel::bounded::<Written>(WRITTEN_GROUPS_MAX);
                let syncer = log.clone();
                let handle = std::thread::Builder::new()
                    .name("plugbus-sync".into())
                    .spawn(move || syncer.sync_loop(written))
                    .map_err(|e| thread_err("syncer", e))?;
                *log.syncer.lock().unwrap_or_else(|p| p.into_inner()) = Some(handle);
                Some(tx)
            }
            Fsync::Interval(_) => None,
        };
        *log.writer.lock().unwrap_or_else(|p| p.into_inner()) = Some(Writer {
            dedup,
            in_group: HashMap::default(),
            to_syncer,
        });
        let committer = log.clone();
        let handle = std::thread::Builder::new()
            .name("plugbus-commit".into())
            .spawn(move || committer.commit_loop(rx, fsync, retention))
            .map_err(|e| thread_err("committer", e))?;
        *log.committer.lock().unwrap_or_else(|p| p.into_inner()) = Some(handle);
        Ok(log)
    }

    /// How long an appended id is remembered for duplicate detection.
    pub fn dedup_window(&self) -> Duration {
        self.dedup_window
    }

    /// The store underneath.
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// The sequence of the last committed event.
    pub fn head(&self) -> u64 {
        self.head.load(Ordering::Acquire)
    }

    /// Append `events` durably; returns their sequences. Blocks the thread
    /// until the group they join is committed.
    pub fn append(&self, events: Vec<Event>) -> Result<Appended, StoreError> {
        self.submit(events)?.wait()
    }

    /// Hand `events` to the committer; the ticket answers once they are
    /// committed. Waits only if a full backlog of appends is already queued.
    pub fn submit(&self, events: Vec<Event>) -> Result<Ticket, StoreError> {
        self.submit_with(events, None)
    }

    /// [`Log::submit`] for a plugin's follow-up events: `progress` (the
    /// plugin's state, cursor and dead letters after the batch that
    /// published them) is written in the same atomic batch as the events.
    pub fn submit_with(
        &self,
        events: Vec<Event>,
        progress: Option<Progress>,
    ) -> Result<Ticket, StoreError> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        if events.is_empty() && progress.is_none() {
            let _ = reply.send(Ok(Appended {
                sequences: Vec::new(),
                duplicates: 0,
            }));
            return Ok(Ticket(answer));
        }
        if progress.is_some() {
            // A plugin's commit: written on its own thread, under the
            // writer's lock, rather than handed to the committer and waited
            // for (two thread hand-offs per batch on the plugin's path).
            // Closed once appends are refused, as for publishers.
            let mut writer = self.writer_while_open()?;
            let w = writer.as_mut().ok_or(StoreError::Closed)?;
            self.commit_group(
                w,
                vec![Append {
                    events,
                    progress,
                    reply,
                }],
            );
            return Ok(Ticket(answer));
        }
        let sender = self
            .requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or(StoreError::Closed)?;
        sender
            .send(Append {
                events,
                progress,
                reply,
            })
            .map_err(|_| StoreError::Closed)?;
        Ok(Ticket(answer))
    }

    /// The writer's lock, for a write on this thread; closed once appends
    /// are refused, as for publishers.
    fn writer_while_open(&self) -> Result<std::sync::MutexGuard<'_, Option<Writer>>, StoreError> {
        if self
            .requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_none()
        {
            return Err(StoreError::Closed);
        }
        Ok(self.writer.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Publish the timers due at `now_ms`, up to `max`, soonest first:
    /// under the writer's lock (where every timer change is written), their
    /// events are appended and the timers removed in one atomic write, so
    /// each is appended once and a cancel committed before always wins.
    /// The timers fired.
    pub fn fire_due(
        &self,
        now_ms: u64,
        max: usize,
    ) -> Result<Vec<super::timers::Stored>, StoreError> {
        // The clock wakes for every commit that sets a timer: look before
        // taking the writer's lock, which plugins' commits wait for.
        if self.store.next_due()?.is_none_or(|due| due > now_ms) {
            return Ok(Vec::new());
        }
        let fired = {
            let mut writer = self.writer_while_open()?;
            let w = writer.as_mut().ok_or(StoreError::Closed)?;
            let due = self.store.due_timers(now_ms, max)?;
            if due.is_empty() {
                return Ok(due);
            }
            let events = due
                .iter()
                .map(|s| {
                    let restamp = s.owner != crate::timer::OUTSIDE;
                    crate::timer::fired(s.timer.event.clone(), s.timer.due_ms, now_ms, restamp)
                })
                .collect();
            let (reply, mut answer) = tokio::sync::oneshot::channel();
            let last = due.last().map_or(0, |s| s.timer.due_ms);
            let complete = due.len() < max;
            self.commit_group(
                w,
                vec![Append {
                    events: crate::event::stamped(events),
                    progress: Some(Progress {
                        fired: due.clone(),
                        ..Progress::default()
                    }),
                    reply,
                }],
            );
            // A write with progress is answered before its group returns:
            // still under the lock, so no timer is set between the fire and
            // moving the scan's start past it.
            match answer.try_recv() {
                Ok(Ok(_)) => {
                    let floor = if complete {
                        now_ms.saturating_add(1)
                    } else {
                        last
                    };
                    self.store.timers_fired_before(floor);
                }
                Ok(Err(e)) => return Err(e),
                Err(_) => return Err(StoreError::Closed),
            }
            due
        };
        Ok(fired)
    }

    /// A doorbell: rings (holds one `()`) whenever events are committed.
    pub fn doorbell(&self) -> Receiver<()> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.bells
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(tx);
        rx
    }

    /// Up to `max` committed events with sequence ≥ `from`, in order.
    pub fn read_from(&self, from: u64, max: usize) -> Result<Vec<Arc<Event>>, StoreError> {
        {
            let tail = self.tail.read().unwrap_or_else(|p| p.into_inner());
            if from >= tail.first {
                let skip = (from - tail.first) as usize;
                return Ok(tail.events.iter().skip(skip).take(max).cloned().collect());
            }
        }
        let head = self.head();
        let mut events = self.store.read(from, max)?;
        // The store may already hold a group whose commit is not yet
        // acknowledged; readers see only what is.
        events.retain(|e| e.sequence <= head);
        Ok(events.into_iter().map(Arc::new).collect())
    }

    /// Stop accepting appends; the committer finishes what it has, syncs,
    /// and exits.
    pub fn close(&self) {
        self.requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        // The committer first: when it ends, the syncer drains and ends.
        for (thread, what) in [(&self.committer, "committer"), (&self.syncer, "syncer")] {
            let handle = thread.lock().unwrap_or_else(|p| p.into_inner()).take();
            if let Some(h) = handle {
                if h.join().is_err() {
                    tracing::error!("the log {what} panicked");
                }
            }
        }
    }

    /// The ids of the events at the end of the log whose time is within
    /// `window` (at most [`DEDUP_IDS_MAX`]), for duplicate detection after a
    /// restart.
    fn recent_ids(&self, window: Duration) -> Result<Dedup, StoreError> {
        let mut dedup = Dedup::new(window, DEDUP_IDS_MAX);
        if !dedup.is_on() {
            return Ok(dedup);
        }
        let now = Instant::now();
        let wall = std::time::SystemTime::now();
        let mut recent = Vec::new();
        for event in self.store.read_back(DEDUP_IDS_MAX)? {
            let age = humantime::parse_rfc3339_weak(&event.time)
                .ok()
                .and_then(|t| wall.duration_since(t).ok())
                .unwrap_or(Duration::ZERO);
            if age > window {
                break;
            }
            recent.push((
                now.checked_sub(age).unwrap_or(now),
                dedup.hash(&event.id),
                event.sequence,
            ));
        }
        // Oldest first, as they were appended.
        for (at, h, seq) in recent.into_iter().rev() {
            dedup.insert(at, [(h, seq)]);
        }
        Ok(dedup)
    }

    /// Whether the event at `sequence` has the id `id` (a candidate
    /// duplicate's check): from the tail, or the store (where a group
    /// written but not yet synced already is).
    fn has_id(&self, sequence: u64, id: &str) -> bool {
        {
            let tail = self.tail.read().unwrap_or_else(|p| p.into_inner());
            if sequence >= tail.first {
                if let Some(e) = tail.events.get((sequence - tail.first) as usize) {
                    return e.id == id;
                }
            }
        }
        match self.store.read(sequence, 1) {
            Ok(events) => events
                .first()
                .is_some_and(|e| e.sequence == sequence && e.id == id),
            Err(e) => {
                tracing::warn!(
                    sequence,
                    "cannot read an event to check a duplicate id; taken as new: {e}"
                );
                false
            }
        }
    }

    fn commit_loop(&self, rx: Receiver<Append>, fsync: Fsync, retention: Retention) {
        let idle = match fsync {
            Fsync::Always => TRIM_EVERY,
            Fsync::Interval(every) => every.min(TRIM_EVERY),
        };
        let mut last_trim = Instant::now();
        loop {
            // Housekeeping, by the log's writer: retention.
            if last_trim.elapsed() >= TRIM_EVERY {
                last_trim = Instant::now();
                let _writing = self.writer.lock().unwrap_or_else(|p| p.into_inner());
                match self.store.trim(&retention) {
                    Ok(0) => {}
                    Ok(n) => {
                        tracing::info!(removed = n, "retention: removed the oldest finished events")
                    }
                    Err(e) => tracing::error!("retention: {e}"),
                }
            }
            let first = match rx.recv_timeout(idle) {
                Ok(a) => a,
                Err(RecvTimeoutError::Timeout) => {
                    if let Err(e) = self.store.sync() {
                        tracing::error!("{e}");
                    }
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => break,
            };
            let mut group = vec![first];
            let mut count = group[0].events.len();
            while count < GROUP_EVENTS_MAX {
                match rx.try_recv() {
                    Ok(a) => {
                        count += a.events.len();
                        group.push(a);
                    }
                    Err(_) => break,
                }
            }
            let mut writer = self.writer.lock().unwrap_or_else(|p| p.into_inner());
            match writer.as_mut() {
                Some(w) => self.commit_group(w, group),
                None => break,
            }
        }
        // Closed: the writer goes (and with it the syncer's queue, so the
        // syncer ends once it has answered what it has).
        let writer = self.writer.lock().unwrap_or_else(|p| p.into_inner()).take();
        drop(writer);
        if let Err(e) = self.store.sync() {
            tracing::error!("final sync: {e}");
        }
    }

    /// Take the events out of `group`: the new ones, in order, and for each
    /// event of each append its slot, an index into the new ones or the
    /// sequence of the event it duplicates (with whether it is a duplicate:
    /// of an earlier append, or of one in this group). `in_group` is left
    /// holding the new ids (by hash) and their indexes.
    fn sort_out(
        &self,
        dedup: &Dedup,
        in_group: &mut HashMap<u64, usize, foldhash::fast::RandomState>,
        group: &mut [Append],
        count: usize,
    ) -> (Vec<Event>, Vec<Vec<Slot>>) {
        let mut fresh: Vec<Event> = Vec::with_capacity(count);
        in_group.clear();
        let mut slots = Vec::with_capacity(group.len());
        for a in group {
            let mut mine = Vec::with_capacity(a.events.len());
            for e in std::mem::take(&mut a.events) {
                if !dedup.is_on() {
                    mine.push((Ok(fresh.len()), false));
                    fresh.push(e);
                    continue;
                }
                let h = dedup.hash(&e.id);
                if let Some(seq) = dedup.find(h, |seq| self.has_id(seq, &e.id)) {
                    mine.push((Err(seq), true));
                    continue;
                }
                match in_group.get(&h) {
                    Some(&i) if fresh.get(i).is_some_and(|f| f.id == e.id) => {
                        mine.push((Ok(i), true));
                    }
                    other => {
                        if other.is_none() {
                            in_group.insert(h, fresh.len());
                        }
                        mine.push((Ok(fresh.len()), false));
                        fresh.push(e);
                    }
                }
            }
            slots.push(mine);
        }
        (fresh, slots)
    }

    /// Write `group` as one atomic batch (its duplicates answered with the
    /// originals' sequences), then answer it: a plugin's progress at once,
    /// publishers once durable (the syncer, or here under an interval).
    fn commit_group(&self, w: &mut Writer, mut group: Vec<Append>) {
        let Writer {
            dedup,
            in_group,
            to_syncer,
        } = w;
        let count: usize = group.iter().map(|a| a.events.len()).sum();
        let now = Instant::now();
        dedup.evict(now);
        let (mut fresh, slots) = self.sort_out(dedup, in_group, &mut group, count);
        let wrote = !fresh.is_empty() || group.iter().any(|a| a.progress.is_some());
        let first_sequence = {
            let progress: Vec<&Progress> =
                group.iter().filter_map(|a| a.progress.as_ref()).collect();
            match (wrote, &to_syncer) {
                // Duplicates only: a poisoned store answers them with
                // its error, never an ack.
                (false, _) => self.store.check_poisoned().map(|()| 0),
                (true, Some(_)) => self.store.write_with(&mut fresh, &progress),
                (true, None) => self.store.append_with(&mut fresh, &progress),
            }
        };
        match first_sequence {
            Ok(first_sequence) => {
                dedup.insert(
                    now,
                    in_group
                        .drain()
                        .map(|(h, i)| (h, first_sequence + i as u64)),
                );
                let mut replies: Vec<(Reply, Appended)> = Vec::with_capacity(group.len());
                for (a, mine) in group.into_iter().zip(slots) {
                    let answer = {
                        let duplicates = mine.iter().filter(|(_, dup)| *dup).count();
                        let sequences = mine
                            .into_iter()
                            .map(|(s, _)| match s {
                                Ok(i) => first_sequence + i as u64,
                                Err(seq) => seq,
                            })
                            .collect();
                        let appended = Appended {
                            sequences,
                            duplicates,
                        };
                        (a.reply, appended)
                    };
                    if a.progress.is_some() {
                        // A plugin's progress with its follow-ups: in the
                        // store now, where its next batch reads its state;
                        // the follow-ups are shown to readers once durable.
                        let (reply, appended) = answer;
                        let _ = reply.send(Ok(appended));
                    } else {
                        replies.push(answer);
                    }
                }
                let written = Written {
                    events: fresh.into_iter().map(Arc::new).collect(),
                    replies,
                    wrote,
                };
                match &to_syncer {
                    Some(syncer) => {
                        if let Err(unsent) = syncer.send(written) {
                            for (reply, _) in unsent.0.replies {
                                let _ = reply.send(Err(StoreError::Closed));
                            }
                        }
                    }
                    None => self.answer(written),
                }
            }
            Err(e) => {
                tracing::error!(events = count, "{e}");
                for a in group {
                    let _ = a.reply.send(Err(e.clone()));
                }
            }
        }
    }

    /// The syncer (`--fsync always`): takes every group written so far,
    /// makes them durable with one fsync, and only then answers them, in
    /// order. After a failed fsync nothing more is acknowledged (the store
    /// is poisoned).
    fn sync_loop(&self, written: Receiver<Written>) {
        while let Ok(first) = written.recv() {
            let mut groups = vec![first];
            while let Ok(more) = written.try_recv() {
                groups.push(more);
            }
            let synced = if groups.iter().any(|g| g.wrote) {
                self.store.sync()
            } else {
                self.store.check_poisoned()
            };
            match synced {
                Ok(()) => groups.into_iter().for_each(|g| self.answer(g)),
                Err(e) => {
                    tracing::error!("{e}");
                    for g in groups {
                        for (reply, _) in g.replies {
                            let _ = reply.send(Err(e.clone()));
                        }
                    }
                }
            }
        }
    }

    /// A durable group: its events go to the tail, then its appends are
    /// acknowledged; the events that left the tail are dropped last.
    fn answer(&self, written: Written) {
        let gone = self.publish(written.events);
        for (reply, appended) in written.replies {
            let _ = reply.send(Ok(appended));
        }
        drop(gone);
    }

    /// Put committed events in the tail, move the head, show them to
    /// watchers, ring the bells.
    /// Returns the events pushed out of the tail (for the caller to drop
    /// outside the lock).
    fn publish(&self, events: Vec<Arc<Event>>) -> Vec<Arc<Event>> {
        let Some(last) = events.last().map(|e| e.sequence) else {
            return Vec::new();
        };
        let count = events.len() as u64;
        let first = events[0].sequence;
        // The head moves forward only, by the group just committed: its
        // events follow each other and come after everything shown before
        // (the committer publishes groups in commit order; 2647a69 fixed a
        // race that broke this).
        let before = self.head.load(Ordering::Acquire);
        assert!(
            first > before,
            "group {first}..={last} published at or below the head {before}"
        );
        debug_assert!(
            events
                .windows(2)
                .all(|w| w[1].sequence == w[0].sequence + 1),
            "a committed group's sequences are consecutive"
        );
        debug_assert_eq!(
            last - first + 1,
            count,
            "a group's sequences span its events"
        );
        let gone: Vec<Arc<Event>> = {
            let mut tail = self.tail.write().unwrap_or_else(|p| p.into_inner());
            tail.events.extend(events);
            let excess = tail.events.len().saturating_sub(TAIL_EVENTS_MAX);
            tail.first += excess as u64;
            tail.events.drain(..excess).collect()
        };
        self.head.store(last, Ordering::Release);
        // Watchers see the events only once the head covers them: a tail
        // client that saw one and reconnects reads it back from the log.
        if let Some(o) = self.observer.get().filter(|o| o.active()) {
            let shown: Vec<Arc<Event>> = {
                let tail = self.tail.read().unwrap_or_else(|p| p.into_inner());
                let kept = tail.events.len() - tail.events.partition_point(|e| e.sequence < first);
                gone.iter()
                    .filter(|e| e.sequence >= first)
                    .chain(tail.events.iter().skip(tail.events.len() - kept))
                    .filter(|e| e.sequence <= last)
                    .cloned()
                    .collect()
            };
            // Watchers never see past the head.
            debug_assert!(shown
                .iter()
                .all(|e| e.sequence <= self.head.load(Ordering::Acquire)));
            o.accepted(&shown);
        }
        self.committed.inc_by(count);
        let mut bells = self.bells.lock().unwrap_or_else(|p| p.into_inner());
        bells.retain(|b| !matches!(b.try_send(()), Err(TrySendError::Disconnected(_))));
        gone
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(i: usize) -> Event {
        Event::new("order.placed", None, format!("{i}").into_bytes()).expect("event")
    }

    #[test]
    fn a_watcher_is_shown_an_event_only_once_the_head_covers_it() {
        // A tail client that saw an event and reconnects reads it back from
        // the log up to the head: the head must already cover it.
        let dir = crate::store::tests::temp_dir("log-watched");
        let log = Log::start(
            Store::open(&dir, Fsync::Interval(Duration::from_millis(5))).expect("open"),
            Fsync::Interval(Duration::from_millis(5)),
            Counter::default(),
        )
        .expect("start");
        /// Checks each event against the head as it is shown.
        #[derive(Default)]
        struct Checker {
            log: std::sync::OnceLock<Arc<Log>>,
            seen: std::sync::atomic::AtomicU64,
        }
        impl crate::event::Watcher for Checker {
            fn active(&self) -> bool {
                true
            }
            fn accepted(&self, events: &[Arc<Event>]) {
                let head = self.log.get().map_or(0, |l| l.head());
                for e in events {
                    assert!(
                        head >= e.sequence,
                        "event {} shown before the head ({head}) covered it",
                        e.sequence
                    );
                }
                self.seen.fetch_add(events.len() as u64, Ordering::Relaxed);
            }
        }
        let checker = Arc::new(Checker::default());
        let _ = checker.log.set(log.clone());
        log.observe(checker.clone());
        let writer = {
            let log = log.clone();
            std::thread::spawn(move || {
                for i in 0..200 {
                    log.append(vec![ev(i)]).expect("append");
                }
            })
        };
        writer.join().expect("writer");
        assert_eq!(checker.seen.load(Ordering::Relaxed), 200);
    }

    #[test]
    fn concurrent_appends_are_acknowledged_with_disjoint_sequences_and_read_in_order() {
        let dir = crate::store::tests::temp_dir("log-concurrent");
        let log = Log::start(
            Store::open(&dir, Fsync::Always).expect("open"),
            Fsync::Always,
            Counter::default(),
        )
        .expect("start");
        let bell = log.doorbell();
        let writers: Vec<_> = (0..4)
            .map(|w| {
                let log = log.clone();
                std::thread::spawn(move || {
                    (0..50)
                        .map(|i| {
                            log.append(vec![ev(w * 1000 + i), ev(w * 1000 + i)])
                                .expect("append")
                                .sequences[0]
                        })
                        .collect::<Vec<u64>>()
                })
            })
            .collect();
        let mut firsts: Vec<u64> = writers
            .into_iter()
            .flat_map(|w| w.join().expect("writer"))
            .collect();
        firsts.sort_unstable();
        let want: Vec<u64> = (0..200).map(|i| 1 + 2 * i).collect();
        assert_eq!(firsts, want, "each append got two consecutive sequences");
        assert_eq!(log.head(), 400);
        assert!(bell.try_recv().is_ok(), "the doorbell rang");
        let all = log.read_from(1, 1000).expect("read");
        assert_eq!(all.len(), 400);
        assert!(all.windows(2).all(|w| w[0].sequence + 1 == w[1].sequence));
        log.close();
        assert!(matches!(log.append(vec![ev(0)]), Err(StoreError::Closed)));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_repeated_id_within_the_window_gets_the_original_sequence_even_after_a_restart() {
        let dir = crate::store::tests::temp_dir("log-dedup");
        let open = || {
            Log::start(
                Store::open(&dir, Fsync::Always).expect("open"),
                Fsync::Always,
                Counter::default(),
            )
            .expect("start")
        };
        let log = open();
        let a = ev(1);
        let b = ev(2);
        let first = log.append(vec![a.clone(), b.clone()]).expect("append");
        assert_eq!((first.sequences.clone(), first.duplicates), (vec![1, 2], 0));
        let again = log.append(vec![b.clone(), ev(3), ev(3)]).expect("append");
        assert_eq!(
            again.duplicates, 1,
            "b is a duplicate; the two ev(3) have new ids"
        );
        assert_eq!(again.sequences[0], 2, "the original sequence");
        let twice = ev(4);
        let same = log.append(vec![twice.clone(), twice]).expect("append");
        assert_eq!(
            (same.sequences[0], same.sequences[1], same.duplicates),
            (5, 5, 1)
        );
        assert_eq!(log.head(), 5, "nothing stored twice");
        log.close();
        drop(log);
        let log = open();
        let after = log.append(vec![a]).expect("append");
        assert_eq!(
            (after.sequences, after.duplicates),
            (vec![1], 1),
            "remembered across a restart"
        );
        log.close();
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn readers_behind_the_tail_are_served_from_the_store() {
        let dir = crate::store::tests::temp_dir("log-behind");
        let log = Log::start(
            Store::open(&dir, Fsync::Interval(Duration::from_millis(5))).expect("open"),
            Fsync::Interval(Duration::from_millis(5)),
            Counter::default(),
        )
        .expect("start");
        let n = TAIL_EVENTS_MAX + 100;
        for chunk in (0..n).collect::<Vec<_>>().chunks(GROUP_EVENTS_MAX / 2) {
            log.append(chunk.iter().map(|&i| ev(i)).collect())
                .expect("append");
        }
        let old = log.read_from(1, 3).expect("from the store");
        assert_eq!(
            old.iter().map(|e| e.sequence).collect::<Vec<_>>(),
            [1, 2, 3]
        );
        assert_eq!(old[0].data, b"0");
        let recent = log.read_from(n as u64, 10).expect("from the tail");
        assert_eq!(recent.len(), 1);
        assert!(log
            .read_from(n as u64 + 1, 10)
            .expect("past the head")
            .is_empty());
        log.close();
        let _ = std::fs::remove_dir_all(&dir);
    }
}
