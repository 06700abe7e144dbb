-- Shared by every stage-6 script: numbers one update and sends it the way
-- the fan-out mode says. Redis runs the whole script at once, so the number
-- (`seq`, counted per topic) and the sending happen in one step: no two
-- updates of a topic can be numbered in one order and sent in the other.
--
-- ARGV[1]  fan-out mode: local | room-sticky | pubsub | pubsub-shared | streams
-- ARGV[2]  epoch (names this run of the counters)
-- ARGV[3]  how many entries a topic's stream keeps (MAXLEN ~)
-- ARGV[4]  the prefix of channels and stream keys
--
-- `seqs` is the hash of counters (a KEYS entry of the calling script).
-- Returns the update as JSON.

local function publish(seqs, topic, message)
  message.topic = topic
  message.epoch = ARGV[2]
  message.seq = redis.call('HINCRBY', seqs, topic, 1)
  local json = cjson.encode(message)
  local mode = ARGV[1]
  if mode == 'pubsub' then
    redis.call('PUBLISH', ARGV[4] .. topic, json)
  elseif mode == 'pubsub-shared' then
    redis.call('PUBLISH', ARGV[4] .. 'all', json)
  elseif mode == 'streams' then
    redis.call('XADD', ARGV[4] .. topic, 'MAXLEN', '~', ARGV[3], '*', 'm', json)
  end
  -- local and room-sticky: the instance delivers to its own sockets only.
  return json
end

