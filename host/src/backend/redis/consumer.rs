//! One host's delivery of one plugin from Redis: this host is a consumer
//! (named by `ConsumerOptions::host`) in the plugin's group on the log and
//! on its redo stream. A batch is, in order: entries another host held past
//! the lease (XAUTOCLAIM, looked for every half lease), due retries (moved
//! onto the redo stream first), then new entries. Log entries the plugin
//! does not subscribe to are acknowledged with the next settlement.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::reply::{self, Entry};
use super::{dead_record, fenced, Shared};
use crate::backend::{BackendError, Consumer, ConsumerOptions, Delivered, Settlement, Verdict};
use crate::event::Event;
use crate::store::codec;
use crate::store::state_cache::StateCache;

/// How often due retries are looked for when none of this host's is due
/// sooner (another host may have scheduled one).
const MOVE_EVERY: Duration = Duration::from_millis(500);
/// The longest one blocking read waits, so that claims and retries are
/// looked at in between.
const BLOCK_MAX: Duration = Duration::from_millis(500);
/// Entries passed over (not subscribed to) acknowledged at once past this
/// many, rather than with the next settlement.
const SKIPPED_MAX: usize = 1024;
/// How often a settlement whose answer was lost is sent again, and the
/// first pause before it (growing linearly).
const SETTLE_TRIES: u32 = 5;
const SETTLE_RETRY: Duration = Duration::from_millis(100);

/// An entry handed out and not yet settled.
struct Held {
    /// On the redo stream (else the log).
    redo: bool,
    id: String,
    /// Its delivery count when handed out: the fence.
    deliveries: u64,
    attempt: u32,
    event: Arc<Event>,
}

impl Held {
    fn tag(&self) -> &'static str {
        if self.redo {
            "r"
        } else {
            "l"
        }
    }
}

pub(in crate::backend) struct RedisConsumer {
    shared: Arc<Shared>,
    con: Option<redis::Connection>,
    plugin: String,
    options: ConsumerOptions,
    log: String,
    redo: String,
    retry: String,
    dead: String,
    kv: String,
    /// The version of the plugin's state (moved by every write to `kv`).
    kv_version: String,
    /// This host's copy of the plugin's state.
    cache: Arc<StateCache>,
    /// Each host's last settlement token (a hash by host name).
    settled: String,
    /// Each host's fence token (a hash by host name; see the settle script).
    fence: String,
    /// The plugin's accounts (a hash: start, handled, dead).
    accounts: String,
    /// Where its accounts start (`None`: its group predates them).
    start: Option<u64>,
    /// This consumer's fence token while it is still in the fence hash as
    /// far as this consumer knows: then a settlement need not send its
    /// entries to be checked one by one.
    token: Option<String>,
    groups_made: bool,
    held: HashMap<u64, Held>,
    skipped: Vec<String>,
    next_claim: Instant,
    next_move: Instant,
    /// Entries read with the last settlement (held, not yet handed out),
    /// and when.
    ahead: Vec<Delivered>,
    ahead_read: Instant,
    /// How many entries to read with the next settlement: set while
    /// batches come full (a backlog), so that settling one batch and
    /// reading the next take one round trip, and one of Redis's fsyncs.
    read_ahead: Option<usize>,
}

impl RedisConsumer {
    pub(super) fn open(
        shared: Arc<Shared>,
        plugin: &str,
        options: ConsumerOptions,
    ) -> Result<RedisConsumer, BackendError> {
        let now = Instant::now();
        Ok(RedisConsumer {
            log: shared.key("log"),
            redo: shared.plugin_key("redo", plugin),
            retry: shared.plugin_key("retry", plugin),
            dead: shared.plugin_key("dead", plugin),
            kv: shared.plugin_key("kv", plugin),
            kv_version: shared.kv_version_key(plugin),
            cache: shared.caches.of(plugin),
            settled: shared.plugin_key("settled", plugin),
            fence: shared.plugin_key("fence", plugin),
            accounts: shared.plugin_key("accounts", plugin),
            start: None,
            token: None,
            shared,
            con: None,
            plugin: plugin.to_string(),
            options,
            groups_made: false,
            held: HashMap::new(),
            skipped: Vec::new(),
            next_claim: now,
            next_move: now,
            ahead: Vec::new(),
            ahead_read: now,
            read_ahead: None,
        })
    }

