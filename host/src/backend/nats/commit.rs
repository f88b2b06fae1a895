//! What a plugin's bucket holds and how it is written: its keys (one
//! subject token each: letters, digits, `-` and `_` as they are, any other
//! byte as `=XX`, so that `nats kv get` finds the plain ones), the markers
//! by which settled events are fenced and recognised
//! (`_pb.a.STREAMSEQ`), the outbox of a settlement (`_pb.o.BATCH.I`), and
//! the atomic batch publish (ADR-50) that commits them, which async-nats
//! 0.51 lacks: the commit is a request whose answer says whether the whole
//! batch was stored, the messages before it plain publishes, all carrying
//! `Nats-Batch-Id` and `Nats-Batch-Sequence` (a failed guard on any of
//! them fails the commit).

use async_nats::header::{
    NATS_BATCH_COMMIT, NATS_BATCH_COMMIT_FINAL, NATS_BATCH_ID, NATS_BATCH_SEQUENCE,
    NATS_EXPECTED_LAST_SUBJECT_SEQUENCE, NATS_MESSAGE_TTL,
};
use async_nats::jetstream::stream;
use async_nats::HeaderMap;
use bytes::Bytes;

use super::{Inner, MARKER_TTL};
use crate::backend::BackendError;
use crate::event::Event;
use crate::store::{codec, dead};

/// The most messages one atomic batch may carry (the server's limit).
pub(super) const BATCH_MAX: usize = 1000;

/// The server's error code for a failed expected-sequence check.
const WRONG_LAST_SEQUENCE: u64 = 10071;

/// What became of a guarded publish.
pub(super) enum Guarded {
    /// Stored, at this sequence.
    Stored(u64),
    /// The subject's last sequence was not the one expected: not stored.
    WrongLast,
}

impl Inner {
    /// Publish `out`, whose guard (if any) the server checks.
    pub(super) async fn publish_guarded(&self, out: Out) -> Result<Guarded, BackendError> {
        let conn = self.conn().await?;
        let ack = conn
            .js
            .publish_with_headers(out.subject, out.headers, out.payload)
            .await
            .map_err(|e| self.error(e))?;
        match ack.await {
            Ok(ack) => Ok(Guarded::Stored(ack.sequence)),
            Err(e)
                if e.kind()
                    == async_nats::jetstream::context::PublishErrorKind::WrongLastSequence =>
            {
                Ok(Guarded::WrongLast)
            }
            Err(e) => Err(self.error(e)),
        }
    }
}

/// One message of a batch.
pub(super) struct Out {
    pub subject: String,
    pub headers: HeaderMap,
    pub payload: Bytes,
}

/// Why a batch did not commit.
#[derive(Debug)]
pub(super) enum BatchError {
    /// A guard failed: a subject's last sequence was not the one expected.
    WrongLast(String),
    /// The server refused for another reason.
    Refused(String),
    /// The connection failed or the server did not answer.
    Unavailable(String),
}

impl BatchError {
    pub(super) fn into_backend(self, inner: &Inner) -> BackendError {
        match self {
            BatchError::WrongLast(why) | BatchError::Refused(why) => {
                inner.refused(format!("a state commit was refused: {why}"))
            }
            BatchError::Unavailable(why) => inner.unavailable(why),
        }
    }
}

/// A key as a subject token.
pub(super) fn encode_key(key: &str) -> String {
    if key.is_empty() {
        return "=".into();
    }
    let mut out = String::with_capacity(key.len());
    for b in key.bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
            out.push(b as char);
        } else {
            out.push_str(&format!("={b:02X}"));
        }
    }
    out
}

/// A subject token back as the key (none: not one of ours).
pub(super) fn decode_key(token: &str) -> Option<String> {
    if token == "=" {
        return Some(String::new());
    }
    let mut bytes = Vec::with_capacity(token.len());
    let raw = token.as_bytes();
    let mut i = 0;
    while i < raw.len() {
        if raw[i] == b'=' {
            let hex = token.get(i + 1..i + 3)?;
            bytes.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            bytes.push(raw[i]);
            i += 1;
        }
    }
    String::from_utf8(bytes).ok()
}

