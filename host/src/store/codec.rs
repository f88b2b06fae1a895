//! The on-disk encoding of an event in the log: a version byte, then each
//! attribute as a little-endian u32 length and its bytes (optional ones
//! behind a presence byte), the hop count, the extensions, and the data.
//! The sequence number is the record's key, not part of the value.
//!
//! A log record holds one event (version 1) or a run of events with
//! consecutive sequences from the key's ([`encode_run`], version 2: the
//! count, then each event's length and encoding), so that a group commit
//! costs the storage engine one record per run rather than per event.
//!
//! Decoding never trusts the bytes: every length is checked against what
//! is left, text must be UTF-8, and the version must be one this build
//! writes. A record that fails any check is reported as corrupt.

use crate::event::Event;

const VERSION: u8 = 1;
const RUN_VERSION: u8 = 2;

/// Why a stored record could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct DecodeError(pub String);

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u32).to_le_bytes());
    out.extend_from_slice(b);
}

fn put_opt(out: &mut Vec<u8>, s: &Option<String>) {
    match s {
        Some(s) => {
            out.push(1);
            put_bytes(out, s.as_bytes());
        }
        None => out.push(0),
    }
}

/// Encode `e` (its sequence excluded).
pub fn encode(e: &Event) -> Vec<u8> {
    let ext: usize = e
        .extensions
        .iter()
        .map(|(k, v)| k.len() + v.len() + 8)
        .sum();
    let mut out = Vec::with_capacity(
        64 + e.id.len() + e.source.len() + e.topic.len() + e.time.len() + e.data.len() + ext,
    );
    out.push(VERSION);
    put_bytes(&mut out, e.id.as_bytes());
    put_bytes(&mut out, e.source.as_bytes());
    put_bytes(&mut out, e.topic.as_bytes());
    put_opt(&mut out, &e.subject);
    put_bytes(&mut out, e.time.as_bytes());
    put_opt(&mut out, &e.datacontenttype);
    put_opt(&mut out, &e.correlationid);
    put_opt(&mut out, &e.causationid);
    out.extend_from_slice(&e.hops.to_le_bytes());
    out.extend_from_slice(&(e.extensions.len() as u32).to_le_bytes());
    for (k, v) in &e.extensions {
        put_bytes(&mut out, k.as_bytes());
        put_bytes(&mut out, v.as_bytes());
    }
    put_bytes(&mut out, &e.data);
    out
}

/// Encode `events` (consecutive sequences) as one record: a single event
/// as [`encode`] does, more as a run.
pub fn encode_run(events: &[Event]) -> Vec<u8> {
    if let [one] = events {
        return encode(one);
    }
    let encoded: Vec<Vec<u8>> = events.iter().map(encode).collect();
    let mut out = Vec::with_capacity(5 + encoded.iter().map(|e| 4 + e.len()).sum::<usize>());
    out.push(RUN_VERSION);
    out.extend_from_slice(&(events.len() as u32).to_le_bytes());
    for e in &encoded {
        put_bytes(&mut out, e);
    }
    out
}

/// How many events a record holds (without decoding them).
pub fn run_len(bytes: &[u8]) -> Result<u64, DecodeError> {
    match bytes.first() {
        Some(&RUN_VERSION) => {
            let mut r = Reader { rest: &bytes[1..] };
            Ok(u64::from(r.u32("run length")?))
        }
        Some(_) => Ok(1),
        None => Err(DecodeError("empty record".into())),
    }
}

/// Decode a record written by [`encode_run`] (or [`encode`]); `first` is
/// its key, the sequence of its first event.
pub fn decode_run(first: u64, bytes: &[u8]) -> Result<Vec<Event>, DecodeError> {
    if bytes.first() != Some(&RUN_VERSION) {
        return decode(first, bytes).map(|e| vec![e]);
    }
    let mut r = Reader { rest: &bytes[1..] };
    let n = r.u32("run length")? as usize;
    if n > r.rest.len() / 4 {
        return Err(DecodeError(format!(
            "{n} events cannot fit in what is left"
        )));
    }
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        out.push(decode(first + i as u64, r.bytes("event")?)?);
    }
    if !r.rest.is_empty() {
        return Err(DecodeError(format!(
            "{} unexpected bytes after the run",
            r.rest.len()
        )));
    }
    Ok(out)
}

struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], DecodeError> {
        if self.rest.len() < n {
            return Err(DecodeError(format!(
                "truncated in {what}: {n} bytes needed, {} left",
                self.rest.len()
            )));
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    fn u32(&mut self, what: &str) -> Result<u32, DecodeError> {
        let b = self.take(4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn bytes(&mut self, what: &str) -> Result<&'a [u8], DecodeError> {
        let n = self.u32(what)? as usize;
        self.take(n, what)
    }

    fn text(&mut self, what: &str) -> Result<String, DecodeError> {
        let b = self.bytes(what)?;
        String::from_utf8(b.to_vec()).map_err(|_| DecodeError(format!("{what} is not UTF-8")))
    }

    fn opt(&mut self, what: &str) -> Result<Option<String>, DecodeError> {
        match self.take(1, what)?[0] {
            0 => Ok(None),
            1 => self.text(what).map(Some),
            other => Err(DecodeError(format!("{what} has presence byte {other}"))),
        }
    }
}

/// Decode a record written by [`encode`]; `sequence` is its key.
pub fn decode(sequence: u64, bytes: &[u8]) -> Result<Event, DecodeError> {
    let mut r = Reader { rest: bytes };
    let version = r.take(1, "version")?[0];
    if version != VERSION {
        return Err(DecodeError(format!(
            "record version {version}, this build reads version {VERSION}"
        )));
    }
    let id = r.text("id")?;
    let source = r.text("source")?;
    let topic = r.text("type")?;
    let subject = r.opt("subject")?;
    let time = r.text("time")?;
    let datacontenttype = r.opt("datacontenttype")?;
    let correlationid = r.opt("correlationid")?;
    let causationid = r.opt("causationid")?;
    let hops = r.u32("hops")?;
    let n = r.u32("extension count")? as usize;
    if n > r.rest.len() / 8 {
        return Err(DecodeError(format!(
            "{n} extensions cannot fit in what is left"
        )));
    }
    let mut extensions = Vec::with_capacity(n);
    for _ in 0..n {
        extensions.push((r.text("extension name")?, r.text("extension value")?));
    }
    let data = r.bytes("data")?.to_vec();
    if !r.rest.is_empty() {
        return Err(DecodeError(format!(
            "{} unexpected bytes after the data",
            r.rest.len()
        )));
    }
    Ok(Event {
        id,
        source,
        topic,
        subject,
        time,
        datacontenttype,
        data,
        sequence,
        correlationid,
        causationid,
        hops,
        extensions,
        accepted_at: None,
        cause_sequence: None,
        after_cause: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Event {
        let mut e = Event::new(
            "order.placed",
            Some("application/json".into()),
            br#"{"a":1}"#.to_vec(),
        )
        .expect("event");
        e.subject = Some("o-1".into());
        e.correlationid = Some("c-1".into());
        e.hops = 2;
        e.extensions = vec![("tenant".into(), "acme".into())];
        e
    }

    /// The seeds of the `record` fuzz target (`fuzz/seeds/record`): an
    /// event with every attribute, a bare one, and a run of three, each
    /// with a fixed id and time so that the files stay the same.
    fn fuzz_seeds() -> Vec<(&'static str, Vec<u8>)> {
        let fixed = |mut e: Event, n: u32| {
            e.id = format!("0190f3a0-0000-7000-8000-{n:012}");
            e.time = "2026-12-01T00:00:00Z".into();
            e
        };
        let full = fixed(sample(), 1);
        let bare = fixed(Event::new("x", None, Vec::new()).expect("a bare event"), 2);
        let run: Vec<Event> = (3..6).map(|n| fixed(sample(), n)).collect();
        vec![
            ("full", encode(&full)),
            ("bare", encode(&bare)),
            ("run", encode_run(&run)),
        ]
    }

    /// The committed seeds are what this codec writes (and decode), so the
    /// fuzzer starts from real records. `PLUGBUS_WRITE_SEEDS=1 cargo test
    /// --release -p plugbus --lib fuzz_seeds` rewrites them after a format
    /// change.
    #[test]
    fn the_record_fuzz_seeds_are_records_of_this_codec() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds/record");
        for (name, bytes) in fuzz_seeds() {
            let path = dir.join(name);
            if std::env::var_os("PLUGBUS_WRITE_SEEDS").is_some() {
                std::fs::write(&path, &bytes).expect("write the seed");
            }
            let kept = std::fs::read(&path).unwrap_or_else(|e| {
                panic!("{}: {e} (PLUGBUS_WRITE_SEEDS=1 writes it)", path.display())
            });
            assert_eq!(
                kept,
                bytes,
                "{} is stale: PLUGBUS_WRITE_SEEDS=1 rewrites it",
                path.display()
            );
            assert!(decode_run(1, &kept).is_ok(), "{name} decodes");
        }
    }

    #[test]
    fn round_trip_keeps_every_attribute() {
        let e = sample();
        let mut back = decode(42, &encode(&e)).expect("decodes");
        assert_eq!(back.sequence, 42);
        back.sequence = e.sequence;
        assert_eq!(back, e);
    }

    #[test]
    fn every_truncation_is_an_error_never_a_panic() {
        let bytes = encode(&sample());
        for cut in 0..bytes.len() {
            assert!(decode(1, &bytes[..cut]).is_err(), "cut at {cut}");
        }
        let run = encode_run(&[sample(), sample(), sample()]);
        for cut in 0..run.len() {
            assert!(decode_run(1, &run[..cut]).is_err(), "run cut at {cut}");
        }
    }

    #[test]
    fn runs_number_their_events_from_the_key_and_single_events_stay_version_1() {
        let events = vec![sample(), sample(), sample()];
        let run = encode_run(&events);
        assert_eq!(run_len(&run), Ok(3));
        let back = decode_run(10, &run).expect("decodes");
        assert_eq!(
            back.iter().map(|e| e.sequence).collect::<Vec<_>>(),
            [10, 11, 12]
        );
        assert_eq!(back[1].id, events[1].id);
        let one = encode_run(&events[..1]);
        assert_eq!(one, encode(&events[0]), "one event is an ordinary record");
        assert_eq!(run_len(&one), Ok(1));
        assert_eq!(decode_run(7, &one).expect("decodes")[0].sequence, 7);
    }

    #[test]
    fn flipped_bytes_are_errors_or_still_valid_events_never_panics() {
        let bytes = encode(&sample());
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0xff;
            let _ = decode(1, &b);
        }
        let mut b = bytes;
        b[0] = 9;
        assert!(decode(1, &b).expect_err("version").0.contains("version 9"));
    }
}
