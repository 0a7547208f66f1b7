-- claim.lua: a worker takes a batch's requests before computing them, in one call.
--
-- Cancellation is decided here and in cancel.lua, both atomic in Redis: a request whose
-- result key already holds a final result (a cancel, or an answer from an earlier
-- delivery) is skipped, never computed; every other one is marked claimed, so a cancel
-- arriving later reports it running rather than cancelling work already under way.
--
-- KEYS[1]   a stream of the batch (names the slot: every key shares the prefix's tag)
-- ARGV[1]   the result key prefix (Keys.result(""))
-- ARGV[2]   msgpack array of entries, each {stream, entry id, {request id...}}
-- ARGV[3]   1: claim (a worker about to compute); 0: only look (a router about to route)
--
-- A claim is the placeholder byte 0xC1 followed by the entry's stream and id: it still
-- reads "not ready" to every client and to commit.lua (first byte 0xC1), and it lets
-- cancel.lua ask whether that entry is still pending (being computed) or acknowledged
-- (answered, or escalated onward: then the request may be cancelled again). A key that
-- is absent (its placeholder expired) is left absent: SET with KEEPTTL would make it
-- permanent. Returns the 1-based positions, across the entries in order, to skip.

local prefix = ARGV[1]
local entries = cmsgpack.unpack(ARGV[2])
local mark_them = ARGV[3] == '1'
local skip, pos = {}, 0
for _, e in ipairs(entries) do
  local mark = string.char(0xC1) .. e[1] .. ' ' .. e[2]
  for _, id in ipairs(e[3]) do
    pos = pos + 1
    local key = prefix .. id
    local cur = redis.call('GET', key)
    if cur then
      if string.byte(cur, 1) ~= 0xC1 then
        skip[#skip + 1] = pos
      elseif mark_them then
        redis.call('SET', key, mark, 'KEEPTTL')
      end
    end
  end
end
return skip