pub(super) fn key_subject(bucket: &str, key: &str) -> String {
    format!("$KV.{bucket}.{}", encode_key(key))
}

pub(super) fn marker_subject(bucket: &str, stream_seq: u64) -> String {
    format!("$KV.{bucket}._pb.a.{stream_seq}")
}

/// Where timer `key` of the bucket's owner is kept.
pub(super) fn timer_subject(bucket: &str, key: &str) -> String {
    format!("$KV.{bucket}._pb.t.{}", encode_key(key))
}

pub(super) fn outbox_subject(bucket: &str, batch: u64, i: usize) -> String {
    format!("$KV.{bucket}._pb.o.{batch}.{i}")
}

fn guarded(headers: &mut HeaderMap, last: Option<u64>) {
    if let Some(last) = last {
        headers.insert(
            NATS_EXPECTED_LAST_SUBJECT_SEQUENCE,
            last.to_string().as_str(),
        );
    }
}

fn expiring(headers: &mut HeaderMap) {
    headers.insert(
        NATS_MESSAGE_TTL,
        format!("{}s", MARKER_TTL.as_secs()).as_str(),
    );
}

/// A write of `key` (a value, or none: a delete as the KV API writes it),
/// guarded by the key's last sequence when given.
pub(super) fn write(bucket: &str, key: &str, value: Option<&[u8]>, last: Option<u64>) -> Out {
    put(key_subject(bucket, key), value, last)
}

/// A write to `subject` of the bucket (a value, or none: a delete as the
/// KV API writes it), guarded by its last sequence when given.
pub(super) fn put(subject: String, value: Option<&[u8]>, last: Option<u64>) -> Out {
    let mut headers = HeaderMap::new();
    guarded(&mut headers, last);
    let payload = match value {
        Some(v) => Bytes::copy_from_slice(v),
        None => {
            headers.insert("KV-Operation", "DEL");
            Bytes::new()
        }
    };
    Out {
        subject,
        headers,
        payload,
    }
}

/// Where a handed-out event stands, as its marker says.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(super) struct Marker {
    /// Settled: its outbox is batch `batch`, of `outbox` messages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub done: Option<(u64, usize)>,
    /// The host that holds it (claims and hand-backs).
    #[serde(default)]
    pub host: String,
    /// How often it was handed back (deliveries that were not attempts).
    #[serde(default)]
    pub handbacks: u32,
    /// Settled as a dead letter (else acked), for its count when it comes
    /// back after its commit (`accounts`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dead: bool,
}

/// A marker write, guarded by the marker's last sequence (0: none yet).
pub(super) fn marker(bucket: &str, stream_seq: u64, m: &Marker, last: u64) -> Out {
    let mut headers = HeaderMap::new();
    guarded(&mut headers, Some(last));
    expiring(&mut headers);
    Out {
        subject: marker_subject(bucket, stream_seq),
        headers,
        payload: serde_json::to_vec(m).unwrap_or_default().into(),
    }
}

/// One message of a settlement's outbox, published after the commit.
#[derive(Debug, Clone)]
pub(super) enum Outgoing {
    /// A follow-up event, to the log.
    FollowUp(Box<Event>),
    /// A dead letter (its record), to the plugin's DLQ subject, with the
    /// message id that makes it stored once.
    Dead { record: Vec<u8>, id: String },
}

impl Outgoing {
    pub(super) fn encode(&self) -> Vec<u8> {
        match self {
            Outgoing::FollowUp(e) => {
                let mut out = vec![b'F'];
                out.extend(codec::encode(e));
                out
            }
            Outgoing::Dead { record, id } => {
                let mut out = vec![b'D'];
                out.extend((id.len() as u32).to_be_bytes());
                out.extend(id.as_bytes());
                out.extend(record);
                out
            }
        }
    }

