//! Taking batches from the worker's consumer and settling them through it:
//! each batch's outcomes (acks, retries with their delay, dead letters),
//! state writes and follow-ups in one call. On a broker the consumer is
//! shared with every host running the plugin, so retries wait there and
//! any host may take them, and a settlement refused because another host
//! took the events over after the lease ran out keeps nothing.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::settle::Kept;
use super::{Effects, Worker, IDLE_POLL};
use crate::backend::{BackendError, Settlement, Verdict};
use crate::event::{Chunk, Event};
use crate::schema::upcast;

/// How long delivery pauses after the consumer failed to hand out events.
const CONSUMER_RETRY: Duration = Duration::from_secs(1);
/// How often a worker whose consumer holds deliveries back looks again.
const HELD_BACK_LOOK_EVERY: Duration = Duration::from_millis(200);

impl Worker {
    /// Take the next batch and handle it; an idle wait is at most
    /// [`IDLE_POLL`]. False once the consumer is closed.
    pub(super) fn pull(&mut self) -> bool {
        if let Some(why) = self.feed.consumer.held_back() {
            // Nothing handled could be kept: wait, and say why.
            self.plugin.conditions.note_held(&why);
            std::thread::sleep(HELD_BACK_LOOK_EVERY);
            return true;
        }
        let max = self.batch_events_max();
        let waiting = Instant::now();
        let (chunk, attempts) = match self.feed.consumer.next_chunk(max, IDLE_POLL) {
            Ok(got) => got,
            Err(BackendError::Closed) => return false,
            Err(e) => {
                tracing::error!(plugin = %self.plugin.name, "delivery paused: {e}");
                std::thread::sleep(CONSUMER_RETRY);
                return true;
            }
        };
        if chunk.is_empty() {
            return true;
        }
        let chunk = self.as_read(chunk);
        // Time spent waiting for events is not a pause of delivery.
        if let Some(from) = self.pause_from.as_mut() {
            *from += waiting.elapsed();
        }
        // A batch handed out has a fresh lease.
        self.feed.lease_renewed = Instant::now();
        let mut start = 0;
        while start < chunk.len() {
            let (end, _) = self.run_end(&chunk, start, 0, 0);
            self.deliver(&chunk, start..end, &attempts[start..end]);
            start = end;
        }
        true
    }

    /// Renew the lease on the events in hand, when a third of it has gone.
    pub(super) fn keep_lease(&mut self) {
        if self.feed.lease_renewed.elapsed() < self.feed.lease / 3 {
            return;
        }
        self.feed.lease_renewed = Instant::now();
        if let Err(e) = self.feed.consumer.extend() {
            tracing::warn!(plugin = %self.plugin.name, "cannot renew the lease on the batch in hand: {e}");
        }
    }

    /// Settle `batch`: each event's outcome (from `fx`), the state writes
    /// and follow-ups; once committed, the outcomes take effect here.
    pub(super) fn settle(&mut self, batch: &[Arc<Event>], kept: Kept, fx: Effects) {
        let Kept {
            writes,
            timers,
            state_delta,
            follow_ups,
        } = kept;
        let cancels = timers
            .iter()
            .filter(|t| matches!(t, crate::timer::TimerChange::Cancel(_)))
            .count() as u64;
        let retry: HashMap<u64, Duration> = fx.retries.iter().copied().collect();
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
        let expected = fx
            .reads
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let settled = self.feed.consumer.settle(Settlement {
            verdicts,
            writes: writes.into_iter().collect(),
            expected,
            follow_ups: crate::event::stamped(follow_ups),
            timers,
        });
        match settled {
            Ok(()) => {
                let held = self.feed.lease_renewed.elapsed();
                if held > self.feed.lease {
                    // A stall (the machine, or this process stopped): the
                    // backend still took the outcome, as nobody else had
                    // settled the events meanwhile.
                    tracing::warn!(plugin = %self.plugin.name, batch_events = batch.len(), "a batch held past its lease ({held:?} since it was taken or renewed, the lease is {:?}) was still committed: no other host had settled its events", self.feed.lease);
                }
                self.instance.state().committed(state_delta);
                self.meters.timers_cancelled.inc_by(cancels);
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
                tracing::error!(plugin = %self.plugin.name, batch_events = batch.len(), "cannot commit what the batch did ({e}); nothing of it was kept, and its events are delivered again (after {:?} on this host, or once the broker's lease runs out)", crate::backend::local::COMMIT_RETRY);
                self.needs_reset = true;
            }
        }
    }

    /// Hand back what is in hand, for another host to take at once.
    pub(super) fn hand_back(&mut self) {
        if let Err(e) = self.feed.consumer.release() {
            tracing::warn!(plugin = %self.plugin.name, "cannot hand back the events in hand ({e}); they are delivered again once the lease runs out");
        }
    }

    /// `chunk` as the running version reads it: each event of an older
    /// major of a topic it declares a newer major of, upcast by the
    /// topic's upcasters (`schema::upcast`); the log keeps its bytes.
    fn as_read(&self, chunk: Chunk) -> Chunk {
        upcast::as_read(
            chunk,
            self.instance.declared(),
            &self.plugin.settings.publish.schemas,
        )
    }
}
