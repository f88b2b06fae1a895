//! The [`Consumer`] verbs of a [`LocalConsumer`]: handing out the next
//! batch, settling one (checked, committed in one write, then taking
//! effect: retries waiting, keys released, the cursor moved), and handing
//! back what is in hand.

use super::*;

impl Consumer for LocalConsumer {
    fn next_batch(
        &mut self,
        max_events: usize,
        wait: Duration,
    ) -> Result<Vec<Delivered>, BackendError> {
        let (events, attempts) = self.next_out(max_events.max(1), wait)?;
        self.commit.handed_out();
        Ok(events
            .iter()
            .zip(attempts)
            .map(|(event, attempt)| Delivered {
                event: event.clone(),
                attempt,
            })
            .collect())
    }

    fn next_chunk(
        &mut self,
        max_events: usize,
        wait: Duration,
    ) -> Result<(Chunk, Vec<u32>), BackendError> {
        let out = self.next_out(max_events.max(1), wait)?;
        self.commit.handed_out();
        Ok(out)
    }

    fn settle(&mut self, s: Settlement) -> Result<(), BackendError> {
        let at = self.held(&s.verdicts)?;
        let Tally {
            retried,
            dead,
            redriven,
            only_position,
            counts,
        } = self.tally(&at, &s.verdicts);
        let only_position =
            only_position && s.writes.is_empty() && s.follow_ups.is_empty() && s.timers.is_empty();
        // The cursor as it is once they are settled; they are marked so
        // only once the commit is written, so that a commit that fails (or
        // panics) leaves them in hand, to be handed back.
        let mark = |c: &mut Self, settled: bool| {
            for &i in &at {
                c.handed[i].settled = settled;
            }
        };
        mark(self, true);
        let cursor = self.cursor_after(&retried, counts);
        mark(self, false);
        if !only_position {
            let progress = Progress {
                plugin: self.plugin.clone(),
                cursor_name: None,
                cursor: Some(cursor.clone()),
                kv: s.writes,
                dead,
                redriven,
                timers: s.timers,
                fired: Vec::new(),
            };
            match self.commit.write(progress, s.follow_ups, &s.expected) {
                Ok(()) => {}
                // Still this consumer's, to hand back and handle again.
                Err(e @ BackendError::Conflict { .. }) => return Err(e),
                Err(e) => {
                    // Nothing kept: the events come again after a while.
                    self.hand_back(at.into_iter(), Instant::now() + COMMIT_RETRY);
                    return Err(e);
                }
            }
        }
        mark(self, true);
        self.counts = counts;
        self.take_effect(&at, s.verdicts);
        self.trim();
        if only_position {
            self.gauges
                .done_through
                .store(cursor.low(), Ordering::Relaxed);
            self.save_cursor(false);
        } else {
            self.saved_cursor(cursor);
        }
        Ok(())
    }

    fn extend(&mut self) -> Result<(), BackendError> {
        // Nobody else can take what this consumer holds.
        Ok(())
    }

    fn release(&mut self) -> Result<(), BackendError> {
        let unsettled: Vec<usize> = (0..self.handed.len())
            .filter(|&i| !self.handed[i].settled)
            .collect();
        self.hand_back(unsettled.into_iter(), Instant::now());
        self.save_cursor(true);
        Ok(())
    }

    fn waiting(&self) -> usize {
        self.waiting.len()
    }

    fn gauges(&self) -> Option<Gauges> {
        Some(self.gauges.clone())
    }

    fn held_back(&self) -> Option<String> {
        self.commit.held_back()
    }
}

impl Drop for LocalConsumer {
    fn drop(&mut self) {
        self.save_cursor(true);
    }
}

impl LocalConsumer {
    /// Where each settled event is among those handed out.
    fn held(&mut self, verdicts: &[(u64, Verdict)]) -> Result<Vec<usize>, BackendError> {
        let mut at = Vec::with_capacity(verdicts.len());
        for (seq, _) in verdicts {
            let i = self.find(*seq).ok_or_else(|| BackendError::NotHeld {
                plugin: self.plugin.clone(),
                sequence: *seq,
            })?;
            at.push(i);
        }
        Ok(at)
    }

    /// What the verdicts for the events at `at` make of the counts, the
    /// retries owed, the dead letters and the re-drives, and whether only
    /// the position moves (nothing else to write).
    fn tally(&self, at: &[usize], verdicts: &[(u64, Verdict)]) -> Tally {
        let mut retried = Vec::new();
        let now = Instant::now();
        let mut dead = Vec::new();
        let mut redriven = Vec::new();
        let mut only_position = true;
        let mut counts = self.counts;
        for (&i, (_, verdict)) in at.iter().zip(verdicts) {
            let h = &self.handed[i];
            let counted = h.seq > counts.start;
            if h.origin == Origin::Redrive {
                redriven.push(h.seq);
                only_position = false;
                if counted {
                    // No longer a dead letter: counted again by its verdict.
                    counts.dead = counts.dead.saturating_sub(1);
                }
            }
            if counted {
                match verdict {
                    Verdict::Ack => counts.handled += 1,
                    Verdict::Dead(_) => counts.dead += 1,
                    Verdict::Retry(_) => {}
                }
            }
            if h.origin == Origin::Retry {
                // It leaves the cursor's pending list.
                only_position = false;
            }
            match verdict {
                Verdict::Ack => {}
                Verdict::Retry(delay) => {
                    let due = now.checked_add(*delay).unwrap_or(now);
                    retried.push((h.seq, h.attempt + 1, due));
                    only_position = false;
                }
                Verdict::Dead(error) => {
                    let attempts = h.attempt;
                    if let Some(event) = self.event_at(i) {
                        dead.push(GaveUp {
                            event,
                            attempts,
                            error: error.clone(),
                        });
                    }
                    only_position = false;
                }
            }
        }
        Tally {
            retried,
            dead,
            redriven,
            only_position,
            counts,
        }
    }

    /// Once committed: retries wait for their time, re-drives are done,
    /// and under strict ordering the next event of a finished key is due.
    fn take_effect(&mut self, at: &[usize], verdicts: Vec<(u64, Verdict)>) {
        let now = Instant::now();
        for (&i, (_, verdict)) in at.iter().zip(verdicts) {
            let h = &self.handed[i];
            let (seq, attempt, origin) = (h.seq, h.attempt, h.origin);
            if origin == Origin::Redrive {
                self.redriving.remove(&seq);
            }
            let retry = match verdict {
                Verdict::Retry(delay) => Some(delay),
                Verdict::Ack | Verdict::Dead(_) if self.strict.is_none() => continue,
                Verdict::Ack | Verdict::Dead(_) => None,
            };
            let Some(event) = self.event_at(i) else {
                continue;
            };
            match retry {
                Some(delay) => self.waiting.push(Reverse(Waiting {
                    due: now.checked_add(delay).unwrap_or(now),
                    attempt: attempt + 1,
                    origin: Origin::Retry,
                    event,
                })),
                None => self.unblock(&event),
            }
        }
    }
}

/// What a settlement's verdicts make of a consumer's books.
struct Tally {
    /// (sequence, next attempt, when due).
    retried: Vec<(u64, u32, Instant)>,
    dead: Vec<GaveUp>,
    redriven: Vec<u64>,
    only_position: bool,
    counts: Counts,
}
