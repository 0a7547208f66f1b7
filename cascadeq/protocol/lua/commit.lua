-- commit.lua: one batch's effects, then XACK for every entry whose effects all landed.
--
-- Routers (forwards, refusals) and workers (results, escalations, dead letters) end each
-- batch with this one call, so a batch costs one round trip and the per-item work
-- (first-write-wins stores, publishes, acks) happens here rather than as a command each.
-- Each effect runs under redis.pcall: one that fails leaves its entries unacknowledged,
-- so they are delivered again, while every other entry of the batch is acknowledged.
--
-- KEYS    every key the batch touches; the plan names them by 1-based index.
-- ARGV[1] the plan, msgpack array {ttl, results, channels, adds, acks, reads, failed,
--         sizes, figures, owners, starts, report}:
--   ttl       result TTL in seconds
--   results   flat array of quads: key index, payload value index, channel (0: none), entry
--   channels  reply channel names (pub/sub channels are not keys)
--   adds      array of {key index, maxlen (0: uncapped), {entry...}, counter key index
--             (0: none), requests, name, value index, ...}: one XADD each, its fields as
--             name / value-index pairs; once added, the counter grows by requests
--   acks      array of {stream key index, group, counter key index (0: none), entry id,
--             requests, entry id, requests...}; entries are numbered 1, 2, ... across
--             these lists, in order; an acknowledged entry's requests leave the counter
--   reads     counter key indices whose value is returned, after the writes
--   failed    entries to leave unacknowledged whatever their effects (the caller failed them)
--   sizes     byte length of each value, in order: value i is the i-th piece of ARGV[2]
--   figures   array of {command, key index, arg...}: bookkeeping writes (HINCRBY, HSET,
--             EXPIRE) run last; one that fails fails alone and fails no entry
--   owners    flat pairs: entry, key index of its tenant's in-flight counter; each result
--             of that entry stored decrements it (tenants with max_in_flight only)
--   starts    (optional) the number of each ack list's first entry, where a call carries
--             only some of a batch's ack lists (Redis Cluster: one call per slot)
--   report    (optional) 1: append the failed entries to the reply, after the reads (an
--             effects-only call on another slot tells the acking call what failed)
--
-- A counter holds the requests in a stream that no consumer has acknowledged yet (a
-- stream entry may be a bundle of many): the bounds and backpressure read it, not XLEN.
-- ARGV[2] every result payload and field value, concatenated: one argument rather than
-- one per value, which is what the caller pays to send per value.
--
-- A result is stored only where its key is absent or holds the submit placeholder (a
-- value whose first byte is 0xC1, a byte msgpack never starts a message with), so a
-- request processed twice keeps its first answer; only stored results are published.
-- It is one SET ... GET per result (Redis 6.2+), which puts an earlier answer back in the
-- rare case it finds one: that answer then keeps the later TTL, a little longer than its own.
-- Returns {results stored, entries acknowledged, XLEN of each depths key...}.

local plan = cmsgpack.unpack(ARGV[1])
local ttl, results, channels, adds, acks, reads = plan[1], plan[2], plan[3], plan[4], plan[5], plan[6]
local values, blob, at = {}, ARGV[2], 1
for i, size in ipairs(plan[8]) do
  values[i] = string.sub(blob, at, at + size - 1)
  at = at + size
end
local failed = {}
for _, entry in ipairs(plan[7]) do failed[entry] = true end
local stored = 0
local outbox = {}
local owner, released = {}, {}
local owners = plan[10] or {}
for i = 1, #owners, 2 do owner[owners[i]] = owners[i + 1] end

for i = 1, #results, 4 do
  local key, payload = KEYS[results[i]], values[results[i + 1]]
  -- One call, not GET then SET: store, and read back what was there.
  local cur = redis.pcall('SET', key, payload, 'EX', ttl, 'GET')
  if type(cur) == 'table' and cur.err then
    failed[results[i + 3]] = true
  elseif cur and string.byte(cur, 1) ~= 0xC1 then
    redis.call('SET', key, cur, 'KEEPTTL')  -- answered before: the first answer stays
  else
    stored = stored + 1
    local held = owner[results[i + 3]]
    if held then released[held] = (released[held] or 0) + 1 end
    local channel = results[i + 2]
    if channel > 0 then
      local box = outbox[channel]
      if not box then box = {}; outbox[channel] = box end
      box[#box + 1] = payload
    end
  end
end

for channel, box in pairs(outbox) do
  if #box == 1 then
    redis.pcall('PUBLISH', channels[channel], box[1])
  else
    redis.pcall('PUBLISH', channels[channel], cmsgpack.pack(box))
  end
end

for _, add in ipairs(adds) do
  local argv = {KEYS[add[1]]}
  if add[2] > 0 then
    argv[#argv + 1] = 'MAXLEN'; argv[#argv + 1] = '~'; argv[#argv + 1] = add[2]
  end
  argv[#argv + 1] = '*'
  for j = 6, #add, 2 do
    argv[#argv + 1] = add[j]; argv[#argv + 1] = values[add[j + 1]]
  end
  local ok = redis.pcall('XADD', unpack(argv))
  if type(ok) == 'table' and ok.err then
    for _, entry in ipairs(add[3]) do failed[entry] = true end
  elseif add[4] > 0 and add[5] > 0 then
    redis.call('INCRBY', KEYS[add[4]], add[5])
  end
end

local entry, acked = 0, 0
local starts = plan[11]
for k, ack in ipairs(acks) do
  if starts and starts[k] then entry = starts[k] - 1 end
  local ids, requests = {}, 0
  for j = 4, #ack, 2 do
    entry = entry + 1
    if not failed[entry] then
      ids[#ids + 1] = ack[j]
      requests = requests + ack[j + 1]
    end
  end
  if #ids > 0 then
    local n = redis.pcall('XACK', KEYS[ack[1]], ack[2], unpack(ids))
    if type(n) == 'number' then
      acked = acked + n
      if ack[3] > 0 and n > 0 then
        -- a re-delivered entry acknowledged by another consumer first counts once
        if n < #ids then requests = math.floor(requests * n / #ids) end
        if redis.call('DECRBY', KEYS[ack[3]], requests) < 0 then
          redis.call('SET', KEYS[ack[3]], 0)
        end
      end
    end
  end
end

for index, n in pairs(released) do
  if redis.call('DECRBY', KEYS[index], n) < 0 then redis.call('SET', KEYS[index], 0) end
end

for _, figure in ipairs(plan[9]) do
  local argv = {KEYS[figure[2]]}
  for j = 3, #figure do argv[#argv + 1] = figure[j] end
  redis.pcall(figure[1], unpack(argv))
end

local out = {stored, acked}
for _, index in ipairs(reads) do
  out[#out + 1] = tonumber(redis.call('GET', KEYS[index]) or '0')
end
if plan[12] == 1 then
  for e in pairs(failed) do out[#out + 1] = e end
end
return out
