//! How a batch of events crosses into the sandbox: three flat lists (the
//! WIT's `record batch`), not record by record.
//!
//! - `bytes`: every attribute's text and every payload, back to back.
//! - `headers`: [`HEADER_WORDS`] `u32` words per event. Each attribute is
//!   a span, two words: its offset in `bytes` and its length (an absent
//!   optional attribute is the span of length 0). The words are laid out
//!   as [`word`] names them: id, source, topic, subject, time,
//!   datacontenttype, data, correlation id, causation id (spans), then the
//!   sequence (low word, high word), the attempt, the first extension and
//!   the number of extensions, and a reserved 0.
//! - `extensions`: four words per extension attribute, its name's span and
//!   its value's span; an event's extensions are consecutive, from its
//!   header's `EXTENSIONS_FIRST` (counted in extensions, not words).
//!
//! [`Writer`] lays events out (the host, and the SDK's test harness);
//! [`Header`] reads one back (the SDK, in the plugin). A span outside
//! `bytes` reads as empty: a reader never panics on a batch.

/// Words per event in a batch's `headers`.
pub const HEADER_WORDS: usize = 24;

/// The index in an event's header of each of its words.
pub mod word {
    /// The id's span.
    pub const ID: usize = 0;
    /// The source's span.
    pub const SOURCE: usize = 2;
    /// The topic's span (CloudEvents `type`).
    pub const TOPIC: usize = 4;
    /// The subject's span (length 0: none).
    pub const SUBJECT: usize = 6;
    /// The time's span (RFC 3339).
    pub const TIME: usize = 8;
    /// The data's media type's span (length 0: none).
    pub const DATACONTENTTYPE: usize = 10;
    /// The payload's span.
    pub const DATA: usize = 12;
    /// The correlation id's span (length 0: none).
    pub const CORRELATION_ID: usize = 14;
    /// The causation id's span (length 0: none).
    pub const CAUSATION_ID: usize = 16;
    /// The low 32 bits of the event's sequence in the log.
    pub const SEQUENCE_LOW: usize = 18;
    /// The high 32 bits of the sequence.
    pub const SEQUENCE_HIGH: usize = 19;
    /// Which delivery this is: 1 on the first.
    pub const ATTEMPT: usize = 20;
    /// The event's first extension, in extensions (four words each).
    pub const EXTENSIONS_FIRST: usize = 21;
    /// How many extensions the event has.
    pub const EXTENSIONS_COUNT: usize = 22;
    /// Always 0 (room for a later attribute).
    pub const RESERVED: usize = 23;
}

/// Words per extension attribute in a batch's `extensions`.
pub const EXTENSION_WORDS: usize = 4;

/// The most bytes one batch may carry (spans are `u32`).
pub const BATCH_BYTES_LIMIT: usize = u32::MAX as usize;

/// One event's attributes, as a batch carries them.
#[derive(Debug, Clone, Copy, Default)]
pub struct Fields<'a> {
    /// The id.
    pub id: &'a str,
    /// CloudEvents `source`.
    pub source: &'a str,
    /// The topic.
    pub topic: &'a str,
    /// CloudEvents `subject`.
    pub subject: Option<&'a str>,
    /// RFC 3339 time.
    pub time: &'a str,
    /// The payload's media type.
    pub datacontenttype: Option<&'a str>,
    /// The payload.
    pub data: &'a [u8],
    /// The chain's first event.
    pub correlation_id: Option<&'a str>,
    /// The event whose handler published this one.
    pub causation_id: Option<&'a str>,
    /// Its position in the log.
    pub sequence: u64,
    /// Which delivery this is.
    pub attempt: u32,
    /// Extension attributes, as (name, value).
    pub extensions: &'a [(String, String)],
}

