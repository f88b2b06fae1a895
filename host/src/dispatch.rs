//! Where published events go: the backend (the embedded store, the
//! default; a broker, `--broker`; memory mode's bus, `--memory`), which
//! acknowledges only what it has stored. Ingress and the plugin workers
//! (for follow-up events) publish through this, and need not know which.

use std::sync::Arc;

use crate::backend::{Appended, Backend, BackendError};
use crate::bus::{PublishError, Published};
use crate::event::Event;
use crate::store::StoreError;

/// The publishing side of the host.
#[derive(Clone)]
pub struct Dispatch {
    backend: Arc<dyn Backend>,
}

/// Why a publish failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum DispatchError {
    /// A queue stayed full (memory mode).
    #[error(transparent)]
    Busy(#[from] PublishError),
    /// The embedded store refused: nothing was acknowledged.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The backend refused (a broker unreachable, memory mode without a
    /// log): nothing was acknowledged.
    #[error(transparent)]
    Backend(BackendError),
}

impl From<BackendError> for DispatchError {
    fn from(e: BackendError) -> DispatchError {
        match e {
            BackendError::Busy(p) => DispatchError::Busy(p),
            BackendError::Store(s) => DispatchError::Store(s),
            other => DispatchError::Backend(other),
        }
    }
}

impl DispatchError {
    /// How many of the events were published before the failure.
    pub fn accepted(&self) -> usize {
        match self {
            DispatchError::Busy(PublishError::QueueFull { accepted, .. }) => *accepted,
            DispatchError::Store(_) | DispatchError::Backend(_) => 0,
        }
    }
}

impl Dispatch {
    /// Publishing to `backend`.
    pub fn new(backend: Arc<dyn Backend>) -> Dispatch {
        Dispatch { backend }
    }

    /// Publishing to the embedded store's started `log`.
    pub fn embedded(log: Arc<crate::store::log::Log>) -> Dispatch {
        let window = log.dedup_window();
        Dispatch::new(Arc::new(crate::backend::embedded::EmbeddedBackend::new(
            log, window,
        )))
    }

    /// Where events are kept.
    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
    }

    /// Publish `events` in order; each gets the next sequence number.
    pub fn publish(&self, events: Vec<Event>) -> Result<Published, DispatchError> {
        let events = crate::event::stamped(events);
        Ok(published(self.backend.append(events)?))
    }

    /// Publish from async code, holding no runtime thread while the
    /// backend stores the events ([`Backend::append_async`]).
    pub async fn publish_async(&self, events: Vec<Event>) -> Result<Published, DispatchError> {
        let events = crate::event::stamped(events);
        Ok(published(self.backend.clone().append_async(events).await?))
    }
}

impl Dispatch {
    /// Keep `timers` (publishers' events with `deliverat`), each to be
    /// published when due, from async code.
    pub async fn schedule_async(
        &self,
        timers: Vec<crate::timer::Timer>,
    ) -> Result<(), DispatchError> {
        let backend = self.backend.clone();
        tokio::task::spawn_blocking(move || backend.schedule(timers))
            .await
            .map_err(|_| StoreError::Closed)??;
        Ok(())
    }
}

fn published(appended: Appended) -> Published {
    Published {
        first_sequence: appended.sequences.first().copied().unwrap_or(0),
        count: appended.sequences.len(),
        duplicates: appended.duplicates,
    }
}
