//! Retention: how much of the log to keep, and trimming the oldest events,
//! never past the lowest cursor of any plugin.

use std::sync::atomic::Ordering;
use std::time::Duration;

use super::progress::Cursor;
use super::{codec, sequence_of, Store, StoreError, LOG_BYTES_KEY, TRIMMED_KEY};

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

impl Store {
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
                let events = codec::decode_run(first, &value).unwrap_or_default();
                let too_old = cutoff.is_some_and(|cut| {
                    events
                        .last()
                        .and_then(|e| humantime::parse_rfc3339_weak(&e.time).ok())
                        .is_some_and(|t| t < cut)
                });
                if !too_big && !too_old {
                    done = true;
                    break;
                }
                batch.remove(&self.log, key.to_vec());
                self.unindex_chains(&mut batch, &events);
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Event;
    use crate::store::tests::{ev, temp_dir};
    use crate::store::Fsync;

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
}
