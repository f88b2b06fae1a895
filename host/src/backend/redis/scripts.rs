//! The Lua scripts the Redis backend runs: each is atomic on the server, so
//! an append (dedup, sequence, log entry, time index), a settlement (fence,
//! acks, retries, dead letters, state, follow-ups), a hand-back and a
//! replay each happen whole or not at all. Entries of the log stream have
//! explicit ids `0-SEQ`, so the plugbus sequence is the entry id.
//!
//! Keys the scripts touch beside those passed in `KEYS`: the dedup keys
//! `PREFIX:id:EVENT_ID`. That is fine on one primary; on a Cluster every key
//! would need one hash tag (not supported yet).

/// `append_all(args, log, seqkey, times, lastsec, prefix, dedup_s, at,
/// count, now_s)`: append the `count` events given as (id, bytes) pairs
/// from `args[at]` on (`args` is `ARGV`, or a table a script made); per event its sequence and 1 when its id was seen within
/// the window (then nothing is stored), flat. The script runs alone, so the
/// next sequence is known ahead: each id's key is set to it only if absent,
/// answering the sequence already there otherwise (`SET NX GET`, Redis
/// 7.0), one command per event for dedup; an id twice in one batch finds
/// its first sequence that way too. The counter moves once per batch.
const APPEND_FN: &str = r#"
local function append_all(args, log, seqkey, times, lastsec, prefix, dedup, at, count, now_s)
  local out, base, fresh = {}, tonumber(redis.call('GET', seqkey) or '0'), 0
  for k = 0, count - 1 do
    local seq = base + fresh + 1
    local seen = nil
    if dedup > 0 then
      seen = redis.call('SET', prefix .. ':id:' .. args[at + 2 * k], seq, 'NX', 'GET', 'EX', dedup)
    end
    if seen then
      out[2 * k + 1], out[2 * k + 2] = tonumber(seen), 1
    else
      fresh = fresh + 1
      redis.call('XADD', log, '0-' .. seq, 'e', args[at + 2 * k + 1])
      out[2 * k + 1], out[2 * k + 2] = seq, 0
    end
  end
  if fresh == 0 then return out end
  redis.call('SET', seqkey, base + fresh)
  if redis.call('GET', lastsec) ~= tostring(now_s) then
    redis.call('ZADD', times, now_s, base + 1)
    redis.call('SET', lastsec, now_s)
  end
  return out
end
"#;

/// `now()`: the server's time, in seconds and in milliseconds.
const NOW_FN: &str = r#"
local function now()
  local t = redis.call('TIME')
  local s = tonumber(t[1])
  return s, s * 1000 + math.floor(tonumber(t[2]) / 1000)
end
"#;

/// `set_timers(prefix, owner, at, n)`: apply `n` timer changes of `owner`
/// given as 3 values each from `ARGV[at]` on (`s`|`c`, key, record; the
/// record of a cancel is empty). A record is `DUE:BYTES:EVENT` (due in Unix
/// ms, the bytes it counts in its owner's quota, the encoded event). Keys:
/// `PREFIX:timer:OWNER` (a hash: key -> record), `PREFIX:timers` (every
/// owner's timers by due time, members `OWNER\0KEY`), `PREFIX:timerdue:OWNER`
/// (the owner's by due time, members `KEY`) and `PREFIX:timerbytes:OWNER`
/// (the records' quota bytes).
const TIMERS_FN: &str = r#"
local function set_timers(prefix, owner, at, n)
  local hash, due = prefix .. ':timer:' .. owner, prefix .. ':timers'
  local bytes = prefix .. ':timerbytes:' .. owner
  local own = prefix .. ':timerdue:' .. owner
  for t = 0, n - 1 do
    local b = at + t * 3
    local key = ARGV[b + 1]
    local old = redis.call('HGET', hash, key)
    if old then
      local _, size = string.match(old, '^(%d+):(%d+):')
      redis.call('DECRBY', bytes, size)
    end
    if ARGV[b] == 's' then
      local when, size = string.match(ARGV[b + 2], '^(%d+):(%d+):')
      redis.call('HSET', hash, key, ARGV[b + 2])
      redis.call('ZADD', due, when, owner .. '\0' .. key)
      redis.call('ZADD', own, when, key)
      redis.call('INCRBY', bytes, size)
    elseif old then
      redis.call('HDEL', hash, key)
      redis.call('ZREM', due, owner .. '\0' .. key)
      redis.call('ZREM', own, key)
    end
  end
