"""The Lua scripts of the cache. Each touches only keys of one hash tag, so each runs on one slot.

Window state per thread (two keys, same tag): ``msgs`` is the list of messages, each a serialised
chatmem.v1.Message framed as an element of repeated field 1, newest last, trimmed to the window;
``meta`` is a hash with
  inc   the thread's incarnation (a store-assigned creation time in microseconds, so a re-created
        thread has a larger one);
  last  the seq of the newest element of ``msgs``; present only while ``msgs`` is a valid window;
  hw    the highest seq known to be committed (a fence against stale fills);
  ttl   the sliding TTL in seconds (0 = pinned, no expiry);
  del   present when the thread was deleted (a tombstone that fences out late fills and pushes);
  full  present while ``msgs`` holds the thread's whole window view from its start (a fill that found
        fewer messages than the window), so that a short window of a truncated or compacted thread,
        whose ``last`` exceeds its length, still answers. A push that trims the list clears it.
A window is served only when ``last`` is present and ``del`` is not; anything else is a miss, and
the repository hydrates from the store. No script ever appends to a list whose ``last`` is not
exactly the seq before the new messages, so an expired or evicted key never gets a partial window.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

from redis.exceptions import NoScriptError


class Script:
    """A Lua script called by EVALSHA, loaded again by EVAL after a NOSCRIPT (Redis restarted)."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()  # noqa: S324 - Redis names scripts by SHA-1

    async def __call__(self, client: Any, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """Run the script on ``client`` with the given keys and arguments."""
        try:
            return await client.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:
            return await client.eval(self.source, len(keys), *keys, *args)


_KEEP = """
local function keep(ttl, ...)
  for _, k in ipairs({...}) do
    if ttl > 0 then redis.call('EXPIRE', k, ttl) else redis.call('PERSIST', k) end
  end
end
"""

# KEYS: msgs, meta. ARGV: limit.
READ_WINDOW = (
    _KEEP
    + """
local m = redis.call('HMGET', KEYS[2], 'last', 'ttl', 'del', 'full')
if not m[1] or m[3] then return false end
local items = redis.call('LRANGE', KEYS[1], -tonumber(ARGV[1]), -1)
-- Fewer items than asked for, in a thread that has more: the window was trimmed shorter (another
-- MEMORY__MAX_THREAD_MESSAGES wrote it), so it cannot answer this read.
if #items == 0 or (#items < tonumber(ARGV[1]) and tonumber(m[1]) > #items and not m[4]) then return false end
keep(tonumber(m[2]) or 0, KEYS[1], KEYS[2])
return items
"""
)

# KEYS: msgs, meta, pending. ARGV: limit, pending field. READ_WINDOW, and on a miss what the thread has
# queued but not flushed (as PENDING_SEQ), so that a write_behind miss costs one round trip, not two, and
# the thread's trim generation ``tg`` (the fence its fill passes back). A hit returns the items
# (strings); a miss returns integers: {newest queued or 0, flushed, tg}.
READ_WINDOW_OR_PENDING = (
    _KEEP
    + """
local m = redis.call('HMGET', KEYS[2], 'last', 'ttl', 'del', 'flushed', 'tg', 'full')
if m[1] and not m[3] then
  local items = redis.call('LRANGE', KEYS[1], -tonumber(ARGV[1]), -1)
  if #items > 0 and (#items >= tonumber(ARGV[1]) or tonumber(m[1]) <= #items or m[6]) then
    keep(tonumber(m[2]) or 0, KEYS[1], KEYS[2])
    return table.concat(items)
  end
end
local tg = tonumber(m[5]) or 0
local p = redis.call('HGET', KEYS[3], ARGV[2])
if not p or string.sub(p, -2) == ':f' then return {0, 0, tg} end
return {tonumber(string.match(p, '^(%d+):')), tonumber(m[4]) or 0, tg}
"""
)

# KEYS: msgs, meta. ARGV: inc, last_seq, ttl, maxlen, fence, encoded... The fence is the trim generation
# the read that missed saw (-1: none known); a retention trim since then (TRIM_THREAD bumps ``tg``) means
# the store read may hold trimmed messages, so the fill is refused.
FILL_WINDOW = (
    _KEEP
    + """
local inc = tonumber(ARGV[1])
local last = tonumber(ARGV[2])
local m = redis.call('HMGET', KEYS[2], 'inc', 'hw', 'del', 'tg')
local cinc = tonumber(m[1])
if cinc and cinc > inc then return 0 end
if cinc == inc and (m[3] or (tonumber(m[2]) or 0) > last) then return 0 end
local fence = tonumber(ARGV[5])
if fence >= 0 and (tonumber(m[4]) or 0) ~= fence then return 0 end
if #ARGV < 6 then return 0 end
-- Same incarnation: keep the write_behind counter fields (seq, cnt, flushed), which are state.
if cinc ~= inc then redis.call('DEL', KEYS[2]) end
redis.call('DEL', KEYS[1])
redis.call('HDEL', KEYS[2], 'del')
redis.call('RPUSH', KEYS[1], unpack(ARGV, 6))
redis.call('LTRIM', KEYS[1], -tonumber(ARGV[4]), -1)
redis.call('HSET', KEYS[2], 'inc', ARGV[1], 'last', ARGV[2], 'hw', ARGV[2], 'ttl', ARGV[3])
if #ARGV - 5 < tonumber(ARGV[4]) then
  redis.call('HSET', KEYS[2], 'full', 1)
else
  redis.call('HDEL', KEYS[2], 'full')
end
keep(tonumber(ARGV[3]), KEYS[1], KEYS[2])
return 1
"""
)

# KEYS: msgs, meta. ARGV: inc, first_seq, new_last, ttl, maxlen, encoded...
PUSH_WINDOW = (
    _KEEP
    + """
local inc = tonumber(ARGV[1])
local first = tonumber(ARGV[2])
local last = tonumber(ARGV[3])
local ttl = tonumber(ARGV[4])
local m = redis.call('HMGET', KEYS[2], 'inc', 'last', 'hw', 'del')
local cinc = tonumber(m[1])
if cinc and cinc > inc then return 0 end
if cinc == inc and m[4] then return 0 end
local extend = false
local hw = last
if cinc == inc then
  hw = math.max(tonumber(m[3]) or 0, last)
  extend = m[2] ~= false and tonumber(m[2]) == first - 1 and redis.call('EXISTS', KEYS[1]) == 1
elseif first == 1 then
  redis.call('DEL', KEYS[1], KEYS[2])
  extend = true
end
if extend then
  if redis.call('RPUSH', KEYS[1], unpack(ARGV, 6)) > tonumber(ARGV[5]) then redis.call('HDEL', KEYS[2], 'full') end
  redis.call('LTRIM', KEYS[1], -tonumber(ARGV[5]), -1)
  redis.call('HSET', KEYS[2], 'inc', ARGV[1], 'last', ARGV[3], 'hw', hw, 'ttl', ARGV[4])
  keep(ttl, KEYS[1], KEYS[2])
  return 1
end
redis.call('DEL', KEYS[1])
if cinc ~= inc then redis.call('DEL', KEYS[2]) end
redis.call('HDEL', KEYS[2], 'last', 'full')
redis.call('HSET', KEYS[2], 'inc', ARGV[1], 'hw', hw, 'ttl', ARGV[4])
keep(ttl, KEYS[2])
return 0
"""
)

# KEYS: msgs, meta, reqs, pending. ARGV: inc, tombstone_ttl, pending field.
DROP_THREAD = """
local cinc = tonumber(redis.call('HGET', KEYS[2], 'inc'))
local inc = tonumber(ARGV[1])
if cinc and cinc > inc then return 0 end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
redis.call('HSET', KEYS[2], 'inc', ARGV[1], 'del', '1')
redis.call('EXPIRE', KEYS[2], ARGV[2])
local p = redis.call('HGET', KEYS[4], ARGV[3])
if p then
  local _, pinc = string.match(p, '^(%d+):(%d+):')
  if tonumber(pinc) <= inc then redis.call('HDEL', KEYS[4], ARGV[3]) end
end
return 1
"""

# KEYS: msgs, meta, pending. ARGV: inc, removed, pending field, ttl (of a meta hash this creates).
# After the retention sweep deleted ``removed`` old messages of a live thread: drop its window (the next
# read refills it from the store, so it never serves a deleted message), start a new trim generation (so
# a fill read before the trim is refused), and lower the write_behind counted length, in the meta hash
# and in the pending marker that a seed would read, if they belong to that incarnation.
TRIM_THREAD = """
redis.call('DEL', KEYS[1])
redis.call('HDEL', KEYS[2], 'last', 'full')
-- A new trim generation: a fill read from the store before this trim is refused (see FILL_WINDOW).
if redis.call('HINCRBY', KEYS[2], 'tg', 1) == 1 and redis.call('HEXISTS', KEYS[2], 'inc') == 0 then
  redis.call('EXPIRE', KEYS[2], tonumber(ARGV[4]))
end
local inc, removed = tonumber(ARGV[1]), tonumber(ARGV[2])
local m = redis.call('HMGET', KEYS[2], 'inc', 'cnt')
if tonumber(m[1]) == inc and m[2] then
  redis.call('HSET', KEYS[2], 'cnt', math.max(tonumber(m[2]) - removed, 0))
end
local p = redis.call('HGET', KEYS[3], ARGV[3])
if p then
  local ps, pinc, pcnt, rest = string.match(p, '^(%d+):(%d+):(%d+)(.*)$')
  if tonumber(pinc) == inc then
    redis.call('HSET', KEYS[3], ARGV[3],
               string.format('%d:%d:%d', tonumber(ps), tonumber(pinc), math.max(tonumber(pcnt) - removed, 0)) .. rest)
  end
end
return 1
"""

# KEYS: meta, pending. ARGV: pending field. Returns the incarnation Redis holds for a thread, or false.
THREAD_INCARNATION = """
local m = redis.call('HMGET', KEYS[1], 'inc', 'del')
if m[1] and not m[2] then return m[1] end
local p = redis.call('HGET', KEYS[2], ARGV[1])
if p then return string.match(p, '^%d+:(%d+):') end
return false
"""

# KEYS: msgs, meta. ARGV: inc, ttl.
RETUNE_WINDOW = (
    _KEEP
    + """
local m = redis.call('HMGET', KEYS[2], 'inc', 'del')
if tonumber(m[1]) ~= tonumber(ARGV[1]) or m[2] then return 0 end
redis.call('HSET', KEYS[2], 'ttl', ARGV[2])
keep(tonumber(ARGV[2]), KEYS[1], KEYS[2])
return 1
"""
)

# Preferences hash: user keys map to "<update_time_us>:<value>"; '#v' is the cached version, '#f'
# a fence (the hash holds no valid set, but no fill older than this version may land). Valid
# preference keys never contain '#'.

# KEYS: prefs. ARGV: ttl.
READ_PREFS = """
if not redis.call('HGET', KEYS[1], '#v') then return false end
redis.call('EXPIRE', KEYS[1], ARGV[1])
return redis.call('HGETALL', KEYS[1])
"""

# KEYS: prefs. ARGV: version, ttl, key, value, key, value...
FILL_PREFS = """
local m = redis.call('HMGET', KEYS[1], '#v', '#f')
local cur = math.max(tonumber(m[1]) or -1, tonumber(m[2]) or -1)
if cur > tonumber(ARGV[1]) then return 0 end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], '#v', ARGV[1], unpack(ARGV, 3))
redis.call('EXPIRE', KEYS[1], ARGV[2])
return 1
"""

# KEYS: prefs. ARGV: new_version, ttl, mode ('set' | 'del' | 'all'), then key, value... or keys...
APPLY_PREFS = """
local m = redis.call('HMGET', KEYS[1], '#v', '#f')
local v = tonumber(m[1])
local newv = tonumber(ARGV[1])
if v and v >= newv then return 0 end
if v and v == newv - 1 then
  if ARGV[3] == 'all' then
    redis.call('DEL', KEYS[1])
  elseif ARGV[3] == 'del' then
    if #ARGV > 3 then redis.call('HDEL', KEYS[1], unpack(ARGV, 4)) end
  elseif #ARGV > 3 then
    redis.call('HSET', KEYS[1], unpack(ARGV, 4))
  end
  redis.call('HSET', KEYS[1], '#v', ARGV[1])
  redis.call('EXPIRE', KEYS[1], ARGV[2])
  return 1
end
local fence = math.max(v or 0, tonumber(m[2]) or 0, newv)
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], '#f', fence)
redis.call('EXPIRE', KEYS[1], ARGV[2])
return 0
"""

# --- write_behind ------------------------------------------------------------------------------------
# The thread's meta hash also holds, in write_behind mode:
#   seq      the counter: the last seq assigned (the authority for new seqs while present);
#   cnt      the thread's message count;
#   flushed  the highest seq known to be in the store (the flusher raises it after each commit).
# The bucket's ``pending`` hash maps "<ws>/<thread>" to "<seq>:<inc>:<cnt>" while the outbox holds
# unflushed messages of the thread; it has no TTL, so it survives the meta hash expiring. When a flush
# finds no counter to mark, the entry stays as "<seq>:<inc>:<cnt>:f", a floor for the next seed.

_VARINT = """
local function varint(n)
  local out = {}
  while n >= 128 do
    out[#out + 1] = string.char(n % 128 + 128)
    n = math.floor(n / 128)
  end
  out[#out + 1] = string.char(n)
  return table.concat(out)
end
"""

# KEYS: msgs, meta, reqs, outbox, pending.
# ARGV: 1 pending field, 2 request_id, 3 expected_last_seq (-1: none), 4 ttl for a new thread,
#       5 maxlen, 6 reqs ttl, 7 max unflushed, 8 seeded ('1' or '0'), 9 seed last_seq, 10 seed count,
#       11 seed incarnation, 12 options JSON of a new thread, 13 ws, 14 thread, then n message ids
#       ('' for none), then the n encoded messages (chatmem.v1.Message without seq; the script appends
#       field 3 = seq to each).
# Message ids live in the reqs hash as '#' .. id (a request id never starts with '#'), for as long as
# request ids do: long enough to cover the flush, after which the store answers for them. An id of '!'
# (never a valid id) is one the store already holds: refused, but only after a replay is recognised.
# Returns {'ok', first_seq, count, inc, extended} | {'dup', 'first:n:count'} | {'seed'}
#       | {'aborted', last_seq} | {'backlog', unflushed} | {'taken', index of the message}.
APPEND_QUEUED = (
    _KEEP
    + _VARINT
    + """
local m = redis.call('HMGET', KEYS[2], 'inc', 'last', 'ttl', 'del', 'seq', 'cnt', 'flushed')
local dead = m[4]
if ARGV[2] ~= '' and not dead then
  local prev = redis.call('HGET', KEYS[3], ARGV[2])
  if prev then return {'dup', prev} end
end
local n = (#ARGV - 14) / 2
if not dead then
  for i = 1, n do
    local id = ARGV[14 + i]
    if id == '!' or (id ~= '' and redis.call('HEXISTS', KEYS[3], '#' .. id) == 1) then
      return {'taken', i - 1}
    end
  end
end
local inc, seq, cnt, flushed = tonumber(m[1]), tonumber(m[5]), tonumber(m[6]), tonumber(m[7])
local ttl = tonumber(m[3])
local reset = dead or not seq
local opts = ''
if reset then
  if ARGV[8] ~= '1' then return {'seed'} end
  seq, cnt, inc, flushed = tonumber(ARGV[9]), tonumber(ARGV[10]), tonumber(ARGV[11]), tonumber(ARGV[9])
  local p = (not dead) and redis.call('HGET', KEYS[5], ARGV[1])
  if p then
    -- Unflushed messages of this thread are still queued: continue their incarnation and counter.
    local ps, pinc, pcnt = string.match(p, '^(%d+):(%d+):(%d+)')
    inc = tonumber(pinc)
    seq = math.max(seq, tonumber(ps))
    cnt = math.max(cnt, tonumber(pcnt))
  end
  if seq == 0 then opts = ARGV[12] end
  ttl = tonumber(ARGV[4])
end
local expected = tonumber(ARGV[3])
if expected >= 0 and expected ~= seq then return {'aborted', seq} end
if seq + n - flushed > tonumber(ARGV[7]) then return {'backlog', seq - flushed} end
local first = seq + 1
local last = seq + n
cnt = cnt + n
-- Protobuf tags: field 3 varint (Message.seq) and field 1 length-delimited (a repeated message).
local SEQ_TAG, ITEM_TAG = string.char(24), string.char(10)
-- Window items and outbox payload are both framed as repeated field 1 (see codec.frame_item).
local framed = {}
for i = 1, n do
  local b = ARGV[14 + n + i] .. SEQ_TAG .. varint(first + i - 1)
  framed[i] = ITEM_TAG .. varint(#b) .. b
end
local extend
if reset then
  -- A window hydrated from the store (same incarnation, ending at the seeded seq) stays valid.
  local whole = not dead and tonumber(m[1]) == inc and m[2] ~= false and tonumber(m[2]) == seq
    and redis.call('EXISTS', KEYS[1]) == 1
  if not whole then redis.call('DEL', KEYS[1]) end
  redis.call('DEL', KEYS[2])
  extend = seq == 0 or whole
else
  extend = m[2] ~= false and tonumber(m[2]) == seq and redis.call('EXISTS', KEYS[1]) == 1
end
if extend then
  if redis.call('RPUSH', KEYS[1], unpack(framed)) > tonumber(ARGV[5]) then redis.call('HDEL', KEYS[2], 'full') end
  redis.call('LTRIM', KEYS[1], -tonumber(ARGV[5]), -1)
  redis.call('HSET', KEYS[2], 'last', last)
else
  redis.call('DEL', KEYS[1])
  redis.call('HDEL', KEYS[2], 'last', 'full')
end
redis.call('HSET', KEYS[2], 'inc', inc, 'seq', last, 'hw', last, 'cnt', cnt, 'flushed', flushed, 'ttl', ttl)
keep(ttl, KEYS[1], KEYS[2])
redis.call('XADD', KEYS[4], '*', 'w', ARGV[13], 't', ARGV[14], 'i', inc, 'f', first, 'c', cnt,
           'r', ARGV[2], 'o', opts, 'm', table.concat(framed))
-- string.format, not '..': Lua's tostring would print a microsecond incarnation as 1.79e+15.
redis.call('HSET', KEYS[5], ARGV[1], string.format('%d:%d:%d', last, inc, cnt))
local named = false
for i = 1, n do
  if ARGV[14 + i] ~= '' then
    redis.call('HSET', KEYS[3], '#' .. ARGV[14 + i], first + i - 1)
    named = true
  end
end
if ARGV[2] ~= '' then
  redis.call('HSET', KEYS[3], ARGV[2], string.format('%d:%d:%d', first, n, cnt))
end
if ARGV[2] ~= '' or named then redis.call('EXPIRE', KEYS[3], ARGV[6]) end
return {'ok', first, cnt, inc, extend and 1 or 0}
"""
)

# KEYS: outbox, pending, then one meta key per thread. ARGV: group, number of ids, ids...,
# then per thread (in KEYS order): pending field, incarnation, highest flushed seq.
# Acknowledges and deletes the flushed entries (so the stream holds only unacknowledged ones), raises
# each thread's flushed mark, and clears its pending marker once nothing newer is queued.
ACK_FLUSHED = """
local nids = tonumber(ARGV[2])
local ids = {}
for i = 1, nids do ids[i] = ARGV[2 + i] end
redis.call('XACK', KEYS[1], ARGV[1], unpack(ids))
redis.call('XDEL', KEYS[1], unpack(ids))
local base = 2 + nids
for j = 3, #KEYS do
  local field, inc, top = ARGV[base + 1], ARGV[base + 2], tonumber(ARGV[base + 3])
  base = base + 3
  local m = redis.call('HMGET', KEYS[j], 'inc', 'flushed', 'seq')
  local counted = m[1] == inc and m[3]
  if counted then
    redis.call('HSET', KEYS[j], 'flushed', math.max(tonumber(m[2]) or 0, top))
  end
  local p = redis.call('HGET', KEYS[2], field)
  if p then
    local ps, pinc, pcnt = string.match(p, '^(%d+):(%d+):(%d+)')
    if pinc == inc and tonumber(ps) <= top then
      if counted then
        redis.call('HDEL', KEYS[2], field)
      else
        -- No counter to carry the mark: keep the entry as a floor ('f' = flushed) that a seed from
        -- the store, possibly read before this flush committed, can never undercut.
        redis.call('HSET', KEYS[2], field, ps .. ':' .. pinc .. ':' .. pcnt .. ':f')
      end
    end
  end
end
return nids
"""

# KEYS: pending, meta. ARGV: field. {newest queued seq, flushed mark}, or false when nothing is unflushed.
PENDING_SEQ = """
local p = redis.call('HGET', KEYS[1], ARGV[1])
if not p or string.sub(p, -2) == ':f' then return false end
local flushed = tonumber(redis.call('HGET', KEYS[2], 'flushed')) or 0
return {tonumber(string.match(p, '^(%d+):')), flushed}
"""

# KEYS: msgs, meta. ARGV: inc, store last_seq, store message_count. After writes went around Redis:
# drop the window and raise the counter to the store's, keeping the counter itself (so no seed, which
# could race the flusher, is ever needed for this thread).
RECONCILE_THREAD = """
redis.call('DEL', KEYS[1])
local m = redis.call('HMGET', KEYS[2], 'inc', 'seq', 'cnt', 'hw', 'del')
if m[5] or tonumber(m[1]) ~= tonumber(ARGV[1]) or not m[2] then
  redis.call('DEL', KEYS[2])
  return 0
end
local last = tonumber(ARGV[2])
redis.call('HDEL', KEYS[2], 'last', 'full')
-- The store holds every seq up to its last one, so 'flushed' rises with the counter; the unflushed
-- cap (seq - flushed) would otherwise count the fallback gap and refuse every append.
local flushed = redis.call('HGET', KEYS[2], 'flushed')
redis.call('HSET', KEYS[2], 'seq', math.max(tonumber(m[2]), last),
           'cnt', math.max(tonumber(m[3]) or 0, tonumber(ARGV[3])), 'hw', math.max(tonumber(m[4]) or 0, last),
           'flushed', math.max(tonumber(flushed) or 0, last))
return 1
"""
