//! Timers on NATS: a timer is a record (`crate::timer::record`) in its
//! owner's bucket at `_pb.t.KEY`, written or deleted in the settlement's
//! atomic batch with the rest (so a fenced settlement sets none), or by
//! `schedule` for publishers (the bucket `PREFIX__outside`). The events
//! stream takes no part: the log holds events only.
//!
//! Each host keeps an index of the timers of the plugins it runs (and the
//! publishers'): what its own settlements set, and what a scan of the
//! buckets finds (at start, then every [`RESCAN`], for timers other hosts
//! set; a host that dies leaves its timers to the others' next scan). Its
//! clock (`backend::clock`) fires what is due in three steps, each a
//! message the server checks: the record is replaced by a firing record
//! guarded by its sequence (so a cancel or a replacement committed before
//! wins, and of two hosts one fires), the event is published with its id
//! as `Nats-Msg-Id`, the firing record is deleted guarded by its sequence.
//! A host that stops between the first and the last step leaves a firing
//! record, published again by whoever scans it next: once within the
//! duplicate window, at least once after it.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::DeliverPolicy;

use super::commit::{self, Guarded, Out};
use super::connect::Bridge;
use super::{Inner, CALL_TIMEOUT};
use crate::backend::clock::{Fire, Fired};
use crate::backend::BackendError;
use crate::timer::{Timer, TimerChange, Usage};

/// How often a host looks for timers other hosts set.
pub(super) const RESCAN: Duration = Duration::from_secs(5);
/// The owner name of publishers' timers in bucket names.
const OUTSIDE_BUCKET: &str = "_outside";
/// The first byte of a firing record.
const FIRING: u8 = b'F';

/// The bucket owner `owner`'s timers are kept in.
pub(super) fn bucket_owner(owner: &str) -> &str {
    if owner == crate::timer::OUTSIDE {
        OUTSIDE_BUCKET
    } else {
        owner
    }
}

/// The batch message of one timer change.
pub(super) fn change(bucket: &str, c: &TimerChange) -> Out {
    let record = match c {
        TimerChange::Set(t) => Some(crate::timer::record(t)),
        TimerChange::Cancel(_) => None,
    };
    commit::put(
        commit::timer_subject(bucket, c.key()),
        record.as_deref(),
        None,
    )
}

/// How soon a held clock looks again.
const HELD_LOOK: Duration = Duration::from_millis(50);

/// One indexed timer.
struct Entry {
    due_ms: u64,
    bytes: u64,
}

/// This host's view of the timers of the owners it looks after.
#[derive(Default)]
pub(super) struct Index {
    inner: Mutex<IndexInner>,
    /// Firing waits while the host starts its plugins: it knows only the
    /// owners started so far, and timers overdue across plugins fire in
    /// due order once it knows them all.
    held: std::sync::atomic::AtomicBool,
}

#[derive(Default)]
struct IndexInner {
    /// The owners this host looks after.
    owners: HashSet<String>,
    /// Those scanned at least once.
    scanned: HashSet<String>,
    entries: HashMap<(String, String), Entry>,
    by_due: BTreeSet<(u64, String, String)>,
    usage: HashMap<String, Usage>,
    last_scan: Option<Instant>,
    /// Scans reading records now, by id: their owner and the changes this
    /// host made meanwhile (replayed over what the scan read, which may
    /// predate them).
    scans: HashMap<u64, (String, Vec<Change>)>,
    next_scan: u64,
}

/// A change to the index, kept for a scan under way.
#[derive(Clone)]
enum Change {
    Put {
        key: String,
        due_ms: u64,
        bytes: u64,
    },
    Remove(String),
    /// The key's timer due by `now_ms` is set no more (fired, called off,
    /// or taken by another host); one set again for later stays.
    Passed {
        key: String,
        now_ms: u64,
    },
}

impl IndexInner {
    /// Make `change` to `owner`'s entries, and note it for scans under way.
    fn change(&mut self, owner: &str, change: Change) {
        for (o, journal) in self.scans.values_mut() {
            if o == owner {
                journal.push(change.clone());
            }
        }
        self.make(owner, change);
    }

