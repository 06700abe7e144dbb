-- Moves a session to a new id at login, atomically: the old key is renamed
-- (the cart goes along) and the new fields are set, or, without an old
-- session, a new one is started. Whoever knew the old id knows nothing now.
--
-- KEYS[1]  the old session's hash (may not exist)
-- KEYS[2]  the new session's hash
-- ARGV[1]  idle lifetime in milliseconds
-- ARGV[2..] field, value, field, value, ... (`_`-prefixed session fields)

if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('RENAME', KEYS[1], KEYS[2])
else
  redis.call('HSET', KEYS[2], '_born', redis.call('TIME')[1])
end
for i = 2, #ARGV, 2 do
  redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1])
end
redis.call('PEXPIRE', KEYS[2], ARGV[1])
return 1
