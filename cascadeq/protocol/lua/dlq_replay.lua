-- dlq_replay.lua: put one dead letter back on a stream, unless its request was answered.
--
-- Writes happen only after every check passed, and the XADD comes first: if Redis
-- refuses it, nothing changes. Whoever adds to a stream counts the request in (the
-- stream's request counter), so the bounds and the consumer's acknowledgement stay in step.
--
-- KEYS[1]  the dead-letter stream
-- KEYS[2]  the stream to replay onto
-- KEYS[3]  that stream's request counter
-- KEYS[4]  (optional) the request's result key: replay only if it still holds what the
--          caller saw, and mark it "not ready" again (the 0xC1 placeholder)
-- ARGV[1]  the dead letter's entry id
-- ARGV[2]  the result value the caller saw ('' for none)
-- ARGV[3]  the placeholder's TTL in seconds
-- Returns {1, new entry id}, or {0, 'gone' | 'incomplete' | 'answered'}.
local rec = redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[1])
if #rec == 0 then return {0, 'gone'} end
local h, x
local f = rec[1][2]
for i = 1, #f, 2 do
  if f[i] == 'h' then h = f[i + 1] elseif f[i] == 'x' then x = f[i + 1] end
end
if not h or not x then return {0, 'incomplete'} end
if #KEYS == 4 then
  local cur = redis.call('GET', KEYS[4])
  if cur and cur ~= ARGV[2] then return {0, 'answered'} end
end
local new = redis.call('XADD', KEYS[2], '*', 'h', h, 'x', x)
redis.call('INCRBY', KEYS[3], 1)
if #KEYS == 4 then redis.call('SET', KEYS[4], string.char(0xC1), 'EX', ARGV[3]) end
redis.call('XDEL', KEYS[1], ARGV[1])
return {1, new}
