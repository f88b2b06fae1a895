//! Dead letters: events a plugin rejected or ran out of attempts on, kept
//! per plugin with the attempts made and the last error, until an operator
//! re-drives or purges them.
//!
//! Keys are `plugin \0 sequence` (big-endian), so one plugin's letters are a
//! prefix scan in log order. Re-driving moves letters, in one atomic batch,
//! to the plugin's re-drive list, which its worker delivers again (keeping
//! each event's id, with `attempt` from 1) and clears only once the event
//! is acked or dead-lettered anew: a crash in between re-delivers it.

use fjall::Keyspace;
use serde::Serialize;

use super::{codec, sequence_of, Store, StoreError};
use crate::event::{now_rfc3339, Event};
use plugbus_contract::topic::Pattern;

/// One dead letter.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeadLetter {
    /// The plugin that gave up on the event.
    pub plugin: String,
    /// Delivery attempts made.
    pub attempts: u32,
    /// The last error (the plugin's reject message, a retry message, or a
    /// trap).
    pub error: String,
    /// When it was dead-lettered (RFC 3339).
    pub dead_at: String,
    /// The event, as delivered.
    #[serde(skip)]
    pub event: Event,
}

/// Which of a plugin's letters an operation applies to.
#[derive(Debug, Clone)]
pub enum Selection {
    /// These sequences.
    Sequences(Vec<u64>),
    /// Those whose topic matches.
    Topic(Pattern),
    /// All of them.
    All,
}

impl Selection {
    pub(crate) fn wants(&self, letter: &DeadLetter) -> bool {
        match self {
            Selection::Sequences(seqs) => seqs.contains(&letter.event.sequence),
            Selection::Topic(p) => p.matches(&letter.event.topic),
            Selection::All => true,
        }
    }
}

pub(super) fn key(plugin: &str, sequence: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(plugin.len() + 9);
    k.extend_from_slice(plugin.as_bytes());
    k.push(0);
    k.extend_from_slice(&sequence.to_be_bytes());
    k
}

fn prefix(plugin: &str) -> Vec<u8> {
    let mut p = plugin.as_bytes().to_vec();
    p.push(0);
    p
}

pub(crate) fn encode(attempts: u32, error: &str, dead_at: &str, event: &Event) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&attempts.to_le_bytes());
    for text in [error, dead_at] {
        out.extend_from_slice(&(text.len() as u32).to_le_bytes());
        out.extend_from_slice(text.as_bytes());
    }
    out.extend_from_slice(&codec::encode(event));
    out
}

/// The key and value of the dead letter of `event` for `plugin`.
pub(super) fn record(
    plugin: &str,
    event: &Event,
    attempts: u32,
    error: &str,
) -> (Vec<u8>, Vec<u8>) {
    (
        key(plugin, event.sequence),
        encode(attempts, error, &now_rfc3339(), event),
    )
}

pub(crate) fn decode(plugin: &str, sequence: u64, bytes: &[u8]) -> Option<DeadLetter> {
    let attempts = u32::from_le_bytes(bytes.get(..4)?.try_into().ok()?);
    let mut rest = &bytes[4..];
    let mut texts = Vec::with_capacity(2);
    for _ in 0..2 {
        let n = u32::from_le_bytes(rest.get(..4)?.try_into().ok()?) as usize;
        let text = std::str::from_utf8(rest.get(4..4 + n)?).ok()?.to_string();
        texts.push(text);
        rest = &rest[4 + n..];
    }
    let event = codec::decode(sequence, rest).ok()?;
    let dead_at = texts.pop()?;
    let error = texts.pop()?;
    Some(DeadLetter {
        plugin: plugin.to_string(),
        attempts,
        error,
        dead_at,
        event,
    })
}

impl Store {
    fn scan(&self, space: &Keyspace, plugin: &str) -> Result<Vec<DeadLetter>, StoreError> {
        let mut out = Vec::new();
        for guard in space.prefix(prefix(plugin)) {
            let (k, v) = guard.into_inner().map_err(|e| self.read_error(&e))?;
            let sequence = k
                .get(k.len().saturating_sub(8)..)
                .and_then(sequence_of)
                .unwrap_or(0);
            let letter = decode(plugin, sequence, &v).ok_or_else(|| StoreError::Corrupt {
                dir: self.dir.clone(),
                sequence,
                reason: format!("dead letter of plugin `{plugin}` does not decode"),
            })?;
            out.push(letter);
        }
        Ok(out)
    }