/// Lays events out into a batch's three lists, appending.
pub struct Writer<'a> {
    /// The batch's `bytes`.
    pub bytes: &'a mut Vec<u8>,
    /// The batch's `headers`.
    pub headers: &'a mut Vec<u32>,
    /// The batch's `extensions`.
    pub extensions: &'a mut Vec<u32>,
}

impl Writer<'_> {
    /// Append one event. The caller keeps the batch's bytes under
    /// [`BATCH_BYTES_LIMIT`].
    pub fn push(&mut self, e: &Fields<'_>) {
        let start = self.headers.len();
        let bytes = &mut *self.bytes;
        let mut put = |words: &mut Vec<u32>, text: &[u8]| {
            words.push(bytes.len() as u32);
            words.push(text.len() as u32);
            bytes.extend_from_slice(text);
        };
        let h = &mut *self.headers;
        put(h, e.id.as_bytes());
        put(h, e.source.as_bytes());
        put(h, e.topic.as_bytes());
        put(h, e.subject.unwrap_or_default().as_bytes());
        put(h, e.time.as_bytes());
        put(h, e.datacontenttype.unwrap_or_default().as_bytes());
        put(h, e.data);
        put(h, e.correlation_id.unwrap_or_default().as_bytes());
        put(h, e.causation_id.unwrap_or_default().as_bytes());
        h.push(e.sequence as u32);
        h.push((e.sequence >> 32) as u32);
        h.push(e.attempt);
        h.push((self.extensions.len() / EXTENSION_WORDS) as u32);
        h.push(e.extensions.len() as u32);
        h.push(0);
        for (name, value) in e.extensions {
            put(self.extensions, name.as_bytes());
            put(self.extensions, value.as_bytes());
        }
        debug_assert_eq!(self.headers.len() - start, HEADER_WORDS);
    }
}

/// How many events a batch with these `headers` carries.
pub fn events(headers: &[u32]) -> usize {
    headers.len() / HEADER_WORDS
}

/// The bytes an event adds to a batch's `bytes`.
pub fn event_bytes(e: &Fields<'_>) -> usize {
    let opt = |s: Option<&str>| s.map_or(0, str::len);
    e.id.len()
        + e.source.len()
        + e.topic.len()
        + e.time.len()
        + e.data.len()
        + opt(e.subject)
        + opt(e.datacontenttype)
        + opt(e.correlation_id)
        + opt(e.causation_id)
        + e.extensions
            .iter()
            .map(|(k, v)| k.len() + v.len())
            .sum::<usize>()
}

/// One event of a batch, read in place.
#[derive(Debug, Clone, Copy)]
pub struct Header<'a> {
    words: &'a [u32],
    bytes: &'a [u8],
    extensions: &'a [u32],
}

