-- Who is in a room: a sorted set of members, each with the time its
-- presence runs out. A member refreshes it while its socket is open; one
-- on a crashed instance simply runs out. A join or a leave publishes how
-- many are there and the names of the few most recently seen.
--
-- Why not every name: each join goes to everyone in the room, so a list of
-- everyone would make a room of N cost N * N names per join, and a wave of
-- N joins N * N * N (a thousand shoppers: a billion names). A count and a
-- few names cost the same in any room; a chat service that lists everyone
-- pages through the list on demand instead.
--
-- KEYS[1]  the counters, KEYS[2] the room's members
-- ARGV[5]  room, ARGV[6] member (`instance/socket/name`), ARGV[7] join |
--          refresh | leave, ARGV[8] now (ms), ARGV[9] how long presence
--          lasts (ms), ARGV[10] how many names an update carries at most
-- Returns the update, or nothing for a refresh that changed nothing.

local now = tonumber(ARGV[8])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
local known = redis.call('ZSCORE', KEYS[2], ARGV[6])
if ARGV[7] == 'leave' then
  redis.call('ZREM', KEYS[2], ARGV[6])
else
  redis.call('ZADD', KEYS[2], now + tonumber(ARGV[9]), ARGV[6])
  redis.call('PEXPIRE', KEYS[2], ARGV[9])
  if ARGV[7] == 'refresh' and known then
    return false
  end
end
local count = redis.call('ZCARD', KEYS[2])
if count == 0 then
  -- cjson would write an empty table as an object.
  return publish(KEYS[1], 'room:' .. ARGV[5], {type = 'presence', room = ARGV[5], count = 0})
end
-- The latest presence runs out last: newest first.
local who = {}
for _, member in ipairs(redis.call('ZREVRANGE', KEYS[2], 0, tonumber(ARGV[10]) - 1)) do
  table.insert(who, string.match(member, '[^/]*$'))
end
return publish(KEYS[1], 'room:' .. ARGV[5], {type = 'presence', room = ARGV[5], who = who, count = count})