    fn make(&mut self, owner: &str, change: Change) {
        match change {
            Change::Put { key, due_ms, bytes } => self.put(owner, &key, due_ms, bytes),
            Change::Remove(key) => self.remove(owner, &key),
            Change::Passed { key, now_ms } => {
                // A later one set for the key meanwhile stays.
                let stale = self
                    .entries
                    .get(&(owner.to_string(), key.clone()))
                    .is_some_and(|e| e.due_ms <= now_ms);
                if stale {
                    self.remove(owner, &key);
                }
            }
        }
    }

    fn remove(&mut self, owner: &str, key: &str) {
        if let Some(e) = self.entries.remove(&(owner.to_string(), key.to_string())) {
            self.by_due
                .remove(&(e.due_ms, owner.to_string(), key.to_string()));
            let u = self.usage.entry(owner.to_string()).or_default();
            u.count = u.count.saturating_sub(1);
            u.bytes = u.bytes.saturating_sub(e.bytes);
        }
    }

    fn put(&mut self, owner: &str, key: &str, due_ms: u64, bytes: u64) {
        self.remove(owner, key);
        self.entries.insert(
            (owner.to_string(), key.to_string()),
            Entry { due_ms, bytes },
        );
        self.by_due
            .insert((due_ms, owner.to_string(), key.to_string()));
        let u = self.usage.entry(owner.to_string()).or_default();
        u.count += 1;
        u.bytes += bytes;
    }
}

impl Index {
    fn lock(&self) -> std::sync::MutexGuard<'_, IndexInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Look after `owner`'s timers from now on.
    /// Hold firing (the host starts its plugins), or let it go on.
    pub(super) fn hold(&self, held: bool) {
        self.held.store(held, std::sync::atomic::Ordering::Release);
    }

    fn held(&self) -> bool {
        self.held.load(std::sync::atomic::Ordering::Acquire)
    }

    pub(super) fn watch(&self, owner: &str) {
        self.lock().owners.insert(owner.to_string());
    }

    /// `owner` committed `changes`.
    pub(super) fn apply(&self, owner: &str, changes: &[TimerChange]) {
        let mut index = self.lock();
        for c in changes {
            let change = match c {
                TimerChange::Set(t) => Change::Put {
                    key: t.key.clone(),
                    due_ms: t.due_ms,
                    bytes: crate::timer::bytes(&t.key, &t.event),
                },
                TimerChange::Cancel(k) => Change::Remove(k.clone()),
            };
            index.change(owner, change);
        }
    }

    /// `owner`'s usage as this host knows it.
    pub(super) fn usage(&self, owner: &str) -> Usage {
        self.lock().usage.get(owner).copied().unwrap_or_default()
    }

    /// When `owner`'s next timer is due, as this host knows.
    pub(super) fn next_due(&self, owner: &str) -> Option<u64> {
        self.lock()
            .by_due
            .iter()
            .find(|(_, o, _)| o == owner)
            .map(|(d, _, _)| *d)
    }

    /// `owner`'s timer `key`, due by `now_ms`, fired: it no longer counts
    /// (a later one this host set for the key meanwhile stays).
    fn fired(&self, owner: &str, key: &str, now_ms: u64) {
        let key = key.to_string();
        self.lock().change(owner, Change::Passed { key, now_ms });
    }

    fn scanned(&self, owner: &str) -> bool {
        self.lock().scanned.contains(owner)
    }
}

impl Inner {
    /// Every timer record in `owner`'s bucket: (key, sequence, record).
    async fn timer_records(
        &self,
        owner: &str,
    ) -> Result<Vec<(String, u64, Vec<u8>)>, BackendError> {
        let stream = self.ensure_bucket(bucket_owner(owner)).await?;
        let bucket = self.bucket(bucket_owner(owner));
        let filter = format!("$KV.{bucket}._pb.t.>");
        let prefix = format!("$KV.{bucket}._pb.t.");
        let found = self
            .scan(&stream, filter, DeliverPolicy::LastPerSubject, usize::MAX)
            .await?;
        let mut out = Vec::new();
        for (seq, m) in found {
            let deleted = m
                .headers
                .as_ref()
                .and_then(|h| h.get("KV-Operation"))
                .is_some_and(|op| matches!(op.as_str(), "DEL" | "PURGE"));
            let key = m
                .subject
                .as_str()
                .strip_prefix(&prefix)
                .and_then(commit::decode_key);
            if let (false, Some(key)) = (deleted, key) {
                out.push((key, seq, m.payload.to_vec()));
            }
        }
        Ok(out)
    }

