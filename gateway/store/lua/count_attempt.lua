-- Spend one attempt of a pending record: counted | missing | resolved | exhausted.
-- KEYS[1] record; ARGV[1] limit
if redis.call('EXISTS', KEYS[1]) == 0 then return {'missing'} end
if redis.call('HGET', KEYS[1], 'status') ~= 'pending' then
  return {'resolved', redis.call('HGETALL', KEYS[1])}
end
local attempts = tonumber(redis.call('HGET', KEYS[1], 'attempts') or '0')
if attempts >= tonumber(ARGV[1]) then return {'exhausted', redis.call('HGETALL', KEYS[1])} end
redis.call('HSET', KEYS[1], 'attempts', attempts + 1)
return {'counted', redis.call('HGETALL', KEYS[1])}
