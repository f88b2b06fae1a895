//! Reading Redis's answers: stream entries, their fields, ids as
//! sequences. Errors are strings, made into [`super::BackendError::Corrupt`]
//! by the caller, which knows what was read.

use redis::Value;

/// A stream entry: its id and its fields (none when the entry was deleted
/// while pending).
pub(super) type Entry = (String, Vec<(String, Vec<u8>)>);

/// A bulk or simple string's text.
pub(super) fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Okay => Some("OK".into()),
        Value::Int(n) => Some(n.to_string()),
        _ => None,
    }
}

/// An integer, or a string holding one.
pub(super) fn int(v: &Value) -> Option<i64> {
    match v {
        Value::Int(n) => Some(*n),
        other => text(other)?.parse().ok(),
    }
}

fn bytes(v: &Value) -> Option<Vec<u8>> {
    match v {
        Value::BulkString(b) => Some(b.clone()),
        other => text(other).map(String::into_bytes),
    }
}

pub(super) fn items(v: &Value) -> Option<&[Value]> {
    match v {
        Value::Array(items) | Value::Set(items) => Some(items),
        _ => None,
    }
}

/// The entries of an XRANGE answer (or one stream's part of XREADGROUP, or
/// the claim script's first element).
pub(super) fn entries(v: &Value) -> Result<Vec<Entry>, String> {
    let Some(list) = items(v) else {
        return match v {
            Value::Nil => Ok(Vec::new()),
            other => Err(format!("not a list of entries: {other:?}")),
        };
    };
    let mut out = Vec::with_capacity(list.len());
    for entry in list {
        let parts = items(entry).ok_or_else(|| format!("not an entry: {entry:?}"))?;
        let id = parts
            .first()
            .and_then(text)
            .ok_or_else(|| format!("an entry without an id: {entry:?}"))?;
        let mut fields = Vec::new();
        if let Some(flat) = parts.get(1).and_then(items) {
            for pair in flat.chunks(2) {
                if let (Some(k), Some(v)) =
                    (pair.first().and_then(text), pair.get(1).and_then(bytes))
                {
                    fields.push((k, v));
                }
            }
        }
        out.push((id, fields));
    }
    Ok(out)
}

/// The entries of an XREADGROUP answer, per stream name.
pub(super) fn streams(v: &Value) -> Result<Vec<(String, Vec<Entry>)>, String> {
    match v {
        Value::Nil => Ok(Vec::new()),
        Value::Map(pairs) => pairs
            .iter()
            .map(|(k, v)| Ok((text(k).unwrap_or_default(), entries(v)?)))
            .collect(),
        other => {
            let list = items(other).ok_or_else(|| format!("not a read answer: {other:?}"))?;
            list.iter()
                .map(|s| {
                    let parts = items(s).ok_or_else(|| format!("not a stream: {s:?}"))?;
                    let name = parts.first().and_then(text).unwrap_or_default();
                    Ok((name, entries(parts.get(1).unwrap_or(&Value::Nil))?))
                })
                .collect()
        }
    }
}

/// Whether a settle script answered RECHECK: the consumer's fence token
/// is gone, and its entries must be checked one by one.
pub(super) fn is_recheck(v: &Value) -> bool {
    items(v)
        .and_then(|i| i.first())
        .and_then(text)
        .is_some_and(|t| t == "RECHECK")
}

/// The claim script's answer: the entries claimed, each with its delivery
/// count.
pub(super) fn claimed(v: &Value) -> Result<Vec<(Entry, u64)>, String> {
    let parts = items(v).ok_or_else(|| format!("not a claim answer: {v:?}"))?;
    let got = entries(parts.first().unwrap_or(&Value::Nil))?;
    let counts = parts.get(1).and_then(items).unwrap_or_default();
    if counts.len() != got.len() {
        return Err(format!(
            "{} entries claimed but {} delivery counts",
            got.len(),
            counts.len()
        ));
    }
    got.into_iter()
        .zip(counts)
        .map(|(e, n)| {
            let n = int(n).ok_or_else(|| format!("not a delivery count: {n:?}"))?;
            Ok((e, n.max(1) as u64))
        })
        .collect()
}

/// A field's value.
pub(super) fn field<'a>(fields: &'a [(String, Vec<u8>)], name: &str) -> Option<&'a [u8]> {
    fields
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_slice())
}

/// A field's value as a number.
pub(super) fn number(fields: &[(String, Vec<u8>)], name: &str) -> Option<u64> {
    std::str::from_utf8(field(fields, name)?).ok()?.parse().ok()
}

/// The sequence of a log entry id `0-SEQ`.
pub(super) fn sequence_of(id: &str) -> Result<u64, String> {
    id.strip_prefix("0-")
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("entry id `{id}` is not 0-SEQUENCE"))
}

/// One consumer group as XINFO GROUPS describes it.
pub(super) struct Group {
    pub pending: u64,
    /// The sequence of its last delivered entry (log ids are `0-SEQ`).
    pub delivered: u64,
}

/// The group called `name` in an XINFO GROUPS answer (a list of flat
/// field/value lists, or maps).
pub(super) fn group(v: &Value, name: &str) -> Option<Group> {
    items(v)?.iter().find_map(|g| {
        let pairs: Vec<(String, &Value)> = match g {
            Value::Map(m) => m.iter().filter_map(|(k, v)| Some((text(k)?, v))).collect(),
            other => items(other)?
                .chunks(2)
                .filter_map(|p| Some((text(p.first()?)?, p.get(1)?)))
                .collect(),
        };
        let get = |k: &str| pairs.iter().find(|(f, _)| f == k).map(|(_, v)| *v);
        if get("name").and_then(text).as_deref() != Some(name) {
            return None;
        }
        let number = |k: &str| get(k).and_then(int).map_or(0, |n| n.max(0) as u64);
        Some(Group {
            pending: number("pending"),
            delivered: get("last-delivered-id")
                .and_then(text)
                .and_then(|id| sequence_of(&id).ok())
                .unwrap_or(0),
        })
    })
}
