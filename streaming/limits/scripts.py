"""The Lua scripts of admission: every limit check and change is one atomic script in Redis.

- requests per minute: GCRA (one timestamp per user / tenant; a full minute's worth may burst),
  on Redis's own clock (``TIME``): a caller's clock read before a wait, or another gateway node's
  clock a few ms apart, would count a request as arriving early and refuse the last of a burst
  the limit allows (at 4 per minute, 2 ms of difference refused the 4th);
- concurrent streams: a lease per stream in a sorted set scored by its expiry, pruned of expired
  members in the same script, renewed by the keeper while the run lives (``RENEW_LUA``);
- tokens per minute / per day: fixed windows (the UTC minute, the UTC day) that reserve the prompt
  estimate plus ``max_tokens`` at admission; ``RELEASE_LUA`` reconciles the reservation to the
  actual prompt + completion tokens in the window where it was made, exactly once per stream;
- an end user (an app token's request naming OpenAI's ``user``, when the app has
  ``end_user_limits``): a third scope of the same four limits, in the same admission script.

The admission and request-rate scripts first compare the tenant's limits version with the one the
caller's cached limits were read at, and answer ``{'stale', version}`` when it moved.
"""

from __future__ import annotations

_COMMON = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function gcra(key, limit, take)
  -- Requests per minute, GCRA: a full minute's worth may arrive at once, then one per 60/limit s.
  local tat = tonumber(redis.call('GET', key) or '0')
  if tat < now then tat = now end
  if limit <= 0 then return {limit, 0, 60000, 60000} end
  local interval = 60000 / limit
  local new_tat = tat + interval
  local wait = new_tat - 60000 - now
  if wait > 0.001 then return {limit, 0, math.ceil(tat - now), math.ceil(wait)} end
  table.insert(take, {key, new_tat})
  local remaining = math.floor((60000 - (new_tat - now)) / interval + 0.001)
  return {limit, remaining, math.ceil(new_tat - now), 0}
end
local function set_tats(take)
  for _, t in ipairs(take) do
    redis.call('SET', t[1], string.format('%.3f', t[2]), 'PX', math.max(1, math.ceil(t[2] - now)))
  end
end
local function count_request(key, ttl)
  redis.call('HINCRBY', key, 'requests', 1)
  redis.call('EXPIRE', key, ttl)
end
local function flatten(status, results)
  local out = {status}
  local denied = false
  for _, r in ipairs(results) do
    if r[4] > 0 then denied = true end
    for _, v in ipairs(r) do table.insert(out, v) end
  end
  if denied then out[1] = 'denied' end
  return out, denied
end
"""

# KEYS: 1 version, 2 user rpm, 3 tenant rpm, 4 user leases, 5 tenant leases, 6 user minute,
#       7 tenant minute, 8 user day, 9 tenant day, 10 reservation; with an end user also
#       11 end-user rpm, 12 end-user leases, 13 end-user minute, 14 end-user day
# ARGV: 1 expected version, 2 stream id, 3 tokens to reserve, 4 lease ttl ms,
#       5 ms left in the minute, 6 ms left in the day, 7 minute ttl s, 8 day ttl s,
#       9 reservation ttl s, 10..17 limits in keys.ORDER; with an end user 18..21 their limits
#       (rpm, concurrent, tpm, tpd; -1: not limited, the lease and tokens are still counted)
# Returns {'stale', version} | {'ok'|'denied', then limit, remaining, reset ms, retry ms x 8
#       (x 12 with an end user; a limit of -1 was not checked)}.
ADMIT_LUA = (
    _COMMON
    + """
local version = redis.call('GET', KEYS[1]) or ''
if version ~= ARGV[1] then return {'stale', version} end
local sid, cost, lease_ttl = ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local L = {}
for i = 1, 12 do L[i] = tonumber(ARGV[9 + i] or '-1') end
local UNCHECKED = {-1, 0, 0, 0}
local function leases(key, limit)
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
  if limit < 0 then return UNCHECKED end
  local held = redis.call('ZCARD', key)
  if held + 1 > limit then return {limit, math.max(limit - held, 0), 0, 1000} end
  return {limit, limit - held - 1, 0, 0}
end
local function budget(key, limit, left)
  if limit < 0 then return UNCHECKED end
  local used = tonumber(redis.call('HGET', key, 'tokens') or '0')
  if used + cost > limit then return {limit, math.max(limit - used, 0), left, left} end
  return {limit, limit - used - cost, left, 0}
