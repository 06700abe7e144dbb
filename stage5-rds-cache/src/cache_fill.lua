-- Fills a cache entry only if it still holds what the reader found when it
-- missed: nothing, or the same write's mark. Anything else means a write
-- landed while the reader read the database, and its answer may be older
-- than that write: it is dropped, and the next reader fills the entry.
--
-- Why a script: "GET, compare, SET" as three commands could be split by a
-- writer's mark landing in between. Redis runs a script to completion
-- before it serves anyone else.
--
-- KEYS[1]  the cache entry
-- ARGV[1]  what the reader found under it ('' for nothing: no value or
--          mark is ever empty)
-- ARGV[2]  the answer to cache
-- ARGV[3]  how long the cache keeps it, in milliseconds
--
-- Returns 1 when the answer was stored, 0 when the entry had changed.

local held = redis.call('GET', KEYS[1])
if (held or '') ~= ARGV[1] then
  return 0
end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 1
