-- Puts a session's entry into the cache unless the cache already holds a
-- newer version of that session (a newer cart, or the tombstone a writer
-- left when it changed the record).
--
-- Why a script: "read the cached version, compare, write" as three
-- commands could be split by a writer's tombstone landing in between, and
-- an old cart would outlive the write. Redis runs a script to completion
-- before it serves anyone else.
--
-- KEYS[1]  the session's cache entry
-- ARGV[1]  the entry's version (the record's `v`)
-- ARGV[2]  the entry: JSON with `v` and either `cart` and `exp`, or `gone`
-- ARGV[3]  how long the cache keeps it, in milliseconds
--
-- Returns 1 when the entry was put, 0 when a newer one was there.

local current = redis.call('GET', KEYS[1])
if current then
  local ok, held = pcall(cjson.decode, current)
  if ok and type(held) == 'table' and tonumber(held.v) and tonumber(held.v) > tonumber(ARGV[1]) then
    return 0
  end
end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 1
