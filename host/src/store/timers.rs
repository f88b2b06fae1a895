//! Timers in the store: `timers` holds each set timer by owner and key
//! (value: its due time, big-endian ms, then its event as the log encodes
//! one), and `timer_due` orders them by due time (key: the due time, then
//! owner, 0, key; no value), so the next one due is its first key.
//!
//! Every change is written under the log's writer lock: a plugin's commit
//! that sets or cancels timers goes through it (as one with follow-ups
//! does), and so does [`super::log::Log::fire_due`], which reads the due
//! timers and, in one atomic batch, appends their events and removes them.
//! So a cancel committed before a fire always wins, and a timer is
//! appended to the log once.

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use fjall::OwnedWriteBatch;

use super::{codec, Store, StoreError};
use crate::event::Event;
use crate::timer::{Timer, TimerChange, Usage};

/// `owner`'s timer `key` in `timers`.
fn timer_key(owner: &str, key: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(owner.len() + 1 + key.len());
    k.extend_from_slice(owner.as_bytes());
    k.push(0);
    k.extend_from_slice(key.as_bytes());
    k
}

/// Its row in `timer_due`.
fn due_key(due_ms: u64, owner: &str, key: &str) -> Vec<u8> {
    let mut k = due_ms.to_be_bytes().to_vec();
    k.extend_from_slice(&timer_key(owner, key));
    k
}

fn encode(due_ms: u64, event: &Event) -> Vec<u8> {
    let mut v = due_ms.to_be_bytes().to_vec();
    v.extend_from_slice(&codec::encode(event));
    v
}

/// How a write changes owners' timers: (owner, timers, bytes), applied to
/// [`Store::timer_usage`] once the write is committed.
pub(super) type UsageDeltas = Vec<(String, i64, i64)>;

/// A timer a plugin or a publisher set: its owner and itself.
#[derive(Debug, Clone, PartialEq)]
pub struct Stored {
    /// The plugin that set it ([`crate::timer::OUTSIDE`]: a publisher).
    pub owner: String,
    /// The timer.
    pub timer: Timer,
}

impl Store {
    fn decode_timer(&self, key: &[u8], value: &[u8]) -> Result<Stored, StoreError> {
        let corrupt = |reason: String| StoreError::Corrupt {
            dir: self.dir.clone(),
            sequence: 0,
            reason: format!("a timer record: {reason}"),
        };
        let zero = key
            .iter()
            .position(|&b| b == 0)
            .ok_or_else(|| corrupt("its key has no owner".into()))?;
        let text = |b: &[u8]| String::from_utf8(b.to_vec()).map_err(|e| corrupt(e.to_string()));
        let (due, event) = value
            .split_first_chunk::<8>()
            .ok_or_else(|| corrupt("shorter than its due time".into()))?;
        Ok(Stored {
            owner: text(&key[..zero])?,
            timer: Timer {
                key: text(&key[zero + 1..])?,
                due_ms: u64::from_be_bytes(*due),
                event: codec::decode(0, event).map_err(|e| corrupt(e.0))?,
            },
        })
    }

    /// `owner`'s timer `key`, if it is set.
    pub fn timer(&self, owner: &str, key: &str) -> Result<Option<Timer>, StoreError> {
        let k = timer_key(owner, key);
        match self.timers.get(&k).map_err(|e| self.read_error(&e))? {
            None => Ok(None),
            Some(v) => Ok(Some(self.decode_timer(&k, &v)?.timer)),
        }
    }

    /// Up to `max` of `owner`'s timers, by key.
    pub fn timers_of(&self, owner: &str, max: usize) -> Result<Vec<Timer>, StoreError> {
        let mut out = Vec::new();
        for guard in self.timers.prefix(timer_key(owner, "")).take(max) {
            let (k, v) = guard.into_inner().map_err(|e| self.read_error(&e))?;
            out.push(self.decode_timer(&k, &v)?.timer);
        }
        Ok(out)
    }

