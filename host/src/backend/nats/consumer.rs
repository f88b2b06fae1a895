//! One host's delivery of one plugin from JetStream: a pull from the
//! plugin's durable consumer (shared by every host that runs it), and the
//! settlement: the state, markers and outbox in one atomic batch into the
//! plugin's bucket, then the outbox published, then acks and naks.
//!
//! A first delivery needs no marker. A redelivery (a retry, a hand-back,
//! or a takeover after another host's lease ran out) reads the event's
//! marker first: settled already, it is acked without being handled
//! (after its outbox is published again); otherwise this host writes its
//! claim there, guarded by the marker it read, so that a settlement of the
//! host that held it before fails its guard.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy, FromConsumer, PullConsumer};
use async_nats::jetstream::{self, AckKind};
use futures_util::StreamExt;

use super::commit::{self, Guarded, Marker, Out, Outgoing};
use super::connect::Bridge;
use super::letters::dead_record;
use super::{Inner, CALL_TIMEOUT};
use crate::backend::{BackendError, Consumer, ConsumerOptions, Delivered, Settlement, Verdict};
use crate::event::Event;

/// An event handed out and not yet settled.
struct Held {
    message: jetstream::Message,
    stream_seq: u64,
    /// Its marker's sequence when handed out (0: none): the guard.
    last: u64,
    handbacks: u32,
    attempt: u32,
    event: Arc<Event>,
}

/// An event a settlement is done with (acked or dead-lettered), as the
/// commit needs it.
struct Final {
    seq: u64,
    stream_seq: u64,
    /// The marker sequence it was handed out at (the guard).
    last: u64,
    handbacks: u32,
    attempt: u32,
    /// Dead-lettered with this error.
    error: Option<String>,
}

/// Events to deliver again, with their delays.
type Retries = Vec<(u64, Duration)>;

/// The settled events of `finals` as [`Task::count`] takes them.
fn settled(finals: &[Final]) -> impl Iterator<Item = (u64, bool)> + '_ {
    finals.iter().map(|f| (f.seq, f.error.is_some()))
}

/// The plugin's durable consumer, made or brought up to date: its filter
/// is the plugin's topics and its redo subject, its ack wait the lease.
pub(super) async fn durable(
    inner: &Inner,
    plugin: &str,
    options: &ConsumerOptions,
) -> Result<PullConsumer, BackendError> {
    let mut filters: Vec<String> = options
        .patterns
        .iter()
        .map(|p| inner.event_subject(p.as_str()))
        .collect();
    filters.sort();
    filters.dedup();
    filters.push(inner.redo_subject(plugin));
    let as_pull = |c: jetstream::consumer::Config| {
        pull::Config::try_from_consumer_config(c).map_err(|e| inner.error(e))
    };
    let stream = inner.events().await?;
    let Some(info) = inner.consumer_info(plugin).await? else {
        // From the log's end as it is now (not `New`: the accounts need to
        // know where it starts), or its beginning; its accounts begin here.
        let deliver_policy = if options.start_latest {
            let mut events = stream.clone();
            let last = events.info().await.map_err(|e| inner.error(e))?;
            DeliverPolicy::ByStartSequence {
                start_sequence: last.state.last_sequence + 1,
            }
        } else {
            DeliverPolicy::All
        };
        inner.reset_accounts(plugin).await?;
        let config = pull::Config {
            durable_name: Some(plugin.to_string()),
            deliver_policy,
            ack_policy: AckPolicy::Explicit,
            ack_wait: options.lease,
            filter_subjects: filters,
            ..Default::default()
        };
        return stream
            .create_consumer(config)
            .await
            .map_err(|e| inner.error(format!("cannot make consumer {plugin}: {e}")));
    };
    let mut config = info.config.clone();
    let mut current = config.filter_subjects.clone();
    if !config.filter_subject.is_empty() {
        current.push(config.filter_subject.clone());
    }
    if current == filters && config.ack_wait == options.lease {
        let js = inner.conn().await?.js.clone();
        return Ok(PullConsumer::new(as_pull(config)?, info, js));
    }
    config.filter_subject = String::new();
    config.filter_subjects = filters;
    config.ack_wait = options.lease;
    stream
        .update_consumer(as_pull(config)?)
        .await
        .map_err(|e| inner.error(format!("cannot update consumer {plugin}: {e}")))
}

