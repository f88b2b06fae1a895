//! The books of the audit on Redis ([`crate::audit`]): per plugin, its
//! accounts hash (`PREFIX:accounts:P`: where its accounts start, and the
//! events handled and given up on since, counted by the settle script in
//! the same script as the acks; a re-drive moves a letter from dead back
//! to pending), where its group is in the log, the log entries it holds
//! (the group's pending entries), and the events waiting on its redo
//! stream and in its retry set. All of it is read by one script, so it is
//! one moment's picture; the log itself is read after.

use std::collections::HashSet;

use redis::Value;

use super::reply::{self, int, items, text};
use super::RedisBackend;
use crate::audit::{Books, Part, Scope};
use crate::backend::BackendError;

/// The most held entries of one plugin read (a group holds its hosts'
/// batches and the entries it passed over but has not acknowledged yet).
pub(super) const HELD_MAX: usize = 1_000_000;

/// KEYS: log, seq, then per plugin its accounts, redo and retry keys.
/// ARGV: the plugins. Returns {head, per plugin {accounts (flat), last
/// delivered id or nil, held ids, waiting sequences}}.
pub(super) const BOOKS_BODY: &str = r#"
local head = tonumber(redis.call('GET', KEYS[2]) or '0')
local groups = {}
if redis.call('EXISTS', KEYS[1]) == 1 then
  for _, g in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
    local name, last
    for i = 1, #g, 2 do
      if g[i] == 'name' then name = g[i + 1] elseif g[i] == 'last-delivered-id' then last = g[i + 1] end
    end
    if name then groups[name] = last end
  end
end
local out = {head}
for p = 1, #ARGV do
  local b = 2 + (p - 1) * 3
  local last = groups[ARGV[p]]
  local held = {}
  if last then
    for _, e in ipairs(redis.call('XPENDING', KEYS[1], ARGV[p], '-', '+', HELD_MAX)) do
      held[#held + 1] = e[1]
    end
  end
  local waiting = {}
  for _, e in ipairs(redis.call('XRANGE', KEYS[b + 2], '-', '+')) do
    local f = e[2]
    for k = 1, #f, 2 do
      if f[k] == 's' then waiting[#waiting + 1] = f[k + 1] end
    end
  end
  for _, m in ipairs(redis.call('ZRANGE', KEYS[b + 3], 0, -1)) do
    local sep = string.find(m, ':', 1, true)
    if sep then waiting[#waiting + 1] = string.sub(m, 1, sep - 1) end
  end
  out[#out + 1] = {redis.call('HGETALL', KEYS[b + 1]), last or false, held, waiting}
end
return out
"#;

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
