//! How a batch crosses into the sandbox: three flat copies (payloads and
//! attribute text in one byte list, fixed-size event headers as a
//! `list<u32>`, attempts), not record by record.

use super::*;

/// The most bytes one batch may carry into the sandbox (spans are u32).
pub const BATCH_BYTES_LIMIT: usize = u32::MAX as usize;

/// Words per event in a batch's `headers`; the layout is documented on
/// `record batch` in `wit/plugin.wit`, and `plugbus-sdk` reads it.
pub const HEADER_WORDS: usize = 24;

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
    pub(super) fn fill(&mut self, events: &[Arc<Event>], attempts: &[u32]) {
        let b = &mut self.batch;
        b.bytes.clear();
        b.headers.clear();
        b.extensions.clear();
        let bytes = &mut b.bytes;
        let mut put = |h: &mut Vec<u32>, text: Option<&[u8]>| {
            let [offset, len] = span(bytes, text.unwrap_or_default());
            h.push(offset);
            h.push(len);
        };
        for (e, &attempt) in events.iter().zip(attempts) {
            let h = &mut b.headers;
            put(h, Some(e.id.as_bytes()));
            put(h, Some(e.source.as_bytes()));
            put(h, Some(e.topic.as_bytes()));
            put(h, e.subject.as_deref().map(str::as_bytes));
            put(h, Some(e.time.as_bytes()));
            put(h, e.datacontenttype.as_deref().map(str::as_bytes));
            put(h, Some(&e.data));
            put(h, e.correlationid.as_deref().map(str::as_bytes));
            put(h, e.causationid.as_deref().map(str::as_bytes));
            h.push(e.sequence as u32);
            h.push((e.sequence >> 32) as u32);
            h.push(attempt);
            h.push((b.extensions.len() / 4) as u32);
            h.push(e.extensions.len() as u32);
            h.push(0);
            for (name, value) in &e.extensions {
                put(&mut b.extensions, Some(name.as_bytes()));
                put(&mut b.extensions, Some(value.as_bytes()));
            }
        }
    }
}

/// Append `text` and return its (offset, length). Callers keep a batch
/// under [`BATCH_BYTES_LIMIT`] (the worker's `batch_bytes_max` is far below).
pub(super) fn span(buf: &mut Vec<u8>, text: &[u8]) -> [u32; 2] {
    let offset = buf.len() as u32;
    buf.extend_from_slice(text);
    [offset, text.len() as u32]
}

/// The bytes `event` adds to a batch buffer.
pub fn batch_bytes(event: &Event) -> usize {
    let opt = |s: &Option<String>| s.as_ref().map_or(0, String::len);
    event.id.len()
        + event.source.len()
        + event.topic.len()
        + event.time.len()
        + event.data.len()
        + opt(&event.subject)
        + opt(&event.datacontenttype)
        + opt(&event.correlationid)
        + opt(&event.causationid)
        + event
            .extensions
            .iter()
            .map(|(k, v)| k.len() + v.len())
            .sum::<usize>()
}