/// Deliver the log to `plugin` again from `from`: its consumer is made
/// anew there, its markers (and with `reset_state` its whole bucket)
/// purged.
pub(super) async fn replay(
    inner: &Inner,
    plugin: &str,
    from: u64,
    reset_state: bool,
) -> Result<(), BackendError> {
    let stream = inner.events().await?;
    let mut config = match inner.consumer_info(plugin).await? {
        Some(info) => {
            stream
                .delete_consumer(plugin)
                .await
                .map_err(|e| inner.error(e))?;
            info.config
        }
        None => jetstream::consumer::Config {
            durable_name: Some(plugin.to_string()),
            ack_policy: AckPolicy::Explicit,
            filter_subjects: vec![inner.event_subject(">"), inner.redo_subject(plugin)],
            ..Default::default()
        },
    };
    let bucket = inner.ensure_bucket(plugin).await?;
    let name = inner.bucket(plugin);
    let filter = if reset_state {
        format!("$KV.{name}.>")
    } else {
        format!("$KV.{name}._pb.>")
    };
    bucket
        .purge()
        .filter(filter)
        .await
        .map_err(|e| inner.error(e))?;
    config.deliver_policy = DeliverPolicy::ByStartSequence {
        start_sequence: from.max(1),
    };
    inner.reset_accounts(plugin).await?;
    stream
        .create_consumer(config)
        .await
        .map_err(|e| inner.error(format!("cannot make consumer {plugin} again: {e}")))?;
    Ok(())
}

pub(in crate::backend) struct NatsConsumer {
    inner: Arc<Inner>,
    bridge: Arc<Bridge>,
    plugin: String,
    options: ConsumerOptions,
    pull: PullConsumer,
    held: Arc<Mutex<HashMap<u64, Held>>>,
    /// Where the plugin's accounts start (`None`: its consumer predates
    /// them); see `accounts`.
    start: Option<u64>,
}

impl NatsConsumer {
    pub(super) fn new(
        inner: Arc<Inner>,
        bridge: Arc<Bridge>,
        plugin: &str,
        options: ConsumerOptions,
        pull: PullConsumer,
    ) -> NatsConsumer {
        let start = super::accounts::start_of(&pull.cached_info().config);
        NatsConsumer {
            inner,
            bridge,
            plugin: plugin.to_string(),
            options,
            pull,
            held: Arc::default(),
            start,
        }
    }

    fn run<T: Send + 'static, F>(
        &self,
        timeout: Duration,
        f: impl FnOnce(Task) -> F,
    ) -> Result<T, BackendError>
    where
        F: std::future::Future<Output = Result<T, BackendError>> + Send + 'static,
    {
        let task = Task {
            inner: self.inner.clone(),
            plugin: self.plugin.clone(),
            host: self.options.host.clone(),
            pull: self.pull.clone(),
            held: self.held.clone(),
            start: self.start,
        };
        self.bridge.run(&self.inner, timeout, f(task))
    }
}

/// What a consumer's calls run with on the client's runtime.
struct Task {
    inner: Arc<Inner>,
    plugin: String,
    host: String,
    pull: PullConsumer,
    held: Arc<Mutex<HashMap<u64, Held>>>,
    /// Where the plugin's accounts start (`None`: its consumer predates
    /// them); see `accounts`.
    start: Option<u64>,
}

