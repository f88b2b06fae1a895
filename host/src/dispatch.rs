//! Where published events go: the durable log of the embedded store, which
//! acknowledges only what it has stored (appended here directly, so that
//! async code awaits its group commit without holding a thread), or a
//! backend: a broker (`--broker`), which does the same, or memory mode's
//! bus (`--memory`). Ingress and the plugin workers (for follow-up events)
//! publish through this, and need not know which.

use std::sync::Arc;

use crate::backend::{Backend, BackendError};
use crate::bus::{PublishError, Published};
use crate::event::Event;
use crate::store::log::Log;
use crate::store::StoreError;

/// The publishing side of the host.
#[derive(Clone)]
pub enum Dispatch {
    /// Append to the durable log; plugins read it by cursor.
    Durable(Arc<Log>),
    /// Append through a backend: a broker's log, whose consumers the
    /// plugins are, or memory mode's bus (lossy on a crash, bounded by
    /// queue timeouts).
    Backend(Arc<dyn Backend>),
}

/// Why a publish failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum DispatchError {
    /// A queue stayed full (memory mode).
    #[error(transparent)]
    Busy(#[from] PublishError),
    /// The log refused (durable mode): nothing was acknowledged.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The broker refused or is unreachable: nothing was acknowledged.
    #[error(transparent)]
    Broker(#[from] BackendError),
}

impl DispatchError {
    /// How many of the events were published before the failure.
    pub fn accepted(&self) -> usize {
        match self {
            DispatchError::Busy(PublishError::QueueFull { accepted, .. }) => *accepted,
            DispatchError::Store(_) | DispatchError::Broker(_) => 0,
        }
    }
}

impl Dispatch {
    /// Publish `events` in order; each gets the next sequence number.
    pub fn publish(&self, events: Vec<Event>) -> Result<Published, DispatchError> {
        let events = crate::event::stamped(events);
        match self {
            Dispatch::Durable(log) => Ok(published(log.append(events)?)),
            Dispatch::Backend(b) => Ok(from_broker(b.append(events).map_err(busy)?)),
        }
    }

    /// Publish from async code: a durable append awaits its group's
    /// commit without holding a thread; an in-memory publish runs here, and
    /// steps off the async thread only when a full queue may make it wait.
    pub async fn publish_async(&self, events: Vec<Event>) -> Result<Published, DispatchError> {
        let events = crate::event::stamped(events);
        match self {
            Dispatch::Durable(log) => Ok(published(log.submit(events)?.wait_async().await?)),
            Dispatch::Backend(b) if b.appends_without_waiting(events.len()) => {
                Ok(from_broker(b.append(events).map_err(busy)?))
            }
            // Memory mode waiting for room in a queue: on this thread,
            // handing the runtime's other tasks to another.
            Dispatch::Backend(b) if !b.capabilities().durable => Ok(from_broker(
                tokio::task::block_in_place(|| b.append(events)).map_err(busy)?,
            )),
            Dispatch::Backend(b) => {
                let b = b.clone();
                let appended = tokio::task::spawn_blocking(move || b.append(events))
                    .await
                    .map_err(|_| StoreError::Closed)?
                    .map_err(busy)?;
                Ok(from_broker(appended))
            }
        }
    }
}

/// A backend's refusal, with memory mode's full queue as such.
fn busy(e: BackendError) -> DispatchError {
    match e {
        BackendError::Busy(p) => DispatchError::Busy(p),
        other => DispatchError::Broker(other),
    }
}

fn published(appended: crate::store::log::Appended) -> Published {
    Published {
        first_sequence: appended.sequences.first().copied().unwrap_or(0),
        count: appended.sequences.len(),
        duplicates: appended.duplicates,
    }
}

fn from_broker(appended: crate::backend::Appended) -> Published {
    Published {
        first_sequence: appended.sequences.first().copied().unwrap_or(0),
        count: appended.sequences.len(),
        duplicates: appended.duplicates,
    }
}