end
local take = {}
local minute_left, day_left = tonumber(ARGV[5]), tonumber(ARGV[6])
local checks = {
  gcra(KEYS[2], L[1], take), gcra(KEYS[3], L[2], take),
  leases(KEYS[4], L[3]), leases(KEYS[5], L[4]),
  budget(KEYS[6], L[5], minute_left), budget(KEYS[7], L[6], minute_left),
  budget(KEYS[8], L[7], day_left), budget(KEYS[9], L[8], day_left),
}
-- the end user's scope: their own keys under the principal's, checked with the same functions
local held, minutes, days = {4, 5}, {6, 7}, {8, 9}
if #KEYS > 10 then
  table.insert(checks, L[9] >= 0 and gcra(KEYS[11], L[9], take) or UNCHECKED)
  table.insert(checks, leases(KEYS[12], L[10]))
  table.insert(checks, budget(KEYS[13], L[11], minute_left))
  table.insert(checks, budget(KEYS[14], L[12], day_left))
  held[3], minutes[3], days[3] = 12, 13, 14
end
local out, denied = flatten('ok', checks)
if denied then return out end
set_tats(take)
for _, i in ipairs(held) do
  redis.call('ZADD', KEYS[i], now + lease_ttl, sid)
  redis.call('PEXPIRE', KEYS[i], lease_ttl + 1000)
end
local function reserve(i, ttl)
  redis.call('HINCRBY', KEYS[i], 'tokens', cost)
  redis.call('HINCRBY', KEYS[i], 'reserved', cost)
  count_request(KEYS[i], ttl)
end
for _, i in ipairs(minutes) do reserve(i, tonumber(ARGV[7])) end
for _, i in ipairs(days) do reserve(i, tonumber(ARGV[8])) end
redis.call('HSET', KEYS[10], 'cost', cost, 'admitted', now)
redis.call('EXPIRE', KEYS[10], tonumber(ARGV[9]))
return out
"""
)

# KEYS: 1 version, 2 user rpm, 3 tenant rpm, 4 user minute, 5 tenant minute, 6 user day,
#       7 tenant day.  ARGV: 1 expected version, 2 user rpm, 3 tenant rpm, 4 minute ttl s,
#       5 day ttl s.
RATE_LUA = (
    _COMMON
    + """
local version = redis.call('GET', KEYS[1]) or ''
if version ~= ARGV[1] then return {'stale', version} end
local take = {}
local out, denied = flatten('ok', {gcra(KEYS[2], tonumber(ARGV[2]), take),
                                   gcra(KEYS[3], tonumber(ARGV[3]), take)})
if denied then return out end
set_tats(take)
for i = 4, 7 do count_request(KEYS[i], i <= 5 and tonumber(ARGV[4]) or tonumber(ARGV[5])) end
return out
"""
)

# KEYS: 1 reservation, then the leases (user, tenant, the end user's if any).
# ARGV: 1 stream id, 2 expiry ms, 3 ttl ms.
# A released run is never re-leased: the reservation is the proof it still runs.
RENEW_LUA = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
for i = 2, #KEYS do
  redis.call('ZADD', KEYS[i], ARGV[2], ARGV[1])
  redis.call('PEXPIRE', KEYS[i], ARGV[3])
end
return 1
"""

# KEYS: 1 reservation, 2..1+n the leases (user, tenant, the end user's), then the token windows
#       (minute and day of each scope).  ARGV: 1 stream id, 2 prompt tokens, 3 completion
#       tokens, 4 n (the number of scopes: 2, or 3 with an end user).
# Idempotent: the reservation is deleted by the first release; later ones only drop leases.
RELEASE_LUA = """
local n = tonumber(ARGV[4])
for i = 2, 1 + n do redis.call('ZREM', KEYS[i], ARGV[1]) end
local cost = redis.call('HGET', KEYS[1], 'cost')
if not cost then return 0 end
redis.call('DEL', KEYS[1])
cost = tonumber(cost)
local prompt, completion = tonumber(ARGV[2]), tonumber(ARGV[3])
for i = 2 + n, #KEYS do
  -- a window that already expired is not brought back (with a negative count)
  if redis.call('EXISTS', KEYS[i]) == 1 then
    redis.call('HINCRBY', KEYS[i], 'tokens', prompt + completion - cost)
    redis.call('HINCRBY', KEYS[i], 'reserved', -cost)
    redis.call('HINCRBY', KEYS[i], 'prompt_tokens', prompt)
    redis.call('HINCRBY', KEYS[i], 'completion_tokens', completion)
    redis.call('HINCRBY', KEYS[i], 'streams', 1)
  end
end
return 1
"""
