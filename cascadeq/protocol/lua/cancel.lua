-- cancel.lua: answer one request "cancelled" if no worker has taken it, atomically.
--
-- KEYS[1]   the request's result key
-- KEYS[2]   the cancel counter (Keys.cancels): workers look for cancelled requests in a
--           batch only while it exists
-- KEYS[3..] every model stream of the deployment (each model's lanes)
-- ARGV[1]   the cancelled result's bytes
-- ARGV[2]   the result TTL in seconds
-- ARGV[3]   the worker consumer group's name
-- ARGV[4]   the request id's header token: msgpack of the key "id" and the id, as every
--           header of the request starts (protocol/bundle.py: id is the Header's first field)
-- ARGV[5]   how long the counter lives after this cancel, in seconds (at least the longest
--           a request can wait in a queue: its placeholder's TTL)
--
-- The key holds nothing (unknown id, or expired), a final result (already done) or the
-- submit placeholder (0xC1: not answered). A request not answered is being computed when
-- a worker holds the entry it came in: the entry is then pending in that stream's worker
-- group (XREADGROUP made it so when the worker took it, atomically, so no claim is
-- written per request on the hot path). Pending entries are few (what workers hold now),
-- and each is looked at for the request's header token. A request found there is left
-- to finish ("running"); any other is answered cancelled here: queued, being routed, or
-- between cascade stages (a worker's commit acknowledges an escalated request's entry in
-- the call that queues it for the next model). The worker that takes it later sees the
-- counter, looks (lua/claim.lua) and skips it. A request cancelled here is published on
-- the reply channel its placeholder names (after the 0xC1; none for a placeholder
-- without one), so its waiters wake at once in any client. Returns {outcome, stored
-- value}: outcome 0 unknown, 1 cancelled now, 2 already done (the value is its result),
-- 3 running.

local cur = redis.call('GET', KEYS[1])
if not cur then return {0, false} end
if string.byte(cur, 1) ~= 0xC1 then return {2, cur} end

local group, token = ARGV[3], ARGV[4]
for k = 3, #KEYS do
  local held = redis.pcall('XPENDING', KEYS[k], group, '-', '+', 10000)
  if type(held) == 'table' and not held.err then
    for _, p in ipairs(held) do
      local got = redis.call('XRANGE', KEYS[k], p[1], p[1])
      local fields = got[1] and got[1][2] or {}
      for f = 1, #fields, 2 do
        if (fields[f] == 'H' or fields[f] == 'h')
            and string.find(fields[f + 1], token, 1, true) then
          return {3, false}
        end
      end
    end
  end
end

redis.call('SET', KEYS[1], ARGV[1], 'EX', tonumber(ARGV[2]))
redis.call('INCR', KEYS[2])
redis.call('EXPIRE', KEYS[2], tonumber(ARGV[5]))
if #cur > 1 then redis.pcall('PUBLISH', string.sub(cur, 2), ARGV[1]) end
return {1, ARGV[1]}
