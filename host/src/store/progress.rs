//! A plugin's progress through the log and its state, written together.
//!
//! A plugin's cursor is not one number: events the plugin asked to retry
//! are behind it while later ones are done. [`Cursor`] says both: every
//! event up to `through` is done except the `pending` ones, each with the
//! attempt it is due for. After a restart the worker reads from `through +
//! 1` and delivers the pending events again first, so an event acked once
//! is never delivered again, and one not yet acked is never skipped.
//!
//! [`Progress`] is what one handled batch changes: the plugin's key-value
//! bucket, its cursor, dead letters and the re-drive list. It is written as
//! one atomic batch (with the batch's follow-up events, when there are any,
//! by the log's committer), so the state a plugin keeps and the events it
//! has counted in it cannot disagree after a crash.
//!
//! Buckets live in the `kv` keyspace under `plugin \0 key`.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use fjall::OwnedWriteBatch;

use super::state_view::Change;
use super::{dead, Store, StoreError};
use crate::event::Event;

/// How far a plugin is through the log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cursor {
    /// Every event up to here is done, except `pending`.
    pub through: u64,
    /// Events at or below `through` still to be retried: (sequence, the
    /// attempt due next).
    pub pending: Vec<(u64, u32)>,
    /// What became of its events after `counts.start`, kept with it.
    pub counts: Counts,
    /// When pending retries that asked to wait are due: (sequence, Unix
    /// time in ms), sorted by sequence; a pending retry not here is due at
    /// once. Kept so that a restart does not cut a delay short.
    pub dues: Vec<(u64, u64)>,
}

/// The double entry of a cursor: of its events after `start` (those of
/// its plugin's subscriptions, and of its part when the plugin runs
/// several workers), how many were handled (acked) and how many are given
/// up on (dead letters, re-driven ones taken back out), and how many were
/// dropped by its overflow policy (`drop`). Written in the same atomic
/// write as the cursor, so that at any time `matching events after start =
/// handled + dead + dropped + pending` (the events after `through`, and
/// `pending`), which `plugbus audit` checks against the log. A replay
/// starts the count again.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Counting starts after this sequence: the plugin's start (after the
    /// events it skipped, when it started at the head), its last replay,
    /// or the cursor it had when counting began.
    pub start: u64,
    /// Events after `start` it acked.
    pub handled: u64,
    /// Events after `start` given up on and not re-driven since.
    pub dead: u64,
    /// Events after `start` dropped for want of room in its queue
    /// (`overflow.policy = "drop"`).
    pub dropped: u64,
}

/// The bytes a cursor's counts take at the end of its record: with them
/// the record's length is a multiple of 12, without them (the older
/// format) 8 more.
const COUNTS_BYTES: usize = 40;
/// Marks the counts' trailer.
const COUNTS_MAGIC: u64 = 0x706c_7567_6275_7301;
/// Marks the due times' trailer, after the counts: each (sequence, due ms)
/// big-endian, then their number, then this. Written only when a retry
/// waits, so that a cursor without one keeps the older format.
const DUES_MAGIC: u64 = 0x706c_7567_6475_6573;

impl Cursor {
    /// A cursor with nothing pending, counting from `through`.
    pub fn at(through: u64) -> Cursor {
        Cursor {
            through,
            pending: Vec::new(),
            counts: Counts {
                start: through,
                ..Counts::default()
            },
            dues: Vec::new(),
        }
    }

    /// When the pending retry of `sequence` is due (Unix ms), if it waits.
    pub fn due_of(&self, sequence: u64) -> Option<u64> {
        self.dues
            .binary_search_by_key(&sequence, |d| d.0)
            .ok()
            .map(|i| self.dues[i].1)
    }

    /// The highest sequence up to which every event is done: what
    /// retention may remove and what lag is measured from.
    pub fn low(&self) -> u64 {
        self.pending
            .iter()
            .map(|&(seq, _)| seq.saturating_sub(1))
            .fold(self.through, u64::min)
    }

