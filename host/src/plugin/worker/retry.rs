//! Retries and giving up: the heap of events waiting for their next
//! attempt and its backoff, holding back later events of a key under
//! `strict` ordering and releasing them in order, events re-driven from
//! dead letters, and giving an event up (dead letter or counted drop).

use super::*;

/// An event waiting for its next attempt.
pub(super) struct Pending {
    pub(super) due: Instant,
    pub(super) attempt: u32,
    pub(super) event: Arc<Event>,
}

impl PartialEq for Pending {
    fn eq(&self, other: &Self) -> bool {
        self.due == other.due && self.event.sequence == other.event.sequence
    }
}

impl Eq for Pending {}

impl PartialOrd for Pending {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Pending {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.due, self.event.sequence).cmp(&(other.due, other.event.sequence))
    }
}

/// Why a worker stops delivering an event.
#[derive(Clone, Copy)]
pub(super) enum GiveUp {
    Rejected,
    Exhausted,
    BacklogFull,
}

impl GiveUp {
    pub(super) fn says(self) -> &'static str {
        match self {
            GiveUp::Rejected => "rejected by the plugin",
            GiveUp::Exhausted => "no attempts left",
            GiveUp::BacklogFull => "retry backlog full",
        }
    }
}

impl Worker {
    /// The retries that are due, within the batch limits.
    pub(super) fn due_retries(&mut self) -> Option<(Chunk, Vec<u32>)> {
        let now = Instant::now();
        let mut events = Vec::new();
        let mut attempts = Vec::new();
        let mut bytes = 0;
        while events.len() < self.batch_events_max() {
            let Some(Reverse(next)) = self.retries.peek() else {
                break;
            };
            let size = runtime::batch_bytes(&next.event);
            if next.due > now || (!events.is_empty() && bytes + size > self.batch_bytes_max()) {
                break;
            }
            bytes += size;
            if let Some(Reverse(p)) = self.retries.pop() {
                events.push(p.event);
                attempts.push(p.attempt);
            }
        }
        (!events.is_empty()).then(|| (Arc::from(events), attempts))
    }

    /// Whether `event` must wait behind another event's retry.
    pub(super) fn is_held_back(&self, event: &Event) -> bool {
        self.blockers
            .get(self.settings.ordering_key.of(event))
            .is_some_and(|&blocker| blocker != event.sequence)
    }

    pub(super) fn hold(&mut self, event: &Arc<Event>, attempt: u32) {
        self.held
            .entry(self.settings.ordering_key.of(event).to_string())
            .or_default()
            .push_back((event.clone(), attempt));
    }

    /// `event`, which held its key, is done with: the next event held
    /// behind it (if any) is released and holds the key in turn.
    pub(super) fn unblock(&mut self, event: &Event) {
        let key = self.settings.ordering_key.of(event);
        if self.blockers.get(key) != Some(&event.sequence) {
            return;
        }
        match self.held.get_mut(key).and_then(VecDeque::pop_front) {
            Some((next, attempt)) => {
                self.blockers.insert(key.to_string(), next.sequence);
                self.fx.released.push(Pending {
                    due: Instant::now(),
                    attempt,
                    event: next,
                });
            }
            None => {
                self.blockers.remove(key);
                self.held.remove(key);
            }
        }
    }

    /// Count a failed attempt and schedule the next, or give up on the
    /// event when its attempts are used up.
    pub(super) fn fail(
        &mut self,
        event: &Arc<Event>,
        attempt: u32,
        delay_ms: Option<u64>,
        message: &str,
    ) {
        self.plugin.failed.inc();
        let heap_full =
            self.retries.len() + self.fx.retries.len() >= self.settings.queue_events_max;
        if attempt >= self.settings.max_attempts || heap_full {
            let why = if heap_full {
                GiveUp::BacklogFull
            } else {
                GiveUp::Exhausted
            };
            self.give_up(event, attempt, message, why);
            return;
        }
        let delay = match delay_ms {
            Some(ms) => ms.min(RETRY_DELAY_MS_MAX),
            None => self.backoff_ms(attempt),
        };
        self.fx.retries.push(Pending {
            due: Instant::now() + Duration::from_millis(delay),
            attempt: attempt + 1,
            event: event.clone(),
        });
        if self.strict {
            self.blockers
                .entry(self.settings.ordering_key.of(event).to_string())
                .or_insert(event.sequence);
        }
    }

    /// Stop delivering `event`: in durable mode it becomes a dead letter (kept,
    /// with its attempts and last error, until re-driven or purged); in
    /// memory mode it is dropped and counted.
    pub(super) fn give_up(&mut self, event: &Arc<Event>, attempts: u32, error: &str, why: GiveUp) {
        self.fx
            .gave_up
            .push((event.clone(), attempts, error.to_string(), why));
        if self.strict {
            self.unblock(event);
        }
    }

    /// Take events re-driven from dead letters, when asked to look.
    pub(super) fn pick_up_redrives(&mut self) {
        if !self.plugin.redrive_wanted.swap(false, Ordering::AcqRel) {
            return;
        }
        let Some(store) = &self.cursor_store else {
            return;
        };
        match store.redrives(&self.plugin.name) {
            Ok(events) => {
                let now = Instant::now();
                for event in events {
                    if self.redriven.insert(event.sequence) {
                        self.retries.push(Reverse(Pending {
                            due: now,
                            attempt: 1,
                            event: Arc::new(event),
                        }));
                    }
                }
            }
            Err(e) => {
                tracing::error!(plugin = %self.plugin.name, "cannot read re-driven events: {e}")
            }
        }
    }

    /// `backoff_ms_min * 2^(attempt-1)`, capped at `backoff_ms_max`, with
    /// ±25 % jitter so that retries of many events do not arrive together.
    pub(super) fn backoff_ms(&mut self, attempt: u32) -> u64 {
        let base = self
            .settings
            .backoff_ms_min
            .saturating_mul(1u64 << (attempt - 1).min(30))
            .min(self.settings.backoff_ms_max);
        // xorshift64: jitter needs spread, not cryptographic quality.
        self.jitter ^= self.jitter << 13;
        self.jitter ^= self.jitter >> 7;
        self.jitter ^= self.jitter << 17;
        let span = base / 2;
        if span == 0 {
            return base;
        }
        base - span / 2 + self.jitter % span
    }
}
