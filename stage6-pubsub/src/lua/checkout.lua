-- A checkout: every line of the cart comes out of stock, or none does.
--
-- The check (is there enough of every line?) and the change (take it) run
-- in one script, so fifty shoppers buying the last ten cannot oversell:
-- Redis runs each script whole before the next. (In SQL: one transaction
-- with `UPDATE … SET stock = stock - $1 WHERE stock >= $1` per line.)
-- Then the cart is emptied, and each SKU's new level is published.
--
-- A checkout that carries an idempotency key records its receipt under
-- KEYS[4]; the same key again gets that receipt back and buys nothing: a
-- shopper whose answer was lost may press "buy" again safely.
--
-- KEYS[1]  the counters, KEYS[2] the stock levels, KEYS[3] the cart,
-- KEYS[4]  the record of this checkout's idempotency key (absent: no key)
-- ARGV[5]  how long a record is kept, in milliseconds
-- Returns {'ok', receipt, update, update, …}, {'replay', receipt},
-- {'empty'}, or {'short', sku, left}.

local record = KEYS[4]
if record then
  local first = redis.call('GET', record)
  if first then
    return {'replay', first}
  end
end
local lines = redis.call('HGETALL', KEYS[3])
if #lines == 0 then
  return {'empty'}
end
for i = 1, #lines, 2 do
  local left = tonumber(redis.call('HGET', KEYS[2], lines[i]) or '0')
  if left < tonumber(lines[i + 1]) then
    return {'short', lines[i], tostring(left)}
  end
end
local bought = {}
local updates = {}
for i = 1, #lines, 2 do
  local sku, qty = lines[i], tonumber(lines[i + 1])
  local left = redis.call('HINCRBY', KEYS[2], sku, -qty)
  table.insert(bought, {sku = sku, qty = qty, left = left})
  table.insert(updates, publish(KEYS[1], 'stock:' .. sku, {type = 'stock', sku = sku, stock = left, sold = qty}))
end
redis.call('DEL', KEYS[3])
local receipt = cjson.encode({bought = bought})
if record then
  redis.call('SET', record, receipt, 'PX', ARGV[5])
end
local reply = {'ok', receipt}
for _, update in ipairs(updates) do
  table.insert(reply, update)
end
return reply
