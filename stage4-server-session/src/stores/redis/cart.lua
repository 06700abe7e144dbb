-- One cart change on one session, atomically, in one round trip.
--
-- Redis runs a script to completion before it serves anyone else, so the
-- check ("is there room for another line?", "would this make 100?") and the
-- change cannot be split by a concurrent request. HINCRBY alone is atomic
-- too, but could only learn afterwards that it went past 99, and would have
-- to undo it in a second command that another request could see in between.
--
-- A session is two hashes with the same idle lifetime: the session itself
-- (`born`, and whatever a later stage keeps there: who is logged in) and
-- its cart (one field per SKU holding its quantity). Keeping them apart
-- means the cart's lines are counted without the session's own fields, and
-- emptying the cart leaves the session (and its login) alone.
--
-- A change that carries an idempotency key is recorded, with its result,
-- under KEYS[3] for a while; the same key again gets that first result
-- back, marked as a replay, and changes nothing. A client whose answer was
-- lost (a 503 while Redis was frozen, a cut connection) can therefore
-- retry without adding the item twice.
--
-- KEYS[1]  the session's hash   (both derived from the session id, never the id)
-- KEYS[2]  the cart's hash
-- KEYS[3]  the record of this change's idempotency key (absent: no key)
-- ARGV[1]  'resume' (the session must exist) or 'create' (it must not)
-- ARGV[2]  add | set | remove | clear (reads do not come here: see
--          `read_and_renew` in sessions/mod.rs)
-- ARGV[3]  SKU (already checked against the catalog)
-- ARGV[4]  quantity (already checked: 1..=99)
-- ARGV[5]  idle lifetime in milliseconds (sliding: renewed by every request)
-- ARGV[6]  the most lines a cart may hold
-- ARGV[7]  the most a line may hold
-- ARGV[8]  how long an idempotency record is kept, in milliseconds
--
-- Returns {'ok', field, value, field, value, ...} (the whole cart), or
-- {'unknown'}, {'taken'}, {'cart_full'}, {'line_full', total}; a replay is
-- the first answer with 'replay' in front.

local session, cart, record = KEYS[1], KEYS[2], KEYS[3]
local ttl = ARGV[5]

local function renew()
  redis.call('PEXPIRE', session, ttl)
  redis.call('PEXPIRE', cart, ttl)
end

if record then
  local first = redis.call('GET', record)
  if first then
    renew()
    local reply = cjson.decode(first)
    table.insert(reply, 1, 'replay')
    return reply
  end
end

local exists = redis.call('EXISTS', session) == 1
if ARGV[1] == 'resume' and not exists then
  return {'unknown'}
end
if ARGV[1] == 'create' then
  if exists then
    return {'taken'}
  end
  -- Redis's own clock: the same for every instance, whatever theirs say.
  redis.call('HSET', session, 'born', redis.call('TIME')[1])
end

local function change()
  local op, sku = ARGV[2], ARGV[3]
  if op == 'add' or op == 'set' then
    local qty = tonumber(ARGV[4])
    local current = redis.call('HGET', cart, sku)
    if not current then
      if redis.call('HLEN', cart) >= tonumber(ARGV[6]) then
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
    redis.call('HSET', cart, sku, total)
  elseif op == 'remove' then
    redis.call('HDEL', cart, sku)
  elseif op == 'clear' then
    redis.call('DEL', cart)
  end
  local reply = redis.call('HGETALL', cart)
  table.insert(reply, 1, 'ok')
  return reply
end

local reply = change()
-- Sliding expiry: any request, even a refused change, keeps the session.
renew()
if record then
  redis.call('SET', record, cjson.encode(reply), 'PX', ARGV[8])
end
return reply
