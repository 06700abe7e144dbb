-- Who is in a room: a sorted set of members, each with the time its
-- presence runs out. A member refreshes it while its socket is open; one
-- on a crashed instance simply runs out. A join or a leave publishes the
-- new list.
--
-- KEYS[1]  the counters, KEYS[2] the room's members
-- ARGV[5]  room, ARGV[6] member (`instance/socket/name`), ARGV[7] join |
--          refresh | leave, ARGV[8] now (ms), ARGV[9] how long presence lasts (ms)
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
local who = {}
for _, member in ipairs(redis.call('ZRANGE', KEYS[2], 0, -1)) do
  table.insert(who, string.match(member, '[^/]*$'))
end
if #who == 0 then
  -- cjson would write an empty table as an object.
  return publish(KEYS[1], 'room:' .. ARGV[5], {type = 'presence', room = ARGV[5], count = 0})
end
return publish(KEYS[1], 'room:' .. ARGV[5], {type = 'presence', room = ARGV[5], who = who, count = #who})