    pub(super) fn decode(bytes: &[u8]) -> Option<Outgoing> {
        match bytes.split_first()? {
            (b'F', rest) => codec::decode(0, rest)
                .ok()
                .map(|e| Outgoing::FollowUp(Box::new(e))),
            (b'D', rest) => {
                let len = u32::from_be_bytes(rest.get(..4)?.try_into().ok()?) as usize;
                let id = std::str::from_utf8(rest.get(4..4 + len)?).ok()?.to_string();
                let record = rest.get(4 + len..)?.to_vec();
                Some(Outgoing::Dead { record, id })
            }
            _ => None,
        }
    }

    pub(super) fn entry(&self, bucket: &str, batch: u64, i: usize) -> Out {
        let mut headers = HeaderMap::new();
        expiring(&mut headers);
        Out {
            subject: outbox_subject(bucket, batch, i),
            headers,
            payload: self.encode().into(),
        }
    }
}

/// A re-driven event as its redo message carries it: its sequence, then
/// the event.
pub(super) fn encode_redo(e: &Event) -> Vec<u8> {
    let mut out = e.sequence.to_be_bytes().to_vec();
    out.extend(codec::encode(e));
    out
}

pub(super) fn decode_redo(bytes: &[u8]) -> Option<Event> {
    let seq = u64::from_be_bytes(bytes.get(..8)?.try_into().ok()?);
    codec::decode(seq, &bytes[8..]).ok()
}

/// A dead letter's record from the DLQ stream (its event's sequence, then
/// the record).
pub(super) fn decode_dead(plugin: &str, bytes: &[u8]) -> Option<dead::DeadLetter> {
    let seq = u64::from_be_bytes(bytes.get(..8)?.try_into().ok()?);
    dead::decode(plugin, seq, &bytes[8..])
}

/// Commit `batch` as one atomic batch: all of it is stored, or none.
pub(super) async fn atomic(client: &async_nats::Client, batch: Vec<Out>) -> Result<(), BatchError> {
    if batch.is_empty() {
        return Ok(());
    }
    if batch.len() > BATCH_MAX {
        return Err(BatchError::Refused(format!(
            "{} messages in one settlement, more than the {BATCH_MAX} a NATS atomic batch takes; lower the plugin's batch size or its writes per batch",
            batch.len()
        )));
    }
    let id = uuid::Uuid::now_v7().simple().to_string();
    let last = batch.len();
    for (i, mut out) in batch.into_iter().enumerate() {
        out.headers.insert(NATS_BATCH_ID, id.as_str());
        out.headers
            .insert(NATS_BATCH_SEQUENCE, (i + 1).to_string().as_str());
        let commit = i + 1 == last;
        if commit {
            out.headers
                .insert(NATS_BATCH_COMMIT, NATS_BATCH_COMMIT_FINAL);
        }
        if commit {
            let reply = client
                .request_with_headers(out.subject, out.headers, out.payload)
                .await
                .map_err(|e| BatchError::Unavailable(e.to_string()))?;
            answer(&reply.payload)?;
        } else {
            client
                .publish_with_headers(out.subject, out.headers, out.payload)
                .await
                .map_err(|e| BatchError::Unavailable(e.to_string()))?;
        }
    }
    Ok(())
}

/// Read the server's answer to a batch's commit: an error, or its
/// acknowledgement of the whole batch.
fn answer(payload: &[u8]) -> Result<(), BatchError> {
    if payload.is_empty() {
        return Err(BatchError::Refused(
            "the server gave no answer to the commit: it does not support atomic batches (2.12+)"
                .into(),
        ));
    }
    let v: serde_json::Value = serde_json::from_slice(payload)
        .map_err(|e| BatchError::Refused(format!("an answer that is not JSON ({e})")))?;
    if let Some(err) = v.get("error") {
        let code = err.get("err_code").and_then(|c| c.as_u64()).unwrap_or(0);
        let text = err
            .get("description")
            .and_then(|d| d.as_str())
            .unwrap_or("no description")
            .to_string();
        return Err(if code == WRONG_LAST_SEQUENCE {
            BatchError::WrongLast(text)
        } else {
            BatchError::Refused(format!("{text} (error {code})"))
        });
    }
    if v.get("batch").is_none() {
        return Err(BatchError::Refused(
            "the commit was stored as a plain message: the server ignores atomic batches (2.12+ needed)"
                .into(),
        ));
    }
    Ok(())
}