    pub(super) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(8 + 12 * self.pending.len() + COUNTS_BYTES);
        out.extend_from_slice(&self.through.to_be_bytes());
        for &(seq, attempt) in &self.pending {
            out.extend_from_slice(&seq.to_be_bytes());
            out.extend_from_slice(&attempt.to_be_bytes());
        }
        let c = &self.counts;
        for word in [c.start, c.handled, c.dead, c.dropped, COUNTS_MAGIC] {
            out.extend_from_slice(&word.to_be_bytes());
        }
        debug_assert_eq!(
            (out.len() - 8) % 12,
            COUNTS_BYTES % 12,
            "the counts' trailer is recognisable"
        );
        if !self.dues.is_empty() {
            for &(seq, due) in &self.dues {
                out.extend_from_slice(&seq.to_be_bytes());
                out.extend_from_slice(&due.to_be_bytes());
            }
            out.extend_from_slice(&(self.dues.len() as u64).to_be_bytes());
            out.extend_from_slice(&DUES_MAGIC.to_be_bytes());
        }
        out
    }

    pub(super) fn decode(bytes: &[u8]) -> Option<Cursor> {
        let (bytes, dues) = split_dues(bytes)?;
        let through = u64::from_be_bytes(bytes.get(..8)?.try_into().ok()?);
        let mut rest = &bytes[8..];
        let mut counts = Counts {
            start: through,
            ..Counts::default()
        };
        if rest.len() % 12 == COUNTS_BYTES % 12 && rest.len() >= COUNTS_BYTES {
            let (pending, trailer) = rest.split_at(rest.len() - COUNTS_BYTES);
            let word = |i: usize| -> Option<u64> {
                Some(u64::from_be_bytes(
                    trailer.get(i * 8..i * 8 + 8)?.try_into().ok()?,
                ))
            };
            if word(4)? != COUNTS_MAGIC {
                return None;
            }
            counts = Counts {
                start: word(0)?,
                handled: word(1)?,
                dead: word(2)?,
                dropped: word(3)?,
            };
            rest = pending;
        }
        if !rest.len().is_multiple_of(12) {
            return None;
        }
        let pending = rest
            .chunks_exact(12)
            .filter_map(|c| {
                let seq = u64::from_be_bytes(c[..8].try_into().ok()?);
                let attempt = u32::from_be_bytes(c[8..].try_into().ok()?);
                Some((seq, attempt))
            })
            .collect();
        Some(Cursor {
            through,
            pending,
            counts,
            dues,
        })
    }
}

/// When pending retries are due: (sequence, Unix ms).
type Dues = Vec<(u64, u64)>;

/// A cursor's record without its due times' trailer, and the due times.
fn split_dues(bytes: &[u8]) -> Option<(&[u8], Dues)> {
    let word = |b: &[u8]| -> Option<u64> { Some(u64::from_be_bytes(b.try_into().ok()?)) };
    let n = bytes.len();
    if n < 16 || word(&bytes[n - 8..])? != DUES_MAGIC {
        return Some((bytes, Vec::new()));
    }
    let count = usize::try_from(word(&bytes[n - 16..n - 8])?).ok()?;
    let start = n.checked_sub(16 + count.checked_mul(16)?)?;
    let dues = bytes[start..n - 16]
        .chunks_exact(16)
        .filter_map(|c| Some((word(&c[..8])?, word(&c[8..])?)))
        .collect();
    Some((&bytes[..start], dues))
}

/// An event a plugin gave up on, to keep as a dead letter.
#[derive(Debug, Clone)]
pub struct GaveUp {
    /// The event, as delivered.
    pub event: std::sync::Arc<Event>,
    /// Attempts made.
    pub attempts: u32,
    /// The last error.
    pub error: String,
}

/// What one handled batch changes for one plugin, written atomically.
#[derive(Debug, Clone, Default)]
pub struct Progress {
    /// The plugin.
    pub plugin: String,
    /// Whose cursor `cursor` is: one of the plugin's workers
    /// ([`cursor_name`]); none: the plugin's own (one worker).
    pub cursor_name: Option<String>,
    /// Its cursor after the batch; none leaves the stored cursor as it is
    /// (state written outside delivery, e.g. by `init`).
    pub cursor: Option<Cursor>,
    /// Key-value writes to its bucket: a value, or none to delete.
    pub kv: Vec<(String, Option<Vec<u8>>)>,
    /// Events it gave up on.
    pub dead: Vec<GaveUp>,
    /// Re-driven events it is done with (acked or given up on).
    pub redriven: Vec<u64>,
    /// Changes to its timers, in order.
    pub timers: Vec<crate::timer::TimerChange>,
    /// Timers (anyone's) whose events this write appends: removed.
    pub fired: Vec<super::timers::Stored>,
}