    /// When `owner`'s next timer is due: a read of each of its timers' due
    /// times (not their events), for the console and `/v1/plugins`.
    pub fn next_timer_due(&self, owner: &str) -> Result<Option<u64>, StoreError> {
        let mut next: Option<u64> = None;
        for guard in self.timers.prefix(timer_key(owner, "")) {
            let (_, v) = guard.into_inner().map_err(|e| self.read_error(&e))?;
            if let Some(due) = v.first_chunk::<8>() {
                let due = u64::from_be_bytes(*due);
                next = Some(next.map_or(due, |n| n.min(due)));
            }
        }
        Ok(next)
    }

    /// How many timers `owner` keeps, and their bytes (kept in memory,
    /// counted when the store opened and moved by every write since).
    pub fn timer_usage(&self, owner: &str) -> Usage {
        self.timer_usage
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(owner)
            .copied()
            .unwrap_or_default()
    }

    /// Count every owner's timers (when the store opens).
    pub(super) fn count_timers(&self) -> Result<(), StoreError> {
        let mut out: HashMap<String, Usage> = HashMap::new();
        for guard in self.timers.iter() {
            let (k, v) = guard.into_inner().map_err(|e| self.read_error(&e))?;
            let s = self.decode_timer(&k, &v)?;
            let usage = out.entry(s.owner).or_default();
            usage.count += 1;
            usage.bytes += crate::timer::bytes(&s.timer.key, &s.timer.event);
        }
        *self.timer_usage.lock().unwrap_or_else(|p| p.into_inner()) = out;
        Ok(())
    }

    /// A committed write changed owners' timers by `deltas`.
    pub(super) fn apply_timer_usage(&self, deltas: UsageDeltas) {
        if deltas.is_empty() {
            return;
        }
        let mut usage = self.timer_usage.lock().unwrap_or_else(|p| p.into_inner());
        for (owner, count, bytes) in deltas {
            let u = usage.entry(owner).or_default();
            u.count = u.count.saturating_add_signed(count);
            u.bytes = u.bytes.saturating_add_signed(bytes);
        }
    }

    /// When the next timer is due, if any is set.
    pub fn next_due(&self) -> Result<Option<u64>, StoreError> {
        let from = self.timer_floor.load(Ordering::Acquire).to_be_bytes();
        match self.timer_due.range(from.as_slice()..).next() {
            None => Ok(None),
            Some(guard) => {
                let k = guard.key().map_err(|e| self.read_error(&e))?;
                Ok(k.first_chunk::<8>().map(|d| u64::from_be_bytes(*d)))
            }
        }
    }

    /// Timers due before `due_ms` are all fired (a fire committed under
    /// the log's writer lock, which every timer change takes): scans for
    /// what is due start there, past the rows fired rows left behind
    /// until compaction. A timer set due earlier lowers it again.
    pub(super) fn timers_fired_before(&self, due_ms: u64) {
        self.timer_floor.fetch_max(due_ms, Ordering::AcqRel);
    }

    /// Up to `max` timers due at `now_ms`, soonest first.
    pub fn due_timers(&self, now_ms: u64, max: usize) -> Result<Vec<Stored>, StoreError> {
        let end = (now_ms.saturating_add(1)).to_be_bytes();
        let from = self.timer_floor.load(Ordering::Acquire).to_be_bytes();
        let mut out = Vec::new();
        if from >= end {
            return Ok(out);
        }
        for guard in self
            .timer_due
            .range(from.as_slice()..end.as_slice())
            .take(max)
        {
            let k = guard.key().map_err(|e| self.read_error(&e))?;
            let Some(row) = k.get(8..) else { continue };
            let value = self.timers.get(row).map_err(|e| self.read_error(&e))?;
            let due = k.first_chunk::<8>().map(|d| u64::from_be_bytes(*d));
            match value {
                Some(v) => {
                    let stored = self.decode_timer(row, &v)?;
                    // Every change moves both rows under one lock.
                    debug_assert_eq!(Some(stored.timer.due_ms), due, "a stale due-time row");
                    if Some(stored.timer.due_ms) == due {
                        out.push(stored);
                    }
                }
                None => tracing::error!("a due-time row names a timer that is not set (a bug)"),
            }
        }
        Ok(out)
    }

