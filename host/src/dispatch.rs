//! Where published events go: the in-memory bus (`--memory`), or the
//! durable log, which acknowledges only what it has stored. Ingress and the
//! plugin workers (for follow-up events) publish through this, and need not
//! know which.

use std::sync::Arc;

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
}

impl DispatchError {
    /// How many of the events were published before the failure.
    pub fn accepted(&self) -> usize {
        match self {
            DispatchError::Busy(PublishError::QueueFull { accepted, .. }) => *accepted,
            DispatchError::Store(_) => 0,
        }
    }
}

impl Dispatch {
    /// Publish `events` in order; each gets the next sequence number.
    pub fn publish(&self, events: Vec<Event>) -> Result<Published, DispatchError> {
        match self {
            Dispatch::Memory(bus) => Ok(bus.publish(events)?),
            Dispatch::Durable(log) => {
                let count = events.len();
                let first_sequence = log.append(events)?;
                Ok(Published {
                    first_sequence,
                    count,
                })
            }
        }
    }

    /// Could publishing `events` events block for a while? (Durable appends
    /// always wait for their group's commit.)
    pub fn might_wait(&self, events: usize) -> bool {
        match self {
            Dispatch::Memory(bus) => bus.might_wait(events),
            Dispatch::Durable(_) => true,
        }
    }
}
