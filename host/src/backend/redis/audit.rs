//! The books of the audit on Redis ([`crate::audit`]): per plugin, its
//! accounts hash (`PREFIX:accounts:P`: where its accounts start, and the
//! events handled and given up on since, counted by the settle script in
//! the same script as the acks; a re-drive moves a letter from dead back
//! to pending), where its group is in the log, the log entries it holds
//! (the group's pending entries), and the events waiting on its redo
//! stream and in its retry set. All of it is read by one script (the
//! `books` script in `scripts`), so it is
//! one moment's picture; the log itself is read after.

use std::collections::HashSet;

use redis::Value;

use super::reply::{self, int, items, text};
use super::RedisBackend;
use crate::audit::{Books, Part, Scope};
use crate::backend::BackendError;

impl RedisBackend {
    /// The books of the plugins of `scopes` (in order) and the log's head
    /// when they were read.
    pub(super) fn books(&self, scopes: &[Scope]) -> Result<(Vec<Books>, u64), BackendError> {
        let mut call = self.shared.scripts.books.prepare_invoke();
        call.key(self.shared.key("log")).key(self.shared.key("seq"));
        for s in scopes {
            call.key(self.shared.plugin_key("accounts", &s.plugin))
                .key(self.shared.plugin_key("redo", &s.plugin))
                .key(self.shared.plugin_key("retry", &s.plugin));
            call.arg(&s.plugin);
        }
        let answer: Value = self.with(|c| call.invoke(c))?;
        let corrupt = |why: String| self.shared.corrupt("the accounts", why);
        let parts = items(&answer).ok_or_else(|| corrupt(format!("{answer:?}")))?;
        let head = parts
            .first()
            .and_then(int)
            .and_then(|h| u64::try_from(h).ok())
            .ok_or_else(|| corrupt("no head".into()))?;
        if parts.len() != scopes.len() + 1 {
            return Err(corrupt(format!(
                "{} plugins' books for {} plugins",
                parts.len() - 1,
                scopes.len()
            )));
        }
        let books = scopes
            .iter()
            .zip(&parts[1..])
            .map(|(s, v)| plugin_books(&s.plugin, v).map_err(&corrupt))
            .collect::<Result<Vec<_>, _>>()?;
        Ok((books, head))
    }
}

/// One plugin's part of the books script's answer.
fn plugin_books(plugin: &str, v: &Value) -> Result<Books, String> {
    let [accounts, last, held, waiting] = items(v).unwrap_or_default() else {
        return Err(format!("not a plugin's books: {v:?}"));
    };
    let accounts: Vec<String> = items(accounts)
        .unwrap_or_default()
        .iter()
        .filter_map(text)
        .collect();
    let get = |field: &str| -> Option<i64> {
        accounts
            .chunks(2)
            .find(|kv| kv[0] == field)
            .and_then(|kv| kv.get(1)?.parse().ok())
    };
    let Some(start) = get("start").and_then(|s| u64::try_from(s).ok()) else {
        return Ok(Books::unchecked(
            plugin,
            "its books on Redis begin at its next replay (its consumer group predates them, or it has not started yet)".into(),
        ));
    };
    let through = match last {
        Value::Nil => start,
        v => text(v)
            .ok_or_else(|| format!("a group's last id: {v:?}"))
            .and_then(|id| reply::sequence_of(&id))?,
    };
    let held: HashSet<u64> = items(held)
        .unwrap_or_default()
        .iter()
        .filter_map(|id| reply::sequence_of(&text(id)?).ok())
        .collect();
    let mut books = Books::new(
        plugin,
        vec![Part {
            start,
            through,
            held,
        }],
    );
    let count = |n: Option<i64>| n.and_then(|n| u64::try_from(n).ok()).unwrap_or(0);
    books.audit.handled = count(get("handled"));
    books.audit.dead = count(get("dead"));
    books.audit.pending = items(waiting)
        .unwrap_or_default()
        .iter()
        .filter_map(int)
        .filter(|&seq| seq > start as i64)
        .count() as u64;
    Ok(books)
}
