//! The batch size a worker runs at: `batch_events_max` until a call of
//! more than one event runs past its deadline. That is the host's choice
//! of batch, not the plugin's failure: no attempt is counted, the batch is
//! handled again in halves (down to one event), and the cap stays halved
//! until [`GROW_AFTER_CALLS`] calls in a row at it end within their
//! deadline, when it doubles again. Only an event that runs past its
//! deadline alone is the plugin's failure. The plugin's status shows the
//! cap and why.

use super::*;

/// Calls in a row at a halved cap, within their deadline, before the cap
/// doubles again.
pub const GROW_AFTER_CALLS: u32 = 8;

impl Worker {
    /// `chunk[range]` (at `attempts`) ran past its deadline as one call
    /// (`why`): halve the cap and handle it again in pieces of the new cap.
    pub(super) fn split(
        &mut self,
        chunk: &Chunk,
        range: Range<usize>,
        attempts: &[u32],
        why: &str,
    ) {
        let n = range.len();
        debug_assert!(n > 1, "a single event's overrun is the plugin's failure");
        self.batch_cap = (n / 2).max(1);
        self.calls_within_cap = 0;
        // The instance was stopped mid-call: a fresh one for the pieces.
        self.needs_reset = true;
        self.plugin.conditions.batch_splits.inc();
        let note = format!(
            "{} events per call: a call of {n} ran past its deadline ({why}); it grows back after {GROW_AFTER_CALLS} calls in a row within it",
            self.batch_cap
        );
        tracing::info!(plugin = %self.plugin.name, worker = self.index, batch_events = self.batch_cap, "a batch of {n} events ran past its deadline: handled again in halves, not counted as a failed attempt");
        self.plugin
            .conditions
            .note_batch_cap(self.index, self.batch_cap, Some(note));
        // The pieces count towards quarantine as the one batch they were.
        let outer = self.split_outcome.is_none();
        if outer {
            self.split_outcome = Some((false, None));
        }
        let mut start = range.start;
        while start < range.end {
            // The cap may halve again inside: each piece takes it as it is.
            let end = (start + self.batch_events_max()).min(range.end);
            let from = start - range.start;
            self.deliver(chunk, start..end, &attempts[from..end - range.start]);
            start = end;
        }
        if outer {
            if let Some((acked, failed)) = self.split_outcome.take() {
                self.note_batch(acked, failed.as_deref());
            }
        }
    }

    /// A call of `events` ended within its deadline: at the cap, count it
    /// towards growing the cap back.
    pub(super) fn within_cap(&mut self, events: usize) {
        let max = self.settings.batch_events_max.max(1);
        if self.batch_cap >= max || events < self.batch_cap {
            return;
        }
        self.calls_within_cap += 1;
        if self.calls_within_cap < GROW_AFTER_CALLS {
            return;
        }
        self.calls_within_cap = 0;
        self.batch_cap = (self.batch_cap * 2).min(max);
        let note = (self.batch_cap < max).then(|| {
            format!(
                "{} events per call, growing back to {max}: earlier calls ran past their deadline",
                self.batch_cap
            )
        });
        self.plugin
            .conditions
            .note_batch_cap(self.index, self.batch_cap, note);
    }
}
