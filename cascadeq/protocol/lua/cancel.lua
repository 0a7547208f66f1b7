-- cancel.lua: answer one request "cancelled" if no model has taken it, atomically.
--
-- KEYS[1]   the request's result key
-- KEYS[2]   the cancel counter (Keys.cancels)
-- ARGV[1]   the cancelled result's bytes
-- ARGV[2]   the result TTL in seconds
-- ARGV[3]   the worker consumer group's name
--
-- The key holds nothing (unknown id, or expired), a final result (already done), the
-- submit placeholder (0xC1 alone: queued, not taken) or a worker's claim (0xC1, then the
-- stream and entry id it took, see claim.lua). A claimed request whose entry is still
-- pending in that stream's group is being computed: it is left to finish. One whose
-- entry was acknowledged without a result was escalated onward and waits again, so it
-- may be cancelled. Returns {outcome, stored value}: outcome 0 unknown, 1 cancelled now,
-- 2 already done (the value is its result), 3 running.

local cur = redis.call('GET', KEYS[1])
if not cur then return {0, false} end
if string.byte(cur, 1) ~= 0xC1 then return {2, cur} end
if #cur > 1 then
  local stream, entry = string.match(string.sub(cur, 2), '^(%S+) (%S+)$')
  if stream then
    local held = redis.pcall('XPENDING', stream, ARGV[3], entry, entry, 1)
    if type(held) == 'table' and not held.err and #held > 0 then return {3, false} end
  end
end
redis.call('SET', KEYS[1], ARGV[1], 'EX', tonumber(ARGV[2]))
redis.call('INCR', KEYS[2])
return {1, ARGV[1]}