impl Progress {
    /// About how many bytes writing it adds to the store (for the disk
    /// reserve): keys and values, dead letters with their events, the
    /// cursor with its pending list.
    pub fn bytes(&self) -> u64 {
        const OVERHEAD: u64 = 32;
        let name = self.plugin.len() as u64 + OVERHEAD;
        let kv: u64 = self
            .kv
            .iter()
            .map(|(k, v)| name + k.len() as u64 + v.as_ref().map_or(0, |v| v.len() as u64))
            .sum();
        let dead: u64 = self
            .dead
            .iter()
            .map(|g| name + 2 * OVERHEAD + g.event.data.len() as u64 + g.error.len() as u64)
            .sum();
        let redriven = self.redriven.len() as u64 * name;
        let cursor = self
            .cursor
            .as_ref()
            .map_or(0, |c| name + 16 * (1 + c.pending.len() as u64));
        let timers: u64 = self
            .timers
            .iter()
            .map(|t| match t {
                crate::timer::TimerChange::Set(t) => {
                    2 * name + crate::timer::bytes(&t.key, &t.event)
                }
                crate::timer::TimerChange::Cancel(_) => 0,
            })
            .sum();
        kv + dead + redriven + cursor + timers
    }
}

/// The longest key the storage engine takes (longer ones panic in it);
/// plugins' keys are held far below it (`runtime::kv::KEY_BYTES_MAX`).
const ENGINE_KEY_BYTES_MAX: usize = u16::MAX as usize;

pub(super) fn kv_key(plugin: &str, key: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(plugin.len() + 1 + key.len());
    k.extend_from_slice(plugin.as_bytes());
    k.push(0);
    k.extend_from_slice(key.as_bytes());
    k
}

impl Store {
    /// A live count of the writes to `plugin`'s state (see
    /// `store::state_view`).
    pub fn state_epoch(&self, plugin: &str) -> Arc<AtomicU64> {
        self.state_views.epoch(plugin)
    }

    /// Add `progress` to `batch`.
    pub(super) fn add_progress(
        &self,
        batch: &mut OwnedWriteBatch,
        progress: &Progress,
        timers: &mut super::timers::UsageDeltas,
    ) -> Result<(), StoreError> {
        let plugin = progress.plugin.as_str();
        for (key, value) in &progress.kv {
            // Plugins' keys are checked when written (`runtime::kv`).
            debug_assert!(key.len() <= plugbus_contract::state::KEY_BYTES_MAX);
            match value {
                Some(v) => batch.insert(&self.kv, kv_key(plugin, key), v.as_slice()),
                None => batch.remove(&self.kv, kv_key(plugin, key)),
            }
        }
        for g in &progress.dead {
            let (k, v) = dead::record(plugin, &g.event, g.attempts, &g.error);
            batch.remove(&self.redrive, k.clone());
            batch.insert(&self.dead, k, v);
        }
        for &seq in &progress.redriven {
            batch.remove(&self.redrive, dead::key(plugin, seq));
        }
        if let Some(cursor) = &progress.cursor {
            let name = progress.cursor_name.as_deref().unwrap_or(plugin);
            batch.insert(&self.cursors, name, cursor.encode());
        }
        self.add_timer_changes(batch, plugin, &progress.timers, timers)?;
        self.add_fired(batch, &progress.fired, timers);
        Ok(())
    }

    /// Write `progress` (one without follow-up events) atomically, and hand
    /// it to the operating system, so that it survives the process being
    /// killed. Not fsynced by itself: a power cut before the next sync loses
    /// it whole, and the plugin handles its batch again from the state
    /// before it.
    pub fn commit_progress(&self, progress: &Progress) -> Result<(), StoreError> {
        self.check_poisoned()?;
        self.make_room(progress.bytes())?;
        self.state_views.around(&state_changes([progress]), || {
            let mut timers = super::timers::UsageDeltas::new();
            self.write_now(|batch| self.add_progress(batch, progress, &mut timers))?;
            self.apply_timer_usage(timers);
            Ok(())
        })
    }