    /// Make the plugin's groups, if they are not there yet (a new plugin
    /// starts at the log's end or beginning, as configured, and so do its
    /// accounts); learn where its accounts start.
    fn make_groups(&mut self) -> Result<(), BackendError> {
        if self.groups_made {
            return Ok(());
        }
        let mut call = self.shared.scripts.groups.prepare_invoke();
        call.key(&self.log)
            .key(&self.redo)
            .key(self.shared.key("seq"))
            .key(&self.accounts)
            .arg(&self.plugin)
            .arg(if self.options.start_latest { "1" } else { "0" });
        let start: i64 = self.shared.with(&mut self.con, |c| call.invoke(c))?;
        self.start = u64::try_from(start).ok();
        self.groups_made = true;
        Ok(())
    }

    /// Move due retries onto the redo stream; note when to look again.
    fn move_due(&mut self, max: usize) -> Result<(), BackendError> {
        let mut call = self.shared.scripts.move_due.prepare_invoke();
        call.key(&self.retry)
            .key(&self.redo)
            .key(&self.log)
            .arg(max);
        let (_, next_in): (i64, i64) = self.shared.with(&mut self.con, |c| call.invoke(c))?;
        let wait = u64::try_from(next_in).map_or(MOVE_EVERY, Duration::from_millis);
        self.next_move = Instant::now() + wait.min(MOVE_EVERY);
        Ok(())
    }

    /// Entries held past the lease (by other hosts, or by this one), now
    /// this host's; their former holders' fence tokens are deleted.
    fn claim(&mut self, max: usize) -> Result<Vec<Delivered>, BackendError> {
        let lease_ms = self.options.lease.as_millis() as u64;
        let mut out = Vec::new();
        for redo in [true, false] {
            let stream = if redo { &self.redo } else { &self.log };
            let mut call = self.shared.scripts.claim.prepare_invoke();
            call.key(stream)
                .key(&self.fence)
                .arg(&self.plugin)
                .arg(&self.options.host)
                .arg(lease_ms)
                .arg(max);
            let answer: redis::Value = self.shared.with(&mut self.con, |c| call.invoke(c))?;
            let claimed = reply::claimed(&answer).map_err(|e| self.shared.corrupt("a claim", e))?;
            for (entry, deliveries) in claimed {
                tracing::info!(plugin = %self.plugin, entry = %entry.0, deliveries, "took over an event held past its lease");
                if let Some(d) = self.take(redo, entry, deliveries)? {
                    out.push(d);
                }
            }
        }
        Ok(out)
    }

    /// Hold `entry`, delivered `deliveries` times, and hand it out (or pass
    /// over a log entry the plugin does not want).
    fn take(
        &mut self,
        redo: bool,
        (id, fields): Entry,
        deliveries: u64,
    ) -> Result<Option<Delivered>, BackendError> {
        let corrupt = |why: &str| self.shared.corrupt(format!("entry {id}"), why.to_string());
        let bytes = reply::field(&fields, "e").ok_or_else(|| corrupt("no event"))?;
        let (sequence, attempt) = if redo {
            let seq = reply::number(&fields, "s").ok_or_else(|| corrupt("no sequence"))?;
            let first = reply::number(&fields, "a").unwrap_or(1);
            (seq, (first + deliveries.saturating_sub(1)) as u32)
        } else {
            let seq = reply::sequence_of(&id).map_err(|e| self.shared.corrupt("the log", e))?;
            (seq, deliveries as u32)
        };
        let event = Arc::new(self.shared.event(sequence, bytes)?);
        if !redo
            && !self
                .options
                .patterns
                .iter()
                .any(|p| p.matches(&event.topic))
        {
            self.skipped.push(id);
            return Ok(None);
        }
        self.held.insert(
            sequence,
            Held {
                redo,
                id,
                deliveries,
                attempt,
                event: event.clone(),
            },
        );
        Ok(Some(Delivered { event, attempt }))
    }

