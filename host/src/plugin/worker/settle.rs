//! Ending a batch: its outcomes turned into effects (acks, retries, dead
//! letters, state writes, follow-ups) and those applied once the batch's
//! progress is written.

use super::*;

impl Worker {
    /// Make the batch's outcomes (in `self.fx`), `writes` and `follow_ups`
    /// take effect: in durable mode written in one atomic batch with the
    /// cursor (past `advance`, when the events came from the queue). If that
    /// fails nothing takes effect and the events come again later.
    pub(super) fn finish(
        &mut self,
        batch: &[Arc<Event>],
        attempts: &[u32],
        advance: Option<u64>,
        writes: kv::Writes,
        state_delta: i64,
        follow_ups: Vec<Event>,
    ) {
        let fx = std::mem::take(&mut self.fx);
        if self.consumer.is_some() {
            if !batch.is_empty() {
                self.settle(batch, writes, state_delta, follow_ups, fx);
            }
            return;
        }
        let through = advance.map_or(self.done_through, |a| self.done_through.max(a));
        if batch.is_empty() && through == self.done_through && fx.released.is_empty() {
            return;
        }
        let redriven: Vec<u64> = fx
            .acked_redriven
            .iter()
            .copied()
            .chain(
                fx.gave_up
                    .iter()
                    .map(|g| g.0.sequence)
                    .filter(|seq| self.redriven.contains(seq)),
            )
            .collect();
        let committed = match &self.cursor_store {
            Some(store) => {
                let owed: Vec<&Pending> = fx.retries.iter().chain(&fx.released).collect();
                let cursor = self.cursor(through, &owed);
                let progress = Progress {
                    plugin: self.plugin.name.clone(),
                    cursor_name: self.cursor_name.clone(),
                    cursor: Some(cursor.clone()),
                    kv: writes.into_iter().collect(),
                    dead: fx
                        .gave_up
                        .iter()
                        .map(|(event, attempts, error, _)| GaveUp {
                            event: event.clone(),
                            attempts: *attempts,
                            error: error.clone(),
                        })
                        .collect(),
                    redriven: redriven.clone(),
                };
                let written = match (&self.dispatch, follow_ups.is_empty()) {
                    (Dispatch::Durable(log), false) => log
                        .submit_with(crate::dispatch::stamped(follow_ups), Some(progress))
                        .and_then(|ticket| ticket.wait())
                        .map(|_| ()),
                    _ => store.commit_progress(&progress),
                };
                written.map(|()| Some(cursor))
            }
            None => {
                match self.kv.apply(&self.plugin.name, writes) {
                    Ok(()) => self.instance.state().committed(state_delta),
                    Err(e) => tracing::error!(plugin = %self.plugin.name, "state not kept: {e}"),
                }
                if !follow_ups.is_empty() {
                    let n = follow_ups.len();
                    if let Err(e) = self.dispatch.publish(follow_ups) {
                        self.dropped_follow_up.inc_by((n - e.accepted()) as u64);
                        tracing::error!(plugin = %self.plugin.name, "follow-up events lost: {e}");
                    }
                }
                Ok(None)
            }
        };
        match committed {
            Ok(cursor) => {
                self.done_through = through;
                if let Some(cursor) = cursor {
                    self.instance.state().committed(state_delta);
                    self.saved_cursor(cursor);
                } else {
                    self.plugin.cursors[self.index]
                        .store(self.cursor(through, &[]).low(), Ordering::Relaxed);
                }
                for seq in redriven {
                    self.redriven.remove(&seq);
                }
                self.apply(fx);
            }
            Err(e) => {
                tracing::error!(plugin = %self.plugin.name, batch_events = batch.len(), "cannot write what the batch did ({e}); it will be delivered again in {STORE_RETRY:?}");
                let due = Instant::now() + STORE_RETRY;
                for (event, &attempt) in batch.iter().zip(attempts) {
                    self.retries.push(Reverse(Pending {
                        due,
                        attempt,
                        event: event.clone(),
                    }));
                }
                self.needs_reset = true;
            }
        }
    }

    /// The outcomes of a batch whose progress is written.
    pub(super) fn apply(&mut self, fx: Effects) {
        self.plugin.handled.inc_by(fx.acked);
        let broker = self.consumer.is_some();
        for p in fx.retries {
            self.plugin.retried.inc();
            // On a broker the retry waits there, for any host.
            if !broker {
                self.retries.push(Reverse(p));
            }
        }
        for p in fx.released {
            self.retries.push(Reverse(p));
        }
        let durable = self.cursor_store.is_some() || broker;
        for (event, attempts, error, why) in fx.gave_up {
            if durable {
                self.dead_lettered.inc();
                tracing::warn!(plugin = %self.plugin.name, id = %event.id, topic = %event.topic, attempts, last_error = %error, "{}; moved to dead letters", why.says());
            } else {
                match why {
                    GiveUp::Rejected => self.dropped_rejected.inc(),
                    GiveUp::Exhausted | GiveUp::BacklogFull => self.dropped_exhausted.inc(),
                };
                tracing::warn!(plugin = %self.plugin.name, id = %event.id, topic = %event.topic, attempts, last_error = %error, "{}; event dropped", why.says());
            }
        }
    }
}