impl Task {
    fn held(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Held>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn bucket(&self) -> String {
        self.inner.bucket(&self.plugin)
    }

    async fn publish_guarded(&self, out: Out) -> Result<Guarded, BackendError> {
        self.inner.publish_guarded(out).await
    }

    /// Pull up to `max` messages: what is there at once, else wait up to
    /// `wait` for one and take what came with it.
    async fn pull(
        &self,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<jetstream::Message>, BackendError> {
        let mut got = self.fetch(max, None).await?;
        if got.is_empty() && !wait.is_zero() {
            got = self
                .fetch(1, Some(wait.max(Duration::from_millis(10))))
                .await?;
            if !got.is_empty() && max > 1 {
                got.extend(self.fetch(max - 1, None).await?);
            }
        }
        Ok(got)
    }

    async fn fetch(
        &self,
        max: usize,
        wait: Option<Duration>,
    ) -> Result<Vec<jetstream::Message>, BackendError> {
        let mut batch = match wait {
            None => self.pull.fetch().max_messages(max).messages().await,
            Some(wait) => {
                self.pull
                    .batch()
                    .max_messages(max)
                    .expires(wait)
                    .messages()
                    .await
            }
        }
        .map_err(|e| self.inner.error(e))?;
        let mut out = Vec::new();
        while let Some(m) = batch.next().await {
            out.push(m.map_err(|e| self.inner.error(e))?);
        }
        Ok(out)
    }

    async fn next_batch(self, max: usize, wait: Duration) -> Result<Vec<Delivered>, BackendError> {
        let stream = self.inner.ensure_bucket(&self.plugin).await?;
        let mut out = Vec::new();
        for message in self.pull(max, wait).await? {
            match self.take(&stream, message).await {
                Ok(Some(delivered)) => out.push(delivered),
                Ok(None) => {}
                Err(e) if out.is_empty() => return Err(e),
                // What was taken is handed out; the rest comes back after
                // the lease (kept, it would have its lease renewed while
                // nobody handles it).
                Err(e) => {
                    tracing::warn!(plugin = %self.plugin, "part of a batch was not taken ({e}); it is delivered again after the lease");
                    break;
                }
            }
        }
        Ok(out)
    }

    /// Make a pulled message this consumer's: decoded, recognised if it
    /// was settled before (then acked, none), claimed if redelivered.
    async fn take(
        &self,
        stream: &jetstream::stream::Stream,
        message: jetstream::Message,
    ) -> Result<Option<Delivered>, BackendError> {
        let (stream_seq, delivered) = match message.info() {
            Ok(info) => (info.stream_sequence, info.delivered.max(1) as u32),
            Err(e) => {
                return Err(self
                    .inner
                    .corrupt("a delivered message's info", e.to_string()))
            }
        };
        let decoded = if message.subject.as_str() == self.inner.redo_subject(&self.plugin) {
            commit::decode_redo(&message.payload)
        } else {
            crate::store::codec::decode(stream_seq, &message.payload).ok()
        };
        let Some(event) = decoded else {
            tracing::error!(plugin = %self.plugin, stream_seq, subject = %message.subject, "a message of the log does not decode (not written by this version of plugbus); terminated without handling it");
            let _ = message.ack_with(AckKind::Term).await;
            return Ok(None);
        };
        let (mut last, mut handbacks) = (0, 0);
        if delivered > 1 {
            let bucket = self.bucket();
            let marker = commit::read_marker(&self.inner, stream, &bucket, stream_seq).await?;
            if let Some((
                _,
                Marker {
                    done: Some((batch, n)),
                    dead,
                    ..
                },
            )) = marker
            {
                // Counted again if its count was stored before (at least
                // once: `again` in the audit), never lost.
                self.count([(event.sequence, dead)]).await;
                // Settled before: its outbox again, then the ack.
                self.send_outbox(stream, batch, n).await?;
                message.ack().await.map_err(|e| self.inner.error(e))?;
                return Ok(None);
            }
            let (seen, before) = marker.map_or((0, Marker::default()), |(s, m)| (s, m));
            handbacks = before.handbacks;
            let claim = Marker {
                done: None,
                host: self.host.clone(),
                handbacks,
                dead: false,
            };
            match self
                .publish_guarded(commit::marker(&bucket, stream_seq, &claim, seen))
                .await?
            {
                Guarded::Stored(seq) => last = seq,
                // Another host claimed it meanwhile: it is theirs.
                Guarded::WrongLast => return Ok(None),
            }
        }
        let attempt = delivered.saturating_sub(handbacks).max(1);
        let event = Arc::new(event);
        self.held().insert(
            event.sequence,
            Held {
                message,
                stream_seq,
                last,
                handbacks,
                attempt,
                event: event.clone(),
            },
        );
        Ok(Some(Delivered { event, attempt }))
    }

    /// Publish a settled batch's outbox (again), from the bucket.
    async fn send_outbox(
        &self,
        stream: &jetstream::stream::Stream,
        batch: u64,
        n: usize,
    ) -> Result<(), BackendError> {
        let bucket = self.bucket();
        let mut outgoing = Vec::with_capacity(n);
        for i in 0..n {
            let subject = commit::outbox_subject(&bucket, batch, i);
            match commit::last(&self.inner, stream, &subject).await? {
                Some((_, Some(bytes))) => outgoing.push(
                    Outgoing::decode(&bytes)
                        .ok_or_else(|| self.inner.corrupt(subject.clone(), "bad outbox entry"))?,
                ),
                _ => {
                    tracing::warn!(plugin = %self.plugin, %subject, "an outbox entry expired before it was published again");
                }
            }
        }
        self.publish_outbox(&outgoing).await
    }

    /// Publish follow-ups to the log and dead letters to the DLQ stream,
    /// each with its message id, waiting for the server's answers.
    async fn publish_outbox(&self, outgoing: &[Outgoing]) -> Result<(), BackendError> {
        let messages = outgoing
            .iter()
            .map(|o| match o {
                Outgoing::FollowUp(e) => (
                    self.inner.event_subject(&e.topic),
                    e.id.clone(),
                    crate::store::codec::encode(e),
                ),
                Outgoing::Dead { record, id } => (
                    self.inner.dlq_subject(&self.plugin),
                    id.clone(),
                    record.clone(),
                ),
            })
            .collect();
        self.inner.publish_all(messages).await.map(drop)
    }

    async fn settle(self, s: Settlement) -> Result<(), BackendError> {
        let bucket = self.bucket();
        // What each verdict is about.
        let (finals, retries) = self.finals(&s.verdicts)?;
        if s.writes.is_empty()
            && s.expected.is_empty()
            && s.follow_ups.is_empty()
            && s.timers.is_empty()
            && finals.iter().all(|f| f.error.is_none())
        {
            // Nothing to commit but acks: no marker (a late ack from a
            // stalled host changes nothing but the message's ack).
            self.count(settled(&finals)).await;
            self.acknowledge(&finals, &retries).await;
            return Ok(());
        }
        let stream = self.inner.ensure_bucket(&self.plugin).await?;
        let mut batch: Vec<Out> = Vec::new();
        // The values the writes were computed from must still be there:
        // each is checked now and guarded by its sequence in the batch.
        let mut guards = self.guards(&stream, &bucket, &s.expected, &finals).await?;
        let mut writes: Vec<(&str, Option<&[u8]>)> = Vec::new();
        for (key, value) in &s.writes {
            writes.retain(|(k, _)| *k != key.as_str());
            writes.push((key.as_str(), value.as_deref()));
        }
        for (key, value) in &writes {
            let guard = guards.remove(key).map(|(seq, _)| seq);
            batch.push(commit::write(&bucket, key, *value, guard));
        }
        for (key, (seq, value)) in &guards {
            batch.push(commit::write(&bucket, key, value.as_deref(), Some(*seq)));
        }
        for c in &s.timers {
            batch.push(super::timers::change(&bucket, c));
        }
        let outgoing = self.outbox(s.follow_ups, &finals);
        let batch_id = finals.first().map(|f| f.stream_seq);
        if let Some(batch_id) = batch_id {
            for (i, o) in outgoing.iter().enumerate() {
                batch.push(o.entry(&bucket, batch_id, i));
            }
            for f in &finals {
                let done = Marker {
                    done: Some((batch_id, outgoing.len())),
                    host: self.host.clone(),
                    handbacks: f.handbacks,
                    dead: f.error.is_some(),
                };
                batch.push(commit::marker(&bucket, f.stream_seq, &done, f.last));
            }
        }
        let conn = self.inner.conn().await?;
        match commit::atomic(&conn.client, batch).await {
            Ok(()) => {
                self.inner.caches.of(&self.plugin).wrote_here(writes);
                self.inner.timers.apply(&self.plugin, &s.timers);
                if let Some(clock) = self.inner.clock.get() {
                    clock.ring();
                }
            }
            Err(commit::BatchError::WrongLast(why)) => {
                return Err(self.diagnose(&stream, &finals, &s.expected, why).await)
            }
            Err(e) => return Err(e.into_backend(&self.inner)),
        }
        if let Err(e) = self.publish_outbox(&outgoing).await {
            // Committed, but not acked: the events come back (at once, or
            // after the lease if the nak is lost too), find their marker,
            // and the outbox is published again then, and they are counted
            // and acked. Acked now, the outbox would never go out.
            tracing::warn!(plugin = %self.plugin, "a settlement's follow-ups or dead letters were not all published ({e}); its events come back and they are published then");
            let mut back: Vec<(u64, Duration)> =
                finals.iter().map(|f| (f.seq, Duration::ZERO)).collect();
            back.extend(retries);
            self.acknowledge(&[], &back).await;
            return Ok(());
        }
        self.count(settled(&finals)).await;
        self.acknowledge(&finals, &retries).await;
        Ok(())
    }

    /// Each verdict's event as it is held (acks and dead letters), and the
    /// retries with their delays.
    fn finals(&self, verdicts: &[(u64, Verdict)]) -> Result<(Vec<Final>, Retries), BackendError> {
        let mut finals: Vec<Final> = Vec::new();
        let mut retries: Vec<(u64, Duration)> = Vec::new();
        {
            let held = self.held();
            for (seq, verdict) in verdicts {
                let h = held.get(seq).ok_or_else(|| BackendError::NotHeld {
                    plugin: self.plugin.clone(),
                    sequence: *seq,
                })?;
                let error = match verdict {
                    Verdict::Ack => None,
                    Verdict::Dead(error) => Some(error.clone()),
                    Verdict::Retry(delay) => {
                        retries.push((*seq, *delay));
                        continue;
                    }
                };
                finals.push(Final {
                    seq: *seq,
                    stream_seq: h.stream_seq,
                    last: h.last,
                    handbacks: h.handbacks,
                    attempt: h.attempt,
                    error,
                });
            }
        }
        Ok((finals, retries))
    }

    /// The follow-ups and the dead letters of `finals`, to go out once the
    /// settlement is committed.
    fn outbox(&self, follow_ups: Vec<Event>, finals: &[Final]) -> Vec<Outgoing> {
        let mut outgoing: Vec<Outgoing> = follow_ups
            .into_iter()
            .map(|e| Outgoing::FollowUp(Box::new(e)))
            .collect();
        {
            let held = self.held();
            for f in finals {
                if let (Some(error), Some(h)) = (&f.error, held.get(&f.seq)) {
                    outgoing.push(Outgoing::Dead {
                        record: dead_record(&h.event, f.attempt, error),
                        id: format!("dlq:{}:{}", self.plugin, f.stream_seq),
                    });
                }
            }
        }
        outgoing
    }

    /// The sequence and value of each key in `expected`, checked to be the
    /// value the writes were computed from (else the batch's diagnosis).
    async fn guards<'a>(
        &self,
        stream: &async_nats::jetstream::stream::Stream,
        bucket: &str,
        expected: &'a [(String, Option<Vec<u8>>)],
        finals: &[Final],
    ) -> Result<HashMap<&'a str, (u64, Option<Vec<u8>>)>, BackendError> {
        let mut guards: HashMap<&'a str, (u64, Option<Vec<u8>>)> = HashMap::new();
        let found = futures_util::future::join_all(expected.iter().map(|(key, _)| {
            let subject = commit::key_subject(bucket, key);
            let (inner, stream) = (&self.inner, stream);
            async move { commit::last(inner, stream, &subject).await }
        }))
        .await;
        for ((key, expected), found) in expected.iter().zip(found) {
            let (seq, current) = found?.map_or((0, None), |(seq, v)| (seq, v));
            if current != *expected {
                // A changed key from a host that lost its events to
                // another is that host's fence, not a conflict: the same
                // diagnosis as a refused batch, markers first.
                let changed = [(key.clone(), expected.clone())];
                let why = format!("key `{key}` changed since it was read");
                return Err(self.diagnose(stream, finals, &changed, why).await);
            }
            guards.insert(key.as_str(), (seq, current));
        }
        Ok(guards)
    }

