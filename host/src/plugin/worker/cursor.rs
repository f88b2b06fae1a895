//! A worker's cursor: how far it is done with every event (before any it is
//! still retrying), and saving it to the store, at once when something
//! else changed and at most every `CURSOR_SAVE_EVERY` when only the
//! position moved.

use super::*;

impl Worker {
    /// Everything through `through` is dealt with: the cursor may move.
    pub(super) fn done(&mut self, through: u64) {
        self.done_through = self.done_through.max(through);
        self.save_cursor(false);
    }

    /// The cursor at `through`, with the pending retries (and `more`).
    /// Events re-driven from dead letters are kept by the re-drive list
    /// instead.
    pub(super) fn cursor(&self, through: u64, more: &[&Pending]) -> Cursor {
        let mut pending: Vec<(u64, u32)> = self
            .retries
            .iter()
            .map(|r| &r.0)
            .chain(more.iter().copied())
            .filter(|p| !self.redriven.contains(&p.event.sequence))
            .map(|p| (p.event.sequence, p.attempt))
            .chain(
                self.held
                    .values()
                    .flatten()
                    .map(|(e, attempt)| (e.sequence, *attempt)),
            )
            .collect();
        pending.sort_unstable();
        pending.dedup_by_key(|p| p.0);
        Cursor { through, pending }
    }

    /// Save the cursor if it moved: now when `now`, else at most every
    /// [`CURSOR_SAVE_EVERY`].
    pub(super) fn save_cursor(&mut self, now: bool) {
        if !now && self.saved_at.elapsed() < CURSOR_SAVE_EVERY {
            return;
        }
        let cursor = self.cursor(self.done_through, &[]);
        if cursor == self.saved {
            return;
        }
        if let Some(store) = &self.cursor_store {
            let progress = Progress {
                plugin: self.plugin.name.clone(),
                cursor_name: self.cursor_name.clone(),
                cursor: Some(cursor.clone()),
                ..Default::default()
            };
            if let Err(e) = store.commit_progress(&progress) {
                // Not moving the cursor only means reading events again
                // after a restart; delivery goes on.
                tracing::error!(plugin = %self.plugin.name, "cannot save the cursor: {e}");
                return;
            }
        }
        self.saved_cursor(cursor);
    }

    pub(super) fn saved_cursor(&mut self, cursor: Cursor) {
        self.plugin.cursors[self.index].store(cursor.low(), Ordering::Relaxed);
        self.saved = cursor;
        self.saved_at = Instant::now();
    }
}
