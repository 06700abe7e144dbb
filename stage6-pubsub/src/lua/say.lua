-- A message in a room.
--
-- KEYS[1]  the counters
-- ARGV[5]  room, ARGV[6] who says it, ARGV[7] what
-- Returns the update.

return publish(KEYS[1], 'room:' .. ARGV[5], {type = 'say', room = ARGV[5], from = ARGV[6], text = ARGV[7]})
