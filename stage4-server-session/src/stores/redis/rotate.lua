-- Moves a session to a new id at login, atomically: the old keys are
-- renamed (the cart goes along) and the new fields are set, or, without an
-- old session, a new one is started. Whoever knew the old id knows nothing
-- now.
--
-- A moved session leaves a note under its old id for a short while: the
-- account that moved it, and the new id sealed with the old one. The same
-- account logging in from the old id again (a retry whose answer was lost)
-- is answered with that note, and nothing changes.
--
-- KEYS[1], KEYS[2]  the old session's hash and cart (may not exist)
-- KEYS[3], KEYS[4]  the new session's hash and cart
-- KEYS[5]           the old id's note
-- ARGV[1]  idle lifetime in milliseconds
-- ARGV[2]  who is logging in (the account)
-- ARGV[3]  the new id, sealed with the old one ('' without an old id)
-- ARGV[4]  how long the note is kept, in milliseconds
-- ARGV[5..] field, value, field, value, ... (session fields)
--
-- Returns nil, or the sealed new id of the first try.

if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('RENAME', KEYS[1], KEYS[3])
  if redis.call('EXISTS', KEYS[2]) == 1 then
    redis.call('RENAME', KEYS[2], KEYS[4])
  end
  if ARGV[3] ~= '' then
    redis.call('HSET', KEYS[5], 'owner', ARGV[2], 'to', ARGV[3])
    redis.call('PEXPIRE', KEYS[5], ARGV[4])
  end
else
  local note = redis.call('HMGET', KEYS[5], 'owner', 'to')
  if note[1] == ARGV[2] and note[2] then
    return note[2]
  end
  redis.call('HSET', KEYS[3], 'born', redis.call('TIME')[1])
end
for i = 5, #ARGV, 2 do
  redis.call('HSET', KEYS[3], ARGV[i], ARGV[i + 1])
end
redis.call('PEXPIRE', KEYS[3], ARGV[1])
redis.call('PEXPIRE', KEYS[4], ARGV[1])
return false