/// The last message on `subject` of a bucket stream: its sequence, and its
/// value (none for a delete); none when there is none.
pub(super) async fn last(
    inner: &Inner,
    stream: &stream::Stream,
    subject: &str,
) -> Result<Option<(u64, Option<Vec<u8>>)>, BackendError> {
    use async_nats::jetstream::stream::DirectGetErrorKind;
    match stream.direct_get_last_for_subject(subject).await {
        Ok(m) => {
            let op = m
                .headers
                .get("KV-Operation")
                .map(|v| v.as_str().to_string());
            let value = match op.as_deref() {
                Some("DEL") | Some("PURGE") => None,
                _ => Some(m.payload.to_vec()),
            };
            Ok(Some((m.sequence, value)))
        }
        Err(e) if matches!(e.kind(), DirectGetErrorKind::NotFound) => Ok(None),
        Err(e) => Err(inner.error(e)),
    }
}

/// The keys that have a message in the bucket (deleted ones included).
pub(super) async fn keys(
    inner: &Inner,
    stream: &stream::Stream,
    bucket: &str,
) -> Result<Vec<String>, BackendError> {
    let prefix = format!("$KV.{bucket}.");
    let info = stream
        .info_with_subjects(format!("{prefix}*"))
        .await
        .map_err(|e| inner.error(e))?;
    use futures_util::TryStreamExt;
    let subjects: Vec<(String, usize)> = info.try_collect().await.map_err(|e| inner.error(e))?;
    Ok(subjects
        .into_iter()
        .filter_map(|(s, _)| decode_key(s.strip_prefix(&prefix)?))
        .collect())
}

/// The marker of a handed-out event: its sequence and what it says.
pub(super) async fn read_marker(
    inner: &Inner,
    stream: &stream::Stream,
    bucket: &str,
    stream_seq: u64,
) -> Result<Option<(u64, Marker)>, BackendError> {
    let subject = marker_subject(bucket, stream_seq);
    match last(inner, stream, &subject).await? {
        None | Some((_, None)) => Ok(None),
        Some((seq, Some(bytes))) => {
            let m = serde_json::from_slice(&bytes)
                .map_err(|e| inner.corrupt(format!("marker {subject}"), e.to_string()))?;
            Ok(Some((seq, m)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_plain_ones_stay_plain() {
        for key in ["orders", "stock:w", "", "a.b", "=", "ü", "_pb", "a b/c"] {
            let token = encode_key(key);
            assert!(
                !token.contains(['.', '*', '>', ' ']) && !token.is_empty(),
                "{token}"
            );
            assert_eq!(decode_key(&token).as_deref(), Some(key));
        }
        assert_eq!(encode_key("orders"), "orders");
        assert_eq!(encode_key("stock:w"), "stock=3Aw");
    }

    #[test]
    fn outbox_messages_round_trip() {
        let e = Event::new("inventory.reserved", None, b"{}".to_vec()).expect("event");
        let Some(Outgoing::FollowUp(back)) =
            Outgoing::decode(&Outgoing::FollowUp(Box::new(e.clone())).encode())
        else {
            panic!("a follow-up");
        };
        assert_eq!(back.id, e.id);
        let d = Outgoing::Dead {
            record: vec![1, 2, 3],
            id: "dlq:x:1".into(),
        };
        let Some(Outgoing::Dead { record, id }) = Outgoing::decode(&d.encode()) else {
            panic!("a dead letter");
        };
        assert_eq!((record, id.as_str()), (vec![1, 2, 3], "dlq:x:1"));
    }
}
