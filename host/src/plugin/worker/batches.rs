//! The batch size a worker runs at: `batch_events_max` until a call of
//! more than one event runs past its deadline, or is cut in the foreground
//! for using [`runtime::call::PREEMPT_AFTER`] of CPU (or growing its memory
//! by [`runtime::call::PREEMPT_GROWTH_BYTES`]). That is the host's choice of
//! batch, not the plugin's failure or heaviness: no attempt is counted, the
//! batch is handled again in halves (down to one event) in the mode it was
//! called in, and the cap stays halved until [`GROW_AFTER_CALLS`] calls in
//! a row at it end within a quarter of what they may use (so that twice as
//! many events stay within half of it, and the cap does not swing back
//! into a cut), when it doubles again. A call that ends past half of what
//! it may use halves the cap at once, so that a plugin whose events grow
//! dearer is given smaller batches before one is cut. Only an event that
//! runs past its deadline alone is the plugin's failure, and only one
//! heavy alone makes the plugin's calls run in the background. The
//! plugin's status shows the cap and why.

use std::ops::Range;
use std::time::Duration;

use super::Worker;
use crate::event::Chunk;

/// Calls in a row at a halved cap, within their deadline, before the cap
/// doubles again.
pub const GROW_AFTER_CALLS: u32 = 8;

/// The most events per call for now, and how the calls at it went.
pub(super) struct Cap {
    /// `batch_events_max`, halved while calls of more than one event run
    /// past their deadline or come near it.
    pub(super) events: usize,
    /// Calls in a row well within what they may use at `events`: at
    /// [`GROW_AFTER_CALLS`] the cap doubles again.
    calls_within: u32,
    /// While a batch is handled again in pieces: how it went (any ack, the
    /// first failure), counted towards quarantine as the one batch it was.
    pub(super) split_outcome: Option<(bool, Option<String>)>,
}

impl Cap {
    /// The cap at `batch_events_max`.
    pub(super) fn new(batch_events_max: usize) -> Cap {
        Cap {
            events: batch_events_max.max(1),
            calls_within: 0,
            split_outcome: None,
        }
    }

    /// Half of `events` from now on, counting anew towards growing back.
    fn halve(&mut self, events: usize) {
        self.events = (events / 2).max(1);
        self.calls_within = 0;
    }

    /// One more call well within what it may use; true when that doubles
    /// the cap (up to `max`).
    fn call_within(&mut self, max: usize) -> bool {
        self.calls_within += 1;
        if self.calls_within < GROW_AFTER_CALLS {
            return false;
        }
        self.calls_within = 0;
        self.events = (self.events * 2).min(max);
        true
    }
}

impl Worker {
    /// `chunk[range]` (at `attempts`) ran past its deadline or was cut as
    /// one call (`why`, what it did): halve the cap and handle it again in
    /// pieces of the new cap.
    pub(super) fn split(
        &mut self,
        chunk: &Chunk,
        range: Range<usize>,
        attempts: &[u32],
        why: &str,
    ) {
        let n = range.len();
        debug_assert!(n > 1, "a single event's overrun or cut is the plugin's");
        self.halve_cap(n, &format!("a call of {n} {why}"));
        // The instance was stopped mid-call: a fresh one for the pieces.
        self.needs_reset = true;
        self.plugin.conditions.batch_splits.inc();
        tracing::info!(plugin = %self.plugin.name, worker = self.index, batch_events = self.cap.events, "a batch of {n} events {why}: handled again in halves, not counted as a failed attempt");
        // The pieces count towards quarantine as the one batch they were.
        let outer = self.cap.split_outcome.is_none();
        if outer {
            self.cap.split_outcome = Some((false, None));
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
            if let Some((acked, failed)) = self.cap.split_outcome.take() {
                self.note_batch(acked, failed.as_deref());
            }
        }
    }

    /// Run at half of `events` per call from now on, because of `why`
    /// (shown in the plugin's status), counting anew towards growing back.
    fn halve_cap(&mut self, events: usize, why: &str) {
        self.cap.halve(events);
        let note = format!(
            "{} events per call: {why}; it grows back after {GROW_AFTER_CALLS} calls in a row well within what they may use",
            self.cap.events
        );
        self.plugin
            .conditions
            .note_batch_cap(self.index, self.cap.events, Some(note));
    }

    /// A call of `events` ended using `busy` of CPU, of the `limit` it
    /// could have used before being cut or stopped. Past half the limit,
    /// the cap halves now, before a call is cut and its work lost (a
    /// plugin whose events grow dearer keeps fitting); at the cap and
    /// within a quarter of it, the call counts towards growing the cap
    /// back.
    pub(super) fn within_cap(&mut self, events: usize, busy: Duration, limit: Duration) {
        let max = self.settings.batch_events_max.max(1);
        if events > 1 && busy.saturating_mul(2) > limit {
            let why = format!(
                "a call of {events} used {} ms of the {} ms it may use",
                busy.as_millis(),
                limit.as_millis()
            );
            self.halve_cap(events, &why);
            return;
        }
        if self.cap.events >= max || events < self.cap.events {
            return;
        }
        if busy.saturating_mul(4) > limit {
            // Twice as many would come near the limit: stay.
            self.cap.calls_within = 0;
            return;
        }
        if !self.cap.call_within(max) {
            return;
        }
        let note = (self.cap.events < max).then(|| {
            format!(
                "{} events per call, growing back to {max}: earlier calls came near what they may use",
                self.cap.events
            )
        });
        self.plugin
            .conditions
            .note_batch_cap(self.index, self.cap.events, note);
    }
}
