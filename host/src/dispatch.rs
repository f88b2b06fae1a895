//! Where published events go: the in-memory bus (`--memory`), the
//! durable log, which acknowledges only what it has stored, or a broker
//! (`--broker`), which does the same. Ingress and the
//! plugin workers (for follow-up events) publish through this, and need not
//! know which.

use std::sync::Arc;

use crate::backend::{Backend, BackendError};
use crate::bus::{Bus, PublishError, Published};
use crate::event::Event;
use crate::store::log::Log;
use crate::store::StoreError;

/// The publishing side of the host.
#[derive(Clone)]
pub enum Dispatch {
    /// Fan out in memory; lossy on a crash, bounded by queue timeouts.
    Memory(Arc<Bus>),
    /// Append to the durable log; plugins read it by cursor.
    Durable(Arc<Log>),
    /// Append to a broker's log; plugins are its consumers.
    Broker(Arc<dyn Backend>),
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
    pub fn publish(&self, mut events: Vec<Event>) -> Result<Published, DispatchError> {
        accepted_now(&mut events);
        match self {
            Dispatch::Memory(bus) => Ok(bus.publish(events)?),
            Dispatch::Durable(log) => Ok(published(log.append(events)?)),
            Dispatch::Broker(b) => Ok(from_broker(b.append(events)?)),
        }
    }

    /// Publish from async code: a durable append awaits its group's
    /// commit without holding a thread; an in-memory publish runs here, and
    /// steps off the async thread only when a full queue may make it wait.
    pub async fn publish_async(&self, mut events: Vec<Event>) -> Result<Published, DispatchError> {
        accepted_now(&mut events);
        match self {
            Dispatch::Memory(bus) if bus.might_wait(events.len()) => {
                Ok(tokio::task::block_in_place(|| bus.publish(events))?)
            }
            Dispatch::Memory(bus) => Ok(bus.publish(events)?),
            Dispatch::Durable(log) => Ok(published(log.submit(events)?.wait_async().await?)),
            Dispatch::Broker(b) => {
                let b = b.clone();
                let appended = tokio::task::spawn_blocking(move || b.append(events))
                    .await
                    .map_err(|_| StoreError::Closed)??;
                Ok(from_broker(appended))
            }
        }
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

/// `events` stamped with the time they were accepted (for delivery
/// latency), for a caller that appends them to the log itself.
pub fn stamped(mut events: Vec<Event>) -> Vec<Event> {
    accepted_now(&mut events);
    events
}

/// Stamp events with the time they were accepted, for delivery latency.
fn accepted_now(events: &mut [Event]) {
    let now = std::time::Instant::now();
    for e in events {
        e.accepted_at.get_or_insert(now);
    }
}
