-- claim.lua: which of a batch's requests were cancelled (or answered) before it formed.
--
-- A worker (before computing) or a router (before routing) sends a batch's request ids;
-- those whose result key already holds a final result are skipped, never computed. It
-- is called only while cancels exist (the cancel counter, which workers read in the same
-- round trip as their XREADGROUP, and routers in their commit): a batch taken when no
-- cancel existed needs no look, since a cancel arriving after the take finds the entry
-- pending in the worker group and reports the request running (lua/cancel.lua).
--
-- KEYS[1]   a stream of the batch (names the slot: every key shares the prefix's tag)
-- ARGV[1]   the result key prefix (Keys.result(""))
-- ARGV[2]   msgpack array of entries, each {stream, entry id, {request id...}}
--
-- Returns the 1-based positions, across the entries in order, to skip.

local prefix = ARGV[1]
local entries = cmsgpack.unpack(ARGV[2])
local skip, pos = {}, 0
for _, e in ipairs(entries) do
  for _, id in ipairs(e[3]) do
    pos = pos + 1
    local cur = redis.call('GET', prefix .. id)
    if cur and string.byte(cur, 1) ~= 0xC1 then
      skip[#skip + 1] = pos
    end
  end
end
return skip
