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
--           TTL, result key prefix, partial, bundles}; each bundle is
--           {model counter KEYS index, {id...}, {digest or ''...}, first ARGV index, fields}:
--           its entry's field name / value pairs are ARGV[first .. first + 2 * fields - 1]
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
-- {not admitted}, full counter's KEYS index (0: none), that counter's value}.

local plan = cmsgpack.unpack(ARGV[1])
local bound, model_bound, ttl, digest_ttl = plan[1], plan[2], plan[3], plan[4]
local prefix, partial, bundles = plan[5], plan[6] == 1, plan[7]

local dups = {}

local function counter(index)
  return tonumber(redis.call('GET', KEYS[index]) or '0')
end

local depth = counter(2)
local depths, refused = {}, {}
local queued, full, full_depth = 0, 0, 0
local pos = 0
for _, b in ipairs(bundles) do
  local j = b[1]
  if not depths[j] then depths[j] = counter(j) end
  for _ = 1, #b[2] do
    pos = pos + 1
    do
      local over = 0
      if depth + queued + 1 > bound then over = 2
      elseif depths[j] + 1 > model_bound then over = j end
      if over == 0 then
        queued = queued + 1
        depths[j] = depths[j] + 1
      else
        if not partial then return {0, depth, {}, {}, {}, over, counter(over)} end
        refused[#refused + 1] = pos
        full, full_depth = over, counter(over)
      end
    end
  end
end
if #refused > 0 then return {0, depth, {}, {}, refused, full, full_depth} end

-- The placeholders, one SET NX each: one that finds its key taken is a duplicate (of an
-- earlier call, or of an earlier request of this one), or an idempotent retry whose
-- digest matches (skipped). Either way the call writes nothing:
-- the placeholders it did set are removed before it returns the positions.
local placeholder = string.char(0xC1)
local set, skips = {}, {}
pos = 0
for _, b in ipairs(bundles) do
  local ids, digests = b[2], b[3]
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
  if #dups > 0 then return {0, 0, dups, skips, {}, 0, 0} end
  return {0, depth, {}, skips, {}, 0, 0}
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
return {1, redis.call('INCRBY', KEYS[2], queued), {}, {}, {}, 0, 0}
