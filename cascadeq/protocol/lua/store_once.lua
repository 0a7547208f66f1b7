-- store_once.lua: store one result unless a real one is there, and wake its waiter.
--
-- The workers store results through commit.lua, a batch at a time; this is the same rule
-- for one result written on its own (tools and tests that answer a request directly).
-- A key that is absent or holds the submit placeholder (first byte 0xC1, a byte msgpack
-- never starts a message with) takes the result; a real result is never overwritten.
--
-- KEYS[1]  the result key
-- ARGV[1]  the result's bytes
-- ARGV[2]  TTL in seconds
-- ARGV[3]  the waiter's reply channel, or '' for none
-- Returns 1 when stored, 0 when a result was already there.
local cur = redis.call('GET', KEYS[1])
if cur and string.byte(cur, 1) ~= 0xC1 then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
if ARGV[3] ~= '' then redis.call('PUBLISH', ARGV[3], ARGV[1]) end
return 1
