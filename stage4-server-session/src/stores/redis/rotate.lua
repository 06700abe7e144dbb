-- Moves a session to a new id at login, atomically: the old keys are
-- renamed (the cart goes along) and the new fields are set, or, without an
-- old session, a new one is started. Whoever knew the old id knows nothing
-- now.
--
-- KEYS[1], KEYS[2]  the old session's hash and cart (may not exist)
-- KEYS[3], KEYS[4]  the new session's hash and cart
-- ARGV[1]  idle lifetime in milliseconds
-- ARGV[2..] field, value, field, value, ... (session fields)

if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('RENAME', KEYS[1], KEYS[3])
  if redis.call('EXISTS', KEYS[2]) == 1 then
    redis.call('RENAME', KEYS[2], KEYS[4])
  end
else
  redis.call('HSET', KEYS[3], 'born', redis.call('TIME')[1])
end
for i = 2, #ARGV, 2 do
  redis.call('HSET', KEYS[3], ARGV[i], ARGV[i + 1])
end
redis.call('PEXPIRE', KEYS[3], ARGV[1])
redis.call('PEXPIRE', KEYS[4], ARGV[1])
return 1