    /// `plugin`'s dead letters, in log order.
    pub fn dead_letters(&self, plugin: &str) -> Result<Vec<DeadLetter>, StoreError> {
        self.scan(&self.dead, plugin)
    }

    /// Move the selected letters of `plugin` to its re-drive list; returns
    /// how many.
    pub fn redrive(&self, plugin: &str, which: &Selection) -> Result<usize, StoreError> {
        self.check_poisoned()?;
        let chosen: Vec<DeadLetter> = self
            .dead_letters(plugin)?
            .into_iter()
            .filter(|l| which.wants(l))
            .collect();
        // Each letter is written again under the re-drive list.
        self.make_room(
            chosen
                .iter()
                .map(|l| 64 + l.event.data.len() as u64 + l.event.id.len() as u64)
                .sum(),
        )?;
        self.write_now(|batch| {
            for l in &chosen {
                let k = key(plugin, l.event.sequence);
                batch.remove(&self.dead, k.clone());
                batch.insert(&self.redrive, k, codec::encode(&l.event));
            }
            Ok(chosen.len())
        })
    }

    /// Delete the selected letters of `plugin`; returns how many.
    pub fn purge(&self, plugin: &str, which: &Selection) -> Result<usize, StoreError> {
        self.check_poisoned()?;
        let chosen: Vec<u64> = self
            .dead_letters(plugin)?
            .into_iter()
            .filter(|l| which.wants(l))
            .map(|l| l.event.sequence)
            .collect();
        self.write_now(|batch| {
            for &seq in &chosen {
                batch.remove(&self.dead, key(plugin, seq));
            }
            Ok(chosen.len())
        })
    }

    /// The events waiting to be re-delivered to `plugin`.
    pub fn redrives(&self, plugin: &str) -> Result<Vec<Event>, StoreError> {
        let mut out = Vec::new();
        for guard in self.redrive.prefix(prefix(plugin)) {
            let (k, v) = guard.into_inner().map_err(|e| self.read_error(&e))?;
            out.extend(self.decode_records(&k, &v)?);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::progress::{GaveUp, Progress};
    use crate::store::tests::temp_dir;
    use crate::store::Fsync;

    fn give_up(store: &Store, plugin: &str, event: Event, attempts: u32, error: &str) {
        store
            .commit_progress(&Progress {
                plugin: plugin.into(),
                dead: vec![GaveUp {
                    event: std::sync::Arc::new(event),
                    attempts,
                    error: error.into(),
                }],
                ..Default::default()
            })
            .expect("dead letter");
    }

    fn ev(topic: &str, seq: u64) -> Event {
        let mut e = Event::new(topic, None, b"{}".to_vec()).expect("event");
        e.sequence = seq;
        e
    }

    #[test]
    fn letters_are_kept_per_plugin_redriven_by_topic_and_purged() {
        let dir = temp_dir("dead");
        let store = Store::open(&dir, Fsync::Always).expect("opens");
        give_up(&store, "inventory", ev("order.placed", 3), 5, "no items");
        give_up(&store, "inventory", ev("order.cancelled", 7), 1, "rejected");
        give_up(&store, "email", ev("order.placed", 3), 2, "smtp down");
        let inv = store.dead_letters("inventory").expect("list");
        assert_eq!(
            inv.iter().map(|l| l.event.sequence).collect::<Vec<_>>(),
            [3, 7]
        );
        assert_eq!((inv[0].attempts, inv[0].error.as_str()), (5, "no items"));
        assert_eq!(
            store.dead_letters("email").expect("list").len(),
            1,
            "per plugin"
        );

        let topic = Selection::Topic(Pattern::parse("order.placed").expect("pattern"));
        assert_eq!(store.redrive("inventory", &topic).expect("redrive"), 1);
        let again = store.redrives("inventory").expect("redrives");
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].id, inv[0].event.id, "keeps its id");
        assert_eq!(store.dead_letters("inventory").expect("list").len(), 1);
        store
            .commit_progress(&Progress {
                plugin: "inventory".into(),
                redriven: vec![3],
                ..Default::default()
            })
            .expect("done");
        assert!(store.redrives("inventory").expect("redrives").is_empty());

        assert_eq!(store.purge("inventory", &Selection::All).expect("purge"), 1);
        assert!(store.dead_letters("inventory").expect("list").is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
