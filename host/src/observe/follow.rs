//! On a broker, the flow is read from the broker's log: while the observer
//! is active (a stream client connected, or the flow, the catalog or rates
//! asked for lately), a task reads the log and
//! shows each event to the observer, so the tail, the flow and the catalog
//! cover every host's events, with the broker's sequences. Nobody looking,
//! it reads nothing; when someone looks again it starts [`PAGE`] events
//! before the head, so that the first look shows the recent flow.
//!
//! Follow-ups read back carry no time from their cause; it is taken from
//! the cause's `time` when the cause was read recently ([`CAUSES_KEPT`]).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::{History, Observer};
use crate::event::Event;

/// The follower's wait when it has read everything.
const IDLE: Duration = Duration::from_millis(250);
/// Events read at once, and read back when following starts.
pub const PAGE: usize = 1000;
/// Recent events' times kept to time their follow-ups.
const CAUSES_KEPT: usize = 16_384;

/// Follow `log` (a broker's) for `observer` until the observer closes.
pub async fn follow(log: Arc<dyn History>, observer: Arc<Observer>) {
    let mut next: Option<u64> = None;
    let mut causes = Causes::default();
    loop {
        if !observer.active() {
            next = None;
            tokio::select! {
                () = tokio::time::sleep(IDLE) => continue,
                () = observer.closed() => return,
            }
        }
        let b = log.clone();
        let from = next;
        let read = tokio::task::spawn_blocking(move || -> Result<(u64, Vec<Event>), String> {
            let from = match from {
                Some(f) => f,
                None => b.head()?.saturating_sub(PAGE as u64) + 1,
            };
            Ok((from, b.read(from, PAGE)?))
        })
        .await;
        let pause = match read {
            Ok(Ok((from, mut events))) => {
                // The first page after starting is the recent past.
                let history = next.is_none();
                next = Some(events.last().map_or(from, |e| e.sequence + 1));
                for e in &mut events {
                    causes.time(e);
                }
                if history {
                    observer.history(&events, true);
                } else {
                    observer.accepted_owned(&events);
                }
                events.len() < PAGE
            }
            Ok(Err(e)) => {
                tracing::debug!("following the broker's log for the console: {e}");
                true
            }
            Err(_) => return,
        };
        if pause {
            tokio::select! {
                () = tokio::time::sleep(IDLE) => {}
                () = observer.closed() => return,
            }
        }
    }
}

/// The times of recent events, by id.
#[derive(Default)]
pub struct Causes {
    times: HashMap<String, SystemTime>,
    order: VecDeque<String>,
}

impl Causes {
    /// Keep `event`'s time, and set its `after_cause` from its cause's.
    pub fn time(&mut self, event: &mut Event) {
        let Ok(at) = humantime::parse_rfc3339_weak(&event.time) else {
            return;
        };
        if let Some(cause) = event.causationid.as_deref().and_then(|c| self.times.get(c)) {
            event.after_cause = at.duration_since(*cause).ok();
        }
        if self.order.len() == CAUSES_KEPT {
            if let Some(old) = self.order.pop_front() {
                self.times.remove(&old);
            }
        }
        self.times.insert(event.id.clone(), at);
        self.order.push_back(event.id.clone());
    }
}
