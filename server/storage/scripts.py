"""The Lua scripts of the cache. Each touches only keys of one hash tag, so each runs on one slot.

Window state per thread (two keys, same tag): ``msgs`` is the list of encoded messages, newest last,
trimmed to the window; ``meta`` is a hash with
  inc   the thread's incarnation (a store-assigned creation time in microseconds, so a re-created
        thread has a larger one);
  last  the seq of the newest element of ``msgs``; present only while ``msgs`` is a valid window;
  hw    the highest seq known to be committed (a fence against stale fills);
  ttl   the sliding TTL in seconds (0 = pinned, no expiry);
  del   present when the thread was deleted (a tombstone that fences out late fills and pushes).
A window is served only when ``last`` is present and ``del`` is not; anything else is a miss, and
the repository hydrates from the store. No script ever appends to a list whose ``last`` is not
exactly the seq before the new messages, so an expired or evicted key never gets a partial window.
"""

from __future__ import annotations

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
local m = redis.call('HMGET', KEYS[2], 'last', 'ttl', 'del')
if not m[1] or m[3] then return false end
local items = redis.call('LRANGE', KEYS[1], -tonumber(ARGV[1]), -1)
if #items == 0 then return false end
keep(tonumber(m[2]) or 0, KEYS[1], KEYS[2])
return items
"""
)

# KEYS: msgs, meta. ARGV: inc, last_seq, ttl, maxlen, encoded...
FILL_WINDOW = (
    _KEEP
    + """
local inc = tonumber(ARGV[1])
local last = tonumber(ARGV[2])
local m = redis.call('HMGET', KEYS[2], 'inc', 'hw', 'del')
local cinc = tonumber(m[1])
if cinc and cinc > inc then return 0 end
if cinc == inc and (m[3] or (tonumber(m[2]) or 0) > last) then return 0 end
if #ARGV < 5 then return 0 end
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('RPUSH', KEYS[1], unpack(ARGV, 5))
redis.call('LTRIM', KEYS[1], -tonumber(ARGV[4]), -1)
redis.call('HSET', KEYS[2], 'inc', ARGV[1], 'last', ARGV[2], 'hw', ARGV[2], 'ttl', ARGV[3])
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
  redis.call('RPUSH', KEYS[1], unpack(ARGV, 6))
  redis.call('LTRIM', KEYS[1], -tonumber(ARGV[5]), -1)
  redis.call('HSET', KEYS[2], 'inc', ARGV[1], 'last', ARGV[3], 'hw', hw, 'ttl', ARGV[4])
  keep(ttl, KEYS[1], KEYS[2])
  return 1
end
redis.call('DEL', KEYS[1])
if cinc ~= inc then redis.call('DEL', KEYS[2]) end
redis.call('HDEL', KEYS[2], 'last')
redis.call('HSET', KEYS[2], 'inc', ARGV[1], 'hw', hw, 'ttl', ARGV[4])
keep(ttl, KEYS[2])
return 0
"""
)

# KEYS: msgs, meta. ARGV: inc, tombstone_ttl.
DROP_WINDOW = """
local cinc = tonumber(redis.call('HGET', KEYS[2], 'inc'))
if cinc and cinc > tonumber(ARGV[1]) then return 0 end
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('HSET', KEYS[2], 'inc', ARGV[1], 'del', '1')
redis.call('EXPIRE', KEYS[2], ARGV[2])
return 1
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
