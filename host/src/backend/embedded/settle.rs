//! How the embedded store keeps a local consumer's settlements: one
//! atomic write of the consumer's cursor (with its pending retries), the
//! plugin's state, dead letters, re-drives and follow-up events.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::backend::local::Commit;
use crate::backend::BackendError;
use crate::event::Event;
use crate::store::log::Log;
use crate::store::progress::Progress;
use crate::store::StoreError;

/// One consumer's commits to the store.
pub(super) struct Settle {
    pub(super) log: Arc<Log>,
    /// The consumer's cursor (none: the plugin's own).
    pub(super) cursor_name: Option<String>,
    /// Held by the plugin's consumers while they check what their writes
    /// were computed from and commit, so that two parts never both write a
    /// key from the same value.
    pub(super) writing: Arc<Mutex<()>>,
    /// The plugin's count of state writes (`Store::state_epoch`).
    pub(super) state: Arc<AtomicU64>,
    /// That count when the batch in hand was handed out; odd (a write
    /// under way, or nothing handed out yet) makes a settlement check.
    pub(super) seen: u64,
    /// Wakes the timer clock once a timer is set.
    pub(super) clock: crate::backend::clock::Ringer,
}

impl Settle {
    /// Whether a value the batch read may have changed since it was
    /// handed out: only the plugin's other parts and outside writes (its
    /// `init`, an operator) write it, and only if its state was written
    /// since (read under the lock, after any other part's commit).
    fn maybe_changed(&self) -> bool {
        !(self.seen.is_multiple_of(2) && self.state.load(Ordering::Acquire) == self.seen)
    }
}

impl Commit for Settle {
    fn write(
        &mut self,
        mut progress: Progress,
        follow_ups: Vec<Event>,
        expected: &[(String, Option<Vec<u8>>)],
    ) -> Result<(), BackendError> {
        progress.cursor_name = self.cursor_name.clone();
        let _one =
            (!expected.is_empty()).then(|| self.writing.lock().unwrap_or_else(|p| p.into_inner()));
        if self.maybe_changed() {
            let store = self.log.store();
            for (key, value) in expected {
                if store.kv_get(&progress.plugin, key)? != *value {
                    return Err(BackendError::Conflict {
                        plugin: progress.plugin.clone(),
                        key: key.clone(),
                    });
                }
            }
        }
        let sets_timer = progress
            .timers
            .iter()
            .any(|t| matches!(t, crate::timer::TimerChange::Set(_)));
        if follow_ups.is_empty() && progress.timers.is_empty() {
            self.log.store().commit_progress(&progress)?;
        } else {
            // Timer changes are written under the log's writer lock, where
            // timers fire ([`Log::fire_due`]).
            self.log.submit_with(follow_ups, Some(progress))?.wait()?;
        }
        if sets_timer {
            self.clock.ring();
        }
        Ok(())
    }

    fn handed_out(&mut self) {
        self.seen = self.state.load(Ordering::Acquire);
    }

    fn save_cursor(&mut self, mut progress: Progress) -> Result<(), BackendError> {
        progress.cursor_name = self.cursor_name.clone();
        Ok(self.log.store().commit_progress(&progress)?)
    }

    fn read_back(&self, sequence: u64) -> Result<Option<Event>, BackendError> {
        Ok(self.log.store().read(sequence, 1)?.into_iter().next())
    }

    fn redrives(&self, plugin: &str) -> Result<Vec<Event>, BackendError> {
        Ok(self.log.store().redrives(plugin)?)
    }

    fn held_back(&self) -> Option<String> {
        self.log.store().room_for_writes().err().map(|e| match e {
            StoreError::DiskFull { free, reserve, .. } => format!(
                "the data directory's disk is inside its reserve ({} MiB free, {} MiB kept for the store): deliveries wait until there is room (free space there, or lower --disk-reserve-bytes)",
                free >> 20,
                reserve >> 20
            ),
            e => e.to_string(),
        })
    }
}