    /// Count settled events, (sequence, given up on) each, in the plugin's
    /// accounts, before they are acked (see `accounts`).
    async fn count(&self, settled: impl IntoIterator<Item = (u64, bool)>) {
        let Some(start) = self.start else { return };
        let (mut handled, mut dead) = (0, 0);
        for (_, gave_up) in settled.into_iter().filter(|(seq, _)| *seq > start) {
            if gave_up {
                dead += 1;
            } else {
                handled += 1;
            }
        }
        if handled == 0 && dead == 0 {
            return;
        }
        if let Err(e) = self.inner.count(&self.plugin, handled, dead).await {
            tracing::warn!(plugin = %self.plugin, "{handled} handled and {dead} dead events were not counted ({e}); plugbus audit shows them unaccounted");
        }
    }

    /// Ack the settled events and nak the retried ones (after their
    /// delays); they are no longer this consumer's.
    async fn acknowledge(&self, finals: &[Final], retries: &[(u64, Duration)]) {
        let (mut acks, mut naks) = (Vec::new(), Vec::new());
        {
            let mut held = self.held();
            for f in finals {
                acks.extend(held.remove(&f.seq).map(|h| h.message));
            }
            for (seq, delay) in retries {
                naks.extend(held.remove(seq).map(|h| (h.message, *delay)));
            }
        }
        // Committed: an ack or nak lost here only brings the event back
        // after the lease, to be recognised by its marker (or retried).
        for m in acks {
            if let Err(e) = m.ack().await {
                tracing::warn!(plugin = %self.plugin, "an ack was not sent ({e}); the event comes back after the lease and is acked then");
            }
        }
        for (m, delay) in naks {
            if let Err(e) = m.ack_with(AckKind::Nak(Some(delay))).await {
                tracing::warn!(plugin = %self.plugin, "a retry was not sent ({e}); the event comes back after the lease");
            }
        }
    }

