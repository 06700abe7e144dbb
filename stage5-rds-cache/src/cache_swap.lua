-- Replaces a cache entry only if it still holds what the caller found
-- there: nothing, a cached answer, or a write's mark. Anything else means
-- someone else changed the entry since the caller looked:
--
-- * a fill (a reader's answer) is dropped when a write marked the entry
--   while the reader read the database, as its answer may be older than
--   that write; the next reader fills the entry;
-- * a write's mark is placed again after the caller looks once more
--   (cache.rs), so that a mark never replaces a later write's.
--
-- Why a script: "GET, compare, SET" as three commands could be split by
-- another client's SET landing in between. Redis runs a script to
-- completion before it serves anyone else.
--
-- KEYS[1]  the cache entry
-- ARGV[1]  what the caller found under it ('' for nothing: no answer or
--          mark is ever empty)
-- ARGV[2]  what to store: an answer, or a mark
-- ARGV[3]  how long the cache keeps it, in milliseconds
--
-- Returns 1 when it was stored, 0 when the entry had changed.

local held = redis.call('GET', KEYS[1])
if (held or '') ~= ARGV[1] then
  return 0
end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 1