    /// The cursor of `plugin`, with its pending retries.
    pub fn cursor_state(&self, plugin: &str) -> Result<Option<Cursor>, StoreError> {
        let value = self.cursors.get(plugin).map_err(|e| self.read_error(&e))?;
        match value {
            None => Ok(None),
            Some(v) => Cursor::decode(&v)
                .map(Some)
                .ok_or_else(|| StoreError::Corrupt {
                    dir: self.dir.clone(),
                    sequence: 0,
                    reason: format!(
                        "the cursor of plugin `{plugin}` does not decode ({} bytes)",
                        v.len()
                    ),
                }),
        }
    }

    /// Every cursor of `plugin`: its own and its workers' (when it runs
    /// more than one), by name.
    pub fn cursors_of(&self, plugin: &str) -> Result<Vec<(String, Cursor)>, StoreError> {
        let mut out = Vec::new();
        for guard in self.cursors.prefix(plugin) {
            let (k, v) = guard.into_inner().map_err(|e| self.read_error(&e))?;
            let name = String::from_utf8_lossy(&k).into_owned();
            if !is_cursor_of(&name, plugin) {
                continue;
            }
            if let Some(c) = Cursor::decode(&v) {
                out.push((name, c));
            }
        }
        Ok(out)
    }

    /// Forget the cursor called `name` (a worker's, after the plugin's
    /// concurrency changed), so that it holds no events back.
    pub fn remove_cursor(&self, name: &str) -> Result<(), StoreError> {
        self.write_now(|batch| {
            batch.remove(&self.cursors, name);
            Ok(())
        })
    }

    /// One value of `plugin`'s bucket.
    pub fn kv_get(&self, plugin: &str, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.state_views
            .of(plugin)
            .read(key, || self.kv_get_stored(plugin, key))
    }

    /// One value of `plugin`'s bucket, as the engine has it.
    fn kv_get_stored(&self, plugin: &str, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let key = kv_key(plugin, key);
        if key.len() > ENGINE_KEY_BYTES_MAX {
            // Longer than any key the engine can hold (it would panic).
            return Ok(None);
        }
        self.kv
            .get(key)
            .map(|v| v.map(|v| v.to_vec()))
            .map_err(|e| self.read_error(&e))
    }

    /// Up to `max` keys of `plugin`'s bucket after `after` (none: from the
    /// first), in order, with their values.
    pub fn kv_list(
        &self,
        plugin: &str,
        after: Option<&str>,
        max: usize,
    ) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let prefix = kv_key(plugin, "");
        let start = match after {
            Some(a) => {
                let mut k = kv_key(plugin, a);
                k.push(0);
                k
            }
            None => prefix.clone(),
        };
        // A bound longer than the engine takes starts at its prefix; what
        // is not past it is skipped below.
        let from = start[..start.len().min(ENGINE_KEY_BYTES_MAX)].to_vec();
        let mut out = Vec::new();
        for guard in self.kv.range(from..) {
            let (k, v) = guard.into_inner().map_err(|e| self.read_error(&e))?;
            let Some(key) = k.strip_prefix(prefix.as_slice()) else {
                break;
            };
            if *k < *start {
                continue;
            }
            if out.len() >= max {
                break;
            }
            out.push((String::from_utf8_lossy(key).into_owned(), v.to_vec()));
        }
        Ok(out)
    }

    /// Move `plugin`'s cursors (its own and its workers') to `cursor`
    /// (forgetting pending retries) and, with `clear_state`, delete every
    /// key of its bucket, in one atomic write: a replay never starts from a
    /// cleared state with the old cursor, or the other way round. Returns
    /// how many keys were deleted.
    pub fn rewind(
        &self,
        plugin: &str,
        cursor: Option<u64>,
        clear_state: bool,
    ) -> Result<usize, StoreError> {
        let changes: &[(&str, Change)] = if clear_state {
            &[(plugin, Change::Cleared)]
        } else {
            &[]
        };
        self.state_views
            .around(changes, || self.rewind_now(plugin, cursor, clear_state))
    }

    fn rewind_now(
        &self,
        plugin: &str,
        cursor: Option<u64>,
        clear_state: bool,
    ) -> Result<usize, StoreError> {
        self.write_now(|batch| {
            let mut n = 0;
            if clear_state {
                for guard in self.kv.prefix(kv_key(plugin, "")) {
                    let k = guard.key().map_err(|e| self.read_error(&e))?;
                    batch.remove(&self.kv, k);
                    n += 1;
                }
            }
            if let Some(through) = cursor {
                let mut names: Vec<String> = self
                    .cursors_of(plugin)?
                    .into_iter()
                    .map(|(name, _)| name)
                    .collect();
                if names.is_empty() {
                    names.push(plugin.to_string());
                }
                for name in names {
                    batch.insert(&self.cursors, name, Cursor::at(through).encode());
                }
            }
            Ok(n)
        })
    }
}