    /// Acknowledge the entries passed over, now.
    fn flush_skipped(&mut self) -> Result<(), BackendError> {
        if self.skipped.is_empty() {
            return Ok(());
        }
        let _: u64 = self.shared.with(&mut self.con, |c| {
            redis::cmd("XACK")
                .arg(&self.log)
                .arg(&self.plugin)
                .arg(&self.skipped)
                .query(c)
        })?;
        self.skipped.clear();
        Ok(())
    }

    /// The read of up to `max` new entries of the redo stream and the log,
    /// blocking up to `block_ms` when not 0.
    fn read_cmd(&self, max: usize, block_ms: u64) -> redis::Cmd {
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(&self.plugin)
            .arg(&self.options.host)
            .arg("COUNT")
            .arg(max);
        if block_ms > 0 {
            cmd.arg("BLOCK").arg(block_ms);
        }
        cmd.arg("STREAMS")
            .arg(&self.redo)
            .arg(&self.log)
            .arg(">")
            .arg(">");
        cmd
    }

    /// New entries, blocking up to `block`, and how many entries were read
    /// (the plugin's or not).
    fn read_new(
        &mut self,
        max: usize,
        block: Duration,
    ) -> Result<(Vec<Delivered>, usize), BackendError> {
        let cmd = self.read_cmd(max, block.as_millis() as u64);
        let answer: redis::Value = self.shared.with(&mut self.con, |c| cmd.query(c))?;
        self.take_read(&answer)
    }

    /// Hold the entries of an XREADGROUP answer and hand out the plugin's,
    /// with how many entries were read (the plugin's or not).
    fn take_read(
        &mut self,
        answer: &redis::Value,
    ) -> Result<(Vec<Delivered>, usize), BackendError> {
        let mut out = Vec::new();
        let mut read = 0;
        for (name, list) in reply::streams(answer).map_err(|e| self.shared.corrupt("a read", e))? {
            let is_redo = name == self.redo;
            read += list.len();
            for entry in list {
                if let Some(d) = self.take(is_redo, entry, 1)? {
                    out.push(d);
                }
            }
        }
        Ok((out, read))
    }

    /// The fence's description of everything held, `stride` values each.
    fn held_args(&self, with_attempt: bool) -> Vec<String> {
        let mut args = Vec::new();
        for h in self.held.values() {
            args.extend([h.tag().to_string(), h.id.clone(), h.deliveries.to_string()]);
            if with_attempt {
                args.extend([h.event.sequence.to_string(), h.attempt.to_string()]);
            }
        }
        args
    }

    fn sequence_of_id(&self, id: &str) -> u64 {
        self.held
            .values()
            .find(|h| h.id == id)
            .map_or(0, |h| h.event.sequence)
    }
}

/// `values` as script arguments: their count, then per value three: the
/// flag `flags.0` (a value) or `flags.1` (none), the key, and the value
/// (empty for none).
fn push_values(args: &mut Vec<Vec<u8>>, values: &[(String, Option<Vec<u8>>)], flags: (&str, &str)) {
    args.push(values.len().to_string().into_bytes());
    for (key, value) in values {
        let flag = if value.is_some() { flags.0 } else { flags.1 };
        args.extend([
            flag.as_bytes().to_vec(),
            key.clone().into_bytes(),
            value.clone().unwrap_or_default(),
        ]);
    }
}

impl RedisConsumer {
    /// What a settlement's answer (`{'OK', version, follow-ups...}`, or a
    /// bare `{'OK'}` for one that had run before) tells the state's copy.
    fn learn(&self, result: &Result<Vec<u64>, BackendError>, writes: &[(String, Option<Vec<u8>>)]) {
        match result.as_ref().map(|answer| answer.first().copied()) {
            // No write, no new version: the copy stays as true as it was.
            Ok(_) if writes.is_empty() => {}
            Ok(Some(version)) if version > 0 => self.cache.wrote(
                writes.iter().map(|(k, v)| (k.as_str(), v.as_deref())),
                version,
            ),
            // Its writes landed at a version nobody told us, or were
            // refused because the copy (or a read) was out of date.
            _ => self.cache.forget(),
        }
    }

