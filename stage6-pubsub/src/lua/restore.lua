-- After an outage: puts back update numbers a restarted Redis lost.
--
-- Redis writes its append-only file every second (`appendfsync everysec`):
-- killed, it can come back without its last second of writes, counters
-- included. The next update of a topic would then be numbered again from
-- below, with numbers pages already hold, and be dropped as a duplicate.
-- Each instance remembers the highest number it delivered per topic and,
-- before it says "live" again, raises the counter to at least that.
--
-- KEYS[1]  the counters
-- ARGV     topic, highest number seen, topic, highest number seen, ...
-- Returns how many counters were raised.

local raised = 0
for i = 1, #ARGV, 2 do
  local seen = tonumber(ARGV[i + 1])
  local now = tonumber(redis.call('HGET', KEYS[1], ARGV[i]) or '0')
  if now < seen then
    redis.call('HSET', KEYS[1], ARGV[i], seen)
    raised = raised + 1
  end
end
return raised
