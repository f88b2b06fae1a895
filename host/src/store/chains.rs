//! The chain index: for every event of the log that belongs to a chain
//! started by another (it has a `correlationid`: a plugin's follow-up, or
//! an event its publisher put in a chain), a key `CHAIN \0 SEQUENCE` (the
//! chain's correlation id, which is the id of the event that started it,
//! and the event's sequence, big-endian) in the `chains` keyspace, whose
//! value is the sequence of its cause when a plugin of this host published
//! it. Written in the same atomic batch as the event and removed with it
//! when the log is trimmed. The event that started a chain is found as the
//! cause of the chain's first hop, so events from outside, which start
//! chains, cost the index nothing (measured: indexing every event took a
//! quarter to half of the durable publish rate); a chain nothing was
//! published in is not in the index. Events stored before the index
//! existed are not in it.

use fjall::OwnedWriteBatch;

use super::{sequence_of, Store, StoreError};
use crate::event::Event;

/// The index key of `event`, if it is in a chain started by another.
pub(super) fn key(event: &Event) -> Option<Vec<u8>> {
    let chain = event.correlationid.as_deref()?.as_bytes();
    let mut key = Vec::with_capacity(chain.len() + 9);
    key.extend_from_slice(chain);
    key.push(0);
    key.extend_from_slice(&event.sequence.to_be_bytes());
    Some(key)
}

impl Store {
    /// Index `events` in `batch`.
    pub(super) fn index_chains(&self, batch: &mut OwnedWriteBatch, events: &[Event]) {
        for e in events {
            if let Some(key) = key(e) {
                let cause = e.cause_sequence.map(u64::to_be_bytes);
                batch.insert(
                    &self.chains,
                    key,
                    cause.as_ref().map_or(&[][..], |c| &c[..]),
                );
            }
        }
    }

    /// Remove `events` from the index in `batch` (they leave the log).
    pub(super) fn unindex_chains(&self, batch: &mut OwnedWriteBatch, events: &[Event]) {
        for key in events.iter().filter_map(key) {
            batch.remove(&self.chains, key);
        }
    }

    /// Up to `max` events of the chain `correlationid` still in the log, in
    /// log order: the event that started it (the cause of its first hop)
    /// and the events indexed under it.
    pub fn chain(&self, correlationid: &str, max: usize) -> Result<Vec<Event>, StoreError> {
        let mut prefix = correlationid.as_bytes().to_vec();
        prefix.push(0);
        let mut sequences = Vec::new();
        let mut causes = Vec::new();
        for guard in self.chains.prefix(&prefix).take(max) {
            let (key, value) = guard.into_inner().map_err(|e| self.read_error(&e))?;
            if let Some(sequence) = sequence_of(&key[prefix.len()..]) {
                sequences.push(sequence);
                causes.extend(sequence_of(&value));
            }
        }
        // The first event is the cause not itself in the chain's index.
        let first = causes.iter().copied().find(|c| !sequences.contains(c));
        let mut out = Vec::new();
        for sequence in first.into_iter().chain(sequences).take(max) {
            // Trimmed meanwhile: not in the log any more.
            if let Some(e) = self
                .read(sequence, 1)?
                .into_iter()
                .find(|e| e.sequence == sequence)
            {
                out.push(e);
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use crate::event::Event;
    use crate::store::tests::{ev, temp_dir};
    use crate::store::{Fsync, Retention, Store};

    fn follow_up(cause: &Event, i: usize) -> Event {
        let mut e = ev(i);
        e.correlationid = Some(cause.chain_id().to_string());
        e.causationid = Some(cause.id.clone());
        e.cause_sequence = Some(cause.sequence);
        e
    }

    #[test]
    fn a_chain_is_found_by_its_correlation_id_and_leaves_with_the_log() {
        let dir = temp_dir("chains");
        let store = Store::open(&dir, Fsync::Always).expect("opens");
        let mut root = [ev(0)];
        store.append(&mut root).expect("append");
        let root = root[0].clone();
        let mut lone = [ev(1)];
        store.append(&mut lone).expect("another chain");
        let mut hop = [follow_up(&root, 2)];
        store.append(&mut hop).expect("append");
        store
            .append(&mut [follow_up(&hop[0], 3), follow_up(&root, 4)])
            .expect("append");
        let seqs = |v: Vec<Event>| v.iter().map(|e| e.sequence).collect::<Vec<_>>();
        assert_eq!(
            seqs(store.chain(&root.id, 100).expect("chain")),
            [1, 3, 4, 5]
        );
        assert_eq!(seqs(store.chain(&root.id, 2).expect("chain")), [1, 3]);
        assert!(store.chain("nobody", 100).expect("chain").is_empty());
        assert!(
            store.chain(&lone[0].id, 100).expect("chain").is_empty(),
            "a chain nothing was published in is not indexed"
        );
        // Trimmed with the log: the first three records go.
        store.set_cursor("a", 3).expect("cursor");
        let all = Retention {
            age: None,
            bytes: Some(1),
        };
        assert_eq!(store.trim(&all).expect("trim"), 3);
        assert_eq!(seqs(store.chain(&root.id, 100).expect("chain")), [4, 5]);
        drop(store);
        let store = Store::open(&dir, Fsync::Always).expect("reopens");
        assert_eq!(seqs(store.chain(&root.id, 100).expect("chain")), [4, 5]);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
