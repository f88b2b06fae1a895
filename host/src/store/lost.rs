//! Sequences the log lost to damage, as `plugbus repair` found them: the
//! holes in the log (and a lost end past what is left), kept in the `meta`
//! keyspace so that reading one answers that it is gone instead of
//! skipping it silently, new events are numbered after them, a log whose
//! end is a recorded loss opens without `--accept-lost-events`, and the
//! host announces each range once (`plugbus.log.lost`).
//!
//! It owns finding the holes ([`Store::holes`]) and the record of them.

use serde::{Deserialize, Serialize};

use super::{codec, sequence_of, Store, StoreError};

/// The `meta` key of the lost ranges (JSON).
pub(super) const LOST_KEY: &str = "lost_ranges";

/// A range of sequences the log lost.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LostRange {
    /// The first lost sequence.
    pub from: u64,
    /// The last lost sequence.
    pub to: u64,
    /// The repair that found it (its UTC time, `20261207T011500Z`).
    pub repair: String,
    /// What was damaged.
    pub reason: String,
    /// Whether the host has published `plugbus.log.lost` for it.
    #[serde(default)]
    pub announced: bool,
}

impl LostRange {
    /// Whether `sequence` is in it.
    pub fn holds(&self, sequence: u64) -> bool {
        (self.from..=self.to).contains(&sequence)
    }
}

/// The lost ranges a `meta` value records.
pub(super) fn decode(value: Option<&[u8]>) -> Vec<LostRange> {
    value
        .and_then(|v| serde_json::from_slice(v).ok())
        .unwrap_or_default()
}

impl Store {
    /// The ranges of sequences the log lost, oldest first.
    pub fn lost_ranges(&self) -> Result<Vec<LostRange>, StoreError> {
        let value = self.meta.get(LOST_KEY).map_err(|e| self.read_error(&e))?;
        Ok(decode(value.as_deref()))
    }

    /// The lost range that holds `sequence`, if one does.
    pub fn lost_at(&self, sequence: u64) -> Result<Option<LostRange>, StoreError> {
        Ok(self.lost_ranges()?.into_iter().find(|r| r.holds(sequence)))
    }

    /// Record `ranges` beside those already recorded (durably: the next sync).
    pub fn record_lost(&self, ranges: &[LostRange]) -> Result<(), StoreError> {
        let mut all = self.lost_ranges()?;
        for r in ranges {
            if !all.iter().any(|a| a.from == r.from && a.to == r.to) {
                all.push(r.clone());
            }
        }
        all.sort_by_key(|r| r.from);
        self.write_lost(&all)
    }

    /// Mark the range starting at `from` as announced.
    pub fn mark_announced(&self, from: u64) -> Result<(), StoreError> {
        let mut all = self.lost_ranges()?;
        for r in all.iter_mut().filter(|r| r.from == from) {
            r.announced = true;
        }
        self.write_lost(&all)
    }

    fn write_lost(&self, all: &[LostRange]) -> Result<(), StoreError> {
        let value = serde_json::to_vec(all).map_err(|e| StoreError::Write {
            dir: self.dir.clone(),
            reason: format!("lost ranges: {e}"),
        })?;
        self.write_now(|batch| {
            batch.insert(&self.meta, LOST_KEY, value);
            Ok(())
        })?;
        self.sync()
    }

    /// Holes in the log up to `through` that no repair recorded: damage
    /// the engine cut away without a word (a journal's pre-scan at open
    /// prevents that for the journals; this checks what was recovered).
    /// Run once after start, beside the host's work: retention trimming
    /// meanwhile is not a hole.
    pub fn unexplained_holes(&self, through: u64) -> Result<Vec<(u64, u64)>, StoreError> {
        let recorded = self.lost_ranges()?;
        let holes = self.holes(through)?;
        let trimmed = self.trimmed_through()?;
        Ok(holes
            .into_iter()
            .filter(|&(_, to)| to > trimmed)
            .filter(|&(from, to)| !recorded.iter().any(|r| r.from <= from && r.to >= to))
            .collect())
    }

    /// The last sequence retention removed (0: none).
    fn trimmed_through(&self) -> Result<u64, StoreError> {
        Ok(self
            .meta
            .get(super::TRIMMED_KEY)
            .map_err(|e| self.read_error(&e))?
            .and_then(|v| sequence_of(&v))
            .unwrap_or(0))
    }

    /// Keep `holes` (found after start) for the readiness check.
    pub fn note_holes(&self, holes: Vec<(u64, u64)>) {
        *self.holes.lock().unwrap_or_else(|p| p.into_inner()) = holes;
    }