    /// Run the extend script (or with `release`, the hand-back script) on
    /// everything held, fenced.
    fn on_held(&mut self, release: bool) -> Result<(), BackendError> {
        if self.held.is_empty() {
            return Ok(());
        }
        let args = self.held_args(release);
        let scripts = &self.shared.scripts;
        let script = if release {
            &scripts.release
        } else {
            &scripts.extend
        };
        let mut call = script.prepare_invoke();
        call.key(&self.log)
            .key(&self.redo)
            .arg(&self.plugin)
            .arg(&self.options.host)
            .arg(self.held.len())
            .arg(&args);
        let answer: redis::Value = self.shared.with(&mut self.con, |c| call.invoke(c))?;
        fenced(&self.shared, &self.plugin, &answer, |id| {
            self.sequence_of_id(id)
        })
        .map(|_| ())
    }
}

impl RedisConsumer {
    /// Run the settle script for `verdicts` with `tail` (see
    /// [`Consumer::settle`]): with this consumer's fence token when it has
    /// one, else with the entries to check one by one. An answer lost on
    /// the way (the connection dropped, a signal cut the read) leaves the
    /// outcome unknown: the same settlement, token and all, is sent again,
    /// and runs at most once.
    ///
    /// With `read_ahead`, up to that many new entries are read in the same
    /// round trip, after the script, and kept for the next batch.
    fn send_settlement(
        &mut self,
        verdicts: &[(u64, Verdict)],
        tail: &[Vec<u8>],
        read_ahead: Option<usize>,
    ) -> Result<redis::Value, BackendError> {
        let mut log_ids: Vec<&str> = self.skipped.iter().map(String::as_str).collect();
        let mut redo_ids: Vec<&str> = Vec::new();
        let mut checks: Vec<Vec<u8>> = Vec::new();
        for (seq, _) in verdicts {
            let h = self.held.get(seq).ok_or_else(|| BackendError::NotHeld {
                plugin: self.plugin.clone(),
                sequence: *seq,
            })?;
            if h.redo {
                redo_ids.push(&h.id);
            } else {
                log_ids.push(&h.id);
            }
            if self.token.is_none() {
                checks.extend([
                    h.tag().as_bytes().to_vec(),
                    h.id.clone().into_bytes(),
                    h.deliveries.to_string().into_bytes(),
                ]);
            }
        }
        let shared = self.shared.clone();
        let mut call = shared.scripts.settle.prepare_invoke();
        for k in [
            &self.log,
            &self.redo,
            &self.retry,
            &self.dead,
            &self.kv,
            &self.shared.key("seq"),
            &self.shared.key("times"),
            &self.shared.key("lastsec"),
            &self.settled,
            &self.fence,
            &self.accounts,
            &self.kv_version,
        ] {
            call.key(k);
        }
        call.arg(&self.plugin)
            .arg(&self.options.host)
            .arg(&self.shared.prefix)
            .arg(self.shared.dedup.as_secs())
            .arg(self.token.as_deref().unwrap_or(""))
            .arg(log_ids.len())
            .arg(&log_ids)
            .arg(redo_ids.len())
            .arg(&redo_ids)
            .arg(checks.len() / 3);
        for a in checks.iter().chain(tail) {
            call.arg(a.as_slice());
        }
        if let Some(max) = read_ahead {
            if let Some(answer) = self.settle_reading_ahead(&call, max)? {
                return Ok(answer);
            }
        }
        self.invoke_settlement(&call)
    }

