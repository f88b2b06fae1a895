//! What holds a running plugin back, as its workers report it for the
//! status: deliveries held for its publish rate, the batch size it runs at
//! and why, and panics of its workers.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;

/// A hold is shown this long after it was last noted.
const HELD_SHOWN_FOR: Duration = Duration::from_secs(1);
/// A worker's death is shown this long after it happened.
const DEATH_SHOWN_FOR: Duration = Duration::from_secs(600);

/// One plugin's conditions, written by its workers.
pub(crate) struct Conditions {
    /// Why deliveries were last held, and when.
    held: Mutex<Option<(String, Instant)>>,
    /// Per worker: the events per call it runs at, and why it is below
    /// `batch_events_max` when it is.
    batch: Mutex<Vec<(usize, Option<String>)>>,
    /// The last panic of a worker: which, its message, when.
    death: Mutex<Option<(usize, String, Instant)>>,
    /// Batches handled again in halves after a deadline overrun.
    pub(crate) batch_splits: Counter,
    /// Panics of its workers.
    pub(crate) deaths: Counter,
}

impl Conditions {
    /// For `workers` workers running at `batch_events_max`.
    pub(crate) fn new(
        workers: usize,
        batch_events_max: usize,
        batch_splits: Counter,
        deaths: Counter,
    ) -> Conditions {
        Conditions {
            held: Mutex::default(),
            batch: Mutex::new(vec![(batch_events_max, None); workers]),
            death: Mutex::default(),
            batch_splits,
            deaths,
        }
    }

    /// Deliveries are held now, for `why`.
    pub(crate) fn note_held(&self, why: &str) {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        match held.as_mut() {
            Some((was, at)) if was == why => *at = Instant::now(),
            _ => *held = Some((why.to_string(), Instant::now())),
        }
    }

    /// Why deliveries are held, if they were within the last second.
    pub(crate) fn held(&self) -> Option<String> {
        let held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        held.as_ref()
            .filter(|(_, at)| at.elapsed() < HELD_SHOWN_FOR)
            .map(|(why, _)| why.clone())
    }

    /// Worker `index` runs at `events` per call now, for `why` (none: its
    /// configured batch).
    pub(crate) fn note_batch_cap(&self, index: usize, events: usize, why: Option<String>) {
        if let Some(slot) = self
            .batch
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_mut(index)
        {
            *slot = (events, why);
        }
    }

    /// The smallest batch its workers run at, and why it is reduced.
    pub(crate) fn batch_cap(&self) -> Option<(usize, Option<String>)> {
        self.batch
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .min_by_key(|(events, _)| *events)
            .cloned()
    }

    /// Worker `index` panicked with `message`.
    pub(crate) fn note_death(&self, index: usize, message: &str) {
        *self.death.lock().unwrap_or_else(|p| p.into_inner()) =
            Some((index, message.to_string(), Instant::now()));
    }

    /// Whether a worker panicked within `within`.
    pub(crate) fn died_within(&self, within: Duration) -> bool {
        let death = self.death.lock().unwrap_or_else(|p| p.into_inner());
        death
            .as_ref()
            .is_some_and(|(_, _, at)| at.elapsed() < within)
    }

    /// The last panic of a worker, within the last 10 minutes, said for
    /// the status.
    pub(crate) fn death(&self) -> Option<String> {
        let death = self.death.lock().unwrap_or_else(|p| p.into_inner());
        let (index, message, at) = death.as_ref()?;
        let ago = at.elapsed();
        (ago < DEATH_SHOWN_FOR).then(|| {
            format!(
                "worker {index} panicked {} s ago ({message}); its events were delivered again to a fresh instance",
                ago.as_secs()
            )
        })
    }
}
