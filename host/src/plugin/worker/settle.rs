//! Ending a batch: its outcomes turned into effects (acks, retries, dead
//! letters, state writes, follow-ups), settled through the consumer, and
//! applied once committed.

use std::sync::Arc;

use super::retry::GiveUp;
use super::{Effects, Worker};
use crate::event::Event;
use crate::runtime::kv;
use crate::timer::TimerChange;

/// What a batch keeps by the ack rule, besides its outcomes.
#[derive(Default)]
pub(super) struct Kept {
    /// State writes.
    pub(super) writes: kv::Writes,
    /// Timer changes, in order.
    pub(super) timers: Vec<TimerChange>,
    /// How the writes change the state's size, in bytes.
    pub(super) state_delta: i64,
    /// Follow-up events.
    pub(super) follow_ups: Vec<Event>,
}

impl Worker {
    /// Make the batch's outcomes (in `self.fx`) and what it keeps take
    /// effect: settled through the consumer in one commit. If that fails
    /// nothing takes effect and the events come again later.
    pub(super) fn finish(&mut self, batch: &[Arc<Event>], kept: Kept) {
        let fx = std::mem::take(&mut self.fx);
        if !batch.is_empty() {
            self.fault_point();
            self.settle(batch, kept, fx);
        }
        self.in_hand.chunk = None;
    }

    /// The outcomes of a batch whose settlement is committed.
    pub(super) fn apply(&mut self, fx: Effects) {
        self.plugin.handled.inc_by(fx.acked);
        self.plugin.retried.inc_by(fx.retries.len() as u64);
        for (event, attempts, error, why) in fx.gave_up {
            if self.feed.durable {
                self.meters.dead_lettered.inc();
                tracing::warn!(plugin = %self.plugin.name, id = %event.id, topic = %event.topic, attempts, last_error = %error, "{}; moved to dead letters", why.says());
            } else {
                match why {
                    GiveUp::Rejected => self.meters.dropped_rejected.inc(),
                    GiveUp::Exhausted | GiveUp::BacklogFull => self.meters.dropped_exhausted.inc(),
                };
                tracing::warn!(plugin = %self.plugin.name, id = %event.id, topic = %event.topic, attempts, last_error = %error, "{}; event dropped", why.says());
            }
        }
    }
}