    /// Put `owner`'s timer changes, in order, into `batch`; a set replaces
    /// the key's timer (its due row goes), a cancel removes it. Called
    /// under the log's writer lock.
    pub(super) fn add_timer_changes(
        &self,
        batch: &mut OwnedWriteBatch,
        owner: &str,
        changes: &[TimerChange],
        deltas: &mut UsageDeltas,
    ) -> Result<(), StoreError> {
        // Due times and bytes as of the changes already put in the batch.
        let mut set: HashMap<&str, Option<(u64, u64)>> = HashMap::new();
        for change in changes {
            let key = change.key();
            let was = match set.get(key) {
                Some(d) => *d,
                None => self
                    .timer(owner, key)?
                    .map(|t| (t.due_ms, crate::timer::bytes(&t.key, &t.event))),
            };
            if let Some((due, bytes)) = was {
                batch.remove(&self.timer_due, due_key(due, owner, key));
                deltas.push((owner.to_string(), -1, -(bytes as i64)));
            }
            match change {
                TimerChange::Set(t) => {
                    batch.insert(
                        &self.timers,
                        timer_key(owner, key),
                        encode(t.due_ms, &t.event),
                    );
                    batch.insert(&self.timer_due, due_key(t.due_ms, owner, key), b"");
                    self.timer_floor.fetch_min(t.due_ms, Ordering::AcqRel);
                    let bytes = crate::timer::bytes(&t.key, &t.event);
                    deltas.push((owner.to_string(), 1, bytes as i64));
                    set.insert(key, Some((t.due_ms, bytes)));
                }
                TimerChange::Cancel(_) => {
                    batch.remove(&self.timers, timer_key(owner, key));
                    set.insert(key, None);
                }
            }
        }
        Ok(())
    }