    /// Read `owner`'s timers again into the index.
    async fn rescan(&self, index: &Index, owner: &str) -> Result<(), BackendError> {
        let scan = {
            let mut ix = index.lock();
            ix.next_scan += 1;
            let id = ix.next_scan;
            ix.scans.insert(id, (owner.to_string(), Vec::new()));
            id
        };
        let records = self.timer_records(owner).await;
        let mut ix = index.lock();
        let journal = ix.scans.remove(&scan).map(|(_, j)| j).unwrap_or_default();
        let records = records?;
        let keys: Vec<String> = ix
            .entries
            .keys()
            .filter(|(o, _)| o == owner)
            .map(|(_, k)| k.clone())
            .collect();
        for k in keys {
            ix.remove(owner, &k);
        }
        for (key, _, record) in records {
            // A firing record is due at once (its fire did not finish).
            let rec = record.strip_prefix(&[FIRING]).unwrap_or(&record);
            if let Ok((t, bytes)) = crate::timer::from_record(&key, rec) {
                let due = if record.first() == Some(&FIRING) {
                    0
                } else {
                    t.due_ms
                };
                ix.put(owner, &key, due, bytes);
            }
        }
        // What this host changed while the records were read wins over them.
        for change in journal {
            ix.make(owner, change);
        }
        ix.scanned.insert(owner.to_string());
        Ok(())
    }

    /// `owner`'s timer `key` as its record says: set (not firing), with its
    /// record's sequence.
    pub(super) async fn timer(
        &self,
        owner: &str,
        key: &str,
    ) -> Result<Option<Timer>, BackendError> {
        let stream = self.ensure_bucket(bucket_owner(owner)).await?;
        let subject = commit::timer_subject(&self.bucket(bucket_owner(owner)), key);
        Ok(match commit::last(self, &stream, &subject).await? {
            Some((_, Some(record))) if record.first() != Some(&FIRING) => {
                Some(self.parse_timer(owner, key, &record)?)
            }
            _ => None,
        })
    }

    fn parse_timer(&self, owner: &str, key: &str, record: &[u8]) -> Result<Timer, BackendError> {
        crate::timer::from_record(key, record)
            .map(|(t, _)| t)
            .map_err(|why| self.corrupt(format!("timer `{key}` of `{}`", bucket_owner(owner)), why))
    }