    /// Why a guarded commit failed: an event this host no longer holds
    /// (fenced: nothing of the batch is its any more), else a changed key.
    async fn diagnose(
        &self,
        stream: &jetstream::stream::Stream,
        finals: &[Final],
        expected: &[(String, Option<Vec<u8>>)],
        why: String,
    ) -> BackendError {
        let bucket = self.bucket();
        for f in finals {
            match commit::read_marker(&self.inner, stream, &bucket, f.stream_seq).await {
                Ok(found) if found.as_ref().map_or(0, |(s, _)| *s) != f.last => {
                    let holder = found.map(|(_, m)| m);
                    let why = match holder {
                        Some(Marker {
                            done: Some(_),
                            host,
                            ..
                        }) => format!("{host} settled it"),
                        Some(m) => format!("{} holds it", m.host),
                        None => "its claim expired".into(),
                    };
                    let mut held = self.held();
                    for other in finals {
                        held.remove(&other.seq);
                    }
                    return BackendError::Fenced {
                        plugin: self.plugin.clone(),
                        sequence: f.seq,
                        why,
                    };
                }
                Ok(_) => {}
                Err(e) => return e,
            }
        }
        match expected.first() {
            Some((key, _)) => BackendError::Conflict {
                plugin: self.plugin.clone(),
                key: key.clone(),
            },
            None => self
                .inner
                .refused(format!("a state commit was refused: {why}")),
        }
    }

