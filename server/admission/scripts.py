"""The Lua scripts of admission: per-workspace token buckets and stream leases, on Redis's clock."""

# Per-workspace token buckets (requests and append bytes) in one step, on Redis's clock so every replica
# shares it. Each bucket is a hash {tk = tokens, ts = last update in seconds}; an absent bucket is full.
# A request is admitted when every bucket it draws on holds min(cost, burst) tokens; it then takes its
# whole cost (a cost above the burst leaves a debt that later requests wait out). A refusal charges
# nothing and returns the bucket's index and the wait in milliseconds until it would pass.
# KEYS: requests bucket, bytes bucket. ARGV: per bucket rate, burst, cost (rate 0 or cost 0 = unused).
QUOTA_TAKE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local used = {}
local which, wait = 0, 0
for i = 1, 2 do
  local rate, burst, cost = tonumber(ARGV[3*i-2]), tonumber(ARGV[3*i-1]), tonumber(ARGV[3*i])
  if rate > 0 and cost > 0 then
    local h = redis.call('HMGET', KEYS[i], 'tk', 'ts')
    local tokens = tonumber(h[1]) or burst
    local ts = tonumber(h[2]) or now
    if now > ts then tokens = math.min(burst, tokens + (now - ts) * rate) end
    local need = math.min(cost, burst)
    if tokens < need then
      local w = (need - tokens) / rate
      if w > wait then which, wait = i, w end
    end
    used[i] = {tokens - cost, rate, burst}
  end
end
if which > 0 then return {which, math.ceil(wait * 1000)} end
for i, u in pairs(used) do
  redis.call('HSET', KEYS[i], 'tk', string.format('%.6f', u[1]), 'ts', string.format('%.6f', now))
  -- Once full again the bucket equals an absent one, so it expires then.
  redis.call('PEXPIRE', KEYS[i], math.ceil((u[3] - u[1]) / u[2] * 1000) + 1000)
end
return {0, 0}
"""

# Open StreamHistory calls of a workspace across replicas: a sorted set of leases (member = one stream,
# score = when its lease ends, on Redis's clock). Leases of a crashed replica lapse after lease_ms.
# KEYS: streams. ARGV: cap, member, lease_ms. Returns {1, count} when admitted, {0, count} at the cap.
STREAM_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local n = redis.call('ZCARD', KEYS[1])
if n >= tonumber(ARGV[1]) then return {0, n} end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[2])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[3]))
return {1, n + 1}
"""

# Extend the leases of streams still open (added again if one lapsed while Redis was unreachable).
# KEYS: streams. ARGV: lease_ms, member...
STREAM_RENEW = """
local t = redis.call('TIME')
local until_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + tonumber(ARGV[1])
for i = 2, #ARGV do redis.call('ZADD', KEYS[1], until_ms, ARGV[i]) end
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[1]))
return #ARGV - 1
"""