    /// Up to `max` of `owner`'s timers, by key.
    pub(super) async fn timers_of(
        &self,
        owner: &str,
        max: usize,
    ) -> Result<Vec<Timer>, BackendError> {
        let mut out = Vec::new();
        for (key, _, record) in self.timer_records(owner).await? {
            if record.first() != Some(&FIRING) {
                out.push(self.parse_timer(owner, &key, &record)?);
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        out.truncate(max);
        Ok(out)
    }

    /// Set publishers' timers, all or none.
    pub(super) async fn schedule(&self, timers: &[Timer]) -> Result<(), BackendError> {
        let owner = bucket_owner(crate::timer::OUTSIDE);
        self.ensure_bucket(owner).await?;
        let bucket = self.bucket(owner);
        let batch = timers
            .iter()
            .map(|t| change(&bucket, &TimerChange::Set(Box::new(t.clone()))))
            .collect();
        let conn = self.conn().await?;
        commit::atomic(&conn.client, batch)
            .await
            .map_err(|e| e.into_backend(self))
    }

    /// Fire `owner`'s timer `key` if it is due by `now_ms`: the firing
    /// record, the event, the delete (see the module docs).
    async fn fire_one(&self, owner: &str, key: &str, now_ms: u64) -> Result<Outcome, BackendError> {
        let stream = self.ensure_bucket(bucket_owner(owner)).await?;
        let bucket = self.bucket(bucket_owner(owner));
        let subject = commit::timer_subject(&bucket, key);
        let Some((seq, Some(record))) = commit::last(self, &stream, &subject).await? else {
            return Ok(Outcome::Gone);
        };
        let firing = record.first() == Some(&FIRING);
        let rec = if firing { &record[1..] } else { &record[..] };
        let timer = self.parse_timer(owner, key, rec)?;
        if !firing && timer.due_ms > now_ms {
            let bytes = crate::timer::bytes(key, &timer.event);
            return Ok(Outcome::Later(timer.due_ms, bytes));
        }
        let mut claim = seq;
        if !firing {
            let mut payload = vec![FIRING];
            payload.extend_from_slice(rec);
            match self
                .publish_guarded(commit::put(subject.clone(), Some(&payload), Some(seq)))
                .await?
            {
                Guarded::Stored(s) => claim = s,
                // Changed since it was read: looked at again next turn.
                Guarded::WrongLast => return Ok(Outcome::Changed),
            }
        }
        let restamp = owner != crate::timer::OUTSIDE;
        let event = crate::timer::fired(timer.event, timer.due_ms, now_ms, restamp);
        let message = (
            self.event_subject(&event.topic),
            event.id.clone(),
            crate::store::codec::encode(&event),
        );
        self.publish_all(vec![message]).await?;
        // Out of the index before anyone can see the event and count it.
        self.timers.fired(owner, key, now_ms);
        // Replaced meanwhile (a new timer of the key): that one stays.
        self.publish_guarded(commit::put(subject, None, Some(claim)))
            .await?;
        Ok(Outcome::Fired(now_ms.saturating_sub(timer.due_ms)))
    }
}

/// What [`Inner::fire_one`] found.
enum Outcome {
    /// Fired, this late (ms).
    Fired(u64),
    /// Set for later (due, bytes).
    Later(u64, u64),
    /// Changed while it was being fired.
    Changed,
    /// Not set.
    Gone,
}

/// What fires a NATS backend's timers (on its bridge).
pub(super) struct NatsFire {
    pub inner: Arc<Inner>,
    pub bridge: Arc<Bridge>,
}

impl Fire for NatsFire {
    fn fire_due(&self, max: usize) -> Result<Fired, BackendError> {
        let inner = self.inner.clone();
        if self.inner.timers.held() {
            return Ok(Fired {
                late_ms: Vec::new(),
                next_in: Some(HELD_LOOK),
            });
        }
        self.bridge.run(&self.inner, CALL_TIMEOUT * 2, async move {
            let index = &inner.timers;
            let rescan = {
                let ix = index.lock();
                let stale = ix.last_scan.is_none_or(|t| t.elapsed() >= RESCAN);
                ix.owners
                    .iter()
                    .filter(|o| stale || !ix.scanned.contains(*o))
                    .cloned()
                    .collect::<Vec<_>>()
            };
            for owner in &rescan {
                inner.rescan(index, owner).await?;
            }
            if !rescan.is_empty() {
                index.lock().last_scan = Some(Instant::now());
            }
            let now = crate::timer::now_ms();
            let due: Vec<(String, String)> = index
                .lock()
                .by_due
                .iter()
                .take_while(|(d, _, _)| *d <= now)
                .take(max)
                .map(|(_, o, k)| (o.clone(), k.clone()))
                .collect();
            let mut late_ms = Vec::new();
            for (owner, key) in &due {
                let outcome = inner.fire_one(owner, key, now).await?;
                let key = key.clone();
                let change = match outcome {
                    Outcome::Fired(late) => {
                        late_ms.push((owner.clone(), late));
                        continue;
                    }
                    Outcome::Later(due_ms, bytes) => Change::Put { key, due_ms, bytes },
                    // Called off, or changed by another host (set again, or
                    // being fired there): out of the index unless this host
                    // set it again meanwhile; the next scan says which.
                    Outcome::Gone | Outcome::Changed => Change::Passed { key, now_ms: now },
                };
                index.lock().change(owner, change);
            }
            let next_in = if due.len() == max {
                Some(Duration::ZERO)
            } else {
                index.lock().by_due.first().map(|(d, _, _)| {
                    Duration::from_millis(d.saturating_sub(crate::timer::now_ms()))
                })
            };
            Ok(Fired { late_ms, next_in })
        })
    }
}

/// Whether `owner`'s timers were read into the index yet (a host's first
/// call for them scans).
pub(super) async fn ensure_scanned(inner: &Inner, owner: &str) -> Result<(), BackendError> {
    inner.timers.watch(owner);
    if !inner.timers.scanned(owner) {
        inner.rescan(&inner.timers, owner).await?;
    }
    Ok(())
}
