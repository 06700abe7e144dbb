-- A flash-sale price for one SKU (shown live; what the cart charges is the
-- catalog's price).
--
-- KEYS[1]  the counters, KEYS[2] the flash prices, KEYS[3] the stock levels
-- ARGV[5]  SKU, ARGV[6] price in cents
-- Returns the update.

redis.call('HSET', KEYS[2], ARGV[5], ARGV[6])
local left = tonumber(redis.call('HGET', KEYS[3], ARGV[5]) or '0')
return publish(KEYS[1], 'stock:' .. ARGV[5], {
  type = 'stock', sku = ARGV[5], stock = left, price_cents = tonumber(ARGV[6])
})