    /// Remove fired timers (read under the same writer lock) from `batch`.
    pub(super) fn add_fired(
        &self,
        batch: &mut OwnedWriteBatch,
        fired: &[Stored],
        deltas: &mut UsageDeltas,
    ) {
        for s in fired {
            let bytes = crate::timer::bytes(&s.timer.key, &s.timer.event) as i64;
            deltas.push((s.owner.clone(), -1, -bytes));
            batch.remove(&self.timers, timer_key(&s.owner, &s.timer.key));
            batch.remove(
                &self.timer_due,
                due_key(s.timer.due_ms, &s.owner, &s.timer.key),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Arc;

    use proptest::prelude::*;

    use crate::store::log::Log;
    use crate::store::progress::Progress;
    use crate::store::tests::temp_dir;
    use crate::store::{Fsync, Store};
    use crate::timer::{Timer, TimerChange};

    #[derive(Debug, Clone)]
    enum Op {
        Set { owner: u8, key: u8, due: u64 },
        Cancel { owner: u8, key: u8 },
        Fire { now: u64, max: usize },
        Restart,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0u8..2, 0u8..4, 0u64..100).prop_map(|(owner, key, due)| Op::Set { owner, key, due }),
            2 => (0u8..2, 0u8..4).prop_map(|(owner, key)| Op::Cancel { owner, key }),
            3 => (0u64..120, 1usize..5).prop_map(|(now, max)| Op::Fire { now, max }),
            1 => Just(Op::Restart),
        ]
    }

    fn start(dir: &std::path::Path) -> Arc<Log> {
        let store =
            Store::open(dir, Fsync::Interval(std::time::Duration::from_secs(60))).expect("store");
        Log::start(
            store,
            Fsync::Interval(std::time::Duration::from_secs(60)),
            Default::default(),
        )
        .expect("log")
    }

    fn commit(log: &Log, owner: &str, change: TimerChange) {
        let progress = Progress {
            plugin: owner.to_string(),
            timers: vec![change],
            ..Progress::default()
        };
        log.submit_with(Vec::new(), Some(progress))
            .expect("submit")
            .wait()
            .expect("commit");
    }

    /// Against a model (a map of what is set), over random interleavings:
    /// a timer is appended at most once per set, never before its due
    /// time, soonest first; a cancel or a replacement committed before the
    /// fire wins; what is set survives a restart; the event appended is the
    /// one set (its id).
    fn run(ops: Vec<Op>) {
        let dir = temp_dir("timers-model");
        let mut log = start(&dir);
        let mut model: HashMap<(String, String), (u64, String)> = HashMap::new();
        let mut fired_ids: Vec<String> = Vec::new();
        for (n, op) in ops.into_iter().enumerate() {
            match op {
                Op::Set { owner, key, due } => {
                    let (owner, key) = (format!("p{owner}"), format!("k{key}"));
                    let id = format!("set-{n}");
                    let mut event =
                        crate::event::Event::new("t.due", None, b"{}".to_vec()).expect("event");
                    event.id = id.clone();
                    let timer = Timer {
                        key: key.clone(),
                        due_ms: due,
                        event,
                    };
                    commit(&log, &owner, TimerChange::Set(Box::new(timer)));
                    model.insert((owner, key), (due, id));
                }
                Op::Cancel { owner, key } => {
                    let (owner, key) = (format!("p{owner}"), format!("k{key}"));
                    commit(&log, &owner, TimerChange::Cancel(key.clone()));
                    model.remove(&(owner, key));
                }
                Op::Fire { now, max } => {
                    let fired = log.fire_due(now, max).expect("fire");
                    assert!(fired.len() <= max);
                    let mut last = 0;
                    for f in &fired {
                        let k = (f.owner.clone(), f.timer.key.clone());
                        let (due, id) = model.remove(&k).expect("fired a timer that is set");
                        assert_eq!((f.timer.due_ms, &f.timer.event.id), (due, &id));
                        assert!(due <= now, "fired early: due {due}, now {now}");
                        assert!(due >= last, "not soonest first");
                        last = due;
                        fired_ids.push(id);
                    }
                    if fired.len() < max {
                        assert!(
                            model.values().all(|(due, _)| *due > now),
                            "a due timer was left"
                        );
                    }
                }
                Op::Restart => {
                    log.close();
                    drop(log);
                    log = start(&dir);
                }
            }
            let store = log.store();
            let mut stored: Vec<(String, String, u64)> = Vec::new();
            for owner in ["p0", "p1"] {
                for t in store.timers_of(owner, 100).expect("timers") {
                    stored.push((owner.to_string(), t.key, t.due_ms));
                }
            }
            stored.sort();
            let mut want: Vec<(String, String, u64)> = model
                .iter()
                .map(|((o, k), (d, _))| (o.clone(), k.clone(), *d))
                .collect();
            want.sort();
            assert_eq!(stored, want);
            let next = model.values().map(|(d, _)| *d).min();
            assert_eq!(store.next_due().expect("next"), next);
        }
        let appended: Vec<String> = log
            .read_from(1, 100_000)
            .expect("read")
            .iter()
            .map(|e| e.id.clone())
            .collect();
        assert_eq!(
            appended, fired_ids,
            "each fired timer appended once, in order"
        );
        log.close();
        let _ = std::fs::remove_dir_all(&dir);
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]
        #[test]
        fn timers_fire_once_never_early_and_a_cancel_before_wins(ops in proptest::collection::vec(op(), 1..40)) {
            run(ops);
        }
    }

    #[test]
    fn a_fired_event_keeps_its_id_and_says_when_it_was_due() {
        let dir = temp_dir("timers-fired");
        let log = start(&dir);
        let mut event = crate::event::Event::new("saga.timeout", None, b"{}".to_vec()).expect("e");
        event.correlationid = Some("order-1".into());
        let id = event.id.clone();
        let timer = Timer {
            key: "timeout".into(),
            due_ms: 1_000,
            event,
        };
        commit(&log, "saga", TimerChange::Set(Box::new(timer)));
        assert!(log.fire_due(999, 10).expect("early").is_empty());
        assert_eq!(log.fire_due(1_250, 10).expect("due").len(), 1);
        let events = log.read_from(1, 10).expect("read");
        assert_eq!(events.len(), 1);
        let e = &events[0];
        assert_eq!(e.id, id);
        assert_eq!(e.correlationid.as_deref(), Some("order-1"));
        let ext = |k: &str| {
            e.extensions
                .iter()
                .find(|(n, _)| n == k)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(ext(crate::timer::LATE_MS), Some("250"));
        assert_eq!(
            ext(crate::timer::SCHEDULED_AT),
            Some("1970-01-01T00:00:01.000Z")
        );
        assert!(log.fire_due(10_000, 10).expect("none left").is_empty());
        log.close();
        let _ = std::fs::remove_dir_all(&dir);
    }
}