    async fn extend(self) -> Result<(), BackendError> {
        let messages: Vec<jetstream::Message> =
            self.held().values().map(|h| h.message.clone()).collect();
        for m in messages {
            m.ack_with(AckKind::Progress)
                .await
                .map_err(|e| self.inner.error(e))?;
        }
        Ok(())
    }

    async fn release(self) -> Result<(), BackendError> {
        let held = std::mem::take(&mut *self.held());
        let bucket = self.bucket();
        for h in held.into_values() {
            let back = Marker {
                done: None,
                host: self.host.clone(),
                handbacks: h.handbacks + 1,
                dead: false,
            };
            match self
                .publish_guarded(commit::marker(&bucket, h.stream_seq, &back, h.last))
                .await?
            {
                Guarded::Stored(_) => h
                    .message
                    .ack_with(AckKind::Nak(None))
                    .await
                    .map_err(|e| self.inner.error(e))?,
                // Taken by another host meanwhile: not this one's to hand
                // back.
                Guarded::WrongLast => {}
            }
        }
        Ok(())
    }
}

impl Consumer for NatsConsumer {
    fn next_batch(
        &mut self,
        max_events: usize,
        wait: Duration,
    ) -> Result<Vec<Delivered>, BackendError> {
        if max_events == 0 {
            return Ok(Vec::new());
        }
        self.run(wait + CALL_TIMEOUT, |t| t.next_batch(max_events, wait))
    }

    fn settle(&mut self, settlement: Settlement) -> Result<(), BackendError> {
        let settled = self.run(CALL_TIMEOUT, |t| t.settle(settlement));
        if settled.is_err() {
            // Refused because a value read was out of date, or an outcome
            // not known: what the copy holds may be wrong. (A committed
            // settlement's writes went into it where it was committed.)
            self.inner.caches.of(&self.plugin).forget();
        }
        settled
    }

    fn extend(&mut self) -> Result<(), BackendError> {
        self.run(CALL_TIMEOUT, |t| t.extend())
    }

    fn release(&mut self) -> Result<(), BackendError> {
        self.run(CALL_TIMEOUT, |t| t.release())
    }
}
