-- One cart operation on one session, atomically, in one round trip.
--
-- Redis runs a script to completion before it serves anyone else, so the
-- check ("is there room for another line?", "would this make 100?") and the
-- change cannot be split by a concurrent request. HINCRBY alone is atomic
-- too, but could only learn afterwards that it went past 99, and would have
-- to undo it in a second command that another request could see in between.
--
-- The session is one hash: `_born` (when it started, unix seconds) and one
-- field per SKU holding its quantity. `_born` keeps an empty session in
-- existence, so an empty cart is not confused with an unknown session.
--
-- KEYS[1]  the session's hash (derived from the session id, never the id)
-- ARGV[1]  'resume' (the session must exist) or 'create' (it must not)
-- ARGV[2]  view | add | set | remove | clear (a known session's plain
--          view does not come here: see `read_and_renew` in sessions/mod.rs)
-- ARGV[3]  SKU (already checked against the catalog)
-- ARGV[4]  quantity (already checked: 1..=99)
-- ARGV[5]  idle lifetime in milliseconds (sliding: renewed by every request)
-- ARGV[6]  the most lines a cart may hold
-- ARGV[7]  the most a line may hold
--
-- Returns {'ok', field, value, field, value, ...} (the whole hash), or
-- {'unknown'}, {'taken'}, {'cart_full'}, {'line_full', total}.

local key = KEYS[1]
local exists = redis.call('EXISTS', key) == 1

if ARGV[1] == 'resume' and not exists then
  return {'unknown'}
end
if ARGV[1] == 'create' then
  if exists then
    return {'taken'}
  end
  -- Redis's own clock: the same for every instance, whatever theirs say.
  redis.call('HSET', key, '_born', redis.call('TIME')[1])
end

-- Sliding expiry: any request, even a refused change, keeps the session.
redis.call('PEXPIRE', key, ARGV[5])

local op, sku = ARGV[2], ARGV[3]
if op == 'add' or op == 'set' then
  local qty = tonumber(ARGV[4])
  local current = redis.call('HGET', key, sku)
  if not current then
    -- Every field but `_born` is a line.
    if redis.call('HLEN', key) - 1 >= tonumber(ARGV[6]) then
      return {'cart_full'}
    end
    current = 0
  end
  local total = qty
  if op == 'add' then
    total = tonumber(current) + qty
  end
  if total > tonumber(ARGV[7]) then
    return {'line_full', tostring(total)}
  end
  redis.call('HSET', key, sku, total)
elseif op == 'remove' then
  redis.call('HDEL', key, sku)
elseif op == 'clear' then
  local born = redis.call('HGET', key, '_born')
  redis.call('DEL', key)
  redis.call('HSET', key, '_born', born)
  redis.call('PEXPIRE', key, ARGV[5])
end

local reply = redis.call('HGETALL', key)
table.insert(reply, 1, 'ok')
return reply
