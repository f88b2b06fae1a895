//! A worker on a backend consumer (`--broker`): batches are pulled from the
//! plugin's consumer, which the broker shares with every host running the
//! plugin, instead of a queue; each batch's outcome is settled through it
//! (acks, retries with their delay, dead letters, state writes and
//! follow-ups in one call), so retries wait in the broker, not here, and
//! any host may take them. A settlement refused because another host took
//! the events over after the lease ran out keeps nothing.

use super::*;
use crate::backend::{BackendError, Settlement, Verdict};

/// How long delivery pauses after the broker could not be reached.
const BROKER_RETRY: Duration = Duration::from_secs(1);

impl Worker {
    /// Pull the next batch and handle it; an idle wait is at most
    /// [`IDLE_POLL`].
    pub(super) fn pull(&mut self) {
        let max = self.batch_events_max();
        let Some(consumer) = self.consumer.as_mut() else {
            return;
        };
        let waiting = Instant::now();
        let got = match consumer.next_batch(max, IDLE_POLL) {
            Ok(got) => got,
            Err(e) => {
                tracing::error!(plugin = %self.plugin.name, "delivery paused: {e}");
                std::thread::sleep(BROKER_RETRY);
                return;
            }
        };
        if got.is_empty() {
            return;
        }
        // Time spent waiting for events is not a pause of delivery.
        if let Some(from) = self.pause_from.as_mut() {
            *from += waiting.elapsed();
        }
        let attempts: Vec<u32> = got.iter().map(|d| d.attempt).collect();
        let chunk: Chunk = got.into_iter().map(|d| d.event).collect();
        let mut start = 0;
        while start < chunk.len() {
            let (end, _) = self.run_end(&chunk, start, 0, 0);
            self.deliver(&chunk, start..end, &attempts[start..end], false);
            start = end;
        }
    }

    /// Renew the lease on the events in hand, when a third of it has gone.
    pub(super) fn keep_lease(&mut self) {
        let Some(consumer) = self.consumer.as_mut() else {
            return;
        };
        if self.lease_renewed.elapsed() < self.lease / 3 {
            return;
        }
        self.lease_renewed = Instant::now();
        if let Err(e) = consumer.extend() {
            tracing::warn!(plugin = %self.plugin.name, "cannot renew the lease on the batch in hand: {e}");
        }
    }

    /// Settle `batch` with the broker: each event's outcome (from `fx`),
    /// the state writes and follow-ups; then the outcomes take effect.
    pub(super) fn settle(
        &mut self,
        batch: &[Arc<Event>],
        writes: kv::Writes,
        state_delta: i64,
        follow_ups: Vec<Event>,
        fx: Effects,
    ) {
        let now = Instant::now();
        let retry: HashMap<u64, Duration> = fx
            .retries
            .iter()
            .map(|p| (p.event.sequence, p.due.saturating_duration_since(now)))
            .collect();
        let dead: HashMap<u64, &str> = fx
            .gave_up
            .iter()
            .map(|(e, _, error, _)| (e.sequence, error.as_str()))
            .collect();
        let verdicts = batch
            .iter()
            .map(|e| {
                let v = match (retry.get(&e.sequence), dead.get(&e.sequence)) {
                    (Some(delay), _) => Verdict::Retry(*delay),
                    (None, Some(error)) => Verdict::Dead(error.to_string()),
                    (None, None) => Verdict::Ack,
                };
                (e.sequence, v)
            })
            .collect();
        let Some(consumer) = self.consumer.as_mut() else {
            return;
        };
        let expected = fx
            .reads
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let settled = consumer.settle(Settlement {
            verdicts,
            writes: writes.into_iter().collect(),
            expected,
            follow_ups: crate::dispatch::stamped(follow_ups),
        });
        match settled {
            Ok(()) => {
                self.instance.state().committed(state_delta);
                self.apply(fx);
            }
            Err(e @ BackendError::Conflict { .. }) => {
                // Handled again at once, from the state as it is now.
                tracing::info!(plugin = %self.plugin.name, batch_events = batch.len(), "{e}");
                self.needs_reset = true;
                self.hand_back();
            }
            Err(e @ BackendError::Fenced { .. }) => {
                tracing::warn!(plugin = %self.plugin.name, batch_events = batch.len(), "{e}");
                self.needs_reset = true;
            }
            Err(e) => {
                tracing::error!(plugin = %self.plugin.name, batch_events = batch.len(), "cannot settle the batch ({e}); the broker delivers its events again once the lease ({:?}) runs out", self.lease);
                self.needs_reset = true;
            }
        }
    }

    /// Hand back what is in hand, for another host to take at once.
    pub(super) fn hand_back(&mut self) {
        if let Some(consumer) = self.consumer.as_mut() {
            if let Err(e) = consumer.release() {
                tracing::warn!(plugin = %self.plugin.name, "cannot hand back the events in hand ({e}); they are delivered again once the lease runs out");
            }
        }
    }
}