    /// The holes found after start that no repair recorded.
    pub fn noted_holes(&self) -> Vec<(u64, u64)> {
        self.holes.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The holes in the log: ranges of sequences after its start (the
    /// first event, or what retention trimmed) and up to `through` that no
    /// record holds. Reads every record's key and run length once.
    pub fn holes(&self, through: u64) -> Result<Vec<(u64, u64)>, StoreError> {
        let mut holes = Vec::new();
        let trimmed = self.trimmed_through()?;
        let mut next = trimmed + 1;
        for guard in self.log.iter() {
            let (key, value) = guard.into_inner().map_err(|e| self.read_error(&e))?;
            let first = sequence_of(&key).ok_or_else(|| StoreError::Corrupt {
                dir: self.dir.clone(),
                sequence: 0,
                reason: "a log key is not a sequence number".into(),
            })?;
            let count = codec::run_len(&value).map_err(|e| StoreError::Corrupt {
                dir: self.dir.clone(),
                sequence: first,
                reason: e.0,
            })?;
            if first > next {
                holes.push((next, first - 1));
            }
            next = next.max(first + count);
        }
        if through >= next {
            holes.push((next, through));
        }
        Ok(holes)
    }
}

/// The topic of the event that announces a lost range.
pub const LOST_TOPIC: &str = "plugbus.log.lost";

/// Publish `plugbus.log.lost` (`{from, to, repair, reason}`) for each lost
/// range of `log`'s store not announced yet, then mark it announced. The
/// event's id is the range's own, so an announcement repeated after a
/// crash between the two is the same event (the log's duplicate window).
/// Returns how many were announced.
pub fn announce(log: &super::log::Log) -> Result<usize, StoreError> {
    let mut announced = 0;
    for r in log
        .store()
        .lost_ranges()?
        .into_iter()
        .filter(|r| !r.announced)
    {
        let data = serde_json::json!({
            "from": r.from, "to": r.to, "repair": r.repair, "reason": r.reason,
        });
        let mut event = crate::event::Event::with_id(
            format!("plugbus-log-lost-{}-{}", r.repair, r.from),
            LOST_TOPIC,
            Some("application/json".into()),
            data.to_string().into_bytes(),
        )
        .map_err(|e| StoreError::Write {
            dir: log.store().dir().to_path_buf(),
            reason: format!("the lost-range event: {e}"),
        })?;
        event.source = "/plugbus/repair".into();
        log.append(vec![event])?;
        log.store().mark_announced(r.from)?;
        announced += 1;
    }
    Ok(announced)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::progress::{Counts, Cursor, Progress};
    use crate::store::tests::{ev, temp_dir};
    use crate::store::Fsync;

    /// A store of ten events, one record each.
    fn ten(name: &str) -> (std::path::PathBuf, Store) {
        let dir = temp_dir(name);
        let store = Store::open(&dir, Fsync::Always).expect("opens");
        for i in 0..10 {
            store.append(&mut [ev(i)]).expect("append");
        }
        (dir, store)
    }

    /// Cut the records of sequences 4 and 5 out, as damage would.
    fn cut_four_and_five(store: &Store) {
        store
            .write_now(|batch| {
                batch.remove(&store.log, 4u64.to_be_bytes());
                batch.remove(&store.log, 5u64.to_be_bytes());
                Ok(())
            })
            .expect("remove");
    }

    #[test]
    fn holes_are_found_explained_by_a_record_and_a_recorded_lost_end_opens_numbered_after_it() {
        let (dir, store) = ten("lost");
        assert_eq!(store.holes(10).expect("walks"), vec![]);
        assert_eq!(store.holes(12).expect("walks"), vec![(11, 12)]);
        // A hole in the middle, as a repair leaves one.
        cut_four_and_five(&store);
        assert_eq!(store.holes(10).expect("walks"), vec![(4, 5)]);
        assert_eq!(store.unexplained_holes(10).expect("walks"), vec![(4, 5)]);
        let lost = |from, to| LostRange {
            from,
            to,
            repair: "20261207T000000Z".into(),
            reason: "a flipped byte".into(),
            announced: false,
        };
        store
            .record_lost(&[lost(4, 5), lost(11, 12)])
            .expect("record");
        assert_eq!(
            store.unexplained_holes(12).expect("walks"),
            vec![],
            "recorded"
        );
        assert_eq!(store.lost_at(5).expect("reads"), Some(lost(4, 5)));
        assert_eq!(store.lost_at(6).expect("reads"), None);
        store.mark_announced(4).expect("mark");
        assert!(store.lost_ranges().expect("reads")[0].announced);
        // The witness says 12 were acknowledged: the recorded loss of 11..12
        // lets the store open without accepting losses, numbering after it.
        std::os::unix::fs::FileExt::write_all_at(&store.mark, &12u64.to_be_bytes(), 0)
            .expect("witness");
        drop(store);
        let store = Store::open(&dir, Fsync::Always).expect("a recorded loss opens");
        assert_eq!(store.append(&mut [ev(99)]).expect("append"), 13);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn events_a_plugin_finished_before_they_were_lost_are_lost_in_its_accounts_not_unaccounted() {
        let (dir, store) = ten("lost-audit");
        // The plugin finished all ten; then 4..=5 are lost to damage.
        let counts = Counts {
            start: 0,
            handled: 10,
            dead: 0,
            dropped: 0,
        };
        store
            .commit_progress(&Progress {
                plugin: "inventory".into(),
                cursor: Some(Cursor {
                    through: 10,
                    pending: Vec::new(),
                    counts,
                    dues: Vec::new(),
                }),
                ..Progress::default()
            })
            .expect("cursor");
        cut_four_and_five(&store);
        let scope = crate::audit::Scope {
            plugin: "inventory".into(),
            patterns: vec![plugbus_contract::topic::Pattern::parse("order.*").expect("pattern")],
            key: crate::bus::OrderingKey::Subject,
            parts: 1,
        };
        let audit = || {
            crate::audit::embedded(&store, || 10, std::slice::from_ref(&scope))
                .expect("audit")
                .remove(0)
        };
        // Unrecorded, the two are handled events the log does not hold.
        assert_eq!(audit().unaccounted, -2);
        store
            .record_lost(&[LostRange {
                from: 4,
                to: 5,
                repair: "20261207T000000Z".into(),
                reason: "a flipped byte".into(),
                announced: false,
            }])
            .expect("record");
        let a = audit();
        assert_eq!(
            (a.matching, a.handled, a.lost, a.unaccounted),
            (8, 10, 2, 0),
            "{a:?}"
        );
        assert!(a.checked, "{a:?}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
