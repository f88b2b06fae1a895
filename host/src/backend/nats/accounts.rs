//! The books of the audit on JetStream ([`crate::audit`]): per plugin,
//! two counters (ADR-49, 2.12+) in the stream `PLUGBUS_ACCOUNTS`,
//! `plugbus.acct.PLUGIN.handled` and `.dead`, moved by each settlement
//! before its acks (a re-drive moves a letter from dead back to pending);
//! the accounts start where the plugin's durable consumer starts
//! (`DeliverPolicy::All`: 0, `ByStartSequence(S)`: S - 1), and are begun
//! again when the consumer is made anew (first start, replay).
//!
//! JetStream cannot read the counters and a consumer at one moment, so a
//! plugin is checked only at rest: nothing in hand (no ack pending) and
//! its consumer the same before and after its counters were read. While
//! it is busy its audit says so (`checked: false`); run it again when it
//! is idle. A settlement counted but whose acks were lost (a host that
//! died between, a broker restart) is handled again (at least once): the
//! audit shows those as `again`, not lost.

use std::collections::HashSet;

use async_nats::jetstream::consumer::{self, DeliverPolicy};
use async_nats::jetstream::stream;

use super::Inner;
use crate::audit::{Books, Part, Scope};
use crate::backend::BackendError;

/// Where a consumer made with `config` starts the plugin's accounts
/// (`None`: made some other way, by hand or by an older plugbus).
pub(super) fn start_of(config: &consumer::Config) -> Option<u64> {
    match config.deliver_policy {
        DeliverPolicy::All => Some(0),
        DeliverPolicy::ByStartSequence { start_sequence } => Some(start_sequence.saturating_sub(1)),
        _ => None,
    }
}

/// The accounts' stream's configuration.
pub(super) fn stream_config(name: String, prefix: &str) -> stream::Config {
    stream::Config {
        name,
        description: Some("plugbus: how many events each plugin handled and gave up on".into()),
        subjects: vec![format!("{prefix}.acct.>")],
        storage: stream::StorageType::File,
        allow_message_counter: true,
        allow_direct: true,
        ..Default::default()
    }
}

impl Inner {
    fn account_subject(&self, plugin: &str, what: &str) -> String {
        format!("{}.acct.{plugin}.{what}", self.prefix)
    }

    /// Count `handled` and `dead` more of `plugin`'s events (either may be
    /// below zero), waiting for the server to store them.
    pub(super) async fn count(
        &self,
        plugin: &str,
        handled: i64,
        dead: i64,
    ) -> Result<(), BackendError> {
        let conn = self.conn().await?;
        let mut acks = Vec::with_capacity(2);
        for (what, n) in [("handled", handled), ("dead", dead)] {
            if n == 0 {
                continue;
            }
            let mut headers = async_nats::HeaderMap::new();
            headers.insert("Nats-Incr", format!("{n:+}").as_str());
            acks.push(
                conn.js
                    .publish_with_headers(self.account_subject(plugin, what), headers, "".into())
                    .await
                    .map_err(|e| self.error(e))?,
            );
        }
        for ack in acks {
            ack.await
                .map_err(|e| self.error(format!("a count was not stored: {e}")))?;
        }
        Ok(())
    }

    /// Begin `plugin`'s accounts again (its consumer is being made anew).
    pub(super) async fn reset_accounts(&self, plugin: &str) -> Result<(), BackendError> {
        let conn = self.conn().await?;
        conn.accounts
            .purge()
            .filter(self.account_subject(plugin, "*"))
            .await
            .map_err(|e| self.error(e))?;
        Ok(())
    }

    /// One of `plugin`'s counters.
    async fn counter(&self, plugin: &str, what: &str) -> Result<u64, BackendError> {
        use async_nats::jetstream::stream::DirectGetErrorKind;
        let conn = self.conn().await?;
        let subject = self.account_subject(plugin, what);
        match conn.accounts.direct_get_last_for_subject(&subject).await {
            Ok(m) => {
                let value: serde_json::Value = serde_json::from_slice(&m.payload)
                    .map_err(|e| self.corrupt(format!("counter {subject}"), e.to_string()))?;
                let n = value
                    .get("val")
                    .and_then(|v| v.as_str())
                    .and_then(|v| v.parse::<i64>().ok())
                    .ok_or_else(|| self.corrupt(format!("counter {subject}"), value.to_string()))?;
                Ok(u64::try_from(n).unwrap_or(0))
            }
            Err(e) if matches!(e.kind(), DirectGetErrorKind::NotFound) => Ok(0),
            Err(e) => Err(self.error(e)),
        }
    }

    /// The books of `scope`'s plugin, if it is at rest (see the module
    /// docs).
    pub(super) async fn books(&self, scope: &Scope) -> Result<Books, BackendError> {
        let plugin = scope.plugin.as_str();
        let Some(before) = self.consumer_info(plugin).await? else {
            return Ok(Books::unchecked(
                plugin,
                "it has no consumer on the broker yet".into(),
            ));
        };
        let Some(start) = start_of(&before.config) else {
            return Ok(Books::unchecked(
                plugin,
                "its books on NATS begin at its next replay (its consumer predates them)".into(),
            ));
        };
        let handled = self.counter(plugin, "handled").await?;
        let dead = self.counter(plugin, "dead").await?;
        let Some(after) = self.consumer_info(plugin).await? else {
            return Ok(Books::unchecked(plugin, "its consumer went away".into()));
        };
        let moved = |i: &consumer::Info| {
            (
                i.delivered.stream_sequence,
                i.ack_floor.stream_sequence,
                i.num_ack_pending,
                i.num_pending,
            )
        };
        if after.num_ack_pending > 0 || moved(&before) != moved(&after) {
            return Ok(Books::unchecked(
                plugin,
                format!("it had events in hand ({}) while counted: on NATS it is checked at rest; run the audit again when it is idle", after.num_ack_pending),
            ));
        }
        // Re-driven letters not delivered yet: pending on its redo subject.
        let through = after.delivered.stream_sequence;
        let redo = self
            .scan(
                &self.events().await?,
                self.redo_subject(plugin),
                DeliverPolicy::ByStartSequence {
                    start_sequence: through + 1,
                },
                usize::MAX,
            )
            .await?;
        let mut books = Books::new(
            plugin,
            vec![Part {
                start,
                through,
                held: HashSet::new(),
            }],
        );
        books.audit.handled = handled;
        books.audit.dead = dead;
        books.audit.pending = redo.len() as u64;
        Ok(books)
    }
}
