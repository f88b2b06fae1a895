//! Timers on Redis: each owner's timers in a hash of records (`DUE:BYTES:EVENT`,
//! see the `set_timers` script), all owners' by due time in one sorted set,
//! changed by the settle script with the rest of a settlement (so a fenced
//! settlement sets none) or by the schedule script for publishers. Every
//! host that runs plugins runs a clock (`backend::clock`) over them: it
//! reads what is due by the server's time, stamps each event, and has the
//! fire script append each whose record is still the one it read and
//! remove it, in one step; so of two hosts firing at once, one fires.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::{BackendError, Shared};
use crate::backend::clock::{Fire, Fired};
use crate::store::codec;
use crate::timer::{Timer, TimerChange, Usage};

/// The timer `key` a record describes.
fn parse(shared: &Shared, owner: &str, key: &str, record: &[u8]) -> Result<Timer, BackendError> {
    crate::timer::from_record(key, record)
        .map(|(t, _)| t)
        .map_err(|why| shared.corrupt(format!("timer `{key}` of `{owner}`"), why))
}

/// The settle and schedule scripts' values for `changes` (see `set_timers`).
pub(super) fn push_changes(args: &mut Vec<Vec<u8>>, changes: &[TimerChange]) {
    args.push(changes.len().to_string().into_bytes());
    for c in changes {
        match c {
            TimerChange::Set(t) => args.extend([
                b"s".to_vec(),
                t.key.clone().into_bytes(),
                crate::timer::record(t),
            ]),
            TimerChange::Cancel(k) => {
                args.extend([b"c".to_vec(), k.clone().into_bytes(), Vec::new()])
            }
        }
    }
}

impl Shared {
    fn timer_hash(&self, owner: &str) -> String {
        format!("{}:timer:{owner}", self.prefix)
    }

    /// `owner`'s timer `key`, if set.
    pub(super) fn timer(
        &self,
        con: &mut Option<redis::Connection>,
        owner: &str,
        key: &str,
    ) -> Result<Option<Timer>, BackendError> {
        let hash = self.timer_hash(owner);
        let got: Option<Vec<u8>> =
            self.with(con, |c| redis::cmd("HGET").arg(&hash).arg(key).query(c))?;
        got.map(|r| parse(self, owner, key, &r)).transpose()
    }

    /// How many timers `owner` keeps, and their bytes.
    pub(super) fn timer_usage(
        &self,
        con: &mut Option<redis::Connection>,
        owner: &str,
    ) -> Result<Usage, BackendError> {
        let (hash, bytes) = (
            self.timer_hash(owner),
            format!("{}:timerbytes:{owner}", self.prefix),
        );
        let (count, bytes): (u64, Option<i64>) = self.with(con, |c| {
            redis::pipe()
                .cmd("HLEN")
                .arg(&hash)
                .cmd("GET")
                .arg(&bytes)
                .query(c)
        })?;
        Ok(Usage {
            count,
            bytes: bytes.unwrap_or(0).max(0) as u64,
        })
    }

    /// When `owner`'s next timer is due.
    pub(super) fn next_timer_due(
        &self,
        con: &mut Option<redis::Connection>,
        owner: &str,
    ) -> Result<Option<u64>, BackendError> {
        let own = format!("{}:timerdue:{owner}", self.prefix);
        let first: Vec<(String, u64)> = self.with(con, |c| {
            redis::cmd("ZRANGE")
                .arg(&own)
                .arg(0)
                .arg(0)
                .arg("WITHSCORES")
                .query(c)
        })?;
        Ok(first.first().map(|(_, due)| *due))
    }