end
"#;

/// KEYS: log, seq, times, lastsec. ARGV: prefix, dedup_s, then (id, bytes)
/// per event. Returns (sequence, duplicate) per event, flat.
const APPEND_BODY: &str = r#"
local now_s = now()
return append_all(ARGV, KEYS[1], KEYS[2], KEYS[3], KEYS[4], ARGV[1], tonumber(ARGV[2]), 3, (#ARGV - 2) / 2, now_s)
"#;

/// The fence, shared by settle, hand-back and extend: for `n` handed-out
/// entries described from ARGV[at] on, `stride` values each (stream tag
/// `l`|`r`, entry id, deliveries seen), an error table if any is no longer
/// this consumer's at that delivery count.
const FENCE_FN: &str = r#"
local function stream_of(tag, log, redo)
  if tag == 'r' then return redo end
  return log
end
local function fence(log, redo, group, me, at, n, stride)
  -- This consumer's pending entries, one XPENDING per stream (the first
  -- page; an entry past it is looked up alone).
  local pages = {}
  local function page(stream)
    if not pages[stream] then
      local t = {}
      for _, p in ipairs(redis.call('XPENDING', stream, group, '-', '+', n + 64, me)) do
        t[p[1]] = tostring(p[4])
      end
      pages[stream] = t
    end
    return pages[stream]
  end
  for v = 0, n - 1 do
    local b = at + v * stride
    local stream = stream_of(ARGV[b], log, redo)
    local id = ARGV[b + 1]
    if page(stream)[id] ~= ARGV[b + 2] then
      local p = redis.call('XPENDING', stream, group, id, id, 1)
      if #p == 0 then
        return {'FENCED', id, 'it is no longer pending: another host settled or handed it back'}
      end
      if p[1][2] ~= me then
        return {'FENCED', id, 'host `' .. p[1][2] .. '` holds it now'}
      end
      if tostring(p[1][4]) ~= ARGV[b + 2] then
        return {'FENCED', id, 'it was delivered again since (' .. p[1][4] .. ' deliveries)'}
      end
    end
  end
  return nil
end
"#;

/// KEYS: log, redo, retry, dead, kv, seq, times, lastsec, settled, fence,
/// accounts, the kv's version (moved by each settlement that writes state).
/// ARGV: group, me, prefix, dedup_s, the fence token this consumer holds
/// (empty for none), then the count of log entries to acknowledge and
/// their ids, the count of redo entries to acknowledge (and delete) and
/// their ids, the count of entries to check one by one and 3 values each
/// (stream tag, id, deliveries seen), the count of retries and dead
/// letters and 3 values each (kind `r`|`d`, x, y: for a retry x = delay ms
/// and y = the retry member `SEQ:ATTEMPT`; for a dead letter x = the
/// sequence and y = the record), then the count of state writes and 3
/// values each (`s`|`d`, key, value), then the count of follow-ups and
/// (id, bytes) each, then the count of expected values and 3 values each
/// (`1` present | `0` absent, key, value), then the count of timer changes
/// and 3 values each (see `set_timers`), then how many of the settled
/// events to count as handled and as dead (`KEYS[11]`, the plugin's
/// accounts; see `backend::redis::audit`), and last the settlement's
/// token: a settlement sent again after its answer was lost (the host
/// cannot know whether it ran) finds its token and answers OK without
/// running twice.
///
/// The fence: a consumer's field in the fence hash holds the token of its
/// last settlement checked one by one, and a claim of any of its entries
/// (another host's, or its own after the lease) deletes the field, as a
/// replay deletes the hash. A consumer whose token is still there has lost
/// nothing since, so its entries need no XPENDING; one whose token is gone
/// is answered {'RECHECK'} with nothing done, and sends the entries to
/// check. Returns {'OK', the kv's version after its writes (0: it wrote
/// none), follow-up sequences...}, {'RECHECK'},
/// {'FENCED', id, why} or {'CONFLICT', key}.
const SETTLE_BODY: &str = r#"
local log, redo = KEYS[1], KEYS[2]
local group, me = ARGV[1], ARGV[2]
local token = ARGV[#ARGV]
if redis.call('HGET', KEYS[9], me) == token then return {'OK'} end
local acks_log = 6
local acks_redo = acks_log + 1 + tonumber(ARGV[acks_log])
local checks = acks_redo + 1 + tonumber(ARGV[acks_redo])
local n = tonumber(ARGV[checks])
if ARGV[5] ~= '' then
  if redis.call('HGET', KEYS[10], me) ~= ARGV[5] then return {'RECHECK'} end
else
  local fenced = fence(log, redo, group, me, checks + 1, n, 3)
  if fenced then return fenced end
end
local others = checks + 1 + n * 3
local writes = others + 1 + tonumber(ARGV[others]) * 3
local follow = writes + 1 + tonumber(ARGV[writes]) * 3
local expected = follow + 1 + tonumber(ARGV[follow]) * 2
local timers = expected + 1 + tonumber(ARGV[expected]) * 3
for x = 1, tonumber(ARGV[expected]) do
  local b = expected + 1 + (x - 1) * 3
  local current = redis.call('HGET', KEYS[5], ARGV[b + 1])
  if ARGV[b] == '1' then
    if current ~= ARGV[b + 2] then return {'CONFLICT', ARGV[b + 1]} end
  elseif current then
    return {'CONFLICT', ARGV[b + 1]}
  end
end
local now_s, now_ms = now()
for v = 1, tonumber(ARGV[others]) do
  local b = others + 1 + (v - 1) * 3
  if ARGV[b] == 'r' then
    redis.call('ZADD', KEYS[3], now_ms + tonumber(ARGV[b + 1]), ARGV[b + 2])
  else
    redis.call('HSET', KEYS[4], ARGV[b + 1], ARGV[b + 2])
  end
end
local version = 0
for w = 1, tonumber(ARGV[writes]) do
  local b = writes + 1 + (w - 1) * 3
  if ARGV[b] == 's' then
    redis.call('HSET', KEYS[5], ARGV[b + 1], ARGV[b + 2])
  else
    redis.call('HDEL', KEYS[5], ARGV[b + 1])
  end
end
if tonumber(ARGV[writes]) > 0 then version = redis.call('INCR', KEYS[12]) end
set_timers(ARGV[3], group, timers + 1, tonumber(ARGV[timers]))
-- Acknowledged a page of ids a call, straight from the arguments.
local last = acks_log + tonumber(ARGV[acks_log])
for s = acks_log + 1, last, 256 do
  redis.call('XACK', log, group, unpack(ARGV, s, math.min(s + 255, last)))
end
last = acks_redo + tonumber(ARGV[acks_redo])
for s = acks_redo + 1, last, 256 do
  local e = math.min(s + 255, last)
  redis.call('XACK', redo, group, unpack(ARGV, s, e))
  redis.call('XDEL', redo, unpack(ARGV, s, e))
end
local handled, dead = tonumber(ARGV[#ARGV - 2]), tonumber(ARGV[#ARGV - 1])
if handled > 0 then redis.call('HINCRBY', KEYS[11], 'handled', handled) end
if dead > 0 then redis.call('HINCRBY', KEYS[11], 'dead', dead) end
redis.call('HSET', KEYS[9], me, token)
if ARGV[5] == '' then redis.call('HSET', KEYS[10], me, token) end
local out = {'OK', version}
local count = tonumber(ARGV[follow])
if count > 0 then
  local appended = append_all(ARGV, log, KEYS[6], KEYS[7], KEYS[8], ARGV[3], tonumber(ARGV[4]), follow + 1, count, now_s)
  for f = 1, count do
    out[#out + 1] = appended[2 * f - 1]
  end
end
return out
"#;

/// Schedule from outside: ARGV: prefix, then the timer changes of the
/// publishers' owner (`crate::timer::OUTSIDE`), 3 values each (see
/// `set_timers`).
const SCHEDULE_BODY: &str = r#"
set_timers(ARGV[1], '', 2, (#ARGV - 1) / 3)
return 'OK'
"#;

/// The timers due: KEYS: the timers by due time. ARGV: prefix, max.
/// Returns {the server's time in ms, ms until the first timer due later
/// or -1 for none, then member and record of up to `max` timers due,
/// soonest first}. A member whose record is gone is dropped.
const DUE_BODY: &str = r#"
local now_s, now_ms = now()
local out = {now_ms, -1}
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now_ms, 'LIMIT', 0, tonumber(ARGV[2]))
for _, m in ipairs(due) do
  local sep = string.find(m, '\0', 1, true)
  local record = false
  if sep then
    record = redis.call('HGET', ARGV[1] .. ':timer:' .. string.sub(m, 1, sep - 1), string.sub(m, sep + 1))
  end
  if record then
    out[#out + 1] = m
    out[#out + 1] = record
  else
    redis.call('ZREM', KEYS[1], m)
  end
end
local next = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. now_ms, '+inf', 'LIMIT', 0, 1, 'WITHSCORES')
if #next > 0 then out[2] = math.max(0, tonumber(next[2]) - now_ms) end
return out
"#;

/// Fire: KEYS: the timers by due time, log, seq, times, lastsec. ARGV:
/// prefix, dedup_s, n, then per timer its member and the record the host
/// read (`DUE_BODY`), then per timer the (id, bytes) of the event it
/// publishes. A timer whose record is still the one read is removed and its
/// event appended, at once; one replaced or called off since, or fired by
/// another host, is left alone. Returns the 1-based indexes of those fired.
const FIRE_BODY: &str = r#"
local now_s = now()
local prefix, n = ARGV[1], tonumber(ARGV[3])
local events, fired = {}, {}
for t = 0, n - 1 do
  local m, record = ARGV[4 + 2 * t], ARGV[5 + 2 * t]
  local sep = string.find(m, '\0', 1, true)
  local owner, key = string.sub(m, 1, sep - 1), string.sub(m, sep + 1)
  local hash = prefix .. ':timer:' .. owner
  if redis.call('HGET', hash, key) == record then
    local _, size = string.match(record, '^(%d+):(%d+):')
    redis.call('HDEL', hash, key)
    redis.call('ZREM', KEYS[1], m)
    redis.call('ZREM', prefix .. ':timerdue:' .. owner, key)
    redis.call('DECRBY', prefix .. ':timerbytes:' .. owner, size)
    events[#events + 1] = ARGV[4 + 2 * n + 2 * t]
    events[#events + 1] = ARGV[5 + 2 * n + 2 * t]
    fired[#fired + 1] = t + 1
  end
end
if #fired > 0 then
  append_all(events, KEYS[2], KEYS[3], KEYS[4], KEYS[5], prefix, tonumber(ARGV[2]), 1, #fired, now_s)
end
return fired
"#;

/// Claim: KEYS: stream, fence. ARGV: group, me, min idle ms, count. Takes
/// up to `count` entries idle past the lease, whoever holds them, and
/// deletes each former holder's fence token (see the settle script), so
/// that a host that stalled checks its entries one by one before it
/// commits. Returns {entries, their delivery counts}.
const CLAIM_BODY: &str = r#"
local idle = redis.call('XPENDING', KEYS[1], ARGV[1], 'IDLE', ARGV[3], '-', '+', ARGV[4])
if #idle == 0 then return {{}, {}} end
local ids, counts = {}, {}
for i, p in ipairs(idle) do
  ids[i] = p[1]
  counts[p[1]] = p[4] + 1
  redis.call('HDEL', KEYS[2], p[2])
end
local got = redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], ARGV[3], unpack(ids))
local entries, deliveries = {}, {}
for _, e in ipairs(got) do
  if e then
    entries[#entries + 1] = e
    deliveries[#deliveries + 1] = counts[e[1]]
  end
end
return {entries, deliveries}
"#;

/// The event bytes of a log or redo entry (`e`), and a redo entry's
/// redriven flag.
const ENTRY_FN: &str = r#"
local function entry(stream, id)
  local r = redis.call('XRANGE', stream, id, id)
  if #r == 0 then return nil, '0' end
  local e, red = nil, '0'
  local f = r[1][2]
  for k = 1, #f, 2 do
    if f[k] == 'e' then e = f[k + 1] elseif f[k] == 'r' then red = f[k + 1] end
  end
  return e, red
end
"#;

/// Hand back: KEYS: log, redo. ARGV: group, me, n, then n entries of 5
/// values (stream tag, id, deliveries, sequence, attempt). Each goes back
/// onto the redo stream at the same attempt, for any host to take at once.
/// Returns {'OK'} or {'FENCED', id, why}.
const RELEASE_BODY: &str = r#"
local log, redo = KEYS[1], KEYS[2]
local group, me = ARGV[1], ARGV[2]
local n = tonumber(ARGV[3])
local fenced = fence(log, redo, group, me, 4, n, 5)
if fenced then return fenced end
for v = 0, n - 1 do
  local b = 4 + v * 5
  local stream = stream_of(ARGV[b], log, redo)
  local id = ARGV[b + 1]
  local e, red = entry(stream, id)
  redis.call('XACK', stream, group, id)
  if stream == redo then redis.call('XDEL', redo, id) end
  if e then
    redis.call('XADD', redo, '*', 's', ARGV[b + 3], 'a', ARGV[b + 4], 'e', e, 'r', red)
  end
end
return {'OK'}
"#;

/// Extend: ARGV: group, me, n, then n entries of 3 values (stream tag, id,
/// deliveries). Resets the idle time of each (XCLAIM JUSTID keeps the
/// delivery count), only if all are still this consumer's.
const EXTEND_BODY: &str = r#"
local log, redo = KEYS[1], KEYS[2]
local group, me = ARGV[1], ARGV[2]
local n = tonumber(ARGV[3])
local fenced = fence(log, redo, group, me, 4, n, 3)
if fenced then return fenced end
for v = 0, n - 1 do
  local b = 4 + v * 3
  redis.call('XCLAIM', stream_of(ARGV[b], log, redo), group, me, 0, ARGV[b + 1], 'JUSTID')
end
return {'OK'}
"#;

/// Move due retries onto the redo stream. KEYS: retry, redo, log. ARGV:
/// max. Returns {moved, ms until the next is due or -1}.
const MOVE_DUE_BODY: &str = r#"
local now_s, now_ms = now()
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now_ms, 'LIMIT', 0, tonumber(ARGV[1]))
for _, m in ipairs(due) do
  local sep = string.find(m, ':', 1, true)
  local seq, attempt = string.sub(m, 1, sep - 1), string.sub(m, sep + 1)
  local e = entry(KEYS[3], '0-' .. seq)
  redis.call('ZREM', KEYS[1], m)
  if e then
    redis.call('XADD', KEYS[2], '*', 's', seq, 'a', attempt, 'e', e, 'r', '0')
  end
end
local next = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
if #next == 0 then return {#due, -1} end
return {#due, math.max(0, tonumber(next[2]) - now_ms)}
"#;

/// Re-drive: KEYS: dead, redo, accounts. ARGV: (sequence, event bytes)
/// per letter. Each letter still there leaves the dead letters and goes
/// onto the redo stream at attempt 1, marked re-driven; one the accounts
/// count (after their start) is no longer counted dead but pending.
/// Returns how many.
const REDRIVE_BODY: &str = r#"
local n = 0
local start = tonumber(redis.call('HGET', KEYS[3], 'start') or '-1')
for i = 1, #ARGV, 2 do
  if redis.call('HDEL', KEYS[1], ARGV[i]) == 1 then
    redis.call('XADD', KEYS[2], '*', 's', ARGV[i], 'a', '1', 'e', ARGV[i + 1], 'r', '1')
    if start >= 0 and tonumber(ARGV[i]) > start then
      redis.call('HINCRBY', KEYS[3], 'dead', -1)
    end
    n = n + 1
  end
end
return n
"#;

/// Make a plugin's groups: KEYS: log, redo, seq, accounts. ARGV: group,
/// `1` to start at the log's end (else its beginning). A group made here
/// starts the plugin's accounts (`start` = where it starts); a group that
/// is there already (another host made it) keeps them. Returns the
/// accounts' start, or -1 when the group predates accounts.
const GROUPS_BODY: &str = r#"
local start = 0
if ARGV[2] == '1' then start = tonumber(redis.call('GET', KEYS[3]) or '0') end
local made = redis.pcall('XGROUP', 'CREATE', KEYS[1], ARGV[1], '0-' .. start, 'MKSTREAM')
if type(made) == 'table' and made.err then
  if not string.find(made.err, 'BUSYGROUP', 1, true) then return made end
else
  redis.call('DEL', KEYS[4])
  redis.call('HSET', KEYS[4], 'start', start, 'handled', 0, 'dead', 0)
end
made = redis.pcall('XGROUP', 'CREATE', KEYS[2], ARGV[1], '0', 'MKSTREAM')
if type(made) == 'table' and made.err and not string.find(made.err, 'BUSYGROUP', 1, true) then
  return made
end
return tonumber(redis.call('HGET', KEYS[4], 'start') or '-1')
"#;

/// Replay: KEYS: log, redo, retry, kv, fence, accounts, the kv's version.
/// ARGV: group, start sequence (exclusive), reset state `1`|`0`. The
/// plugin's group is made again at the start (its pending entries
/// dropped), its retries and redeliveries dropped, its accounts begun
/// again there, and its bucket emptied if asked (a write: the version
/// moves).
const REPLAY_BODY: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('XGROUP', 'DESTROY', KEYS[1], ARGV[1]) end
redis.call('XGROUP', 'CREATE', KEYS[1], ARGV[1], '0-' .. ARGV[2], 'MKSTREAM')
redis.call('DEL', KEYS[2], KEYS[3], KEYS[5], KEYS[6])
redis.call('HSET', KEYS[6], 'start', ARGV[2], 'handled', 0, 'dead', 0)
redis.call('XGROUP', 'CREATE', KEYS[2], ARGV[1], '0', 'MKSTREAM')
if ARGV[3] == '1' then
  redis.call('DEL', KEYS[4])
  redis.call('INCR', KEYS[7])
end
return 'OK'
"#;

/// The books of the audit (`audit`): KEYS: log, seq, then per plugin its
/// accounts, redo and retry keys. ARGV: the plugins. Returns {head, per
/// plugin {accounts (flat), last delivered id or nil, held ids (up to a
/// million: a group holds its hosts' batches and the entries passed over
/// but not acknowledged yet), waiting sequences}}.
const BOOKS_BODY: &str = r#"
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
    for _, e in ipairs(redis.call('XPENDING', KEYS[1], ARGV[p], '-', '+', 1000000)) do
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

/// A handler's read of one key this host's copy of the state could not
/// answer: KEYS: kv, the kv's version. ARGV: key, the most entries to load
/// (0: none, unless the bucket is empty). Returns {version, the key's value
/// or false, the whole bucket (HGETALL, flat) when it has at most that many
/// entries, else false}.
const READ_STATE_BODY: &str = r#"
local version = tonumber(redis.call('GET', KEYS[2]) or '0')
local value = redis.call('HGET', KEYS[1], ARGV[1])
local all = false
if redis.call('HLEN', KEYS[1]) <= tonumber(ARGV[2]) then all = redis.call('HGETALL', KEYS[1]) end
return {version, value, all}
"#;

/// The scripts, loaded by hash on first use.
pub(super) struct Scripts {
    pub append: redis::Script,
    pub settle: redis::Script,
    pub release: redis::Script,
    pub claim: redis::Script,
    pub extend: redis::Script,
    pub move_due: redis::Script,
    pub redrive: redis::Script,
    pub replay: redis::Script,
    pub groups: redis::Script,
    pub books: redis::Script,
    pub read_state: redis::Script,
    pub schedule: redis::Script,
    pub due: redis::Script,
    pub fire: redis::Script,
}

impl Scripts {
    pub fn new() -> Scripts {
        let with = |parts: &[&str]| redis::Script::new(&parts.concat());
        Scripts {
            append: with(&[NOW_FN, APPEND_FN, APPEND_BODY]),
            settle: with(&[NOW_FN, APPEND_FN, FENCE_FN, TIMERS_FN, SETTLE_BODY]),
            release: with(&[FENCE_FN, ENTRY_FN, RELEASE_BODY]),
            claim: with(&[CLAIM_BODY]),
            extend: with(&[FENCE_FN, EXTEND_BODY]),
            move_due: with(&[NOW_FN, ENTRY_FN, MOVE_DUE_BODY]),
            redrive: with(&[REDRIVE_BODY]),
            replay: with(&[REPLAY_BODY]),
            groups: with(&[GROUPS_BODY]),
            books: with(&[BOOKS_BODY]),
            read_state: with(&[READ_STATE_BODY]),
            schedule: with(&[TIMERS_FN, SCHEDULE_BODY]),
            due: with(&[NOW_FN, DUE_BODY]),
            fire: with(&[NOW_FN, APPEND_FN, FIRE_BODY]),
        }
    }
}
