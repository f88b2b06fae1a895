//! Fills the batch that crosses into the sandbox, in the layout
//! `plugbus_contract::batch` owns (the SDK reads it with the same crate).

use super::*;

pub use plugbus_contract::batch::{BATCH_BYTES_LIMIT, HEADER_WORDS};

/// Fills a reusable [`wit::Batch`]: every string and payload of the batch is
/// appended to one byte buffer, and each event's header records where its
/// attributes are. The buffers keep their capacity from batch to batch.
pub(super) struct BatchBuffer {
    pub(super) batch: wit::Batch,
}

impl Default for BatchBuffer {
    fn default() -> Self {
        BatchBuffer {
            batch: wit::Batch {
                bytes: Vec::new(),
                headers: Vec::new(),
                extensions: Vec::new(),
            },
        }
    }
}

impl BatchBuffer {
    /// Lay out `events`, delivered as `attempts`. Callers keep a batch's
    /// [`batch_bytes`] under [`BATCH_BYTES_LIMIT`] (the worker's
    /// `batch_bytes_max` is far below).
    pub(super) fn fill(&mut self, events: &[Arc<Event>], attempts: &[u32]) {
        let b = &mut self.batch;
        b.bytes.clear();
        b.headers.clear();
        b.extensions.clear();
        let mut w = plugbus_contract::batch::Writer {
            bytes: &mut b.bytes,
            headers: &mut b.headers,
            extensions: &mut b.extensions,
        };
        for (e, &attempt) in events.iter().zip(attempts) {
            w.push(&fields(e, attempt));
        }
        debug_assert!(b.bytes.len() <= BATCH_BYTES_LIMIT);
    }
}

/// `event`'s attributes as a batch carries them.
fn fields(e: &Event, attempt: u32) -> plugbus_contract::batch::Fields<'_> {
    plugbus_contract::batch::Fields {
        id: &e.id,
        source: &e.source,
        topic: &e.topic,
        subject: e.subject.as_deref(),
        time: &e.time,
        datacontenttype: e.datacontenttype.as_deref(),
        data: &e.data,
        correlation_id: e.correlationid.as_deref(),
        causation_id: e.causationid.as_deref(),
        sequence: e.sequence,
        attempt,
        extensions: &e.extensions,
    }
}

/// The bytes `event` adds to a batch buffer.
pub fn batch_bytes(event: &Event) -> usize {
    plugbus_contract::batch::event_bytes(&fields(event, 0))
}