/// The name of the cursor of worker `index` of `workers` of `plugin`: the
/// plugin's own name for a single worker, `plugin#index/workers` otherwise.
pub fn cursor_name(plugin: &str, index: usize, workers: usize) -> String {
    if workers <= 1 {
        plugin.to_string()
    } else {
        format!("{plugin}#{index}/{workers}")
    }
}

/// Is `name` the cursor of `plugin` or of one of its workers?
fn is_cursor_of(name: &str, plugin: &str) -> bool {
    match name.strip_prefix(plugin) {
        Some("") => true,
        Some(rest) => rest.strip_prefix('#').is_some_and(|r| {
            r.split_once('/')
                .is_some_and(|(i, n)| i.parse::<usize>().is_ok() && n.parse::<usize>().is_ok())
        }),
        None => false,
    }
}

/// The state changes of `progress` (those that write state).
pub(super) fn state_changes<'a>(
    progress: impl IntoIterator<Item = &'a Progress>,
) -> Vec<(&'a str, Change<'a>)> {
    progress
        .into_iter()
        .filter(|p| !p.kv.is_empty())
        .map(|p| (p.plugin.as_str(), Change::Writes(&p.kv)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::temp_dir;
    use crate::store::Fsync;
    use std::sync::atomic::Ordering;

    #[test]
    fn a_state_write_moves_its_plugins_count_on_odd_while_under_way_and_even_after() {
        let dir = temp_dir("state-epochs");
        let store = Store::open(&dir, Fsync::Always).expect("opens");
        let (a, b) = (store.state_epoch("a"), store.state_epoch("b"));
        let seen = a.load(Ordering::Acquire);
        assert!(seen.is_multiple_of(2));
        let none = Change::Writes(&[]);
        store
            .state_views
            .around(&[("a", none), ("a", Change::Writes(&[]))], || {
                assert_eq!(
                    a.load(Ordering::Acquire),
                    seen + 1,
                    "odd once, however often named"
                );
                Ok(())
            })
            .expect("writes");
        assert_eq!(a.load(Ordering::Acquire), seen + 2);
        let progress = |plugin: &str, kv: Vec<(String, Option<Vec<u8>>)>| Progress {
            plugin: plugin.into(),
            kv,
            ..Progress::default()
        };
        store
            .commit_progress(&progress("a", vec![("k".into(), Some(b"1".to_vec()))]))
            .expect("commits");
        assert_eq!(
            a.load(Ordering::Acquire),
            seen + 4,
            "a state write moves it on"
        );
        store
            .commit_progress(&progress("a", Vec::new()))
            .expect("commits");
        assert_eq!(
            a.load(Ordering::Acquire),
            seen + 4,
            "a cursor alone does not"
        );
        store.rewind("a", Some(0), true).expect("rewinds");
        assert_eq!(
            a.load(Ordering::Acquire),
            seen + 6,
            "clearing the state does"
        );
        assert_eq!(b.load(Ordering::Acquire), 0, "another plugin's is its own");
    }

    #[test]
    fn cursors_round_trip_and_their_low_mark_waits_for_pending_retries() {
        let c = Cursor {
            through: 90,
            pending: vec![(40, 2), (77, 5)],
            counts: Counts {
                start: 3,
                handled: 80,
                dead: 5,
                dropped: 1,
            },
            dues: Vec::new(),
        };
        assert_eq!(Cursor::decode(&c.encode()), Some(c.clone()));
        // Retries that wait keep their due times, after the counts.
        let waiting = Cursor {
            dues: vec![(40, 1_767_225_600_000), (77, 1_767_225_700_000)],
            ..c.clone()
        };
        assert_eq!(Cursor::decode(&waiting.encode()), Some(waiting.clone()));
        assert_eq!(waiting.due_of(77), Some(1_767_225_700_000));
        assert_eq!(waiting.due_of(12), None);
        assert_eq!(c.low(), 39);
        assert_eq!(Cursor::at(12).low(), 12);
        assert_eq!(
            Cursor::decode(&7u64.to_be_bytes()),
            Some(Cursor::at(7)),
            "a plain sequence (the older format) reads as a cursor, counting from it"
        );
        let mut older = 9u64.to_be_bytes().to_vec();
        older.extend_from_slice(&4u64.to_be_bytes());
        older.extend_from_slice(&2u32.to_be_bytes());
        assert_eq!(
            Cursor::decode(&older),
            Some(Cursor {
                through: 9,
                pending: vec![(4, 2)],
                counts: Counts {
                    start: 9,
                    ..Counts::default()
                },
                dues: Vec::new(),
            }),
            "the older format with a retry pending"
        );
        let mut bad = c.encode();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert_eq!(Cursor::decode(&bad), None, "a damaged trailer");
        assert_eq!(Cursor::decode(&[0; 13]), None);
    }

    #[test]
    fn progress_writes_state_cursor_and_dead_letters_together() {
        let dir = temp_dir("progress");
        let store = Store::open(&dir, Fsync::Always).expect("opens");
        let mut event = Event::new("order.placed", None, b"{}".to_vec()).expect("event");
        event.sequence = 4;
        store
            .commit_progress(&Progress {
                plugin: "analytics".into(),
                cursor: Some(Cursor {
                    through: 9,
                    pending: vec![(6, 2)],
                    counts: Counts::default(),
                    dues: Vec::new(),
                }),
                kv: vec![
                    ("orders".into(), Some(b"3".to_vec())),
                    ("revenue_cents".into(), Some(b"450".to_vec())),
                    ("gone".into(), None),
                ],
                dead: vec![GaveUp {
                    event: std::sync::Arc::new(event),
                    attempts: 1,
                    error: "no".into(),
                }],
                redriven: Vec::new(),
                cursor_name: None,
                ..Progress::default()
            })
            .expect("commit");
        assert_eq!(
            store.kv_get("analytics", "orders").expect("get"),
            Some(b"3".to_vec())
        );
        assert_eq!(store.kv_get("inventory", "orders").expect("get"), None);
        let keys: Vec<String> = store
            .kv_list("analytics", None, 10)
            .expect("list")
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(keys, ["orders", "revenue_cents"]);
        let after: Vec<String> = store
            .kv_list("analytics", Some("orders"), 10)
            .expect("list")
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(after, ["revenue_cents"]);
        assert_eq!(store.cursor("analytics").expect("cursor"), Some(5));
        assert_eq!(
            store.cursor_state("analytics").expect("cursor"),
            Some(Cursor {
                through: 9,
                pending: vec![(6, 2)],
                counts: Counts::default(),
                dues: Vec::new(),
            })
        );
        assert_eq!(store.dead_letters("analytics").expect("dead").len(), 1);
        assert_eq!(store.rewind("analytics", None, true).expect("clear"), 2);
        // Workers' cursors are the plugin's too; a like-named plugin's are not.
        store.set_cursor("analytics#0/2", 3).expect("cursor");
        store.set_cursor("analytics#1/2", 4).expect("cursor");
        store.set_cursor("analytics2", 4).expect("cursor");
        let mine: Vec<String> = store
            .cursors_of("analytics")
            .expect("cursors")
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        assert_eq!(mine, ["analytics", "analytics#0/2", "analytics#1/2"]);
        store.rewind("analytics", Some(1), false).expect("rewind");
        assert_eq!(store.cursor("analytics#1/2").expect("cursor"), Some(1));
        assert_eq!(store.cursor("analytics2").expect("cursor"), Some(4));
        store.remove_cursor("analytics#1/2").expect("remove");
        assert_eq!(store.cursor("analytics#1/2").expect("cursor"), None);
        assert!(store
            .kv_list("analytics", None, 10)
            .expect("list")
            .is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
