//! The plugins' dead letters in the DLQ stream (`plugbus.dlq.PLUGIN`):
//! listed through a consumer of their own, re-driven onto the plugin's
//! redo subject keeping the event, deleted by their stream sequence.

use super::{commit, Inner};
use crate::backend::BackendError;
use crate::event::Event;
use crate::store::dead::{DeadLetter, Selection};
use async_nats::jetstream::consumer::DeliverPolicy;

impl Inner {
    /// The plugin's dead letters with their sequences in the DLQ stream.
    pub(super) async fn letters(
        &self,
        plugin: &str,
    ) -> Result<Vec<(u64, DeadLetter)>, BackendError> {
        let stream = self.conn().await?.dlq.clone();
        let all = self
            .scan(
                &stream,
                self.dlq_subject(plugin),
                DeliverPolicy::All,
                usize::MAX,
            )
            .await?;
        let mut out = Vec::with_capacity(all.len());
        for (dlq_seq, m) in all {
            let letter = commit::decode_dead(plugin, &m.payload).ok_or_else(|| {
                self.corrupt(
                    format!("dead letter {dlq_seq} of plugin `{plugin}`"),
                    "bad record",
                )
            })?;
            out.push((dlq_seq, letter));
        }
        out.sort_by_key(|(_, l)| l.event.sequence);
        Ok(out)
    }

    /// The selected dead letters, and the DLQ stream they are in.
    async fn chosen(
        &self,
        plugin: &str,
        which: &Selection,
    ) -> Result<
        (
            Vec<(u64, DeadLetter)>,
            async_nats::jetstream::stream::Stream,
        ),
        BackendError,
    > {
        let chosen = self
            .letters(plugin)
            .await?
            .into_iter()
            .filter(|(_, l)| which.wants(l))
            .collect();
        Ok((chosen, self.conn().await?.dlq.clone()))
    }

    /// Deliver the selected dead letters to `plugin` again: back on its own
    /// subject, keeping the event (its id and sequence); the message id
    /// makes a re-drive that is retried store it once.
    pub(super) async fn redrive(
        &self,
        plugin: &str,
        which: &Selection,
    ) -> Result<usize, BackendError> {
        let (chosen, dlq) = self.chosen(plugin, which).await?;
        let start = self
            .consumer_info(plugin)
            .await?
            .and_then(|i| super::accounts::start_of(&i.config));
        for (dlq_seq, letter) in &chosen {
            self.publish_all(vec![(
                self.redo_subject(plugin),
                format!("redo:{plugin}:{dlq_seq}"),
                commit::encode_redo(&letter.event),
            )])
            .await?;
            dlq.delete_message(*dlq_seq)
                .await
                .map_err(|e| self.error(e))?;
            // No longer given up on: pending again, on the redo subject.
            if start.is_some_and(|s| letter.event.sequence > s) {
                self.count(plugin, 0, -1).await?;
            }
        }
        Ok(chosen.len())
    }

    /// Delete the selected dead letters.
    pub(super) async fn purge(
        &self,
        plugin: &str,
        which: &Selection,
    ) -> Result<usize, BackendError> {
        let (chosen, dlq) = self.chosen(plugin, which).await?;
        for (seq, _) in &chosen {
            dlq.delete_message(*seq).await.map_err(|e| self.error(e))?;
        }
        Ok(chosen.len())
    }
}

/// A dead letter's record as the outbox carries it and the DLQ stream
/// keeps it.
pub(super) fn dead_record(event: &Event, attempts: u32, error: &str) -> Vec<u8> {
    let mut out = event.sequence.to_be_bytes().to_vec();
    out.extend(crate::backend::redis::dead_record(event, attempts, error));
    out
}
