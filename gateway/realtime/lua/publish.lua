-- Publish an event to a room and keep it in the room's history, atomically:
-- the id the event carries is the id it is stored under (issue #14).
-- KEYS[1] the room's history stream; KEYS[2] (one Redis only) the clock shared
-- by every room, so that ids order events across rooms as they were published.
-- ARGV[1] channel, ARGV[2] 'PUBLISH' or 'SPUBLISH', ARGV[3]/ARGV[4] the
-- message before/after its id, ARGV[5] the entry, ARGV[6] how long to keep (ms).
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local keep = tonumber(ARGV[6])
local id
if KEYS[2] then
  local seq = 0
  local last = redis.call('GET', KEYS[2])
  if last then
    local last_ms, last_seq = string.match(last, '^(%d+)-(%d+)$')
    last_ms = tonumber(last_ms)
    if ms <= last_ms then
      ms = last_ms
      seq = tonumber(last_seq) + 1
    end
  end
  id = string.format('%d-%d', ms, seq)
  redis.call('SET', KEYS[2], id, 'PX', keep)
  redis.call('XADD', KEYS[1], 'MINID', '~', string.format('%d', ms - keep), id, 'm', ARGV[5])
else
  id = redis.call('XADD', KEYS[1], 'MINID', '~', string.format('%d', ms - keep), '*', 'm', ARGV[5])
end
redis.call('PEXPIRE', KEYS[1], keep)
redis.call(ARGV[2], ARGV[1], ARGV[3] .. id .. ARGV[4])
return id
