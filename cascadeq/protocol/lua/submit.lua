-- submit.lua: id checks, admission and the ingress XADDs of one submit call, all or nothing.
--
-- The producer sends its requests as bundles (one ingress entry holds many requests), so
-- the per-request work here is only what must be per request: the id check and the
-- "not ready" placeholder (and an idempotent request's digest).
--
-- KEYS[1]   the ingress stream
-- KEYS[2]   its request counter (Keys.backlog(ingress))
-- KEYS[3..] the request counters of the model streams the call's requests start on
-- ARGV[1]   the plan, msgpack array {ingress bound, model bound, placeholder TTL, digest
--           TTL, result key prefix, partial, bundles, quotas, tenant counts key}; each
--           bundle is {model counter KEYS index, {id...}, {digest or ''...}, first ARGV
--           index, fields, quota (index into quotas, 0: its tenant has no limits), tenant,
--           reply channel (its requests' waiters' pub/sub channel, '' for none)}:
--           its entry's field
--           name / value pairs are ARGV[first .. first + 2 * fields - 1]; each quota is
--           {tenant, rate (0: none), burst, max in flight (0: none), bucket KEYS index,
--           in-flight counter KEYS index} (only tenants with limits appear: the others
--           cost nothing here)
-- ARGV[2..] the bundles' field names and values (headers, stacked inputs, rows)
--
-- A request's result key is the prefix plus its id, its digest key that plus ':digest'
-- (the prefix carries the deployment's hash tag on Redis Cluster, so they share a slot).
-- An id is refused if it repeats in the call or its result key exists, except an
-- idempotent retry whose stored digest matches: that one is skipped, not queued again.
-- The placeholder's SET NX is the existence check (one call a request, not GET then SET),
-- so it comes after admission: a call refused as full writes nothing and reads no key.
-- Admission: the ingress counter plus the requests to queue must stay within the ingress
-- bound, and each model stream's counter plus those starting on it within the model
-- bound. Model counters are only read: the router increments them when it XADDs there.
-- With partial = 1 the requests are admitted one by one in order and those that do not
-- fit are named; otherwise one that does not fit refuses the whole call.
--
-- Nothing is written unless every request is queued as sent: a refusal or a skip returns
-- the positions (1-based, across the bundles in order) so the caller can send again
-- without them. Returns {queued?, ingress counter after, {duplicates}, {skipped},
-- {not admitted}, full counter's KEYS index (0: none), that counter's value, {quota
-- refusals}}: each quota refusal is {position, quota index, 'rate' | 'in_flight', retry
-- after in ms (rate: the bucket's refill; 0: the caller estimates), the tenant's figure
-- (tokens left or requests in flight, as text: a Lua number would reach the caller truncated)}.
--
-- Quotas: a token bucket per rate-limited tenant, refilled at `rate` per second of the
-- server's TIME up to `burst`, one token per request; and a counter of the tenant's
-- requests in flight (queued, not yet answered: lua/commit.lua decrements it as each
-- result is stored) within `max in flight`. Both are shared by every producer. They are
-- written only when the call queues: a refused call consumes nothing. A refusal (queue
-- full or quota) counts the refused requests in the tenant counts hash (field
-- `<tenant>:rejected:<code>`; named like the result keys, from the hash-tagged prefix).

local plan = cmsgpack.unpack(ARGV[1])
local bound, model_bound, ttl, digest_ttl = plan[1], plan[2], plan[3], plan[4]
local prefix, partial, bundles = plan[5], plan[6] == 1, plan[7]
local quotas = plan[8] or {}
local counts_key = plan[9]

-- count refused requests per tenant: at the given positions, or (nil) all of the call
local function count_refused(code, positions)
  if not counts_key then return end
  local at, n = {}, {}
  if positions then for _, p in ipairs(positions) do at[p] = true end end
  local p = 0
  for _, b in ipairs(bundles) do
    local tenant = b[7] or 'default'
    for _ = 1, #b[2] do
      p = p + 1
      if not positions or at[p] then n[tenant] = (n[tenant] or 0) + 1 end
    end
  end
  for tenant, k in pairs(n) do
    redis.call('HINCRBY', counts_key, tenant .. ':rejected:' .. code, k)
  end
end

local dups = {}

local function counter(index)
  return tonumber(redis.call('GET', KEYS[index]) or '0')
end

-- the quotas' state now: tokens in each bucket, requests in flight
local tokens, flying, now_us = {}, {}, 0
if #quotas > 0 then
  local t = redis.call('TIME')
  now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
  for q, quota in ipairs(quotas) do
    if quota[2] > 0 then
      local level, at = quota[3], now_us
      local raw = redis.call('GET', KEYS[quota[5]])
      if raw then
        local space = string.find(raw, ' ', 1, true)
        level, at = tonumber(string.sub(raw, 1, space - 1)), tonumber(string.sub(raw, space + 1))
      end
      tokens[q] = math.min(quota[3], level + math.max(0, now_us - at) * quota[2] / 1000000)
    end
    if quota[4] > 0 then flying[q] = counter(quota[6]) end
  end
end

-- why a request of quota q is over it (nil: it fits), with the retry-after it implies
local function over_quota(q, wanted)
  local quota = quotas[q]
  if quota[2] > 0 and tokens[q] < 1 then
    return 'rate', math.ceil((wanted - tokens[q]) / quota[2] * 1000), tokens[q]
  end
  if quota[4] > 0 and flying[q] + 1 > quota[4] then return 'in_flight', 0, flying[q] end
  return nil
end

local wants = {}  -- a whole call's requests per quota: what a refused call must wait for
for _, b in ipairs(bundles) do
  local q = b[6] or 0
  if q > 0 then wants[q] = (wants[q] or 0) + #b[2] end
end

local depth = counter(2)
local depths, refused, refusals = {}, {}, {}
local queued, full, full_depth = 0, 0, 0
local pos = 0
for _, b in ipairs(bundles) do
  local j, q = b[1], b[6] or 0
  if not depths[j] then depths[j] = counter(j) end
  for _ = 1, #b[2] do
    pos = pos + 1
    do
      local over, kind, retry, figure = 0, nil, 0, 0
      if depth + queued + 1 > bound then over = 2
      elseif depths[j] + 1 > model_bound then over = j
      elseif q > 0 then
        kind, retry, figure = over_quota(q, partial and 1 or wants[q])
      end
      if kind then
        refusals[#refusals + 1] = {pos, q, kind, retry, string.format('%.3f', figure)}
        if not partial then
          count_refused('quota', nil)
          return {0, depth, {}, {}, {}, 0, 0, refusals}
        end
      elseif over == 0 then
        queued = queued + 1
        depths[j] = depths[j] + 1
        if q > 0 then
          if tokens[q] then tokens[q] = tokens[q] - 1 end
          if flying[q] then flying[q] = flying[q] + 1 end
        end
      else
        if not partial then
          count_refused('queue_full', nil)
          return {0, depth, {}, {}, {}, over, counter(over), {}}
        end
        refused[#refused + 1] = pos
        full, full_depth = over, counter(over)
      end
    end
  end
end
if #refused > 0 then count_refused('queue_full', refused) end
if #refusals > 0 then
  local at = {}
  for _, r in ipairs(refusals) do at[#at + 1] = r[1] end
  count_refused('quota', at)
end
if #refused > 0 or #refusals > 0 then
  return {0, depth, {}, {}, refused, full, full_depth, refusals}
end

-- The placeholders, one SET NX each: one that finds its key taken is a duplicate (of an
-- earlier call, or of an earlier request of this one), or an idempotent retry whose
-- digest matches (skipped). Either way the call writes nothing: the placeholders it did
-- set are removed before it returns the positions, and no quota is consumed. A
-- placeholder is 0xC1 then the reply channel, so a cancel (lua/cancel.lua) can wake the
-- request's waiters, whichever client cancels it.
local set, skips = {}, {}
pos = 0
for _, b in ipairs(bundles) do
  local ids, digests = b[2], b[3]
  local placeholder = string.char(0xC1) .. (b[8] or '')
  for i = 1, #ids do
    pos = pos + 1
    local key = prefix .. ids[i]
    if redis.call('SET', key, placeholder, 'NX', 'EX', ttl) then
      set[#set + 1] = key
    else
      local d = digests[i]
      if d ~= '' and redis.call('GET', key .. ':digest') == d then
        skips[#skips + 1] = pos
      else
        dups[#dups + 1] = pos
      end
    end
  end
end
if #dups > 0 or #skips > 0 then
  for k = 1, #set, 1000 do redis.call('DEL', unpack(set, k, math.min(k + 999, #set))) end
  if #dups > 0 then return {0, 0, dups, skips, {}, 0, 0, {}} end
  return {0, depth, {}, skips, {}, 0, 0, {}}
end

for q, quota in ipairs(quotas) do
  if tokens[q] then  -- an idle bucket expires once full again: a missing one is full
    local life = math.ceil(quota[3] / quota[2] * 1000) + 1000
    redis.call('SET', KEYS[quota[5]], string.format('%.6f %d', tokens[q], now_us), 'PX', life)
  end
  if flying[q] then redis.call('SET', KEYS[quota[6]], flying[q], 'EX', ttl) end
end

for _, b in ipairs(bundles) do
  local digests, first = b[3], b[4]
  local fields = {}
  for k = first, first + 2 * b[5] - 1 do fields[#fields + 1] = ARGV[k] end
  redis.call('XADD', KEYS[1], '*', unpack(fields))
  for i = 1, #digests do
    if digests[i] ~= '' then
      redis.call('SET', prefix .. b[2][i] .. ':digest', digests[i], 'EX', digest_ttl)
    end
  end
end
return {1, redis.call('INCRBY', KEYS[2], queued), {}, {}, {}, 0, 0, {}}