    /// The settlement pipelined with the next read (`max` events), whose
    /// events are kept for the next batch. None when the settlement's
    /// answer was lost or the server lacked the script: it is sent again.
    fn settle_reading_ahead(
        &mut self,
        call: &redis::ScriptInvocation<'_>,
        max: usize,
    ) -> Result<Option<redis::Value>, BackendError> {
        let mut pipe = redis::pipe();
        pipe.ignore_errors()
            .invoke_script(call)
            .add_command(self.read_cmd(max, 0));
        let answers: Result<Vec<redis::RedisResult<redis::Value>>, _> =
            self.shared.with(&mut self.con, |c| pipe.query(c));
        // A lost answer is sent again, as is a script the server does not
        // have yet (NOSCRIPT: loaded by `invoke`).
        match answers {
            Err(BackendError::Unavailable { .. }) => {}
            Err(e) => return Err(e),
            Ok(answers) => {
                let mut answers = answers.into_iter();
                let settled = answers.next();
                if let Some(Ok(read)) = answers.next() {
                    let (got, _) = self.take_read(&read)?;
                    self.ahead.extend(got);
                    self.ahead_read = Instant::now();
                }
                match settled {
                    Some(Ok(answer)) => return Ok(Some(answer)),
                    Some(Err(e))
                        if e.kind()
                            != redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) =>
                    {
                        return Err(self.shared.error(e))
                    }
                    _ => {}
                }
            }
        }
        Ok(None)
    }

    /// The settlement on its own, sent again a few times while the server
    /// is unreachable.
    fn invoke_settlement(
        &mut self,
        call: &redis::ScriptInvocation<'_>,
    ) -> Result<redis::Value, BackendError> {
        let mut tries = 0;
        loop {
            match self.shared.with(&mut self.con, |c| call.invoke(c)) {
                Err(BackendError::Unavailable { .. }) if tries < SETTLE_TRIES => {
                    tries += 1;
                    std::thread::sleep(SETTLE_RETRY * tries);
                }
                other => return other,
            }
        }
    }
}

impl RedisConsumer {
    /// What of a settlement does not depend on how its entries are fenced
    /// (see the settle script): retries and dead letters, state writes,
    /// follow-ups, expected values, timer changes, the counts for the
    /// accounts, the token.
    fn tail(
        &self,
        verdicts: &[(u64, Verdict)],
        writes: &[(String, Option<Vec<u8>>)],
        follow_ups: &[Event],
        expected: &[(String, Option<Vec<u8>>)],
        timers: &[crate::timer::TimerChange],
        token: &str,
    ) -> Result<Vec<Vec<u8>>, BackendError> {
        let mut tail: Vec<Vec<u8>> = Vec::new();
        let mut others = 0;
        let (mut handled, mut dead) = (0u64, 0u64);
        for (seq, verdict) in verdicts {
            let h = self.held.get(seq).ok_or_else(|| BackendError::NotHeld {
                plugin: self.plugin.clone(),
                sequence: *seq,
            })?;
            if self.start.is_some_and(|start| *seq > start) {
                match verdict {
                    Verdict::Ack => handled += 1,
                    Verdict::Dead(_) => dead += 1,
                    Verdict::Retry(_) => {}
                }
            }
            match verdict {
                Verdict::Ack => continue,
                Verdict::Retry(delay) => tail.extend([
                    b"r".to_vec(),
                    delay.as_millis().to_string().into_bytes(),
                    format!("{seq}:{}", h.attempt + 1).into_bytes(),
                ]),
                Verdict::Dead(error) => tail.extend([
                    b"d".to_vec(),
                    seq.to_string().into_bytes(),
                    dead_record(&h.event, h.attempt, error),
                ]),
            }
            others += 1;
        }
        tail.insert(0, others.to_string().into_bytes());
        push_values(&mut tail, writes, ("s", "d"));
        tail.push(follow_ups.len().to_string().into_bytes());
        for e in follow_ups {
            tail.extend([e.id.clone().into_bytes(), codec::encode(e)]);
        }
        push_values(&mut tail, expected, ("1", "0"));
        super::timers::push_changes(&mut tail, timers);
        tail.push(handled.to_string().into_bytes());
        tail.push(dead.to_string().into_bytes());
        tail.push(token.as_bytes().to_vec());
        Ok(tail)
    }
}