impl<'a> Header<'a> {
    /// The `index`th event of the batch (none past its end).
    pub fn at(
        bytes: &'a [u8],
        headers: &'a [u32],
        extensions: &'a [u32],
        index: usize,
    ) -> Option<Header<'a>> {
        let first = index.checked_mul(HEADER_WORDS)?;
        let words = headers.get(first..first.checked_add(HEADER_WORDS)?)?;
        Some(Header {
            words,
            bytes,
            extensions,
        })
    }

    /// Every event of the batch, in order.
    pub fn all(
        bytes: &'a [u8],
        headers: &'a [u32],
        extensions: &'a [u32],
    ) -> impl Iterator<Item = Header<'a>> + 'a {
        headers.chunks_exact(HEADER_WORDS).map(move |words| Header {
            words,
            bytes,
            extensions,
        })
    }

    /// Word `i` of the header (see [`word`]).
    pub fn word(&self, i: usize) -> u32 {
        self.words.get(i).copied().unwrap_or(0)
    }

    /// The bytes of the span at words `i`, `i + 1`.
    pub fn span(&self, i: usize) -> &'a [u8] {
        span(self.bytes, self.word(i), self.word(i + 1))
    }

    /// The span at `i` as text (empty if not UTF-8).
    pub fn text(&self, i: usize) -> &'a str {
        std::str::from_utf8(self.span(i)).unwrap_or_default()
    }

    /// An optional attribute's text: none when its span is empty.
    pub fn optional(&self, i: usize) -> Option<&'a str> {
        (self.word(i + 1) > 0).then(|| self.text(i))
    }

    /// The event's sequence.
    pub fn sequence(&self) -> u64 {
        u64::from(self.word(word::SEQUENCE_LOW)) | (u64::from(self.word(word::SEQUENCE_HIGH)) << 32)
    }

    /// Which delivery this is.
    pub fn attempt(&self) -> u32 {
        self.word(word::ATTEMPT)
    }

    /// The event's extension attributes, as (name, value).
    pub fn extensions(&self) -> impl Iterator<Item = (&'a str, &'a str)> + 'a {
        let first = self.word(word::EXTENSIONS_FIRST) as usize * EXTENSION_WORDS;
        let count = self.word(word::EXTENSIONS_COUNT) as usize * EXTENSION_WORDS;
        let bytes = self.bytes;
        let text = move |o: u32, l: u32| std::str::from_utf8(span(bytes, o, l)).unwrap_or_default();
        self.extensions
            .get(first..first.saturating_add(count))
            .unwrap_or_default()
            .chunks_exact(EXTENSION_WORDS)
            .map(move |w| (text(w[0], w[1]), text(w[2], w[3])))
    }
}

fn span(bytes: &[u8], offset: u32, len: u32) -> &[u8] {
    let start = offset as usize;
    bytes
        .get(start..start.saturating_add(len as usize))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_is_written_reads_back() {
        let ext = vec![("tenant".to_string(), "eu".to_string())];
        let written = [
            Fields {
                id: "a",
                source: "plugbus",
                topic: "order.placed",
                time: "2026-01-01T00:00:00Z",
                data: b"{}",
                sequence: (7 << 32) + 3,
                attempt: 2,
                extensions: &ext,
                ..Fields::default()
            },
            Fields {
                id: "b",
                subject: Some("s"),
                correlation_id: Some("a"),
                causation_id: Some("a"),
                datacontenttype: Some("text/plain"),
                ..Fields::default()
            },
        ];
        let (mut bytes, mut headers, mut extensions) = (Vec::new(), Vec::new(), Vec::new());
        let mut w = Writer {
            bytes: &mut bytes,
            headers: &mut headers,
            extensions: &mut extensions,
        };
        for e in &written {
            w.push(e);
        }
        assert_eq!(events(&headers), 2);
        let read: Vec<Header<'_>> = Header::all(&bytes, &headers, &extensions).collect();
        assert_eq!(read[0].text(word::TOPIC), "order.placed");
        assert_eq!(read[0].sequence(), (7 << 32) + 3);
        assert_eq!(read[0].attempt(), 2);
        assert_eq!(read[0].optional(word::SUBJECT), None);
        assert_eq!(read[0].extensions().collect::<Vec<_>>(), [("tenant", "eu")]);
        assert_eq!(read[1].optional(word::SUBJECT), Some("s"));
        assert_eq!(read[1].optional(word::CAUSATION_ID), Some("a"));
        assert_eq!(read[1].extensions().count(), 0);
        assert_eq!(read[1].word(word::RESERVED), 0);
        assert!(Header::at(&bytes, &headers, &extensions, 2).is_none());
    }

    #[test]
    fn a_span_outside_the_bytes_reads_as_empty() {
        let mut headers = vec![0u32; HEADER_WORDS];
        headers[word::ID] = 5;
        headers[word::ID + 1] = u32::MAX;
        headers[word::EXTENSIONS_COUNT] = u32::MAX;
        let h = Header::at(b"abc", &headers, &[], 0).expect("one header");
        assert_eq!(h.text(word::ID), "");
        assert_eq!(h.extensions().count(), 0);
    }
}