    /// Up to `max` of `owner`'s timers, by key.
    pub(super) fn timers_of(
        &self,
        con: &mut Option<redis::Connection>,
        owner: &str,
        max: usize,
    ) -> Result<Vec<Timer>, BackendError> {
        let hash = self.timer_hash(owner);
        let mut cursor = 0u64;
        let mut out = Vec::new();
        loop {
            let (next, flat): (u64, Vec<Vec<u8>>) = self.with(con, |c| {
                redis::cmd("HSCAN")
                    .arg(&hash)
                    .arg(cursor)
                    .arg("COUNT")
                    .arg(512)
                    .query(c)
            })?;
            for pair in flat.chunks_exact(2) {
                let key = String::from_utf8_lossy(&pair[0]);
                out.push(parse(self, owner, &key, &pair[1])?);
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        out.truncate(max);
        Ok(out)
    }

    /// Set publishers' timers.
    pub(super) fn schedule(
        &self,
        con: &mut Option<redis::Connection>,
        timers: Vec<Timer>,
    ) -> Result<(), BackendError> {
        let changes: Vec<TimerChange> = timers
            .into_iter()
            .map(|t| TimerChange::Set(Box::new(t)))
            .collect();
        let mut args = Vec::new();
        push_changes(&mut args, &changes);
        let mut call = self.scripts.schedule.prepare_invoke();
        call.arg(&self.prefix);
        for a in &args[1..] {
            call.arg(a.as_slice());
        }
        let _: String = self.with(con, |c| call.invoke(c))?;
        Ok(())
    }
}

/// What fires the timers of one backend.
pub(super) struct RedisFire {
    pub shared: Arc<Shared>,
    pub con: Mutex<Option<redis::Connection>>,
}

/// A timer read as due: its member in the sorted set and its record.
struct Due {
    member: Vec<u8>,
    record: Vec<u8>,
    owner: String,
    timer: Timer,
}

impl RedisFire {
    /// What is due by the server's clock (its time in ms), and how long
    /// until the next.
    fn due(
        &self,
        con: &mut Option<redis::Connection>,
        max: usize,
    ) -> Result<(u64, Option<Duration>, Vec<Due>), BackendError> {
        let shared = &self.shared;
        let mut call = shared.scripts.due.prepare_invoke();
        call.key(shared.key("timers")).arg(&shared.prefix).arg(max);
        let answer: Vec<redis::Value> = shared.with(con, |c| call.invoke(c))?;
        let bad = || shared.corrupt("the timers due", "an answer of another shape");
        let int = |v: &redis::Value| match v {
            redis::Value::Int(i) => Some(*i),
            _ => None,
        };
        let now = answer.first().and_then(int).ok_or_else(bad)?;
        let next = answer.get(1).and_then(int).ok_or_else(bad)?;
        let mut due = Vec::new();
        for pair in answer.get(2..).unwrap_or_default().chunks_exact(2) {
            let (redis::Value::BulkString(member), redis::Value::BulkString(record)) =
                (&pair[0], &pair[1])
            else {
                return Err(bad());
            };
            let sep = member.iter().position(|b| *b == 0).ok_or_else(bad)?;
            let owner = String::from_utf8_lossy(&member[..sep]).into_owned();
            let key = String::from_utf8_lossy(&member[sep + 1..]).into_owned();
            let timer = parse(shared, &owner, &key, record)?;
            due.push(Due {
                member: member.clone(),
                record: record.clone(),
                owner,
                timer,
            });
        }
        let next = u64::try_from(next).ok().map(Duration::from_millis);
        Ok((now.max(0) as u64, next, due))
    }
}

impl Fire for RedisFire {
    fn fire_due(&self, max: usize) -> Result<Fired, BackendError> {
        let mut con = self.con.lock().unwrap_or_else(|p| p.into_inner());
        let (now, next_in, due) = self.due(&mut con, max)?;
        if due.is_empty() {
            return Ok(Fired {
                late_ms: Vec::new(),
                next_in,
            });
        }
        let shared = &self.shared;
        let mut call = shared.scripts.fire.prepare_invoke();
        for k in ["timers", "log", "seq", "times", "lastsec"] {
            call.key(shared.key(k));
        }
        call.arg(&shared.prefix)
            .arg(shared.dedup.as_secs())
            .arg(due.len());
        for d in &due {
            call.arg(d.member.as_slice()).arg(d.record.as_slice());
        }
        for d in &due {
            let restamp = d.owner != crate::timer::OUTSIDE;
            let event = crate::timer::fired(d.timer.event.clone(), d.timer.due_ms, now, restamp);
            call.arg(&event.id).arg(codec::encode(&event));
        }
        let fired: Vec<usize> = shared.with(&mut con, |c| call.invoke(c))?;
        let late_ms = fired
            .iter()
            .filter_map(|i| due.get(i.checked_sub(1)?))
            .map(|d| (d.owner.clone(), now.saturating_sub(d.timer.due_ms)))
            .collect();
        // A full batch: more may be due now.
        let next_in = if due.len() == max {
            Some(Duration::ZERO)
        } else {
            next_in
        };
        Ok(Fired { late_ms, next_in })
    }
}