impl Consumer for RedisConsumer {
    fn next_batch(
        &mut self,
        max_events: usize,
        wait: Duration,
    ) -> Result<Vec<Delivered>, BackendError> {
        let max = max_events.max(1);
        if !self.ahead.is_empty() {
            if self.ahead_read.elapsed() < self.options.lease / 2 {
                let n = self.ahead.len().min(max);
                let out: Vec<Delivered> = self.ahead.drain(..n).collect();
                self.read_ahead = (out.len() >= max).then_some(max);
                return Ok(out);
            }
            // Read ahead before a pause of half the lease or more: handed
            // back for any host to take at once, rather than handled late
            // (another host may have taken them over meanwhile).
            match self.release() {
                Ok(()) | Err(BackendError::Fenced { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        let until = crate::backend::deadline(wait);
        self.make_groups()?;
        let mut out: Vec<Delivered> = Vec::new();
        loop {
            let now = Instant::now();
            if out.is_empty() && now >= self.next_claim {
                self.next_claim = now + (self.options.lease / 2).max(Duration::from_millis(50));
                let claimed = self.claim(max)?;
                if !claimed.is_empty() {
                    return Ok(claimed);
                }
            }
            if now >= self.next_move {
                self.move_due(max)?;
            }
            // Block only while there is nothing to hand out.
            let block = if out.is_empty() {
                until
                    .min(self.next_move)
                    .min(self.next_claim)
                    .saturating_duration_since(Instant::now())
                    .min(BLOCK_MAX)
            } else {
                Duration::ZERO
            };
            let asked = max - out.len();
            let (got, read) = self.read_new(asked, block)?;
            out.extend(got);
            // Fewer entries than asked for: both streams are drained, and
            // a second read (a turn of Redis's event loop, and so a wait
            // for its fsync) would most likely find nothing.
            let done = out.len() >= max
                || (read < asked && !out.is_empty())
                || (out.is_empty() && Instant::now() >= until);
            if self.skipped.len() > SKIPPED_MAX || (done && out.is_empty()) {
                self.flush_skipped()?;
            }
            if done {
                self.read_ahead = (out.len() >= max).then_some(max);
                return Ok(out);
            }
        }
    }

    fn settle(&mut self, s: Settlement) -> Result<(), BackendError> {
        let Settlement {
            verdicts,
            writes,
            expected,
            follow_ups,
            timers,
        } = s;
        let token = crate::event::new_id();
        let tail = self.tail(&verdicts, &writes, &follow_ups, &expected, &timers, &token)?;

        // Sent with the fence token this consumer holds, if any: the
        // script answers RECHECK when it is gone, and the entries are sent
        // again to be checked one by one.
        // Everything held is settled here (the last part of a batch): the
        // next batch may be read in the same round trip.
        let all = self.held.len() == verdicts.len() && self.ahead.is_empty();
        // The entries passed over so far go with this settlement; a read
        // ahead may add more, for the next one.
        let passed_over = self.skipped.len();
        let read_ahead = if all { self.read_ahead } else { None };
        let mut answer = self.send_settlement(&verdicts, &tail, read_ahead)?;
        if reply::is_recheck(&answer) {
            self.token = None;
            answer = self.send_settlement(&verdicts, &tail, None)?;
        }
        let checked = self.token.is_none();
        let result = fenced(&self.shared, &self.plugin, &answer, |id| {
            self.sequence_of_id(id)
        });
        if matches!(result, Ok(_) | Err(BackendError::Fenced { .. })) {
            // Settled, or someone else's now: either way no longer held.
            for (seq, verdict) in &verdicts {
                self.held.remove(seq);
                if let Verdict::Retry(delay) = verdict {
                    self.next_move = self.next_move.min(Instant::now() + *delay);
                }
            }
            if result.is_ok() {
                self.skipped.drain(..passed_over.min(self.skipped.len()));
            }
        }
        // A settlement checked one by one leaves its token as this
        // consumer's fence token; it holds for later batches only when
        // nothing else was held (entries held from before were not
        // checked; entries read ahead were read after it).
        if result.is_err() {
            self.token = None;
        } else if checked && all {
            self.token = Some(token);
        }
        self.learn(&result, &writes);
        if result.is_ok()
            && timers
                .iter()
                .any(|t| matches!(t, crate::timer::TimerChange::Set(_)))
        {
            if let Some(clock) = self.shared.clock.get() {
                clock.ring();
            }
        }
        result.map(|_| ())
    }

    fn extend(&mut self) -> Result<(), BackendError> {
        self.on_held(false)
    }

    fn release(&mut self) -> Result<(), BackendError> {
        // Entries read ahead are held: they are handed back with the rest.
        self.ahead.clear();
        self.read_ahead = None;
        self.flush_skipped()?;
        let result = self.on_held(true);
        self.held.clear();
        result
    }
}
